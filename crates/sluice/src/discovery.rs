//! Discovery in the binary: the `[[discovery]]` sources feed a catalog (`sluice-discovery`);
//! every new catalog runs the routing policy (the embedded `urlprefix` unless `[routing] policy`
//! names one), whose routes become services and routes merged with the configuration file's.
//! The merged configuration is applied through `Proxy::apply`, which builds every table off the
//! data path and swaps it atomically — the same path a reload takes.
//!
//! Failure rules: a bad tag is logged (and counted) and skipped, never blocking the table; so
//! is a route whose options cannot be served (a redirect URL, a network or a `host=` the file's
//! rules refuse, `proto=https` with no CA to verify against); a failing policy or a failed
//! apply keeps the last good table.
//!
//! The policy sees each instance's health from the active checker (discovery_health.rs), and
//! the routes are rebuilt (debounced) when an instance goes up or down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_config::{
    Config, DiscoverySource, FailureMode, PolicyConfig, PolicyLimits, PolicySource, PolicyWorld,
};
use sluice_discovery::{Discovery, DiscoveryOptions, SourceConfig, SourceSpec};
use sluice_kv::registry::ServiceDefinition;
use sluice_kv::{EtcdOptions, WatchOptions};
use sluice_routing::Discovered;

use crate::discovery_health::HealthFeed;
use crate::discovery_overrides::KvOverrides;

/// The built-in policy discovery routes with unless `[routing] policy` names another.
const BUILTIN_ROUTING_MODULE: &str = "urlprefix";
/// The name the embedded policy is loaded under (shown in `/api/policies`).
pub(crate) const BUILTIN_ROUTING_POLICY: &str = "builtin-urlprefix";
/// Deadline of one embedded-policy call: a catalog of 10k instances takes milliseconds, far
/// above the per-call default meant for per-connection policies.
const BUILTIN_POLICY_TIMEOUT: Duration = Duration::from_secs(2);
/// Memory cap of the embedded policy (large catalogs are copied into the guest).
const BUILTIN_POLICY_MEMORY: usize = 128 << 20;

/// Metric names (docs/metrics.md).
pub(crate) mod metric {
    pub(crate) const CATALOG_INSTANCES: &str = "sluice_discovery_instances";
    pub(crate) const CATALOG_STALE: &str = "sluice_discovery_stale";
    pub(crate) const CATALOG_STALE_AGE: &str = "sluice_discovery_stale_age_seconds";
    pub(crate) const INVALID_DOCUMENTS: &str = "sluice_discovery_invalid_documents";
    pub(crate) const ROUTE_REBUILDS: &str = "sluice_route_rebuilds_total";
    pub(crate) const ROUTE_REBUILD_DURATION: &str = "sluice_route_rebuild_duration_seconds";
    pub(crate) const ROUTE_ERRORS: &str = "sluice_discovery_route_errors_total";
    #[cfg(test)]
    pub(crate) const ALL: &[&str] = &[
        CATALOG_INSTANCES,
        CATALOG_STALE,
        CATALOG_STALE_AGE,
        INVALID_DOCUMENTS,
        ROUTE_REBUILDS,
        ROUTE_REBUILD_DURATION,
        ROUTE_ERRORS,
    ];
}

/// The outcome of the latest rebuild, for `/api/catalog`.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct RebuildReport {
    pub(crate) catalog_version: u64,
    pub(crate) result: &'static str,
    pub(crate) routes: usize,
    pub(crate) skipped: Vec<String>,
    pub(crate) error: Option<String>,
    /// The whole rebuild, and its parts: the policy call, translation (with name resolution),
    /// and the proxy's apply (building and swapping every table).
    pub(crate) duration_ms: f64,
    pub(crate) policy_ms: f64,
    pub(crate) translate_ms: f64,
    pub(crate) apply_ms: f64,
}

impl RebuildReport {
    /// A rebuild of catalog `version` starting; `result` says how it ends.
    pub(crate) fn new(catalog_version: u64) -> Self {
        RebuildReport {
            catalog_version,
            result: "ok",
            routes: 0,
            skipped: Vec::new(),
            error: None,
            duration_ms: 0.0,
            policy_ms: 0.0,
            translate_ms: 0.0,
            apply_ms: 0.0,
        }
    }

    pub(crate) fn failed(&mut self, result: &'static str, error: String) {
        self.result = result;
        self.error = Some(error);
    }
}

