//! Health for the routing policy: each catalog instance's status from the proxy's active
//! checker (the checks declared in the registrations, or the file's `[service.health]`), so
//! `urlprefix` with `skip_critical` leaves out instances whose check fails, as Fabio leaves out
//! Consul's critical ones.
//!
//! The loop to avoid: a critical instance leaves the routes, so the proxy stops probing it.
//! Seen as `unknown` at the next rebuild it would come back, fail and leave again; and one
//! that recovered would never return, since nothing probes it. So an instance the proxy reports
//! down is *parked*: this module keeps probing it with the same check (the same probe code and
//! `rise` rule, native evaluation) and reports it `critical` until `rise` probes in a row pass.
//! Then it is `passing`, the routes are rebuilt (see [`HealthFeed::subscribe`]) and the proxy's
//! checker takes it over again.
//!
//! Consul's `deregister_critical_service_after`: a parked instance whose registration's check
//! sets it and that stays critical that long is *deregistered*, as Consul's agent removes such
//! a service: probing stops and the instance is left out of the routing policy's input (the
//! catalog keeps listing it, marked) until its registration document is put again (the file
//! written again, the etcd key put again: a new document revision) or goes away.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use sluice_config::{Config, HealthCheckConfig, InstanceConfig};
use sluice_discovery::{Catalog, Instance};
use sluice_health::probe::{self, ProbeTarget};
use sluice_health::{Evaluation, Evaluator, NativeEvaluator, ProbedInstance, Status};
use sluice_policy_host::types::HealthStatus;
use sluice_proxy::Proxy;
use sluice_routing::{InstanceHealth, Resolver};
use tokio::sync::watch;

/// Metric names (docs/metrics.md).
pub(crate) mod metric {
    pub(crate) const DEREGISTERED: &str = "sluice_discovery_deregistered_total";
    #[cfg(test)]
    pub(crate) const ALL: &[&str] = &[DEREGISTERED];
}

/// A parked instance's probe task is still probing it.
const PROBING: u8 = 0;
/// It passed `rise` probes in a row.
const RECOVERED: u8 = 1;
/// It stayed critical for its check's `deregister_critical_service_after`.
const DEREGISTERED: u8 = 2;

/// Parked instances and the signal that one recovered or was deregistered.
#[derive(Debug)]
pub(crate) struct HealthFeed {
    /// By (catalog service, instance address).
    parked: std::sync::Mutex<HashMap<(String, SocketAddr), Parked>>,
    recoveries: Arc<watch::Sender<u64>>,
}

#[derive(Debug)]
struct Parked {
    /// The catalog instance id.
    id: String,
    /// The revision of its registration document when it was parked: once deregistered, it
    /// comes back when the document is put again.
    revision: i64,
    /// What the probe task concluded: [`PROBING`], [`RECOVERED`] or [`DEREGISTERED`].
    outcome: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Default for HealthFeed {
    fn default() -> Self {
        Self {
            parked: std::sync::Mutex::default(),
            recoveries: Arc::new(watch::channel(0).0),
        }
    }
}

/// Each (catalog service, address)'s status from the proxy's checker, with the proxy service
/// that reported it. The proxy names a discovered service `<service>` or `<service>@<route>`:
/// they fold onto the catalog's service, and down anywhere wins (the same check probes every
/// copy).
fn live_statuses(
    states: &[(Arc<str>, SocketAddr, Status)],
) -> HashMap<(&str, SocketAddr), (Status, Arc<str>)> {
    let mut live: HashMap<(&str, SocketAddr), (Status, Arc<str>)> = HashMap::new();
    for (service, addr, status) in states {
        let base = service.split_once('@').map_or(&**service, |(b, _)| b);
        let entry = live
            .entry((base, *addr))
            .or_insert((*status, Arc::clone(service)));
        if rank(*status) > rank(entry.0) {
            *entry = (*status, Arc::clone(service));
        }
    }
    live
}

/// Every catalog instance's address (host names resolve asynchronously), in catalog order.
async fn resolve_all(catalog: &Catalog) -> Vec<Option<SocketAddr>> {
    let mut resolver = Resolver::default();
    let mut addrs = Vec::with_capacity(catalog.len());
    for instance in catalog.instances() {
        addrs.push(resolver.resolve(&instance.address, instance.port).await);
    }
    addrs
}

impl HealthFeed {
    /// Sees a new value whenever a parked instance recovers or is deregistered (the proxy's
    /// own status changes come from [`Proxy::health_changes`]).
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.recoveries.subscribe()
    }

