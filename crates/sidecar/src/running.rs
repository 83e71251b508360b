//! The `Running` state of the lifecycle (`lifecycle.rs`): the workload runs; signals, process
//! exits, KV changes, finished reloads, probe results and timers each have a handler, and the
//! state ends when no process runs and none is due to restart (then `Exiting`).

use std::collections::BTreeSet;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{Config, ExitPolicy, OnChange, WatchConfig};
use crate::kvlayers::{KvNotice, LayerStatus};
use crate::lifecycle::Ctx;
use crate::signals::SignalEvent;
use crate::supervisor::{ProbeEvent, ProcExit, ReloadDone, Supervisor, UnitResult, now, reload};
use crate::template::TemplateUnit;

/// What the `Running` state owns besides the supervisor: the event sources and the reload
/// schedule.
pub(crate) struct Running {
    sup: Supervisor,
    watch: WatchConfig,
    notices: mpsc::UnboundedReceiver<KvNotice>,
    exits: mpsc::UnboundedReceiver<ProcExit>,
    probe_events: mpsc::UnboundedReceiver<ProbeEvent>,
    /// The templates; `None` while a reload has them.
    units: Option<Vec<TemplateUnit>>,
    /// Templates to render at the next reload.
    dirty: BTreeSet<usize>,
    /// When the first change of the coming reload came (quiescence's `max`).
    window_start: Option<Instant>,
    /// When the latest change came (quiescence's `min`).
    last_change: Instant,
    reload_at: Option<Instant>,
    /// Failed reloads in a row (the retry backoff).
    retry_attempt: u32,
    reload_tx: mpsc::UnboundedSender<ReloadDone>,
    reload_done: mpsc::UnboundedReceiver<ReloadDone>,
}

impl Running {
    pub(crate) fn new(
        config: &Config,
        sup: Supervisor,
        notices: mpsc::UnboundedReceiver<KvNotice>,
        exits: mpsc::UnboundedReceiver<ProcExit>,
        probe_events: mpsc::UnboundedReceiver<ProbeEvent>,
        units: Vec<TemplateUnit>,
    ) -> Self {
        let (reload_tx, reload_done) = mpsc::unbounded_channel();
        Self {
            sup,
            watch: config.watch.clone(),
            notices,
            exits,
            probe_events,
            units: Some(units),
            dirty: BTreeSet::new(),
            window_start: None,
            last_change: now(),
            reload_at: None,
            retry_attempt: 0,
            reload_tx,
            reload_done,
        }
    }

    /// Runs until no process runs and none is due to restart; returns the supervisor.
    pub(crate) async fn run(mut self, ctx: &mut Ctx) -> Supervisor {
        loop {
            let any_running = self.sup.running().next().is_some();
            let any_restart = self.sup.procs.iter().any(|p| p.restart_at.is_some());
            if !any_running && !any_restart {
                return self.sup;
            }
            let next_timer = self
                .sup
                .procs
                .iter()
                .flat_map(|p| [p.kill_at, p.restart_at])
                .flatten()
                .min();
            let reload_due = self.reload_at.filter(|_| self.units.is_some());
            tokio::select! {
                Some(event) = ctx.signals.recv() => self.on_signal(&ctx.config, &ctx.stop_on, event).await,
                Some(exit) = self.exits.recv() => self.on_exit(&ctx.config, exit).await,
                Some(notice) = self.notices.recv() => self.on_notice(&ctx.config, notice),
                _ = tokio::time::sleep_until(reload_due.unwrap_or_else(now)), if reload_due.is_some() => self.start_reload(),
                Some(done) = self.reload_done.recv() => self.on_reload_done(&ctx.config, done),
                Some(event) = self.probe_events.recv() => self.on_probe(event),
                _ = tokio::time::sleep_until(next_timer.unwrap_or_else(now)), if next_timer.is_some() => self.on_timers(&ctx.config),
            }
        }
    }

