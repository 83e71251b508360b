//! Health for the routing policy: each catalog instance's status from the proxy's active
//! checker (the checks declared in the registrations, or the file's `[service.health]`), so
//! `urlprefix` with `skip_critical` leaves out instances whose check fails, as Fabio leaves out
//! Consul's critical ones. The proxy's checker is the only one probing discovered instances;
//! this module only reads its verdicts and decides what stays in the catalog.
//!
//! The loop to avoid: a critical instance leaves the routes, so it would leave the proxy's
//! services and nothing would probe it. Seen as `unknown` at the next rebuild it would come
//! back, fail and leave again; and one that recovered would never return. So an instance the
//! proxy reports down is *parked*: it stays, routed to by nothing new, in the proxy services it
//! was probed in (route-less if its routes went away: `sluice_routing::ParkedInstance`), so the
//! checker keeps probing it with its state and `rise` counter intact. It is reported `critical`
//! until the checker says up; then it is `passing` and the routes are rebuilt.
//!
//! Consul's `deregister_critical_service_after`: a parked instance whose registration's check
//! sets it and that stays critical that long is *deregistered*, as Consul's agent removes such
//! a service: it leaves the proxy's services (probing stops) and the routing policy's input
//! (the catalog keeps listing it, marked) until its registration document is put again (the
//! file written again, the etcd key put again: a new document revision) or goes away.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_discovery::{Catalog, Instance};
use sluice_health::Status;
use sluice_policy_host::types::HealthStatus;
use sluice_proxy::Proxy;
use sluice_routing::{InstanceHealth, ParkedInstance, Resolver};
use tokio::sync::watch;

/// Metric names (docs/metrics.md).
pub(crate) mod metric {
    pub(crate) const DEREGISTERED: &str = "sluice_discovery_deregistered_total";
    #[cfg(test)]
    pub(crate) const ALL: &[&str] = &[DEREGISTERED];
}

/// Parked instances, and the signal that one's deregistration time came.
#[derive(Debug)]
pub(crate) struct HealthFeed {
    /// By (catalog service, instance address).
    parked: std::sync::Mutex<HashMap<(String, SocketAddr), Parked>>,
    deadlines: Arc<watch::Sender<u64>>,
}

#[derive(Debug)]
struct Parked {
    /// The catalog instance id.
    id: String,
    /// The revision of its registration document when it was parked: once deregistered, it
    /// comes back when the document is put again.
    revision: i64,
    /// The proxy services whose checker found it down: it stays in them while parked.
    proxy_services: Vec<Arc<str>>,
    since: Instant,
    deregister_after: Option<Duration>,
    deregistered: bool,
    /// Wakes a rebuild when `deregister_after` has passed.
    timer: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Parked {
    fn drop(&mut self) {
        if let Some(timer) = &self.timer {
            timer.abort();
        }
    }
}

impl Default for HealthFeed {
    fn default() -> Self {
        Self {
            parked: std::sync::Mutex::default(),
            deadlines: Arc::new(watch::channel(0).0),
        }
    }
}

/// One (catalog service, address)'s status across the proxy services it is in (named
/// `<service>` or `<service>@<route>`; down anywhere wins, the same check probes every copy),
/// with those services.
#[derive(Debug)]
struct Live {
    status: Status,
    proxy_services: Vec<Arc<str>>,
}

fn live_statuses(states: &[(Arc<str>, SocketAddr, Status)]) -> HashMap<(&str, SocketAddr), Live> {
    let mut live: HashMap<(&str, SocketAddr), Live> = HashMap::new();
    for (service, addr, status) in states {
        let base = service.split_once('@').map_or(&**service, |(b, _)| b);
        let entry = live.entry((base, *addr)).or_insert(Live {
            status: *status,
            proxy_services: Vec::new(),
        });
        if rank(*status) > rank(entry.status) {
            entry.status = *status;
        }
        entry.proxy_services.push(Arc::clone(service));
    }
    live
}

/// How bad a status is, to fold several copies of one instance.
fn rank(status: Status) -> u8 {
    match status {
        Status::Unknown => 0,
        Status::Up => 1,
        Status::Down => 2,
    }
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
    /// Sees a new value when a parked instance's deregistration time comes (status changes
    /// come from [`Proxy::health_changes`]).
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.deadlines.subscribe()
    }

