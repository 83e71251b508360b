//! The processes the sidecar supervises and what it does to them: spawning (through the
//! reaper), signalling, stopping with a grace period, registering and deregistering the
//! service, the probe loops, a reload's rendering, and stopping leftover children at exit. The
//! states that drive it are in `lifecycle.rs` (LIFECYCLE in `docs/sidecar.md`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use sluice_kv::registry::ServiceDefinition;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{
    CommandSpec, Config, ExitPolicy, OnChange, RegisterConfig, Rewrite, SignalTarget,
};
use crate::kvlayers::KvLayers;
use crate::probe::{Probe, ProbeResult};
use crate::reaper::{ExitStatus, Reaper};
use crate::registrar::Registrar;
use crate::template::{Rendered, TemplateUnit};
use crate::write::{WriteOutcome, write_atomically};

/// A process the sidecar supervises.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub name: String,
    /// Program and arguments as bytes: a workload's arguments need not be UTF-8.
    pub argv: Vec<std::ffi::OsString>,
    pub on_exit: ExitPolicy,
}

/// Everything `run` needs besides the config.
#[derive(Debug)]
pub struct Launch {
    pub processes: Vec<ProcessSpec>,
    pub primary: usize,
    pub prefix_output: bool,
    pub restart_initial: Duration,
    pub restart_max: Duration,
}

#[derive(Debug)]
pub(crate) struct Proc {
    pub(crate) spec: ProcessSpec,
    pub(crate) pid: Option<Pid>,
    pub(crate) generation: u64,
    pub(crate) started: Instant,
    pub(crate) restart_attempts: u32,
    pub(crate) restart_at: Option<Instant>,
    pub(crate) restart_requested: bool,
    pub(crate) kill_at: Option<Instant>,
    pub(crate) last_status: Option<ExitStatus>,
}

#[derive(Debug)]
pub(crate) struct ProcExit {
    pub(crate) index: usize,
    pub(crate) generation: u64,
    pub(crate) status: ExitStatus,
}

#[derive(Debug)]
pub(crate) enum ProbeEvent {
    Ready(ProbeResult),
    Role(ProbeResult),
}

/// What a reload did to one template.
#[derive(Debug)]
pub(crate) enum UnitResult {
    Changed,
    Unchanged,
    Blocked(Vec<String>),
    Failed(String),
}

#[derive(Debug)]
pub(crate) struct ReloadDone {
    pub(crate) units: Vec<TemplateUnit>,
    pub(crate) results: Vec<(usize, UnitResult)>,
}

/// Exit codes of the sidecar itself (the workload's code is passed through otherwise).
pub mod exit_code {
    /// A KV source stayed unreachable, a first render failed or kept blocking.
    pub const STARTUP_FAILED: i32 = 1;
    /// The configuration is invalid.
    pub const BAD_CONFIG: i32 = 2;
    /// The workload could not be executed (as shells report it).
    pub const CANNOT_EXECUTE: i32 = 127;
}

pub(crate) struct Supervisor {
    pub(crate) config: Arc<Config>,
    pub(crate) reaper: Reaper,
    pub(crate) kv: Arc<KvLayers>,
    pub(crate) procs: Vec<Proc>,
    pub(crate) primary: usize,
    pub(crate) prefix_output: bool,
    pub(crate) name_width: usize,
    pub(crate) restart_initial: Duration,
    pub(crate) restart_max: Duration,
    pub(crate) exits_tx: mpsc::UnboundedSender<ProcExit>,
    pub(crate) stopping: bool,
    pub(crate) registrar: Option<Registrar>,
    pub(crate) registered: Option<ServiceDefinition>,
    pub(crate) ready: bool,
    pub(crate) role: Option<bool>,
    pub(crate) check: Option<Probe>,
}

pub(crate) fn now() -> Instant {
    Instant::now()
}

