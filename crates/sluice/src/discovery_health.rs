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

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sluice_config::HealthCheckConfig;
use sluice_discovery::Catalog;
use sluice_health::probe::{self, ProbeTarget};
use sluice_health::{Evaluation, Evaluator, NativeEvaluator, ProbedInstance, Status};
use sluice_policy_host::types::HealthStatus;
use sluice_proxy::Proxy;
use tokio::sync::watch;

/// Parked instances and the signal that one recovered.
#[derive(Debug)]
pub(crate) struct HealthFeed {
    /// By (catalog service, instance address).
    parked: std::sync::Mutex<HashMap<(String, SocketAddr), Parked>>,
    recoveries: Arc<watch::Sender<u64>>,
}

#[derive(Debug)]
struct Parked {
    recovered: Arc<AtomicBool>,
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

impl HealthFeed {
    /// Sees a new value whenever a parked instance recovers (the proxy's own status changes
    /// come from [`Proxy::health_changes`]).
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.recoveries.subscribe()
    }

    /// The health of every catalog instance, by instance id, for the routing policy. Parks
    /// instances the proxy reports down and forgets parked ones that left the catalog.
    pub(crate) async fn statuses(
        &self,
        proxy: &Proxy,
        catalog: &Catalog,
    ) -> HashMap<String, HealthStatus> {
        // The proxy names a discovered service `<service>` or `<service>@<route>`: fold them
        // onto the catalog's service. Down anywhere wins (the same check probes every copy).
        let mut live: HashMap<(&str, SocketAddr), (Status, Arc<str>)> = HashMap::new();
        let states = proxy.health_statuses();
        for (service, addr, status) in &states {
            let base = service.split_once('@').map_or(&**service, |(b, _)| b);
            let entry = live
                .entry((base, *addr))
                .or_insert((*status, Arc::clone(service)));
            if rank(*status) > rank(entry.0) {
                *entry = (*status, Arc::clone(service));
            }
        }
        let config = proxy.config();
        // Addresses first (host names resolve asynchronously), the parked set locked after.
        let mut addrs = Vec::with_capacity(catalog.len());
        let mut resolved: HashMap<(&str, u16), Option<SocketAddr>> = HashMap::new();
        for instance in catalog.instances() {
            let key = (instance.address.as_str(), instance.port);
            let addr = match resolved.get(&key) {
                Some(found) => *found,
                None => {
                    let found = crate::discovery::resolve(&instance.address, instance.port).await;
                    resolved.insert(key, found);
                    found
                }
            };
            addrs.push(addr);
        }
        let mut out = HashMap::with_capacity(catalog.len());
        let mut seen = HashSet::new();
        let Ok(mut parked) = self.parked.lock() else {
            return out;
        };
        for (instance, addr) in catalog.instances().zip(addrs) {
            let Some(addr) = addr else { continue };
            let key = (instance.service.clone(), addr);
            let status = match parked.get(&key) {
                Some(p) if p.recovered.load(Ordering::Acquire) => {
                    parked.remove(&key);
                    HealthStatus::Passing
                }
                Some(_) => HealthStatus::Critical,
                None => match live.get(&(instance.service.as_str(), addr)) {
                    Some((Status::Down, proxy_service)) => {
                        let check = config.service(proxy_service).and_then(|s| s.health.clone());
                        match check {
                            Some(check) => {
                                let p = self.park(&instance.service, addr, check);
                                parked.insert(key.clone(), p);
                                HealthStatus::Critical
                            }
                            // Down without a check cannot happen; never strand an instance.
                            None => HealthStatus::Unknown,
                        }
                    }
                    Some((Status::Up, _)) => HealthStatus::Passing,
                    Some((Status::Unknown, _)) | None => HealthStatus::Unknown,
                },
            };
            seen.insert(key);
            out.insert(instance.id.clone(), status);
        }
        parked.retain(|key, _| seen.contains(key));
        out
    }

    fn park(&self, service: &str, addr: SocketAddr, check: HealthCheckConfig) -> Parked {
        tracing::info!(
            service,
            instance = %addr,
            "discovery: instance critical; left out of the routes and probed until it recovers"
        );
        let recovered = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(probe_until_recovered(
            ProbeTarget {
                addr: SocketAddr::new(
                    check.address.unwrap_or(addr.ip()),
                    check.port.unwrap_or(addr.port()),
                ),
                instance: addr,
                service: service.to_owned(),
            },
            check,
            Arc::clone(&recovered),
            Arc::clone(&self.recoveries),
        ));
        Parked { recovered, task }
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

/// Probes a parked instance on its check's schedule until `rise` probes in a row pass.
async fn probe_until_recovered(
    target: ProbeTarget,
    check: HealthCheckConfig,
    recovered: Arc<AtomicBool>,
    recoveries: Arc<watch::Sender<u64>>,
) {
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
        let result = probe::run(&target, &check).await;
        let up =
            matches!(evaluator.evaluate(&probed, &result), Evaluation::Verdict(v) if v.is_up());
        ups = if up { ups + 1 } else { 0 };
        if ups >= check.rise {
            tracing::info!(
                service = %target.service,
                instance = %target.instance,
                "discovery: parked instance passes its check again; routes rebuilt"
            );
            recovered.store(true, Ordering::Release);
            recoveries.send_modify(|n| *n = n.wrapping_add(1));
            return;
        }
    }
}
