//! Services and their instances: the runtime state balancing, passive health and retries read
//! and update on every request — all atomics, no locks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed,
};

use arc_swap::ArcSwap;
use sluice_config::{OnDemotion, Serve, ServiceConfig, UpstreamProtocol};
use sluice_health::{Claim, InstanceHealth, OutlierState, PrimaryChoice};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::balance::{Balancer, Load};
use crate::error::{ProxyError, ProxyErrorKind};
use crate::h2_up::H2Pool;
use crate::metrics::ServiceMetrics;
use crate::pool::Pool;

/// One upstream instance's live state. It outlives configuration reloads as long as its
/// service keeps an instance at the same address, so pooled connections, ejections and load
/// figures survive a reload.
#[derive(Debug)]
pub struct Instance {
    /// Where it listens.
    pub addr: SocketAddr,
    pub(crate) label: Arc<str>,
    /// `IP:PORT` as a `Host` value, made once for routes with `upstream_host = "dst"`.
    pub(crate) host_header: http::HeaderValue,
    outstanding: AtomicU32,
    ewma: Ewma,
    pub(crate) outlier: OutlierState,
    /// Active health; written by this instance's probe task.
    pub(crate) health: InstanceHealth,
    pub(crate) pool: Arc<Pool>,
    /// HTTP/2 connections, for services that speak it (`protocol`, fixed for the instance's
    /// life: a reload that changes it makes a new instance).
    pub(crate) h2: H2Pool,
    protocol: UpstreamProtocol,
    requests: AtomicU64,
    failures: AtomicU64,
    /// Cancelled (and replaced) to close every open TCP session to this instance.
    sessions: ArcSwap<CancellationToken>,
}

impl Instance {
    pub(crate) fn new(addr: SocketAddr, pool_capacity: usize, protocol: UpstreamProtocol) -> Self {
        Self {
            addr,
            label: addr.to_string().into(),
            host_header: http::HeaderValue::from_str(&addr.to_string())
                .unwrap_or(http::HeaderValue::from_static("localhost")),
            outstanding: AtomicU32::new(0),
            ewma: Ewma::default(),
            outlier: OutlierState::default(),
            health: InstanceHealth::default(),
            pool: Arc::new(Pool::new(pool_capacity)),
            h2: H2Pool::default(),
            protocol,
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            sessions: ArcSwap::from_pointee(CancellationToken::new()),
        }
    }

    /// Active health state.
    pub fn health(&self) -> &InstanceHealth {
        &self.health
    }

    /// A token cancelled when this instance's TCP sessions must close (demotion).
    pub(crate) fn session_token(&self) -> CancellationToken {
        self.sessions.load().child_token()
    }

    /// Closes every open TCP session to this instance; later sessions are unaffected.
    pub(crate) fn close_sessions(&self) {
        self.sessions
            .swap(Arc::new(CancellationToken::new()))
            .cancel();
    }

    /// Requests in flight to this instance.
    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Relaxed)
    }

    /// Peak-EWMA latency to the response head, in milliseconds (0 before the first response).
    pub fn ewma_ms(&self) -> f64 {
        self.ewma.get() / 1e6
    }

    /// Attempts sent to this instance.
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    /// Attempts that failed (connect errors, resets, timeouts, 5xx).
    pub fn failures(&self) -> u64 {
        self.failures.load(Relaxed)
    }

    /// Passive health state.
    pub fn outlier(&self) -> &OutlierState {
        &self.outlier
    }

    /// Idle pooled connections.
    pub fn idle_connections(&self) -> usize {
        self.pool.idle_len()
    }

    pub(crate) fn observe_latency(&self, nanos: f64, now_ms: u64) {
        self.ewma.observe(nanos, now_ms);
    }
}

impl Load for Arc<Instance> {
    fn outstanding(&self) -> u32 {
        self.outstanding.load(Relaxed)
    }
    fn ewma_ns(&self) -> f64 {
        self.ewma.get()
    }
}

/// Counts a request in flight on an instance for as long as it lives.
#[derive(Debug)]
pub(crate) struct InFlight {
    pub(crate) instance: Arc<Instance>,
}

impl InFlight {
    pub(crate) fn new(instance: Arc<Instance>) -> Self {
        instance.outstanding.fetch_add(1, Relaxed);
        instance.requests.fetch_add(1, Relaxed);
        Self { instance }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.instance.outstanding.fetch_sub(1, Relaxed);
    }
}