impl Supervisor {
    /// The supervisor of `launch`'s processes, none started yet.
    pub(crate) fn new(
        config: &Arc<Config>,
        reaper: &Reaper,
        kv: &Arc<KvLayers>,
        launch: Launch,
        exits_tx: mpsc::UnboundedSender<ProcExit>,
        registrar: Option<Registrar>,
        check: Option<Probe>,
    ) -> Self {
        let name_width = launch
            .processes
            .iter()
            .map(|p| p.name.len())
            .max()
            .unwrap_or(0);
        Supervisor {
            config: Arc::clone(config),
            reaper: reaper.clone(),
            kv: Arc::clone(kv),
            procs: launch
                .processes
                .into_iter()
                .map(|spec| Proc {
                    spec,
                    pid: None,
                    generation: 0,
                    started: now(),
                    restart_attempts: 0,
                    restart_at: None,
                    restart_requested: false,
                    kill_at: None,
                    last_status: None,
                })
                .collect(),
            primary: launch.primary,
            prefix_output: launch.prefix_output,
            name_width,
            restart_initial: launch.restart_initial,
            restart_max: launch.restart_max,
            exits_tx,
            stopping: false,
            registrar,
            registered: None,
            ready: check.is_none(),
            role: None,
            check,
        }
    }

    /// Starts every process; one that cannot be executed stops the others (exit 127).
    pub(crate) async fn spawn_all(&mut self) {
        for index in 0..self.procs.len() {
            if let Err(error) = self.spawn_proc(index) {
                eprintln!("sluice-sidecar: {}: {error}", self.procs[index].spec.name);
                self.procs[index].last_status = Some(ExitStatus::Exited(exit_code::CANNOT_EXECUTE));
                let signal = self.config.signals.stop_signal.0;
                let reason = format!(
                    "{} could not start",
                    describe_command(&self.procs[index].spec.argv)
                );
                self.begin_stop(&reason, signal).await;
                break;
            }
        }
    }

    pub(crate) fn rewrite(&self, signal: Signal) -> Option<Signal> {
        let rewrites = &self.config.signals.rewrite;
        let found = rewrites
            .iter()
            .find(|(name, _)| crate::signals::parse_signal(name) == Ok(signal))
            .map(|(_, rewrite)| *rewrite);
        match found {
            None => Some(signal),
            Some(Rewrite::To(other)) => Some(other),
            Some(Rewrite::Drop) => None,
        }
    }

    pub(crate) fn signal_proc(&self, index: usize, signal: Signal) {
        let Some(pid) = self.procs[index].pid else {
            return;
        };
        let result = match self.config.signals.target {
            SignalTarget::Group => killpg(pid, signal),
            SignalTarget::Child => kill(pid, signal),
        };
        match result {
            Ok(()) => {
                tracing::debug!(process = %self.procs[index].spec.name, %signal, "signal sent")
            }
            Err(error) => {
                tracing::debug!(process = %self.procs[index].spec.name, %signal, %error, "signal not delivered")
            }
        }
    }