    /// A stop signal begins the stop; any other is rewritten and forwarded.
    async fn on_signal(&mut self, config: &Config, stop_on: &[Signal], event: SignalEvent) {
        match event {
            SignalEvent::Received(signal) => {
                if stop_on.contains(&signal) && !self.sup.stopping {
                    let send = self
                        .sup
                        .rewrite(signal)
                        .unwrap_or(config.signals.stop_signal.0);
                    self.sup
                        .begin_stop(&format!("received {signal}"), send)
                        .await;
                } else if let Some(send) = self.sup.rewrite(signal) {
                    tracing::debug!(received = %signal, forwarded = %send, "forwarding signal");
                    for index in self.sup.running().collect::<Vec<_>>() {
                        self.sup.signal_proc(index, send);
                    }
                }
            }
            SignalEvent::Reaped(reaped) => {
                for r in reaped.iter().filter(|r| !r.claimed) {
                    tracing::debug!(pid = r.pid.as_raw(), status = %r.status, "reaped orphaned process");
                }
            }
        }
    }

    /// A process exited: a requested restart, or its `on_exit` policy.
    async fn on_exit(&mut self, config: &Config, exit: ProcExit) {
        let proc = &mut self.sup.procs[exit.index];
        if proc.generation != exit.generation {
            return;
        }
        proc.pid = None;
        proc.kill_at = None;
        proc.last_status = Some(exit.status);
        let name = proc.spec.name.clone();
        tracing::info!(process = %name, status = %exit.status, "exited");
        if proc.restart_requested && !self.sup.stopping {
            if let Err(error) = self.sup.spawn_proc(exit.index) {
                tracing::error!(process = %name, %error, "restart failed");
            }
            return;
        }
        if self.sup.stopping {
            return;
        }
        match proc.spec.on_exit {
            ExitPolicy::StopAll => {
                let signal = config.signals.stop_signal.0;
                self.sup
                    .begin_stop(&format!("{name} exited ({})", exit.status), signal)
                    .await;
            }
            ExitPolicy::Restart => {
                if proc.started.elapsed() > self.sup.restart_max.max(Duration::from_secs(10)) {
                    proc.restart_attempts = 0;
                }
                let delay = sluice_kv::Backoff {
                    initial: self.sup.restart_initial,
                    max: self.sup.restart_max,
                }
                .delay(proc.restart_attempts);
                proc.restart_attempts = proc.restart_attempts.saturating_add(1);
                proc.restart_at = Some(now() + delay);
                tracing::info!(process = %name, ?delay, "restarting after backoff");
            }
            ExitPolicy::Ignore => {}
        }
    }

    /// A KV layer changed (or its status did): the templates it touches are re-rendered after
    /// quiescence.
    fn on_notice(&mut self, config: &Config, notice: KvNotice) {
        match &notice.status {
            Some(LayerStatus::Unavailable(error)) => {
                tracing::warn!(source = %self.sup.kv.describe(notice.layer), %error, "KV source unavailable; workload and files stay as they are")
            }
            Some(LayerStatus::Restored) => {
                tracing::info!(source = %self.sup.kv.describe(notice.layer), "KV source available again")
            }
            _ => {}
        }
        if notice.changed.is_empty() || self.sup.stopping {
            return;
        }
        let touched: Vec<usize> = match &self.units {
            Some(units) => units
                .iter()
                .filter(|u| u.deps.touched_by(notice.layer, &notice.changed))
                .map(|u| u.index)
                .collect(),
            // A reload is running: its units are away; re-check them all when it is back.
            None => (0..config.template.len()).collect(),
        };
        if touched.is_empty() {
            return;
        }
        tracing::debug!(keys = ?notice.changed, templates = ?touched, "change");
        self.dirty.extend(touched);
        let start = *self.window_start.get_or_insert_with(now);
        self.last_change = now();
        self.reload_at = Some(self.quiescence(start));
    }

    /// When the reload of changes that began at `window_start` is due: `min` after the last
    /// change, `max` after the first at the latest, plus the splay.
    fn quiescence(&self, window_start: Instant) -> Instant {
        let splay = if self.watch.splay.0.is_zero() {
            Duration::ZERO
        } else {
            self.watch.splay.0.mul_f64(fastrand::f64())
        };
        (self.last_change + self.watch.min.0).min(window_start + self.watch.max.0) + splay
    }

    /// Hands the dirty templates to a reload task (one at a time).
    fn start_reload(&mut self) {
        self.reload_at = None;
        self.window_start = None;
        let which = std::mem::take(&mut self.dirty);
        let Some(units) = self.units.take() else {
            return;
        };
        let reaper = self.sup.reaper.clone();
        let done = self.reload_tx.clone();
        tokio::spawn(async move {
            let _ = done.send(reload(units, which, reaper).await);
        });
    }