/// Milliseconds since `since`, for the report.
pub(crate) fn ms_since(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// The running discovery of one process.
#[derive(Debug)]
pub(crate) struct DiscoveryState {
    pub(crate) discovery: Discovery,
    pub(crate) discovered: std::sync::Mutex<Arc<Discovered>>,
    pub(crate) last_rebuild: std::sync::Mutex<Option<RebuildReport>>,
    /// A reload asks for a rebuild against the new file (its routes and services may differ).
    pub(crate) rebuild_now: tokio::sync::Notify,
    /// Instance health for the routing policy.
    pub(crate) health: HealthFeed,
    /// `[routing] overrides_key`: the last good commands read from KV.
    pub(crate) kv_overrides: KvOverrides,
}

impl DiscoveryState {
    /// Starts the sources of `cfg`; `None` when it has none.
    pub(crate) fn start(cfg: &Config) -> anyhow::Result<Option<Arc<DiscoveryState>>> {
        if cfg.discovery.is_empty() {
            return Ok(None);
        }
        let sources = cfg.discovery.iter().map(source_config).collect();
        let options = DiscoveryOptions {
            debounce: cfg.routing.debounce,
            ..DiscoveryOptions::default()
        };
        let discovery = Discovery::start(sources, options)?;
        Ok(Some(Arc::new(DiscoveryState {
            discovery,
            discovered: std::sync::Mutex::new(Arc::new(Discovered::default())),
            last_rebuild: std::sync::Mutex::new(None),
            rebuild_now: tokio::sync::Notify::new(),
            health: HealthFeed::default(),
            kv_overrides: KvOverrides::default(),
        })))
    }

    /// The embedded policy's `[[policy]]` entry.
    fn builtin_policy(&self) -> PolicyConfig {
        PolicyConfig {
            name: BUILTIN_ROUTING_POLICY.to_owned(),
            file: PolicySource::Builtin(BUILTIN_ROUTING_MODULE.to_owned()),
            world: PolicyWorld::Routing,
            config: json!({}),
            limits: PolicyLimits {
                timeout: BUILTIN_POLICY_TIMEOUT,
                max_memory_bytes: BUILTIN_POLICY_MEMORY,
            },
            failure_mode: FailureMode::KeepLast,
            request_fields: None,
        }
    }

    pub(crate) fn discovered(&self) -> Arc<Discovered> {
        self.discovered
            .lock()
            .map(|d| Arc::clone(&d))
            .unwrap_or_default()
    }

    /// What the running tables hold now (after a successful apply).
    pub(crate) fn set_discovered(&self, discovered: Discovered) {
        if let Ok(mut current) = self.discovered.lock() {
            *current = Arc::new(discovered);
        }
    }

    /// The end of a rebuild: counted, timed, logged, and kept for `/api/catalog`.
    pub(crate) fn record(&self, mut report: RebuildReport, started: Instant, instances: usize) {
        let elapsed = started.elapsed();
        report.duration_ms = elapsed.as_secs_f64() * 1000.0;
        metrics::counter!(metric::ROUTE_REBUILDS, "result" => report.result).increment(1);
        metrics::histogram!(metric::ROUTE_REBUILD_DURATION).record(elapsed.as_secs_f64());
        match &report.error {
            None => tracing::info!(
                catalog_version = report.catalog_version,
                instances,
                routes = report.routes,
                skipped = report.skipped.len(),
                duration_ms = report.duration_ms,
                "discovery: routes rebuilt"
            ),
            Some(error) => tracing::error!(
                catalog_version = report.catalog_version,
                %error,
                "discovery: route rebuild failed; the last good table keeps serving"
            ),
        }
        if let Ok(mut last) = self.last_rebuild.lock() {
            *last = Some(report);
        }
    }

    /// `GET /api/catalog`.
    pub(crate) fn catalog_json(&self) -> serde_json::Value {
        let catalog = self.discovery.current();
        let now = Instant::now();
        let age = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        let sources: Vec<_> = catalog
            .sources()
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "kind": s.kind.as_str(),
                    "synced": s.synced,
                    "stale": s.stale(),
                    "age_seconds": age(s.stale_age(now)),
                    "last_error": s.last_error,
                    "instances": s.instances,
                    "invalid": s.invalid.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "shadowed": s.shadowed,
                })
            })
            .collect();
        let deregistered = self.health.deregistered();
        let instances: Vec<_> = catalog
            .instances()
            .map(|i| {
                let source = catalog.sources().iter().find(|s| s.name == i.source);
                json!({
                    "id": i.id,
                    "service": i.service,
                    "address": i.address,
                    "port": i.port,
                    "tags": i.tags,
                    "meta": i.meta,
                    "checks": i.checks,
                    "source": i.source,
                    "origin": i.origin,
                    "stale": source.is_some_and(|s| s.stale()),
                    "age_seconds": age(source.and_then(|s| s.stale_age(now))),
                    "deregistered": deregistered.contains(&i.id),
                })
            })
            .collect();
        let last_rebuild = self.last_rebuild.lock().ok().and_then(|r| r.clone());
        json!({
            "version": catalog.version(),
            "stale": catalog.stale(),
            "age_seconds": age(catalog.stale_age(now)),
            "sources": sources,
            "instances": instances,
            "last_rebuild": last_rebuild,
            "overrides": self.kv_overrides.json(),
        })
    }

    /// Sets the catalog gauges (on every change and at scrape time: ages grow by themselves).
    pub(crate) fn refresh_gauges(&self) {
        let catalog = self.discovery.current();
        let now = Instant::now();
        for source in catalog.sources() {
            let name = source.name.clone();
            metrics::gauge!(metric::CATALOG_INSTANCES, "source" => name.clone())
                .set(source.instances as f64);
            metrics::gauge!(metric::CATALOG_STALE, "source" => name.clone())
                .set(if source.stale() { 1.0 } else { 0.0 });
            metrics::gauge!(metric::CATALOG_STALE_AGE, "source" => name.clone())
                .set(source.stale_age(now).map_or(0.0, |d| d.as_secs_f64()));
            metrics::gauge!(metric::INVALID_DOCUMENTS, "source" => name)
                .set(source.invalid.len() as f64);
        }
    }
}