/// Peak-sensitive exponentially weighted moving average of latency: a slower sample replaces the
/// average at once, faster ones pull it down with a 10 s time constant.
#[derive(Debug, Default)]
struct Ewma {
    nanos_bits: AtomicU64,
    stamp_ms: AtomicU64,
}

impl Ewma {
    const DECAY_MS: f64 = 10_000.0;

    fn get(&self) -> f64 {
        f64::from_bits(self.nanos_bits.load(Relaxed))
    }

    fn observe(&self, sample: f64, now_ms: u64) {
        let prev = self.get();
        let last = self.stamp_ms.swap(now_ms, Relaxed);
        let next = if prev == 0.0 || sample > prev {
            sample
        } else {
            let w = (-(now_ms.saturating_sub(last) as f64) / Self::DECAY_MS).exp();
            prev * w + sample * (1.0 - w)
        };
        // Concurrent observers may overwrite each other: the average is a hint, not a ledger.
        self.nanos_bits.store(next.to_bits(), Relaxed);
    }
}

/// The retry budget: each request deposits `ratio` of a retry, each retry withdraws one, so
/// retries stay near `ratio` of traffic however bad an outage gets; `min_per_sec` retries a
/// second are always allowed so a quiet service can still retry.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    deposit_milli: i64,
    cap_milli: i64,
    balance_milli: AtomicI64,
    min_per_sec: u32,
    window_sec: AtomicU64,
    used_in_window: AtomicU32,
}

impl RetryBudget {
    pub(crate) fn new(ratio: f64, min_per_sec: u32) -> Self {
        let deposit_milli = (ratio * 1000.0).round() as i64;
        Self {
            deposit_milli,
            // Remember about the last thousand requests' worth of deposits.
            cap_milli: deposit_milli * 1000,
            balance_milli: AtomicI64::new(0),
            min_per_sec,
            window_sec: AtomicU64::new(0),
            used_in_window: AtomicU32::new(0),
        }
    }

    pub(crate) fn deposit(&self) {
        if self.deposit_milli == 0 || self.balance_milli.load(Relaxed) >= self.cap_milli {
            return;
        }
        let _ = self.balance_milli.fetch_update(Relaxed, Relaxed, |b| {
            (b < self.cap_milli).then_some((b + self.deposit_milli).min(self.cap_milli))
        });
    }

    pub(crate) fn try_withdraw(&self, now_ms: u64) -> bool {
        let sec = now_ms / 1000;
        if self.window_sec.load(Relaxed) != sec {
            self.window_sec.store(sec, Relaxed);
            self.used_in_window.store(0, Relaxed);
        }
        if self
            .used_in_window
            .fetch_update(Relaxed, Relaxed, |u| {
                (u < self.min_per_sec).then_some(u + 1)
            })
            .is_ok()
        {
            return true;
        }
        self.balance_milli
            .fetch_update(Relaxed, Relaxed, |b| (b >= 1000).then_some(b - 1000))
            .is_ok()
    }
}

/// The instances one request has already tried (at most `attempts + 1`, at most 11).
#[derive(Debug, Default)]
pub(crate) struct Tried {
    idx: [u32; 12],
    len: usize,
}

impl Tried {
    pub(crate) fn contains(&self, i: usize) -> bool {
        self.idx[..self.len].contains(&(i as u32))
    }
    pub(crate) fn len(&self) -> usize {
        self.len
    }
    /// Forgets every instance tried (a new primary may be one that failed earlier).
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }
    pub(crate) fn push(&mut self, i: usize) {
        if self.len < self.idx.len() {
            self.idx[self.len] = i as u32;
            self.len += 1;
        }
    }
}

/// State of a service that outlives configuration reloads (kept per service name): the probe
/// tasks' wake-up call and the primary's generation, which requests in failover wait on.
#[derive(Debug)]
pub(crate) struct ServiceShared {
    /// Wakes every probe task of the service for an immediate round.
    pub(crate) kick: Notify,
    last_kick_ms: AtomicU64,
    /// Bumped whenever the primary changes.
    pub(crate) primary_generation: watch::Sender<u64>,
    /// Bumped after every verdict of the service's probes (what requests waiting for a
    /// primary wake on).
    pub(crate) verdicts: watch::Sender<u64>,
    /// Set while several members claim primary.
    split_brain: AtomicBool,
    /// Clock reading when the service last lost its primary (or was created without one):
    /// the start of the failover window.
    pub(crate) no_primary_since_ms: AtomicU64,
    /// When the current (or last) primary's latest confirming probe was sent: it was alive as
    /// primary then, so it was lost after that.
    pub(crate) primary_seen_ms: AtomicU64,
    /// Requests released to a new primary by a failover hold a permit until it answered
    /// their head (see `failover.rs`).
    pub(crate) release: Arc<tokio::sync::Semaphore>,
}

