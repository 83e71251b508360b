//! The sidecar's lifecycle as explicit states, one function per state (the whole story, with
//! every transition, is LIFECYCLE in `docs/sidecar.md`):
//!
//! ```text
//! Connecting ──every KV layer synced──▶ FirstRender ──every template written──▶ Launch
//!     │ kv_deadline / stop signal          │ failure, keys missing / stop signal   │
//!     ▼                                    ▼                                       ▼
//!   Done(1 | 128+signal)                 Done(1 | 2 | 128+signal)    Running ──all exited──▶ Exiting ──▶ Done(code)
//! ```
//!
//! | state | function | leaves with |
//! |---|---|---|
//! | [`Phase::Connecting`] | [`connecting`] | the KV layers and their notices, or an exit code |
//! | [`Phase::FirstRender`] | [`first_render`] | the rendered templates, or an exit code |
//! | [`Phase::Launch`] | [`launch`] | the started processes and probes ([`Running`]) |
//! | [`Phase::Running`] | [`Running::run`] (`running.rs`) | every process exited: the supervisor |
//! | [`Phase::Exiting`] | [`exiting`] | the primary process's code |
//!
//! A new state is a variant here, its function, and a row in the table and in
//! `docs/sidecar.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use nix::sys::signal::Signal;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::kvlayers::{KvLayers, KvNotice};
use crate::probe::Probe;
use crate::reaper::{ExitStatus, Reaper};
use crate::registrar::Registrar;
use crate::running::Running;
use crate::signals::SignalEvent;
use crate::supervisor::{Launch, Supervisor, exit_code, now, probe_loop, stop_leftovers};
use crate::template::{Rendered, TemplateUnit};
use crate::write::write_atomically;

/// Where the sidecar is in its life, with what that state owns.
/// The workload to launch travels with the states before `Launch`.
enum Phase {
    Connecting(Launch),
    FirstRender(Connected, Launch),
    Launch(Connected, Vec<TemplateUnit>, Launch),
    Running(Box<Running>),
    Exiting(Box<Supervisor>),
    Done(i32),
}

/// What every state reads: the configuration, the reaper, and the signals.
pub(crate) struct Ctx {
    pub(crate) config: Arc<Config>,
    pub(crate) reaper: Reaper,
    pub(crate) signals: mpsc::UnboundedReceiver<SignalEvent>,
    /// Signals that stop the sidecar (`signals.stop_on`).
    pub(crate) stop_on: Vec<Signal>,
}

impl Ctx {
    /// A stop signal received before anything was started: the exit code to leave with.
    fn stopped_before_start(&self, event: SignalEvent) -> Option<i32> {
        match event {
            SignalEvent::Received(signal) if self.stop_on.contains(&signal) => {
                tracing::info!(%signal, "stopped before start");
                Some(128 + signal as i32)
            }
            _ => None,
        }
    }
}

/// The KV layers, watched, and the notices of their changes.
pub(crate) struct Connected {
    pub(crate) kv: Arc<KvLayers>,
    pub(crate) notices: mpsc::UnboundedReceiver<KvNotice>,
}

/// Runs the whole lifecycle and returns the process exit code.
pub async fn run(
    config: Config,
    launch_with: Launch,
    reaper: Reaper,
    signals: mpsc::UnboundedReceiver<SignalEvent>,
) -> i32 {
    let config = Arc::new(config);
    let stop_on = config.signals.stop_on.iter().map(|s| s.0).collect();
    let mut ctx = Ctx {
        config,
        reaper,
        signals,
        stop_on,
    };
    let mut phase = Phase::Connecting(launch_with);
    loop {
        phase = match phase {
            Phase::Connecting(with) => connecting(&mut ctx, with).await,
            Phase::FirstRender(connected, with) => first_render(&mut ctx, connected, with).await,
            Phase::Launch(connected, units, with) => launch(&mut ctx, connected, units, with).await,
            Phase::Running(running) => Phase::Exiting(Box::new(running.run(&mut ctx).await)),
            Phase::Exiting(sup) => Phase::Done(exiting(&ctx, *sup).await),
            Phase::Done(code) => return code,
        };
    }
}