/// The policies to load: the file's, plus the embedded routing policy when discovery runs.
pub(crate) fn effective_policies(
    cfg: &Config,
    discovery: Option<&DiscoveryState>,
) -> Vec<PolicyConfig> {
    let mut policies = cfg.policies.clone();
    if let Some(discovery) = discovery {
        policies.push(discovery.builtin_policy());
    }
    policies
}

/// The routing policy `cfg` asks for.
pub(crate) fn routing_policy_name(cfg: &Config) -> &str {
    cfg.routing
        .policy
        .as_deref()
        .unwrap_or(BUILTIN_ROUTING_POLICY)
}

pub(crate) fn source_config(cfg: &sluice_config::DiscoveryConfig) -> SourceConfig {
    let spec = match &cfg.source {
        DiscoverySource::Static { instances } => SourceSpec::Static(
            instances
                .iter()
                .map(|i| ServiceDefinition {
                    name: i.name.clone(),
                    id: i.id.clone(),
                    address: i.address.clone(),
                    port: i.port,
                    tags: i.tags.clone(),
                    meta: i.meta.clone(),
                    check: None,
                    checks: Vec::new(),
                    extra: BTreeMap::new(),
                })
                .collect(),
        ),
        DiscoverySource::File {
            dir,
            poll_interval,
            notify,
            fallback_poll_interval,
        } => SourceSpec::File {
            dir: dir.clone(),
            watch: WatchOptions {
                poll_interval: *poll_interval,
                ..WatchOptions::default()
            },
            safety_poll: notify.then_some(*fallback_poll_interval),
        },
        DiscoverySource::Etcd {
            endpoints,
            prefix,
            request_timeout,
        } => SourceSpec::Etcd {
            endpoints: endpoints.clone(),
            prefix: prefix.clone(),
            client: EtcdOptions {
                request_timeout: *request_timeout,
            },
            watch: WatchOptions::default(),
        },
    };
    SourceConfig {
        name: cfg.name.clone(),
        spec,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_metric_is_documented() {
        let doc = include_str!("../../../docs/metrics.md");
        let all = super::metric::ALL
            .iter()
            .chain(crate::discovery_overrides::metric::ALL)
            .chain(crate::discovery_health::metric::ALL);
        for name in all {
            assert!(
                doc.contains(&format!("`{name}`")),
                "{name} is not in docs/metrics.md"
            );
        }
    }
}