    pub(crate) fn running(&self) -> impl Iterator<Item = usize> + '_ {
        self.procs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.pid.is_some())
            .map(|(i, _)| i)
    }

    pub(crate) fn spawn_proc(&mut self, index: usize) -> Result<(), String> {
        let spec = self.procs[index].spec.clone();
        let (program, args) = spec.argv.split_first().ok_or("empty command")?;
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::inherit());
        if self.config.signals.target == SignalTarget::Group {
            command.process_group(0);
        }
        if self.prefix_output {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        let (mut child, exit) = self
            .reaper
            .spawn(&mut command)
            .map_err(|e| format!("cannot execute {program:?}: {e}"))?;
        if self.prefix_output {
            let prefix = format!("{:width$} | ", spec.name, width = self.name_width);
            if let Some(stdout) = child.stdout.take() {
                pump(stdout, prefix.clone(), false);
            }
            if let Some(stderr) = child.stderr.take() {
                pump(stderr, prefix, true);
            }
        }
        let proc = &mut self.procs[index];
        proc.generation += 1;
        proc.pid = Some(exit.pid());
        proc.started = now();
        proc.restart_at = None;
        proc.restart_requested = false;
        proc.kill_at = None;
        tracing::info!(process = %spec.name, pid = exit.pid().as_raw(), "started");
        let generation = proc.generation;
        let exits = self.exits_tx.clone();
        tokio::spawn(async move {
            let status = exit.wait().await;
            let _ = exits.send(ProcExit {
                index,
                generation,
                status,
            });
        });
        Ok(())
    }

    /// Stops the process with the stop signal and arms its SIGKILL deadline.
    pub(crate) fn stop_proc(&mut self, index: usize, signal: Signal) {
        if self.procs[index].pid.is_none() {
            return;
        }
        self.signal_proc(index, signal);
        let grace = self.config.signals.stop_grace.0;
        self.procs[index].kill_at.get_or_insert(now() + grace);
    }

    pub(crate) async fn begin_stop(&mut self, reason: &str, signal: Signal) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        tracing::info!(reason, "stopping");
        if let (Some(registrar), Some(register)) = (&self.registrar, &self.config.register)
            && self.registered.take().is_some()
            && !registrar.deregister(register.deregister_timeout.0).await
        {
            tracing::warn!(timeout = ?register.deregister_timeout.0, "deregistration not confirmed in time; stopping anyway");
        }
        for index in 0..self.procs.len() {
            self.procs[index].restart_at = None;
            self.stop_proc(index, signal);
        }
    }

    fn definition(&self, register: &RegisterConfig) -> ServiceDefinition {
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        let role = match (&register.role, self.role) {
            (Some(role), Some(true)) => Some(&role.pass),
            (Some(role), Some(false)) => Some(&role.fail),
            _ => None,
        };
        let mut tags = register.tags.clone();
        if let Some(role) = role {
            tags.extend(role.tags.iter().cloned());
        }
        let check = self
            .check
            .as_ref()
            .zip(register.check.as_ref())
            .map(|(probe, config)| probe.to_check(config.interval.0, config.timeout.0));
        ServiceDefinition {
            name: role
                .and_then(|r| r.name.clone())
                .unwrap_or_else(|| register.name.clone()),
            id: register
                .id
                .clone()
                .unwrap_or_else(|| format!("{}-{hostname}", register.name)),
            address: register.address.clone().unwrap_or(hostname),
            port: register.port,
            tags,
            meta: register.meta.clone(),
            check,
            checks: Vec::new(),
            extra: BTreeMap::new(),
        }
    }

    pub(crate) fn update_registration(&mut self) {
        let (Some(registrar), Some(register)) = (&self.registrar, &self.config.register) else {
            return;
        };
        if self.stopping || !self.ready || (register.role.is_some() && self.role.is_none()) {
            return;
        }
        let definition = self.definition(register);
        if self.registered.as_ref() != Some(&definition) {
            registrar.set(Some(definition.clone()));
            self.registered = Some(definition);
        }
    }
}

/// Copies a child's output to ours, one prefixed line at a time (a thread per pipe: blocking
/// reads never stall the supervisor, and a full stdout only slows this process's output).
fn pump(source: impl std::io::Read + Send + 'static, prefix: String, to_stderr: bool) {
    let spawned = std::thread::Builder::new()
        .name("output".into())
        .spawn(move || {
            let mut reader = std::io::BufReader::new(source);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if line.last() != Some(&b'\n') {
                    line.push(b'\n');
                }
                let mut message = Vec::with_capacity(prefix.len() + line.len());
                message.extend_from_slice(prefix.as_bytes());
                message.extend_from_slice(&line);
                let written = if to_stderr {
                    std::io::stderr().lock().write_all(&message)
                } else {
                    std::io::stdout().lock().write_all(&message)
                };
                if written.is_err() {
                    // Our output is gone; keep draining so the child never blocks on a full pipe.
                    continue;
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start an output thread");
    }
}

/// Pids of live processes whose parent is this process (orphans re-parented to us included).
/// Reads the kernel's per-thread child lists when it has them (cheap), else scans /proc.
fn our_children() -> Vec<Pid> {
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        let mut children = Vec::new();
        let mut supported = false;
        for task in tasks.flatten() {
            if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
                supported = true;
                children.extend(
                    list.split_whitespace()
                        .filter_map(|p| p.parse().ok())
                        .map(Pid::from_raw),
                );
            }
        }
        if supported {
            // The list includes zombies not reaped yet; those need no stopping.
            children.retain(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|stat| {
                        stat.rsplit_once(')')
                            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
                    })
                    .unwrap_or(false)
            });
            return children;
        }
    }
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut children = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may contain spaces and parentheses.
        let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        let mut fields = after.split_whitespace();
        let state = fields.next().unwrap_or("");
        if fields.next() == Some(me.as_str()) && state != "Z" {
            children.push(Pid::from_raw(pid));
        }
    }
    children
}