/// Starts the KV watches and waits for each layer's first snapshot, until `kv_deadline`.
async fn connecting(ctx: &mut Ctx, with: Launch) -> Phase {
    let config = Arc::clone(&ctx.config);
    let kv = match KvLayers::from_config(&config) {
        Ok(kv) => Arc::new(kv),
        Err(error) => {
            tracing::error!(%error, "invalid KV configuration");
            return Phase::Done(exit_code::BAD_CONFIG);
        }
    };
    let (notices_tx, mut notices) = mpsc::unbounded_channel::<KvNotice>();
    kv.start(notices_tx);
    let deadline = now() + config.startup.kv_deadline.0;
    let mut next_log = now() + config.startup.block_log_interval.0;
    while !kv.unsynced().is_empty() {
        tokio::select! {
            Some(_) = notices.recv() => {}
            Some(event) = ctx.signals.recv() => {
                if let Some(code) = ctx.stopped_before_start(event) {
                    return Phase::Done(code);
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
                return Phase::Done(exit_code::STARTUP_FAILED);
            }
        }
    }
    Phase::FirstRender(Connected { kv, notices }, with)
}

/// The templates still to be written at the first render, and the keys each waits for.
struct FirstRender {
    units: Vec<TemplateUnit>,
    started: tokio::time::Instant,
    pending: BTreeSet<usize>,
    blocked: BTreeMap<usize, Vec<String>>,
    /// The process's variables, as bytes (one that is not UTF-8 must not stop the start).
    env: crate::envsubst::EnvVars,
}

impl FirstRender {
    /// Renders and writes every pending template; `Err` with the exit code on a failure.
    async fn pass(&mut self, reaper: &Reaper) -> Result<(), i32> {
        for unit in self.units.iter_mut() {
            if !self.pending.contains(&unit.index) {
                continue;
            }
            match unit.render(&mut self.env) {
                Rendered::Ready(bytes) => match write_atomically(&unit.write, &bytes, reaper).await
                {
                    Ok(outcome) => {
                        tracing::info!(template = %unit.label, destination = %unit.write.destination.display(), ?outcome, "rendered");
                        self.pending.remove(&unit.index);
                        self.blocked.remove(&unit.index);
                    }
                    Err(error) => {
                        eprintln!("sluice-sidecar: {error}");
                        return Err(exit_code::STARTUP_FAILED);
                    }
                },
                Rendered::Blocked(keys) => {
                    self.blocked.insert(unit.index, keys);
                }
                Rendered::Failed(message) => {
                    eprintln!("sluice-sidecar: first render failed: {message}");
                    return Err(exit_code::STARTUP_FAILED);
                }
            }
        }
        Ok(())
    }

    /// The pending templates whose `missing_timeout` has passed, reported; `true` if any.
    fn expired(&self) -> bool {
        let expired: Vec<&TemplateUnit> = self
            .pending_units()
            .filter(|u| now() >= self.started + u.config.missing_timeout.0)
            .collect();
        for unit in &expired {
            let keys = self.blocked.get(&unit.index).cloned().unwrap_or_default();
            eprintln!(
                "sluice-sidecar: {}: still missing after {:?}: {}",
                unit.label,
                unit.config.missing_timeout.0,
                keys.join(", ")
            );
        }
        !expired.is_empty()
    }

    fn pending_units(&self) -> impl Iterator<Item = &TemplateUnit> {
        self.units
            .iter()
            .filter(|u| self.pending.contains(&u.index))
    }

    fn log_blocked(&self) {
        for (index, keys) in &self.blocked {
            let label = self
                .units
                .iter()
                .find(|u| u.index == *index)
                .map(|u| u.label.clone())
                .unwrap_or_default();
            tracing::warn!(template = %label, keys = %keys.join(", "), waited = ?now().duration_since(self.started), "still waiting for keys");
        }
    }
}

/// Writes every template once; waits (up to each one's `missing_timeout`) for missing keys.
async fn first_render(ctx: &mut Ctx, mut connected: Connected, with: Launch) -> Phase {
    let config = Arc::clone(&ctx.config);
    let units = match TemplateUnit::load_all(&config, &connected.kv) {
        Ok(units) => units,
        Err(error) => {
            for error in &error.errors {
                eprintln!("sluice-sidecar: {error}");
            }
            return Phase::Done(exit_code::BAD_CONFIG);
        }
    };
    let mut state = FirstRender {
        pending: units.iter().map(|u| u.index).collect(),
        units,
        started: now(),
        blocked: BTreeMap::new(),
        env: crate::envsubst::process_env(),
    };
    let mut next_log = now() + config.startup.block_log_interval.0;
    loop {
        if let Err(code) = state.pass(&ctx.reaper).await {
            return Phase::Done(code);
        }
        if state.pending.is_empty() {
            return Phase::Launch(connected, state.units, with);
        }
        if state.expired() {
            return Phase::Done(exit_code::STARTUP_FAILED);
        }
        let earliest = state
            .pending_units()
            .map(|u| state.started + u.config.missing_timeout.0)
            .min()
            .unwrap_or_else(now);
        // Waits for a change, a signal, the log interval or a deadline; then renders again.
        tokio::select! {
            Some(_) = connected.notices.recv() => {}
            Some(event) = ctx.signals.recv() => {
                if let Some(code) = ctx.stopped_before_start(event) {
                    return Phase::Done(code);
                }
            }
            _ = tokio::time::sleep_until(next_log) => {
                state.log_blocked();
                next_log = now() + config.startup.block_log_interval.0;
            }
            _ = tokio::time::sleep_until(earliest) => {}
        }
    }
}

/// Starts the processes, the registrar and the probes: the supervisor that runs them.
async fn launch(
    ctx: &mut Ctx,
    connected: Connected,
    units: Vec<TemplateUnit>,
    with: Launch,
) -> Phase {
    if with.processes.is_empty() {
        tracing::info!("templates rendered; no workload configured");
        return Phase::Done(0);
    }
    let config = Arc::clone(&ctx.config);
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
            return Phase::Done(exit_code::BAD_CONFIG);
        }
    };
    let registrar = match &config.registry {
        Some(registry) if config.register.is_some() => match Registrar::start(
            registry,
            registry.dir.as_deref().map(|d| config.resolve(d)),
            ctx.reaper.clone(),
        ) {
            Ok(registrar) => Some(registrar),
            Err(error) => {
                eprintln!("sluice-sidecar: registry: {error}");
                return Phase::Done(exit_code::BAD_CONFIG);
            }
        },
        _ => None,
    };
    let (exits_tx, exits) = mpsc::unbounded_channel();
    let mut sup = Supervisor::new(
        &config,
        &ctx.reaper,
        &connected.kv,
        with,
        exits_tx,
        registrar,
        check.clone(),
    );
    sup.spawn_all().await;
    let (probe_tx, probe_events) = mpsc::unbounded_channel();
    if !sup.stopping
        && let Some(register) = &config.register
    {
        if let (Some(probe), Some(check_config)) = (check, &register.check) {
            tokio::spawn(probe_loop(
                probe,
                check_config
                    .interval
                    .0
                    .min(std::time::Duration::from_secs(1)),
                check_config.timeout.0,
                ctx.reaper.clone(),
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
                        ctx.reaper.clone(),
                        probe_tx.clone(),
                        false,
                    ));
                }
                Err(error) => {
                    eprintln!("sluice-sidecar: register.role: {error}");
                    return Phase::Done(exit_code::BAD_CONFIG);
                }
            }
        }
        sup.update_registration();
    }
    Phase::Running(Box::new(Running::new(
        &config,
        sup,
        connected.notices,
        exits,
        probe_events,
        units,
    )))
}

/// Deregisters if still registered, stops leftover children, and picks the exit code.
async fn exiting(ctx: &Ctx, mut sup: Supervisor) -> i32 {
    if let (Some(registrar), Some(register)) = (&sup.registrar, &ctx.config.register)
        && sup.registered.take().is_some()
    {
        registrar.deregister(register.deregister_timeout.0).await;
    }
    stop_leftovers(ctx.config.signals.stop_grace.0).await;
    let status = sup.procs[sup.primary].last_status;
    let code = status.map_or(exit_code::CANNOT_EXECUTE, ExitStatus::code);
    tracing::info!(code, "exiting");
    code
}