    /// A reload finished: log each template, act on the changed ones, retry the failed ones.
    fn on_reload_done(&mut self, config: &Config, done: ReloadDone) {
        let mut failed = BTreeSet::new();
        let mut signals_to_send: BTreeSet<(Option<String>, i32)> = BTreeSet::new();
        let mut restarts: BTreeSet<Option<String>> = BTreeSet::new();
        for (index, result) in &done.results {
            let unit = &done.units[*index];
            match result {
                UnitResult::Changed => {
                    tracing::info!(template = %unit.label, destination = %unit.write.destination.display(), "re-rendered");
                    match unit.config.action() {
                        OnChange::Signal => {
                            if let Some(signal) = unit.config.signal {
                                signals_to_send
                                    .insert((unit.config.target.clone(), signal.0 as i32));
                            }
                        }
                        OnChange::Restart => {
                            restarts.insert(unit.config.target.clone());
                        }
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
        self.units = Some(done.units);
        if self.sup.stopping {
            return;
        }
        self.signal_targets(signals_to_send);
        self.restart_targets(config, restarts);
        self.schedule_after_reload(failed);
    }

    fn signal_targets(&self, signals: BTreeSet<(Option<String>, i32)>) {
        for (target, signal) in signals {
            let Ok(signal) = Signal::try_from(signal) else {
                continue;
            };
            for index in self.sup.running().collect::<Vec<_>>() {
                if target
                    .as_deref()
                    .is_none_or(|t| t == self.sup.procs[index].spec.name)
                {
                    tracing::info!(process = %self.sup.procs[index].spec.name, %signal, "signalling after re-render");
                    self.sup.signal_proc(index, signal);
                }
            }
        }
    }

    fn restart_targets(&mut self, config: &Config, restarts: BTreeSet<Option<String>>) {
        for target in restarts {
            let stop_signal = config.signals.stop_signal.0;
            for index in self.sup.running().collect::<Vec<_>>() {
                if target
                    .as_deref()
                    .is_none_or(|t| t == self.sup.procs[index].spec.name)
                {
                    tracing::info!(process = %self.sup.procs[index].spec.name, "restarting after re-render");
                    self.sup.procs[index].restart_requested = true;
                    self.sup.stop_proc(index, stop_signal);
                }
            }
        }
    }

    /// Failed templates are retried with backoff; changes that came during the reload get
    /// their own.
    fn schedule_after_reload(&mut self, failed: BTreeSet<usize>) {
        if !failed.is_empty() {
            self.dirty.extend(failed);
            let delay = sluice_kv::Backoff {
                initial: self.watch.retry_initial.0,
                max: self.watch.retry_max.0,
            }
            .delay(self.retry_attempt);
            self.retry_attempt = self.retry_attempt.saturating_add(1);
            self.reload_at = Some(
                self.reload_at
                    .map_or(now() + delay, |at| at.min(now() + delay)),
            );
        } else {
            self.retry_attempt = 0;
            if !self.dirty.is_empty() && self.reload_at.is_none() {
                // Changes coalesced while this reload ran.
                let start = *self.window_start.get_or_insert_with(now);
                self.reload_at = Some(self.quiescence(start));
            }
        }
    }

    /// The readiness check gates registration; the role probe picks the registered name.
    fn on_probe(&mut self, event: ProbeEvent) {
        match event {
            ProbeEvent::Ready(result) => {
                if result.passed && !self.sup.ready {
                    tracing::info!(detail = %result.detail, "readiness check passed");
                    self.sup.ready = true;
                    self.sup.update_registration();
                } else if !result.passed {
                    tracing::debug!(detail = %result.detail, "readiness check not passing yet");
                }
            }
            ProbeEvent::Role(result) => {
                if self.sup.role != Some(result.passed) {
                    tracing::info!(passed = result.passed, detail = %result.detail, "role probe changed");
                    self.sup.role = Some(result.passed);
                    self.sup.update_registration();
                }
            }
        }
    }

    /// SIGKILL for processes past their grace period; restarts that are due.
    fn on_timers(&mut self, config: &Config) {
        let current = now();
        let sup = &mut self.sup;
        for index in 0..sup.procs.len() {
            if sup.procs[index].kill_at.is_some_and(|at| at <= current)
                && sup.procs[index].pid.is_some()
            {
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