impl Default for ServiceShared {
    fn default() -> Self {
        Self {
            kick: Notify::new(),
            last_kick_ms: AtomicU64::new(0),
            primary_generation: watch::Sender::new(0),
            verdicts: watch::Sender::new(0),
            split_brain: AtomicBool::new(false),
            no_primary_since_ms: AtomicU64::new(sluice_health::clock::now_ms()),
            primary_seen_ms: AtomicU64::new(0),
            release: Arc::new(tokio::sync::Semaphore::new(RELEASE_CONCURRENCY)),
        }
    }
}

/// Requests released by a failover that may be on their way to the new primary at once
/// (failover.rs): enough to keep a fast instance busy, few enough for any accept queue.
pub(crate) const RELEASE_CONCURRENCY: usize = 32;

/// Kicks closer together than this are merged: one probe round answers them all.
const KICK_INTERVAL_MS: u64 = 100;

/// A service: its instances, how to pick one, and how to treat failures.
#[derive(Debug)]
pub struct Service {
    /// Name from the configuration.
    pub name: Arc<str>,
    pub(crate) instances: Box<[Arc<Instance>]>,
    pub(crate) weights: Box<[u32]>,
    pub(crate) balancer: Balancer,
    /// The validated configuration this service was built from.
    pub config: ServiceConfig,
    pub(crate) retry_budget: RetryBudget,
    pub(crate) metrics: ServiceMetrics,
    pub(crate) shared: Arc<ServiceShared>,
    /// Index + 1 of the instance serving as primary (`serve = "primary"`); 0 = none.
    primary: AtomicUsize,
    /// `[service.tls]`, loaded (set by the proxy after construction).
    pub(crate) tls: Option<sluice_tls::ClientTls>,
    /// `[service.concurrency]`'s gate, kept across reloads that leave the limit unchanged.
    pub(crate) admission: Option<Arc<Admission>>,
}

/// An instance chosen for one attempt.
#[derive(Debug)]
pub(crate) struct Picked {
    pub(crate) index: usize,
    pub(crate) instance: Arc<Instance>,
}

impl Service {
    /// Builds a service, reusing live instance state from `existing` (looked up by address).
    pub(crate) fn new(
        config: ServiceConfig,
        shared: Arc<ServiceShared>,
        existing: impl Fn(SocketAddr) -> Option<Arc<Instance>>,
    ) -> Self {
        let name: Arc<str> = config.name.as_str().into();
        let instances: Box<[Arc<Instance>]> = config
            .instances
            .iter()
            .map(|i| {
                existing(i.address)
                    .filter(|inst| {
                        inst.pool.capacity() == config.pool.max_idle_per_instance.max(1)
                            && inst.protocol == config.protocol
                    })
                    .unwrap_or_else(|| {
                        Arc::new(Instance::new(
                            i.address,
                            config.pool.max_idle_per_instance,
                            config.protocol,
                        ))
                    })
            })
            .collect();
        let weights: Box<[u32]> = config.instances.iter().map(|i| i.weight).collect();
        let identities: Vec<String> = instances.iter().map(|i| i.label.to_string()).collect();
        let balancer = Balancer::new(&config.balancer, &weights, &identities);
        let retry_budget = RetryBudget::new(
            config.retries.budget_ratio,
            config.retries.budget_min_per_sec,
        );
        let metrics = ServiceMetrics::new(&name);
        let service = Self {
            name,
            instances,
            weights,
            balancer,
            config,
            retry_budget,
            metrics,
            shared,
            primary: AtomicUsize::new(0),
            tls: None,
            admission: None,
        };
        // Reused instances bring their verdicts: know the primary before serving.
        service.recompute_primary(sluice_health::clock::now_ms());
        service
    }

    /// Whether instance `i` may take a request now (ignoring passive ejection when
    /// `ignore_ejection`, as panic mode does).
    fn usable(&self, i: usize, now_ms: u64, ignore_ejection: bool) -> bool {
        match self.config.serve {
            Serve::Primary => self.primary.load(Relaxed) == i + 1,
            Serve::Any => {
                let inst = &self.instances[i];
                !inst.health.is_down() && (ignore_ejection || !inst.outlier.is_ejected(now_ms))
            }
        }
    }