    /// The ids of the instances deregistered for staying critical, for `/api/catalog`.
    pub(crate) fn deregistered(&self) -> HashSet<String> {
        self.parked
            .lock()
            .map(|parked| {
                parked
                    .values()
                    .filter(|p| p.deregistered)
                    .map(|p| p.id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The health of every catalog instance for the routing policy, and where parked ones
    /// stay. Parks instances the proxy reports down and forgets parked ones that left the
    /// catalog.
    pub(crate) async fn statuses(&self, proxy: &Proxy, catalog: &Catalog) -> InstanceHealth {
        let states = proxy.health_statuses();
        let live = live_statuses(&states);
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
            match self.status_of(&mut parked, &key, instance, live) {
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
        out.parked = placements(&parked);
        out
    }

    /// One instance's status (`None`: deregistered), parking it when the proxy reports it down.
    fn status_of(
        &self,
        parked: &mut HashMap<(String, SocketAddr), Parked>,
        key: &(String, SocketAddr),
        instance: &Instance,
        live: Option<&Live>,
    ) -> Option<HealthStatus> {
        if let Some(p) = parked.get_mut(key) {
            match parked_status(p, instance, live) {
                Some(ParkedStatus::Critical) => return Some(HealthStatus::Critical),
                Some(ParkedStatus::Deregistered) => return None,
                // Recovered or registered again: the checker's status decides below.
                None => {
                    parked.remove(key);
                }
            }
        }
        match live {
            Some(Live {
                status: Status::Down,
                proxy_services,
            }) => {
                parked.insert(key.clone(), self.park(instance, key.1, proxy_services));
                Some(HealthStatus::Critical)
            }
            Some(Live {
                status: Status::Up, ..
            }) => Some(HealthStatus::Passing),
            _ => Some(HealthStatus::Unknown),
        }
    }

    fn park(&self, instance: &Instance, addr: SocketAddr, proxy_services: &[Arc<str>]) -> Parked {
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
        let timer = deregister_after.map(|after| {
            let deadlines = Arc::clone(&self.deadlines);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                deadlines.send_modify(|n| *n = n.wrapping_add(1));
            })
        });
        Parked {
            id: instance.id.clone(),
            revision: instance.revision,
            proxy_services: proxy_services.to_vec(),
            since: Instant::now(),
            deregister_after,
            deregistered: false,
            timer,
        }
    }
}

enum ParkedStatus {
    Critical,
    Deregistered,
}

/// A parked instance's status now; `None` when it is no longer parked (the checker says it is
/// up, or a deregistered one's registration was put again).
fn parked_status(p: &mut Parked, instance: &Instance, live: Option<&Live>) -> Option<ParkedStatus> {
    if p.deregistered {
        if p.revision == instance.revision {
            return Some(ParkedStatus::Deregistered);
        }
        tracing::info!(
            service = %instance.service,
            instance = %instance.id,
            "discovery: deregistered instance registered again; back in the catalog"
        );
        return None;
    }
    if live.is_some_and(|l| l.status == Status::Up) {
        tracing::info!(
            service = %instance.service,
            instance = %instance.id,
            "discovery: parked instance passes its check again; routes rebuilt"
        );
        return None;
    }
    if p.deregister_after
        .is_some_and(|after| p.since.elapsed() >= after)
    {
        tracing::warn!(
            service = %instance.service,
            instance = %instance.id,
            after = ?p.deregister_after,
            "discovery: instance critical for deregister_critical_service_after; deregistered until its registration is put again"
        );
        metrics::counter!(metric::DEREGISTERED, "service" => instance.service.clone()).increment(1);
        p.deregistered = true;
        return Some(ParkedStatus::Deregistered);
    }
    Some(ParkedStatus::Critical)
}

/// Where each parked (not deregistered) instance stays: every proxy service it was found
/// down in.
fn placements(parked: &HashMap<(String, SocketAddr), Parked>) -> Vec<ParkedInstance> {
    let mut out: Vec<ParkedInstance> = parked
        .iter()
        .filter(|(_, p)| !p.deregistered)
        .flat_map(|((service, addr), p)| {
            p.proxy_services.iter().map(|proxy_service| ParkedInstance {
                id: p.id.clone(),
                catalog_service: service.clone(),
                proxy_service: proxy_service.to_string(),
                address: *addr,
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.proxy_service, a.address).cmp(&(&b.proxy_service, b.address)));
    out
}