/// After the supervised processes are gone: stop whatever is left of our children
/// (daemonised grandchildren re-parented to us), so none is killed without warning or left
/// running past our exit.
pub(crate) async fn stop_leftovers(grace: Duration) {
    let leftovers = our_children();
    if leftovers.is_empty() {
        return;
    }
    tracing::info!(count = leftovers.len(), "stopping leftover child processes");
    for pid in &leftovers {
        let _ = kill(*pid, Signal::SIGTERM);
    }
    let deadline = now() + grace;
    while now() < deadline && !our_children().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for pid in our_children() {
        tracing::warn!(
            pid = pid.as_raw(),
            "leftover process ignored SIGTERM; killing"
        );
        let _ = kill(pid, Signal::SIGKILL);
    }
    let deadline = now() + Duration::from_secs(1);
    while now() < deadline && !our_children().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) async fn probe_loop(
    probe: Probe,
    interval: Duration,
    timeout: Duration,
    reaper: Reaper,
    events: mpsc::UnboundedSender<ProbeEvent>,
    readiness: bool,
) {
    loop {
        let result = probe.run(&reaper, timeout).await;
        let passed = result.passed;
        let event = if readiness {
            ProbeEvent::Ready(result)
        } else {
            ProbeEvent::Role(result)
        };
        if events.send(event).is_err() || (readiness && passed) {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

/// Renders `dirty` units and writes what changed; runs `command` actions of changed units.
pub(crate) async fn reload(
    mut units: Vec<TemplateUnit>,
    dirty: BTreeSet<usize>,
    reaper: Reaper,
) -> ReloadDone {
    // Values as bytes: a variable that is not UTF-8 must not stop a reload (nor the start).
    let mut env = crate::envsubst::process_env();
    let mut results = Vec::new();
    for unit in units.iter_mut().filter(|u| dirty.contains(&u.index)) {
        let result = match unit.render(&mut env) {
            Rendered::Ready(bytes) => match write_atomically(&unit.write, &bytes, &reaper).await {
                Ok(WriteOutcome::Unchanged) => UnitResult::Unchanged,
                Ok(_) => UnitResult::Changed,
                Err(error) => UnitResult::Failed(error.to_string()),
            },
            Rendered::Blocked(keys) => UnitResult::Blocked(keys),
            Rendered::Failed(message) => UnitResult::Failed(message),
        };
        if matches!(result, UnitResult::Changed)
            && unit.config.action() == OnChange::Command
            && let Some(command) = &unit.config.command
        {
            let timeout = unit.config.command_timeout.0;
            let destination = unit.write.destination.to_string_lossy().into_owned();
            match crate::command::run(
                &reaper,
                &command.argv(),
                &[("SLUICE_DESTINATION", destination.as_str())],
                timeout,
            )
            .await
            {
                Ok(outcome) if outcome.success() => {
                    tracing::info!(template = %unit.label, "on_change command succeeded")
                }
                Ok(outcome) => {
                    tracing::warn!(template = %unit.label, result = %outcome.describe(timeout), "on_change command failed")
                }
                Err(error) => {
                    tracing::warn!(template = %unit.label, %error, "on_change command could not run")
                }
            }
        }
        results.push((unit.index, result));
    }
    ReloadDone { units, results }
}

fn describe_command(argv: &[std::ffi::OsString]) -> String {
    let argv = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    CommandSpec::Argv(argv).display()
}