    /// The error for a request that finds no instance to pick: in primary mode, no primary.
    pub(crate) fn nothing_to_pick(&self) -> ProxyError {
        match self.config.serve {
            Serve::Primary if !self.instances.is_empty() => ProxyError::new(
                ProxyErrorKind::NoPrimary,
                "no instance of the service reports the primary role",
            ),
            _ => ProxyError::new(
                ProxyErrorKind::NoInstance,
                "the service has no instance to send to",
            ),
        }
    }

    /// The instance serving as primary, if any (`serve = "primary"`).
    pub fn primary(&self) -> Option<&Arc<Instance>> {
        self.primary
            .load(Relaxed)
            .checked_sub(1)
            .and_then(|i| self.instances.get(i))
    }

    /// Re-derives the primary from the instances' latest verdicts (called by probe tasks when a
    /// verdict changes, and when the service is built). Several claimants: the one holding the
    /// role longest wins (see [`sluice_health::choose_primary`]), loudly when their claims
    /// overlap. A demoted primary's sessions and waiting requests are let go when
    /// `on_demotion = "close"`.
    pub(crate) fn recompute_primary(&self, now_ms: u64) {
        let claims: Vec<Claim> = self
            .instances
            .iter()
            .enumerate()
            .filter(|(_, inst)| inst.health.is_primary())
            .map(|(index, inst)| Claim {
                index,
                since_ms: inst.health.role_since_ms(),
                until_ms: inst.health.verdict_at_ms(),
            })
            .collect();
        let choice = sluice_health::choose_primary(&claims);
        self.report_split_brain(choice);
        if let Some(i) = choice.chosen {
            let seen = self.instances[i].health.probe_sent_ms();
            self.shared.primary_seen_ms.store(seen, Relaxed);
        }
        let new = choice.chosen.map_or(0, |i| i + 1);
        let old = self.primary.swap(new, Relaxed);
        if old == new {
            return;
        }
        if new == 0 {
            self.shared.no_primary_since_ms.store(now_ms, Relaxed);
        }
        self.shared.primary_generation.send_modify(|g| *g += 1);
        let label = |v: usize| {
            v.checked_sub(1)
                .map_or("none", |i| &*self.instances[i].label)
        };
        tracing::warn!(service = %self.name, from = label(old), to = label(new), at_ms = now_ms, "primary changed");
        if let Some(demoted) = old.checked_sub(1).and_then(|i| self.instances.get(i))
            && self.config.on_demotion == OnDemotion::Close
        {
            demoted.close_sessions();
        }
    }

    /// Logs and counts the start of a split brain (two members claiming primary at the same
    /// time), and its end.
    fn report_split_brain(&self, choice: PrimaryChoice) {
        if choice.split_brain == self.shared.split_brain.swap(choice.split_brain, Relaxed) {
            return;
        }
        if !choice.split_brain {
            tracing::warn!(service = %self.name, "split brain resolved");
            return;
        }
        self.metrics.split_brain.increment(1);
        let who: Vec<&str> = self
            .instances
            .iter()
            .filter(|i| i.health.is_primary())
            .map(|i| &*i.label)
            .collect();
        tracing::error!(
            service = %self.name,
            claimants = ?who,
            chosen = choice.chosen.map(|i| &*self.instances[i].label),
            "split brain: several instances claim primary; sending to the one that has held the role longest"
        );
    }

    /// Asks every probe task of the service for an immediate round (after a failure on the
    /// data path). Kicks within [`KICK_INTERVAL_MS`] of the last one are merged.
    pub(crate) fn kick(&self, now_ms: u64) {
        if self.config.health.is_none() {
            return;
        }
        let last = self.shared.last_kick_ms.load(Relaxed);
        if now_ms.saturating_sub(last) >= KICK_INTERVAL_MS
            && self
                .shared
                .last_kick_ms
                .compare_exchange(last, now_ms, Relaxed, Relaxed)
                .is_ok()
        {
            self.shared.kick.notify_waiters();
        }
    }

    /// Whether several instances claim the primary role now.
    pub fn split_brain(&self) -> bool {
        self.shared.split_brain.load(Relaxed)
    }

    /// The primary's current generation (to wait on a change from).
    pub(crate) fn primary_generation(&self) -> u64 {
        *self.shared.primary_generation.borrow()
    }