    /// The ids of the instances deregistered for staying critical, for `/api/catalog`.
    pub(crate) fn deregistered(&self) -> HashSet<String> {
        self.parked
            .lock()
            .map(|parked| {
                parked
                    .values()
                    .filter(|p| p.outcome.load(Ordering::Acquire) == DEREGISTERED)
                    .map(|p| p.id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The health of every catalog instance for the routing policy. Parks instances the proxy
    /// reports down and forgets parked ones that left the catalog.
    pub(crate) async fn statuses(&self, proxy: &Proxy, catalog: &Catalog) -> InstanceHealth {
        let states = proxy.health_statuses();
        let live = live_statuses(&states);
        let config = proxy.config();
        // Addresses first, the parked set locked after.
        let addrs = resolve_all(catalog).await;
        let mut out = InstanceHealth::default();
        let mut seen = HashSet::new();
        let Ok(mut parked) = self.parked.lock() else {
            return out;
        };
        for (instance, addr) in catalog.instances().zip(addrs) {
            let Some(addr) = addr else { continue };
            let key = (instance.service.clone(), addr);
            let live = live.get(&(instance.service.as_str(), addr));
            match self.status_of(&mut parked, &key, instance, live, &config) {
                Some(status) => {
                    out.health.insert(instance.id.clone(), status);
                }
                None => {
                    out.deregistered.insert(instance.id.clone());
                }
            }
            seen.insert(key);
        }
        parked.retain(|key, _| seen.contains(key));
        out
    }

    /// One instance's status (`None`: deregistered), parking it when the proxy reports it down.
    fn status_of(
        &self,
        parked: &mut HashMap<(String, SocketAddr), Parked>,
        key: &(String, SocketAddr),
        instance: &Instance,
        live: Option<&(Status, Arc<str>)>,
        config: &Config,
    ) -> Option<HealthStatus> {
        if let Some(p) = parked.get(key) {
            match p.outcome.load(Ordering::Acquire) {
                PROBING => return Some(HealthStatus::Critical),
                RECOVERED => {
                    parked.remove(key);
                    return Some(HealthStatus::Passing);
                }
                _ if p.revision == instance.revision => return None,
                _ => {
                    tracing::info!(
                        service = %instance.service,
                        instance = %instance.id,
                        "discovery: deregistered instance registered again; back in the catalog"
                    );
                    parked.remove(key);
                }
            }
        }
        match live {
            Some((Status::Down, proxy_service)) => {
                let service = config.service(proxy_service);
                // Down without a check cannot happen; never strand an instance.
                let check = service.and_then(|s| s.health.clone())?;
                let configured =
                    service.and_then(|s| s.instances.iter().find(|i| i.address == key.1));
                let target = configured
                    .cloned()
                    .unwrap_or_else(|| InstanceConfig::new(key.1))
                    .check_target(&check);
                parked.insert(key.clone(), self.park(instance, key.1, target, check));
                Some(HealthStatus::Critical)
            }
            Some((Status::Up, _)) => Some(HealthStatus::Passing),
            Some((Status::Unknown, _)) | None => Some(HealthStatus::Unknown),
        }
    }

    fn park(
        &self,
        instance: &Instance,
        addr: SocketAddr,
        target: SocketAddr,
        check: HealthCheckConfig,
    ) -> Parked {
        // A bad value was reported when the check was translated (sluice_routing::checks).
        let deregister_after = instance
            .checks
            .first()
            .and_then(|c| sluice_routing::checks::deregister_after(c).ok().flatten());
        tracing::info!(
            service = %instance.service,
            instance = %addr,
            deregister_after = ?deregister_after,
            "discovery: instance critical; left out of the routes and probed until it recovers"
        );
        let outcome = Arc::new(AtomicU8::new(PROBING));
        let task = tokio::spawn(probe_until_recovered(
            ProbeTarget {
                addr: target,
                instance: addr,
                service: instance.service.clone(),
            },
            check,
            deregister_after,
            Arc::clone(&outcome),
            Arc::clone(&self.recoveries),
        ));
        Parked {
            id: instance.id.clone(),
            revision: instance.revision,
            outcome,
            task,
        }
    }
}

/// How bad a status is, to fold several copies of one instance.
fn rank(status: Status) -> u8 {
    match status {
        Status::Unknown => 0,
        Status::Up => 1,
        Status::Down => 2,
    }
}

/// Probes a parked instance until it recovers or, when its registration asks for it, until it
/// has been critical for `deregister_after`; then says which and asks for a rebuild.
async fn probe_until_recovered(
    target: ProbeTarget,
    check: HealthCheckConfig,
    deregister_after: Option<Duration>,
    outcome: Arc<AtomicU8>,
    recoveries: Arc<watch::Sender<u64>>,
) {
    let deadline = async {
        match deregister_after {
            Some(after) => tokio::time::sleep(after).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = probe_until_passing(&target, &check) => {
            tracing::info!(
                service = %target.service,
                instance = %target.instance,
                "discovery: parked instance passes its check again; routes rebuilt"
            );
            outcome.store(RECOVERED, Ordering::Release);
        }
        () = deadline => {
            tracing::warn!(
                service = %target.service,
                instance = %target.instance,
                after = ?deregister_after,
                "discovery: instance critical for deregister_critical_service_after; deregistered until its registration is put again"
            );
            metrics::counter!(metric::DEREGISTERED, "service" => target.service.clone())
                .increment(1);
            outcome.store(DEREGISTERED, Ordering::Release);
        }
    }
    recoveries.send_modify(|n| *n = n.wrapping_add(1));
}

/// Probes on the check's schedule until `rise` probes in a row pass.
async fn probe_until_passing(target: &ProbeTarget, check: &HealthCheckConfig) {
    let evaluator = NativeEvaluator::new(check.kind.clone());
    let probed = ProbedInstance {
        id: target.instance.to_string(),
        service: target.service.clone(),
        address: target.instance.ip().to_string(),
        port: target.instance.port(),
    };
    let mut ups = 0;
    loop {
        tokio::time::sleep(check.interval + probe::jitter(check.jitter)).await;
        let result = probe::run(target, check).await;
        let up =
            matches!(evaluator.evaluate(&probed, &result), Evaluation::Verdict(v) if v.is_up());
        ups = if up { ups + 1 } else { 0 };
        if ups >= check.rise {
            return;
        }
    }
}
