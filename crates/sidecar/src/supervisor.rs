//! The supervisor state machine (LIFECYCLE in `docs/sidecar.md`):
//!
//! ```text
//! Connecting ──all KV layers synced──▶ FirstRender ──all templates written──▶ Running
//!     │ deadline                          │ missing keys past deadline / failure   │
//!     ▼                                   ▼                                        ▼
//!   exit 1 (what was unreachable)       exit 1 (what is missing)      Stopping ──all exited──▶ Exit(code)
//! ```
//!
//! Running: signals are forwarded (rewritten per config); KV changes re-render affected
//! templates after quiescence (one reload in flight, later changes coalesced); a failed reload
//! keeps the last good files and the workload and is retried with backoff; the readiness check
//! gates registration and the role probe picks the registered name/tags. Stopping: deregister,
//! stop signal, grace period, SIGKILL, then the remaining (orphaned) children get the same
//! treatment; the exit code is the primary process's code or 128 + its signal.

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
use crate::kvlayers::{KvLayers, KvNotice, LayerStatus};
use crate::probe::{Probe, ProbeResult};
use crate::reaper::{ExitStatus, Reaper};
use crate::registrar::Registrar;
use crate::signals::SignalEvent;
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
struct Proc {
    spec: ProcessSpec,
    pid: Option<Pid>,
    generation: u64,
    started: Instant,
    restart_attempts: u32,
    restart_at: Option<Instant>,
    restart_requested: bool,
    kill_at: Option<Instant>,
    last_status: Option<ExitStatus>,
}

#[derive(Debug)]
struct ProcExit {
    index: usize,
    generation: u64,
    status: ExitStatus,
}

#[derive(Debug)]
enum ProbeEvent {
    Ready(ProbeResult),
    Role(ProbeResult),
}

/// What a reload did to one template.
#[derive(Debug)]
enum UnitResult {
    Changed,
    Unchanged,
    Blocked(Vec<String>),
    Failed(String),
}

#[derive(Debug)]
struct ReloadDone {
    units: Vec<TemplateUnit>,
    results: Vec<(usize, UnitResult)>,
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

struct Supervisor {
    config: Arc<Config>,
    reaper: Reaper,
    kv: Arc<KvLayers>,
    procs: Vec<Proc>,
    primary: usize,
    prefix_output: bool,
    name_width: usize,
    restart_initial: Duration,
    restart_max: Duration,
    exits_tx: mpsc::UnboundedSender<ProcExit>,
    stopping: bool,
    registrar: Option<Registrar>,
    registered: Option<ServiceDefinition>,
    ready: bool,
    role: Option<bool>,
    check: Option<Probe>,
}

fn now() -> Instant {
    Instant::now()
}

impl Supervisor {
    fn rewrite(&self, signal: Signal) -> Option<Signal> {
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

    fn signal_proc(&self, index: usize, signal: Signal) {
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

    fn running(&self) -> impl Iterator<Item = usize> + '_ {
        self.procs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.pid.is_some())
            .map(|(i, _)| i)
    }