    /// Whether a request that failed on the primary should wait for a failover.
    pub(crate) fn fails_over(&self) -> bool {
        self.config.serve == Serve::Primary && self.config.health.is_some()
    }

    /// The instances, in configuration order.
    pub fn instances(&self) -> &[Arc<Instance>] {
        &self.instances
    }

    /// Picks an instance not yet tried: a healthy one if any, else (panic mode, counted) any
    /// untried one — passive ejection never turns traffic away on its own.
    pub(crate) fn pick(&self, hash: Option<u64>, tried: &Tried, now_ms: u64) -> Option<Picked> {
        let healthy = |i: usize| !tried.contains(i) && self.usable(i, now_ms, false);
        let index = match self
            .balancer
            .pick(&self.instances, &self.weights, hash, healthy)
        {
            Some(i) => i,
            None => {
                // Panic mode: passive ejections are ignored, active verdicts are not.
                let i = self
                    .balancer
                    .pick(&self.instances, &self.weights, hash, |i| {
                        !tried.contains(i) && self.usable(i, now_ms, true)
                    })?;
                if tried.len() == 0 {
                    self.metrics.panic_picks.increment(1);
                }
                i
            }
        };
        Some(Picked {
            index,
            instance: Arc::clone(&self.instances[index]),
        })
    }

    /// Instances ejected right now.
    pub fn ejected_count(&self, now_ms: u64) -> usize {
        self.instances
            .iter()
            .filter(|i| i.outlier.is_ejected(now_ms))
            .count()
    }

    /// The most instances passive health may eject at once: `max_ejected_percent` of them,
    /// rounded down (so a single-instance service is never ejected).
    pub fn max_ejected(&self) -> usize {
        self.instances.len() * usize::from(self.config.outlier.max_ejected_percent) / 100
    }

    pub(crate) fn record_success(&self, instance: &Instance, now_ms: u64) {
        instance
            .outlier
            .record_success(now_ms, &self.config.outlier);
    }

    /// Records a failed attempt; `kind` is `None` for a 5xx answer (not a transport error).
    pub(crate) fn record_failure(
        &self,
        instance: &Instance,
        kind: Option<ProxyErrorKind>,
        now_ms: u64,
    ) {
        instance.failures.fetch_add(1, Relaxed);
        if let Some(kind) = kind {
            self.metrics.upstream_error(kind);
        }
        // `serve = "primary"`: only the primary takes traffic and active health alone decides
        // which member that is. Ejecting it would answer nothing better than its own errors,
        // and a failover's burst of connects must not take the new primary out.
        if self.config.serve == Serve::Primary {
            return;
        }
        let may_eject = || self.ejected_count(now_ms) < self.max_ejected();
        if let Some(ejection) =
            instance
                .outlier
                .record_failure(now_ms, &self.config.outlier, may_eject)
        {
            self.metrics.ejection(&instance.label);
            tracing::warn!(
                service = %self.name,
                instance = %instance.label,
                seconds = ejection.duration.as_secs_f64(),
                nth = ejection.nth,
                last_error = kind.map_or("5xx", ProxyErrorKind::as_str),
                "instance ejected after consecutive failures"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_min_per_sec_then_ratio() {
        let b = RetryBudget::new(0.5, 2);
        assert!(b.try_withdraw(1_000));
        assert!(b.try_withdraw(1_000));
        assert!(!b.try_withdraw(1_000), "floor used up, nothing deposited");
        for _ in 0..4 {
            b.deposit();
        }
        assert!(b.try_withdraw(1_000));
        assert!(b.try_withdraw(1_000));
        assert!(!b.try_withdraw(1_000));
        assert!(b.try_withdraw(2_000), "a new second renews the floor");
    }

    #[test]
    fn budget_balance_is_capped() {
        let b = RetryBudget::new(0.1, 0);
        for _ in 0..100_000 {
            b.deposit();
        }
        let allowed = (0..1000).filter(|_| b.try_withdraw(0)).count();
        assert_eq!(
            allowed, 100,
            "at most ratio × 1000 requests' worth is banked"
        );
    }

    #[test]
    fn ewma_takes_peaks_and_decays() {
        let e = Ewma::default();
        e.observe(100.0, 0);
        e.observe(1000.0, 0);
        assert_eq!(e.get(), 1000.0);
        e.observe(100.0, 10_000);
        let v = e.get();
        assert!(v > 100.0 && v < 1000.0, "{v}");
    }
}