    fn spawn_proc(&mut self, index: usize) -> Result<(), String> {
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
    fn stop_proc(&mut self, index: usize, signal: Signal) {
        if self.procs[index].pid.is_none() {
            return;
        }
        self.signal_proc(index, signal);
        let grace = self.config.signals.stop_grace.0;
        self.procs[index].kill_at.get_or_insert(now() + grace);
    }

    async fn begin_stop(&mut self, reason: &str, signal: Signal) {
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

    fn update_registration(&mut self) {
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
async fn stop_leftovers(grace: Duration) {
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

async fn probe_loop(
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
async fn reload(
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

/// Runs the whole lifecycle and returns the process exit code.
pub async fn run(
    config: Config,
    launch: Launch,
    reaper: Reaper,
    mut signals: mpsc::UnboundedReceiver<SignalEvent>,
) -> i32 {
    let config = Arc::new(config);
    let stop_on: Vec<Signal> = config.signals.stop_on.iter().map(|s| s.0).collect();

    // ── Connecting ────────────────────────────────────────────────────────────────────────
    let kv = match KvLayers::from_config(&config) {
        Ok(kv) => Arc::new(kv),
        Err(error) => {
            tracing::error!(%error, "invalid KV configuration");
            return exit_code::BAD_CONFIG;
        }
    };
    let (notices_tx, mut notices) = mpsc::unbounded_channel::<KvNotice>();
    kv.start(notices_tx);
    let deadline = now() + config.startup.kv_deadline.0;
    let mut next_log = now() + config.startup.block_log_interval.0;
    while !kv.unsynced().is_empty() {
        tokio::select! {
            Some(_) = notices.recv() => {}
            Some(event) = signals.recv() => {
                if let SignalEvent::Received(signal) = event && stop_on.contains(&signal) {
                    tracing::info!(%signal, "stopped before start");
                    return 128 + signal as i32;
                }
            }
            _ = tokio::time::sleep_until(next_log) => {
                for what in kv.unsynced() {
                    tracing::warn!(waiting_for = %what, "KV source not reachable yet; retrying");
                }
                next_log = now() + config.startup.block_log_interval.0;
            }
            _ = tokio::time::sleep_until(deadline) => {
                for what in kv.unsynced() {
                    tracing::error!(unreachable = %what, deadline = ?config.startup.kv_deadline.0, "could not reach KV source before the start-up deadline");
                    eprintln!("sluice-sidecar: could not reach {what} within {:?}", config.startup.kv_deadline.0);
                }
                return exit_code::STARTUP_FAILED;
            }
        }
    }

    // ── FirstRender ───────────────────────────────────────────────────────────────────────
    let mut units = match TemplateUnit::load_all(&config, &kv) {
        Ok(units) => units,
        Err(errors) => {
            for error in &errors {
                eprintln!("sluice-sidecar: {error}");
            }
            return exit_code::BAD_CONFIG;
        }
    };
    let started = now();
    let mut pending: BTreeSet<usize> = units.iter().map(|u| u.index).collect();
    let mut blocked: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut env = crate::envsubst::process_env();
    let mut next_log = now() + config.startup.block_log_interval.0;
    loop {
        for unit in units.iter_mut() {
            if !pending.contains(&unit.index) {
                continue;
            }
            match unit.render(&mut env) {
                Rendered::Ready(bytes) => {
                    match write_atomically(&unit.write, &bytes, &reaper).await {
                        Ok(outcome) => {
                            tracing::info!(template = %unit.label, destination = %unit.write.destination.display(), ?outcome, "rendered");
                            pending.remove(&unit.index);
                            blocked.remove(&unit.index);
                        }
                        Err(error) => {
                            eprintln!("sluice-sidecar: {error}");
                            return exit_code::STARTUP_FAILED;
                        }
                    }
                }
                Rendered::Blocked(keys) => {
                    blocked.insert(unit.index, keys);
                }
                Rendered::Failed(message) => {
                    eprintln!("sluice-sidecar: first render failed: {message}");
                    return exit_code::STARTUP_FAILED;
                }
            }
        }
        if pending.is_empty() {
            break;
        }
        let expired: Vec<&TemplateUnit> = units
            .iter()
            .filter(|u| pending.contains(&u.index) && now() >= started + u.config.missing_timeout.0)
            .collect();
        if !expired.is_empty() {
            for unit in expired {
                let keys = blocked.get(&unit.index).cloned().unwrap_or_default();
                eprintln!(
                    "sluice-sidecar: {}: still missing after {:?}: {}",
                    unit.label,
                    unit.config.missing_timeout.0,
                    keys.join(", ")
                );
            }
            return exit_code::STARTUP_FAILED;
        }
        let earliest = units
            .iter()
            .filter(|u| pending.contains(&u.index))
            .map(|u| started + u.config.missing_timeout.0)
            .min()
            .unwrap_or_else(now);
        tokio::select! {
            Some(notice) = notices.recv() => {
                let touched = units.iter().any(|u| pending.contains(&u.index) && u.deps.touched_by(notice.layer, &notice.changed));
                if !touched {
                    continue;
                }
            }
            Some(event) = signals.recv() => {
                if let SignalEvent::Received(signal) = event && stop_on.contains(&signal) {
                    tracing::info!(%signal, "stopped before start");
                    return 128 + signal as i32;
                }
                continue;
            }
            _ = tokio::time::sleep_until(next_log) => {
                for (index, keys) in &blocked {
                    let label = units.iter().find(|u| u.index == *index).map(|u| u.label.clone()).unwrap_or_default();
                    tracing::warn!(template = %label, keys = %keys.join(", "), waited = ?now().duration_since(started), "still waiting for keys");
                }
                next_log = now() + config.startup.block_log_interval.0;
                continue;
            }
            _ = tokio::time::sleep_until(earliest) => {}
        }
    }

    if launch.processes.is_empty() {
        tracing::info!("templates rendered; no workload configured");
        return 0;
    }

    // ── Launch ────────────────────────────────────────────────────────────────────────────
    let (exits_tx, mut exits) = mpsc::unbounded_channel::<ProcExit>();
    let name_width = launch
        .processes
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(0);
    let check = match config
        .register
        .as_ref()
        .and_then(|r| r.check.as_ref())
        .map(Probe::from_config)
        .transpose()
    {
        Ok(check) => check,
        Err(error) => {
            eprintln!("sluice-sidecar: register.check: {error}");
            return exit_code::BAD_CONFIG;
        }
    };
    let registrar = match &config.registry {
        Some(registry) if config.register.is_some() => {
            match Registrar::start(
                registry,
                registry.dir.as_deref().map(|d| config.resolve(d)),
                reaper.clone(),
            ) {
                Ok(registrar) => Some(registrar),
                Err(error) => {
                    eprintln!("sluice-sidecar: registry: {error}");
                    return exit_code::BAD_CONFIG;
                }
            }
        }
        _ => None,
    };
    let mut sup = Supervisor {
        config: config.clone(),
        reaper: reaper.clone(),
        kv: kv.clone(),
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
        check: check.clone(),
    };
    for index in 0..sup.procs.len() {
        if let Err(error) = sup.spawn_proc(index) {
            eprintln!("sluice-sidecar: {}: {error}", sup.procs[index].spec.name);
            let code = exit_code::CANNOT_EXECUTE;
            sup.procs[index].last_status = Some(ExitStatus::Exited(code));
            let signal = config.signals.stop_signal.0;
            sup.begin_stop(
                &format!(
                    "{} could not start",
                    describe_command(&sup.procs[index].spec.argv)
                ),
                signal,
            )
            .await;
            break;
        }
    }

    let (probe_tx, mut probe_events) = mpsc::unbounded_channel::<ProbeEvent>();
    if !sup.stopping
        && let Some(register) = &config.register
    {
        if let (Some(probe), Some(check_config)) = (check, &register.check) {
            tokio::spawn(probe_loop(
                probe,
                check_config.interval.0.min(Duration::from_secs(1)),
                check_config.timeout.0,
                reaper.clone(),
                probe_tx.clone(),
                true,
            ));
        }
        if let Some(role) = &register.role {
            match Probe::from_config(&role.probe()) {
                Ok(probe) => {
                    tokio::spawn(probe_loop(
                        probe,
                        role.interval.0,
                        role.timeout.0,
                        reaper.clone(),
                        probe_tx.clone(),
                        false,
                    ));
                }
                Err(error) => {
                    eprintln!("sluice-sidecar: register.role: {error}");
                    return exit_code::BAD_CONFIG;
                }
            }
        }
        sup.update_registration();
    }

    // ── Running / Stopping ────────────────────────────────────────────────────────────────
    let watch = config.watch.clone();
    let mut units_slot: Option<Vec<TemplateUnit>> = Some(std::mem::take(&mut units));
    let mut dirty: BTreeSet<usize> = BTreeSet::new();
    let mut window_start: Option<Instant> = None;
    let mut last_change = now();
    let mut reload_at: Option<Instant> = None;
    let mut retry_attempt: u32 = 0;
    let (reload_tx, mut reload_done) = mpsc::unbounded_channel::<ReloadDone>();
    let quiescence = |window_start: Instant, last_change: Instant| -> Instant {
        let splay = if watch.splay.0.is_zero() {
            Duration::ZERO
        } else {
            watch.splay.0.mul_f64(fastrand::f64())
        };
        (last_change + watch.min.0).min(window_start + watch.max.0) + splay
    };

    loop {
        let any_running = sup.running().next().is_some();
        let any_restart = sup.procs.iter().any(|p| p.restart_at.is_some());
        if !any_running && !any_restart {
            break;
        }
        let next_timer = sup
            .procs
            .iter()
            .flat_map(|p| [p.kill_at, p.restart_at])
            .flatten()
            .min();
        tokio::select! {
            Some(event) = signals.recv() => match event {
                SignalEvent::Received(signal) => {
                    if stop_on.contains(&signal) && !sup.stopping {
                        let send = sup.rewrite(signal).unwrap_or(config.signals.stop_signal.0);
                        sup.begin_stop(&format!("received {signal}"), send).await;
                    } else if let Some(send) = sup.rewrite(signal) {
                        tracing::debug!(received = %signal, forwarded = %send, "forwarding signal");
                        for index in sup.running().collect::<Vec<_>>() {
                            sup.signal_proc(index, send);
                        }
                    }
                }
                SignalEvent::Reaped(reaped) => {
                    for r in reaped.iter().filter(|r| !r.claimed) {
                        tracing::debug!(pid = r.pid.as_raw(), status = %r.status, "reaped orphaned process");
                    }
                }
            },
            Some(exit) = exits.recv() => {
                let proc = &mut sup.procs[exit.index];
                if proc.generation != exit.generation {
                    continue;
                }
                proc.pid = None;
                proc.kill_at = None;
                proc.last_status = Some(exit.status);
                let name = proc.spec.name.clone();
                tracing::info!(process = %name, status = %exit.status, "exited");
                if proc.restart_requested && !sup.stopping {
                    if let Err(error) = sup.spawn_proc(exit.index) {
                        tracing::error!(process = %name, %error, "restart failed");
                    }
                    continue;
                }
                if sup.stopping {
                    continue;
                }
                match proc.spec.on_exit {
                    ExitPolicy::StopAll => {
                        let signal = config.signals.stop_signal.0;
                        sup.begin_stop(&format!("{name} exited ({})", exit.status), signal).await;
                    }
                    ExitPolicy::Restart => {
                        if proc.started.elapsed() > sup.restart_max.max(Duration::from_secs(10)) {
                            proc.restart_attempts = 0;
                        }
                        let delay = sluice_kv::Backoff { initial: sup.restart_initial, max: sup.restart_max }.delay(proc.restart_attempts);
                        proc.restart_attempts = proc.restart_attempts.saturating_add(1);
                        proc.restart_at = Some(now() + delay);
                        tracing::info!(process = %name, ?delay, "restarting after backoff");
                    }
                    ExitPolicy::Ignore => {}
                }
            }
            Some(notice) = notices.recv() => {
                match &notice.status {
                    Some(LayerStatus::Unavailable(error)) => tracing::warn!(source = %sup.kv.describe(notice.layer), %error, "KV source unavailable; workload and files stay as they are"),
                    Some(LayerStatus::Restored) => tracing::info!(source = %sup.kv.describe(notice.layer), "KV source available again"),
                    _ => {}
                }
                if notice.changed.is_empty() || sup.stopping {
                    continue;
                }
                let touched: Vec<usize> = match &units_slot {
                    Some(units) => units.iter().filter(|u| u.deps.touched_by(notice.layer, &notice.changed)).map(|u| u.index).collect(),
                    // A reload is running: its units are away; re-check them all when it is back.
                    None => (0..config.template.len()).collect(),
                };
                if touched.is_empty() {
                    continue;
                }
                tracing::debug!(keys = ?notice.changed, templates = ?touched, "change");
                dirty.extend(touched);
                let start = *window_start.get_or_insert_with(now);
                last_change = now();
                reload_at = Some(quiescence(start, last_change));
            }
            _ = tokio::time::sleep_until(reload_at.unwrap_or_else(now)), if reload_at.is_some() && units_slot.is_some() => {
                reload_at = None;
                window_start = None;
                let which = std::mem::take(&mut dirty);
                let Some(units) = units_slot.take() else { continue };
                tokio::spawn({
                    let reaper = sup.reaper.clone();
                    let done = reload_tx.clone();
                    async move {
                        let _ = done.send(reload(units, which, reaper).await);
                    }
                });
            }
            Some(done) = reload_done.recv() => {
                let mut failed = BTreeSet::new();
                let mut signals_to_send: BTreeSet<(Option<String>, i32)> = BTreeSet::new();
                let mut restarts: BTreeSet<Option<String>> = BTreeSet::new();
                for (index, result) in &done.results {
                    let unit = &done.units[*index];
                    match result {
                        UnitResult::Changed => {
                            tracing::info!(template = %unit.label, destination = %unit.write.destination.display(), "re-rendered");
                            match unit.config.action() {
                                OnChange::Signal => if let Some(signal) = unit.config.signal { signals_to_send.insert((unit.config.target.clone(), signal.0 as i32)); },
                                OnChange::Restart => { restarts.insert(unit.config.target.clone()); }
                                OnChange::Command | OnChange::None => {}
                            }
                        }
                        UnitResult::Unchanged => tracing::debug!(template = %unit.label, "unchanged"),
                        UnitResult::Blocked(keys) => {
                            tracing::warn!(template = %unit.label, keys = %keys.join(", "), "keys missing; keeping the last good file");
                        }
                        UnitResult::Failed(error) => {
                            tracing::warn!(template = %unit.label, %error, "re-render failed; keeping the last good file and the workload");
                            failed.insert(*index);
                        }
                    }
                }
                units_slot = Some(done.units);
                if sup.stopping {
                    continue;
                }
                for (target, signal) in signals_to_send {
                    let Ok(signal) = Signal::try_from(signal) else { continue };
                    for index in sup.running().collect::<Vec<_>>() {
                        if target.as_deref().is_none_or(|t| t == sup.procs[index].spec.name) {
                            tracing::info!(process = %sup.procs[index].spec.name, %signal, "signalling after re-render");
                            sup.signal_proc(index, signal);
                        }
                    }
                }
                for target in restarts {
                    let stop_signal = config.signals.stop_signal.0;
                    for index in sup.running().collect::<Vec<_>>() {
                        if target.as_deref().is_none_or(|t| t == sup.procs[index].spec.name) {
                            tracing::info!(process = %sup.procs[index].spec.name, "restarting after re-render");
                            sup.procs[index].restart_requested = true;
                            sup.stop_proc(index, stop_signal);
                        }
                    }
                }
                if !failed.is_empty() {
                    dirty.extend(failed);
                    let delay = sluice_kv::Backoff { initial: watch.retry_initial.0, max: watch.retry_max.0 }.delay(retry_attempt);
                    retry_attempt = retry_attempt.saturating_add(1);
                    reload_at = Some(reload_at.map_or(now() + delay, |at| at.min(now() + delay)));
                } else {
                    retry_attempt = 0;
                    if !dirty.is_empty() && reload_at.is_none() {
                        // Changes coalesced while this reload ran.
                        let start = *window_start.get_or_insert_with(now);
                        reload_at = Some(quiescence(start, last_change));
                    }
                }
            }
            Some(event) = probe_events.recv() => match event {
                ProbeEvent::Ready(result) => {
                    if result.passed && !sup.ready {
                        tracing::info!(detail = %result.detail, "readiness check passed");
                        sup.ready = true;
                        sup.update_registration();
                    } else if !result.passed {
                        tracing::debug!(detail = %result.detail, "readiness check not passing yet");
                    }
                }
                ProbeEvent::Role(result) => {
                    if sup.role != Some(result.passed) {
                        tracing::info!(passed = result.passed, detail = %result.detail, "role probe changed");
                        sup.role = Some(result.passed);
                        sup.update_registration();
                    }
                }
            },
            _ = tokio::time::sleep_until(next_timer.unwrap_or_else(now)), if next_timer.is_some() => {
                let current = now();
                for index in 0..sup.procs.len() {
                    if sup.procs[index].kill_at.is_some_and(|at| at <= current) && sup.procs[index].pid.is_some() {
                        tracing::warn!(process = %sup.procs[index].spec.name, grace = ?config.signals.stop_grace.0, "did not stop within the grace period; sending SIGKILL");
                        sup.procs[index].kill_at = None;
                        sup.signal_proc(index, Signal::SIGKILL);
                    }
                    if sup.procs[index].restart_at.is_some_and(|at| at <= current) {
                        sup.procs[index].restart_at = None;
                        if let Err(error) = sup.spawn_proc(index) {
                            tracing::error!(process = %sup.procs[index].spec.name, %error, "restart failed");
                            sup.procs[index].restart_at = Some(now() + sup.restart_max);
                        }
                    }
                }
            }
        }
    }

    // ── Exit ──────────────────────────────────────────────────────────────────────────────
    if let (Some(registrar), Some(register)) = (&sup.registrar, &config.register)
        && sup.registered.take().is_some()
    {
        registrar.deregister(register.deregister_timeout.0).await;
    }
    stop_leftovers(config.signals.stop_grace.0).await;
    let status = sup.procs[sup.primary].last_status;
    let code = status.map_or(exit_code::CANNOT_EXECUTE, ExitStatus::code);
    tracing::info!(code, "exiting");
    code
}
