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
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_config::{
    Config, DiscoverySource, FailureMode, HostMatch, InstanceConfig, ListenerConfig, PolicyConfig,
    PolicyLimits, PolicyWorld, RouteConfig, RouteKey, RouteOverride, ServiceConfig,
};
use sluice_discovery::{Catalog, Discovery, DiscoveryOptions, SourceConfig, SourceSpec};
use sluice_kv::registry::ServiceDefinition;
use sluice_kv::{EtcdOptions, WatchOptions};
use sluice_policy_host::types;

use crate::discovery_checks::{
    apply_check_targets, declared_check, declared_checks, registered_check_target,
};

/// The `urlprefix` routing policy, compiled to `wasm32-wasip2` by `build.rs`.
const URLPREFIX_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/urlprefix.wasm"));
/// The name the embedded policy is loaded under (shown in `/api/policies`).
pub(crate) const BUILTIN_ROUTING_POLICY: &str = "builtin-urlprefix";
/// Deadline of one embedded-policy call: a catalog of 10k instances takes milliseconds, far
/// above the per-call default meant for per-connection policies.
const BUILTIN_POLICY_TIMEOUT: Duration = Duration::from_secs(2);
/// Memory cap of the embedded policy (large catalogs are copied into the guest).
const BUILTIN_POLICY_MEMORY: usize = 128 << 20;
/// Deadline for resolving one instance host name.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Metric names (docs/metrics.md).
pub(crate) mod metric {
    pub(crate) const CATALOG_INSTANCES: &str = "sluice_discovery_instances";
    pub(crate) const CATALOG_STALE: &str = "sluice_discovery_stale";
    pub(crate) const CATALOG_STALE_AGE: &str = "sluice_discovery_stale_age_seconds";
    pub(crate) const INVALID_DOCUMENTS: &str = "sluice_discovery_invalid_documents";
    pub(crate) const ROUTE_REBUILDS: &str = "sluice_route_rebuilds_total";
    pub(crate) const ROUTE_REBUILD_DURATION: &str = "sluice_route_rebuild_duration_seconds";
    pub(crate) const ROUTE_ERRORS: &str = "sluice_discovery_route_errors_total";
    pub(crate) const DEREGISTERED: &str = "sluice_discovery_deregistered_total";
    #[cfg(test)]
    pub(crate) const ALL: &[&str] = &[
        CATALOG_INSTANCES,
        CATALOG_STALE,
        CATALOG_STALE_AGE,
        INVALID_DOCUMENTS,
        ROUTE_REBUILDS,
        ROUTE_REBUILD_DURATION,
        ROUTE_ERRORS,
        DEREGISTERED,
    ];
}

/// Services and routes found by discovery, ready to merge with the file's.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Discovered {
    pub(crate) services: Vec<ServiceConfig>,
    pub(crate) routes: Vec<RouteConfig>,
    /// Listeners for TCP routes (`urlprefix-:PORT proto=tcp`).
    pub(crate) listeners: Vec<ListenerConfig>,
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

/// The running discovery of one process.
#[derive(Debug)]
pub(crate) struct DiscoveryState {
    pub(crate) discovery: Discovery,
    /// What the embedded policy file was written as (removed at shutdown).
    builtin_dir: Option<PathBuf>,
    pub(crate) discovered: std::sync::Mutex<Arc<Discovered>>,
    pub(crate) last_rebuild: std::sync::Mutex<Option<RebuildReport>>,
    /// A reload asks for a rebuild against the new file (its routes and services may differ).
    pub(crate) rebuild_now: tokio::sync::Notify,
    /// Instance health for the routing policy.
    pub(crate) health: crate::discovery_health::HealthFeed,
    /// `[routing] overrides_key`: the last good commands read from KV (discovery_ops.rs).
    pub(crate) kv_overrides: std::sync::Mutex<crate::discovery_ops::KvOverrides>,
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
        let builtin_dir = std::env::temp_dir().join(format!("sluice-{}", std::process::id()));
        std::fs::create_dir_all(&builtin_dir)?;
        std::fs::write(builtin_dir.join("urlprefix.wasm"), URLPREFIX_WASM)?;
        Ok(Some(Arc::new(DiscoveryState {
            discovery,
            builtin_dir: Some(builtin_dir),
            discovered: std::sync::Mutex::new(Arc::new(Discovered::default())),
            last_rebuild: std::sync::Mutex::new(None),
            rebuild_now: tokio::sync::Notify::new(),
            health: crate::discovery_health::HealthFeed::default(),
            kv_overrides: std::sync::Mutex::default(),
        })))
    }

    /// The embedded policy's `[[policy]]` entry.
    fn builtin_policy(&self) -> Option<PolicyConfig> {
        Some(PolicyConfig {
            name: BUILTIN_ROUTING_POLICY.to_owned(),
            file: self.builtin_dir.as_ref()?.join("urlprefix.wasm"),
            world: PolicyWorld::Routing,
            config: json!({}),
            limits: PolicyLimits {
                timeout: BUILTIN_POLICY_TIMEOUT,
                max_memory_bytes: BUILTIN_POLICY_MEMORY,
            },
            failure_mode: FailureMode::KeepLast,
        })
    }

    pub(crate) fn discovered(&self) -> Arc<Discovered> {
        self.discovered
            .lock()
            .map(|d| Arc::clone(&d))
            .unwrap_or_default()
    }

    pub(crate) fn cleanup(&self) {
        if let Some(dir) = &self.builtin_dir {
            let _ = std::fs::remove_dir_all(dir);
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
            "overrides": self.kv_overrides_json(),
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

/// Rebuilds the routes on every new catalog (and when a reload asks), until the process ends.
pub(crate) fn spawn_rebuilds(
    app: Arc<crate::app::App>,
    state: Arc<DiscoveryState>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut catalogs = state.discovery.subscribe();
        let mut proxy_health = app.proxy.health_changes();
        let mut recoveries = state.health.subscribe();
        let mut kv_changes = app.policies.kv.subscribe();
        loop {
            let catalog = Arc::clone(&catalogs.borrow_and_update());
            state.refresh_gauges();
            rebuild(&app, &state, catalog).await;
            loop {
                tokio::select! {
                    changed = catalogs.changed() => if changed.is_err() { return } else { break },
                    () = state.rebuild_now.notified() => break,
                    // An instance went up or down (not every probe: only status changes), or a
                    // parked one recovered or was deregistered. Waiting out the debounce folds
                    // a burst into one rebuild.
                    Ok(()) = proxy_health.changed() => {
                        tokio::time::sleep(app.base_config().routing.debounce).await;
                        break;
                    }
                    Ok(()) = recoveries.changed() => {
                        tokio::time::sleep(app.base_config().routing.debounce).await;
                        break;
                    }
                    // Any KV key moved: rebuild only if it is `[routing] overrides_key`'s.
                    changed = kv_changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        if state.kv_overrides_changed(&app.base_config(), &app.policies.kv) {
                            break;
                        }
                    }
                }
            }
            proxy_health.borrow_and_update();
            recoveries.borrow_and_update();
        }
    })
}

async fn rebuild(app: &crate::app::App, state: &DiscoveryState, catalog: Arc<Catalog>) {
    let started = Instant::now();
    let base = app.base_config();
    let policy = routing_policy_name(&base).to_owned();
    let mut report = RebuildReport {
        catalog_version: catalog.version(),
        result: "ok",
        routes: 0,
        skipped: Vec::new(),
        error: None,
        duration_ms: 0.0,
        policy_ms: 0.0,
        translate_ms: 0.0,
        apply_ms: 0.0,
    };
    let ms = |since: Instant| since.elapsed().as_secs_f64() * 1000.0;
    match app.policies.routing(&policy) {
        None => {
            report.result = "policy_failed";
            report.error = Some(format!("routing policy `{policy}` is not loaded"));
        }
        Some(handle) => {
            let statuses = state.health.statuses(&app.proxy, &catalog).await;
            let input = policy_input(&catalog, &statuses);
            let policy_started = Instant::now();
            let outcome = tokio::task::spawn_blocking(move || handle.build_routes(&input)).await;
            report.policy_ms = ms(policy_started);
            match outcome {
                Err(e) => {
                    report.result = "policy_failed";
                    report.error = Some(format!("routing policy task failed: {e}"));
                }
                Ok(sluice_policy_host::RoutingOutcome::KeepLast { error, .. }) => {
                    report.result = "policy_failed";
                    report.error = Some(format!("routing policy `{policy}` failed: {error}"));
                }
                Ok(sluice_policy_host::RoutingOutcome::Routes(table)) => {
                    for error in &table.errors {
                        tracing::warn!(
                            instance = %error.instance_id,
                            tag = %error.input,
                            reason = %error.message,
                            "discovery: tag skipped"
                        );
                        metrics::counter!(metric::ROUTE_ERRORS, "kind" => "tag").increment(1);
                        report.skipped.push(format!(
                            "instance `{}` tag `{}`: {}",
                            error.instance_id, error.input, error.message
                        ));
                    }
                    let listener = base.routing.listener.clone().unwrap_or_default();
                    let held: Vec<u16> = state
                        .discovered()
                        .listeners
                        .iter()
                        .map(|l| l.bind.port())
                        .collect();
                    let translate_started = Instant::now();
                    let mut routes = table.routes.clone();
                    apply_overrides(&mut routes, &base.routing.overrides);
                    apply_overrides(&mut routes, &state.kv_overrides(&base, &app.policies.kv));
                    let (discovered, skipped) =
                        translate(&routes, &listener, &base, &catalog, &held).await;
                    for reason in &skipped {
                        tracing::warn!(%reason, "discovery: route skipped");
                        metrics::counter!(metric::ROUTE_ERRORS, "kind" => "route").increment(1);
                    }
                    report.skipped.extend(skipped);
                    report.routes = discovered.routes.len();
                    report.translate_ms = ms(translate_started);
                    let apply_started = Instant::now();
                    // A catalog change that moves no route (meta, a check's text) applies
                    // nothing: the running tables are already these.
                    let applied = if *state.discovered() == discovered {
                        report.result = "unchanged";
                        Ok(())
                    } else {
                        app.apply_discovered(state, discovered).await.map(|_| ())
                    };
                    report.apply_ms = ms(apply_started);
                    if let Err(e) = applied {
                        report.result = "apply_failed";
                        report.error = Some(e.to_string());
                    }
                }
            }
        }
    }
    let elapsed = started.elapsed();
    report.duration_ms = elapsed.as_secs_f64() * 1000.0;
    metrics::counter!(metric::ROUTE_REBUILDS, "result" => report.result).increment(1);
    metrics::histogram!(metric::ROUTE_REBUILD_DURATION).record(elapsed.as_secs_f64());
    match &report.error {
        None => tracing::info!(
            catalog_version = report.catalog_version,
            instances = catalog.len(),
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
    if let Ok(mut last) = state.last_rebuild.lock() {
        *last = Some(report);
    }
}

/// The policies to load: the file's, plus the embedded routing policy when discovery runs.
pub(crate) fn effective_policies(
    cfg: &Config,
    discovery: Option<&DiscoveryState>,
) -> Vec<PolicyConfig> {
    let mut policies = cfg.policies.clone();
    if let Some(builtin) = discovery.and_then(DiscoveryState::builtin_policy) {
        policies.push(builtin);
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

/// The catalog as the routing world sees it, without the instances deregistered for staying
/// critical.
pub(crate) fn policy_input(
    catalog: &Catalog,
    statuses: &crate::discovery_health::Statuses,
) -> Vec<types::Instance> {
    let health = &statuses.health;
    catalog
        .instances()
        .filter(|i| !statuses.deregistered.contains(&i.id))
        .map(|i| types::Instance {
            id: i.id.clone(),
            service: i.service.clone(),
            address: i.address.clone(),
            port: i.port,
            tags: i.tags.clone(),
            metadata: i.meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            // The active checker's status (discovery_health.rs); `unknown` before its first
            // probe and for instances without a check.
            health: health
                .get(&i.id)
                .copied()
                .unwrap_or(types::HealthStatus::Unknown),
        })
        .collect()
}

/// Turns the policy's routes into services and routes on `listener`; returns what it skipped.
pub(crate) async fn translate(
    routes: &[types::Route],
    listener: &str,
    base: &Config,
    catalog: &Catalog,
    held_ports: &[u16],
) -> (Discovered, Vec<String>) {
    let mut skipped = Vec::new();
    // What decides the proxy service of each route in `out_routes`.
    let mut per_route: Vec<PendingRoute> = Vec::new();
    let mut out_routes = Vec::new();
    let mut resolved: BTreeMap<(String, u16), Option<SocketAddr>> = BTreeMap::new();
    // Where each instance's registration says its check probes, by instance address; used
    // when its service runs the registrations' check.
    let mut check_targets = BTreeMap::new();
    for route in routes {
        let label = format!(
            "{}{}",
            route.host.as_deref().unwrap_or(""),
            if route.path_prefix.is_empty() {
                route
                    .listen_port
                    .map(|p| format!(":{p}"))
                    .unwrap_or_default()
            } else {
                route.path_prefix.clone()
            }
        );
        let mixed = route.targets.iter().any(|t| t.service != route.service);
        let unsupported = match route.protocol {
            types::Protocol::Tcp if route.listen_port.is_none() => {
                Some("a TCP route needs a `:PORT`".to_owned())
            }
            types::Protocol::Tcp => {
                tcp_port_problem(route.listen_port, base, held_ports).map(str::to_owned)
            }
            types::Protocol::Http | types::Protocol::Https
                if !route.path_prefix.starts_with('/') =>
            {
                Some("the path does not start with '/'".to_owned())
            }
            types::Protocol::Http | types::Protocol::Https => None,
        };
        let rules = match unsupported {
            Some(reason) => Err(reason),
            None => route_rules(route, base),
        };
        let (rules, tls) = match rules {
            Ok(found) => found,
            Err(reason) => {
                skipped.push(format!(
                    "route `{label}` of service `{}`: {reason}",
                    route.service
                ));
                continue;
            }
        };
        let host = match route.host.as_deref() {
            None => HostMatch::Any,
            Some(h) => match h.strip_prefix("*.") {
                Some(rest) => HostMatch::Wildcard(rest.to_ascii_lowercase()),
                None => HostMatch::Exact(h.to_ascii_lowercase()),
            },
        };
        let tcp_port = route
            .listen_port
            .filter(|_| route.protocol == types::Protocol::Tcp);
        let duplicate_of_file = tcp_port.is_none()
            && base
                .routes
                .iter()
                .any(|r| r.listener == listener && r.host == host && r.path == route.path_prefix);
        if duplicate_of_file {
            skipped.push(format!(
                "route `{label}` of service `{}`: the configuration file defines this route; the file wins",
                route.service
            ));
            continue;
        }
        let mut instances: Vec<InstanceConfig> = Vec::new();
        for target in &route.targets {
            if target.weight <= 0.0 {
                continue;
            }
            let key = (target.address.clone(), target.port);
            let address = match resolved.get(&key) {
                Some(found) => *found,
                None => {
                    let found = resolve(&target.address, target.port).await;
                    if found.is_none() {
                        skipped.push(format!(
                            "instance `{}` of service `{}`: cannot resolve `{}`",
                            target.instance_id, target.service, target.address
                        ));
                    }
                    resolved.insert(key, found);
                    found
                }
            };
            let Some(address) = address else { continue };
            if instances.iter().any(|i| i.address == address) {
                continue;
            }
            if let std::collections::btree_map::Entry::Vacant(slot) = check_targets.entry(address) {
                let found =
                    registered_check_target(catalog, &target.instance_id, address, &mut resolved)
                        .await
                        .unwrap_or_else(|reason| {
                            skipped.push(reason);
                            (None, None)
                        });
                slot.insert(found);
            }
            instances.push(InstanceConfig {
                // Shares in [0, 1] onto the proxy's integer weights (1..=10000).
                weight: ((target.weight * 10_000.0).round() as u32).clamp(1, 10_000),
                ..InstanceConfig::new(address)
            });
        }
        out_routes.push(RouteConfig {
            name: format!("discovered:{label}"),
            listener: listener.to_owned(),
            host,
            path: route.path_prefix.clone(),
            strip: route.strip.clone(),
            prepend: route
                .prepend
                .as_ref()
                .map(|p| p.trim_end_matches('/').to_owned()),
            service: route.service.clone(),
            redirect: rules.redirect,
            access: rules.access,
            upstream_host: rules.upstream_host,
            upgrades: sluice_config::default_upgrades(),
        });
        instances.sort_by_key(|i| i.address);
        per_route.push(PendingRoute {
            service: route.service.clone(),
            label,
            instances,
            tls,
            tcp_port,
            mixed,
        });
    }
    // Routes of one service usually target all its instances: one proxy service. When tags
    // give its routes different target sets (instance a: `/a`, instance b: `/b`), each set
    // is its own proxy service, `<service>@<route>`, so a route reaches only its targets.
    // Routes speaking TLS to their targets (`proto=https`) and routes that do not cannot
    // share a proxy service either, so the TLS settings are part of a set.
    type TargetSet<'a> = (
        &'a Vec<InstanceConfig>,
        &'a Option<sluice_config::ServiceTlsConfig>,
    );
    let mut sets: BTreeMap<&str, Vec<TargetSet<'_>>> = BTreeMap::new();
    for pending in &per_route {
        let known = sets.entry(pending.service.as_str()).or_default();
        let set = (&pending.instances, &pending.tls);
        if !known.contains(&set) {
            known.push(set);
        }
    }
    type ServiceParts = (
        String,
        Vec<InstanceConfig>,
        Option<sluice_config::ServiceTlsConfig>,
    );
    let mut services: BTreeMap<String, ServiceParts> = BTreeMap::new();
    for (route, pending) in out_routes.iter_mut().zip(&per_route) {
        let service = &pending.service;
        // A route mixing services is always its own proxy service: it is not `service`.
        let name = if pending.mixed || sets.get(service.as_str()).map_or(0, Vec::len) > 1 {
            format!("{service}@{}", pending.label)
        } else {
            service.clone()
        };
        route.service = name.clone();
        services.entry(name).or_insert_with(|| {
            (
                service.clone(),
                pending.instances.clone(),
                pending.tls.clone(),
            )
        });
    }
    // TCP routes become listeners of their own (`urlprefix-:PORT proto=tcp`).
    let mut listeners = Vec::new();
    let mut http_routes = Vec::with_capacity(out_routes.len());
    for (route, pending) in out_routes.into_iter().zip(&per_route) {
        match &pending.tcp_port {
            None => http_routes.push(route),
            Some(port) => match tcp_listener(base, *port, &route.service) {
                Some(mut listener) => {
                    // `allow=` on a TCP route: the listener's source allow-list.
                    if let Some(access) = &route.access {
                        listener.authz = Some(sluice_config::ListenerAuthzConfig {
                            allow_cidr: access.networks.clone(),
                            ..Default::default()
                        });
                    }
                    listeners.push(listener);
                }
                None => skipped.push(format!("route `:{port}`: no default TCP listener settings")),
            },
        }
    }
    let mut out_routes = http_routes;
    let checks = declared_checks(catalog);
    let mut out_services = Vec::with_capacity(services.len());
    for (name, (service, mut instances, tls)) in services {
        // A [[service]] of the same name in the file gives the settings and keeps its own
        // instances; discovered ones are added.
        let template = base.service(&service).cloned().inspect(|file| {
            for own in file.instances.iter().rev() {
                if !instances.iter().any(|i| i.address == own.address) {
                    instances.insert(0, own.clone());
                }
            }
        });
        let template = template.or_else(|| default_service(&service)).map(|mut t| {
            t.name = name.clone();
            t
        });
        match template {
            Some(mut template) => {
                // The file's [service.health] wins; otherwise the registrations' own check,
                // each instance probed where its registration says.
                if template.health.is_none() {
                    match declared_check(&checks, &service) {
                        Some(Ok(health)) => {
                            template.health = Some(health);
                            apply_check_targets(&mut instances, &check_targets);
                        }
                        Some(Err(reason)) => skipped.push(format!(
                            "health check of service `{name}`: {reason}; the service runs without one"
                        )),
                        None => {}
                    }
                }
                // `proto=https`: the route's TLS settings (built from the file's, if any).
                if tls.is_some() {
                    template.tls = tls;
                }
                out_services.push(ServiceConfig {
                    instances,
                    ..template
                });
            }
            None => {
                // Only if sluice-config's own defaults stopped validating.
                skipped.push(format!("service `{name}`: no default service settings"));
                out_routes.retain(|r| r.service != name);
                listeners.retain(|l| {
                    l.tcp
                        .as_ref()
                        .is_none_or(|t| t.service.as_deref() != Some(name.as_str()))
                });
            }
        }
    }
    (
        Discovered {
            services: out_services,
            routes: out_routes,
            listeners,
        },
        skipped,
    )
}

/// A route being translated, with what decides its proxy service.
struct PendingRoute {
    service: String,
    label: String,
    instances: Vec<InstanceConfig>,
    /// `proto=https`: TLS to the targets.
    tls: Option<sluice_config::ServiceTlsConfig>,
    tcp_port: Option<u16>,
    /// The targets belong to several services (a weighted canary).
    mixed: bool,
}

/// A route's own rules, in the file's model (what `[[route]]` keys would give).
#[derive(Debug, Default)]
struct Rules {
    redirect: Option<sluice_config::RedirectConfig>,
    access: Option<sluice_config::AccessRules>,
    upstream_host: Option<sluice_config::UpstreamHost>,
}

/// Where the system's CA bundle usually is (Debian/Ubuntu, Fedora/RHEL, Alpine/macOS-style).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The policy's `redirect=`, `allow=`/`deny=` and `host=` as the file's route model, and the
/// TLS of a `proto=https` route; why the route cannot be served, if it cannot. The policy's
/// values are checked again here with the file's rules: any routing policy may produce them.
fn route_rules(
    route: &types::Route,
    base: &Config,
) -> Result<(Rules, Option<sluice_config::ServiceTlsConfig>), String> {
    let mut rules = Rules::default();
    if let Some(redirect) = &route.redirect {
        if !sluice_config::RedirectConfig::valid_code(i64::from(redirect.code)) {
            return Err(format!(
                "redirect code {} is not one of 301, 302, 303, 307, 308",
                redirect.code
            ));
        }
        if let Some(problem) = sluice_config::RedirectConfig::url_problem(&redirect.url) {
            return Err(format!("redirect URL `{}`: {problem}", redirect.url));
        }
        rules.redirect = Some(sluice_config::RedirectConfig {
            code: redirect.code,
            url: redirect.url.clone(),
        });
    }
    if let Some(first) = route.access.first() {
        let action = match first.action {
            types::AccessAction::Allow => sluice_config::AccessAction::Allow,
            types::AccessAction::Deny => sluice_config::AccessAction::Deny,
        };
        // Serving the route with some of its rules dropped could open it to everyone.
        if route.access.iter().any(|r| r.action != first.action) {
            return Err("allow= and deny= cannot be combined on one route".into());
        }
        let networks = route
            .access
            .iter()
            .map(|r| {
                sluice_config::AccessRules::parse_network(&r.cidr)
                    .ok_or_else(|| format!("`{}` is not an address or CIDR", r.cidr))
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules.access = Some(sluice_config::AccessRules { action, networks });
    }
    if let Some(host) = &route.upstream_host {
        rules.upstream_host = Some(
            sluice_config::UpstreamHost::parse(host)
                .ok_or_else(|| format!("host=`{host}` is not a host name (or `dst`)"))?,
        );
    }
    if route.protocol == types::Protocol::Tcp {
        if rules.redirect.is_some() || rules.upstream_host.is_some() {
            return Err("redirect= and host= have no meaning on a TCP route".into());
        }
        // A TCP listener has a source allow-list but no deny list; serving the route without
        // its rule would open it.
        if rules
            .access
            .as_ref()
            .is_some_and(|a| a.action == sluice_config::AccessAction::Deny)
        {
            return Err("deny= is not supported on TCP routes (use allow=)".into());
        }
    }
    let tls = match route.protocol {
        types::Protocol::Https => Some(https_settings(route, base)?),
        _ => None,
    };
    Ok((rules, tls))
}

/// `proto=https`: the `[service.tls]` of the file's `[[service]]` of that name when it has one
/// (its CA, client certificate, server name), else the system CA bundle; `tlsskipverify=true`
/// turns verification off. The certificate is checked against the instance's address: its
/// registered host name when every target registered the same one, else each instance's IP.
fn https_settings(
    route: &types::Route,
    base: &Config,
) -> Result<sluice_config::ServiceTlsConfig, String> {
    let mut tls = base
        .service(&route.service)
        .and_then(|s| s.tls.clone())
        .unwrap_or_default();
    if route.tls.skip_verify {
        tls.insecure_skip_verify = true;
    }
    if tls.ca.is_none() && !tls.insecure_skip_verify {
        tls.ca = SYSTEM_CA_BUNDLES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file());
        if tls.ca.is_none() {
            return Err(format!(
                "proto=https needs CA certificates: none of {} exists; give [[service]] name = \"{}\" a [service.tls] ca, or add tlsskipverify=true",
                SYSTEM_CA_BUNDLES.join(", "),
                route.service
            ));
        }
    }
    if tls.server_name.is_none() {
        let mut names = route.targets.iter().map(|t| t.address.as_str());
        if let Some(first) = names.next()
            && first.parse::<IpAddr>().is_err()
            && names.all(|n| n == first)
        {
            tls.server_name = Some(first.to_owned());
        }
    }
    Ok(tls)
}

/// The file's configuration plus what discovery found. A discovered service named like a file
/// service takes the file's settings and adds its instances to the file's.
pub(crate) fn merge(base: &Config, discovered: &Discovered) -> Config {
    let mut merged = base.clone();
    for service in &discovered.services {
        match merged.services.iter_mut().find(|s| s.name == service.name) {
            Some(existing) => {
                // The registrations' check, when the file's [[service]] declares none (the
                // discovered service was built from it, so its health is the file's if any).
                if existing.health.is_none() {
                    existing.health.clone_from(&service.health);
                }
                for instance in &service.instances {
                    if !existing
                        .instances
                        .iter()
                        .any(|i| i.address == instance.address)
                    {
                        existing.instances.push(instance.clone());
                    }
                }
            }
            None => merged.services.push(service.clone()),
        }
    }
    merged.routes.extend(discovered.routes.iter().cloned());
    merged
        .listeners
        .extend(discovered.listeners.iter().cloned());
    merged
}

/// Applies `[routing] overrides` (Fabio's `route add|del|weight`) in order to the policy's
/// routes. Shares are kept summing to 1: a fixed `weight` gives the service that share of the
/// route, split evenly among its targets, and the other targets share the rest in their
/// previous proportions; removing targets rescales the remaining ones.
pub(crate) fn apply_overrides(routes: &mut Vec<types::Route>, overrides: &[RouteOverride]) {
    let matches = |route: &types::Route, key: &RouteKey| {
        route.protocol != types::Protocol::Tcp
            && route.host.as_deref() == key.host.as_deref()
            && route.path_prefix == key.path
    };
    for command in overrides {
        match command {
            RouteOverride::Add {
                service,
                route: key,
                target,
                weight,
            } => {
                let index = match routes.iter().position(|r| matches(r, key)) {
                    Some(index) => index,
                    None => {
                        routes.push(types::Route {
                            host: key.host.clone(),
                            path_prefix: key.path.clone(),
                            listen_port: None,
                            service: service.clone(),
                            targets: Vec::new(),
                            strip: None,
                            prepend: None,
                            protocol: types::Protocol::Http,
                            tls: types::TlsOptions { skip_verify: false },
                            upstream_host: None,
                            redirect: None,
                            access: Vec::new(),
                        });
                        routes.len() - 1
                    }
                };
                let route = &mut routes[index];
                let already = route.targets.iter().any(|t| {
                    t.service == *service
                        && t.port == target.port()
                        && t.address == target.ip().to_string()
                });
                if !already {
                    let count = route.targets.len() as f64;
                    route.targets.push(types::RouteTarget {
                        instance_id: format!("override:{target}"),
                        service: service.clone(),
                        address: target.ip().to_string(),
                        port: target.port(),
                        // An equal share until a weight says otherwise.
                        weight: 1.0 / (count + 1.0),
                    });
                }
                match weight {
                    Some(weight) => set_share(route, service, *weight),
                    None => normalise(route),
                }
            }
            RouteOverride::Del {
                service,
                route: key,
                target,
            } => {
                for route in routes.iter_mut() {
                    if key.as_ref().is_some_and(|k| !matches(route, k)) {
                        continue;
                    }
                    route.targets.retain(|t| {
                        t.service != *service
                            || target.is_some_and(|a| {
                                t.port != a.port() || t.address != a.ip().to_string()
                            })
                    });
                    normalise(route);
                }
                routes.retain(|r| !r.targets.is_empty());
            }
            RouteOverride::Weight {
                service,
                route: key,
                weight,
            } => {
                for route in routes.iter_mut().filter(|r| matches(r, key)) {
                    set_share(route, service, *weight);
                }
            }
        }
    }
}

/// Scales a route's shares to sum to 1 (equal shares when they sum to 0).
fn normalise(route: &mut types::Route) {
    let sum: f64 = route.targets.iter().map(|t| t.weight).sum();
    let count = route.targets.len() as f64;
    for target in &mut route.targets {
        target.weight = if sum > 0.0 {
            target.weight / sum
        } else {
            1.0 / count
        };
    }
}

/// Gives `service`'s targets `share` of the route in total; the others share `1 - share`.
fn set_share(route: &mut types::Route, service: &str, share: f64) {
    let (mine, others): (Vec<usize>, Vec<usize>) =
        (0..route.targets.len()).partition(|&i| route.targets[i].service == service);
    if mine.is_empty() {
        return;
    }
    let others_sum: f64 = others.iter().map(|&i| route.targets[i].weight).sum();
    let share = if others.is_empty() { 1.0 } else { share };
    for &i in &mine {
        route.targets[i].weight = share / mine.len() as f64;
    }
    for &i in &others {
        let previous = route.targets[i].weight;
        route.targets[i].weight = if others_sum > 0.0 {
            (1.0 - share) * previous / others_sum
        } else {
            (1.0 - share) / others.len() as f64
        };
    }
}

/// Why `port` cannot take a discovered TCP listener, if it cannot. A port the file's listeners
/// or the admin API use is refused; so is one another process holds, checked by binding it
/// now — an apply that fails to bind would keep the whole previous table, so one bad tag must
/// not get that far. Ports the last discovered table already holds are ours and skip the test.
fn tcp_port_problem(port: Option<u16>, base: &Config, held: &[u16]) -> Option<&'static str> {
    let port = port?;
    let ip = base.routing.tcp_bind;
    if base.admin.bind.port() == port || base.listeners.iter().any(|l| l.bind.port() == port) {
        return Some("the port is used by a listener of the configuration file (or the admin API)");
    }
    if !held.contains(&port) && std::net::TcpListener::bind((ip, port)).is_err() {
        return Some("the port cannot be bound (in use by another process, or not permitted)");
    }
    None
}

/// A TCP listener with every default on `[routing] tcp_bind`:`port`, relaying to `service`.
fn tcp_listener(base: &Config, port: u16, service: &str) -> Option<ListenerConfig> {
    static TEMPLATE: std::sync::OnceLock<Option<ListenerConfig>> = std::sync::OnceLock::new();
    let template = TEMPLATE.get_or_init(|| {
        sluice_config::parse_str(
            Path::new("<discovery defaults>"),
            "[[listener]]\nname = \"t\"\nbind = \"127.0.0.1:1\"\nprotocol = \"tcp\"\nservice = \"s\"\n\
             [[service]]\nname = \"s\"\n",
        )
        .ok()
        .and_then(|cfg| cfg.listeners.into_iter().next())
    });
    let mut listener = template.clone()?;
    listener.name = format!("discovered-tcp-{port}");
    listener.bind = SocketAddr::new(base.routing.tcp_bind, port);
    listener.tcp.as_mut()?.service = Some(service.to_owned());
    Some(listener)
}

/// A service with every default, as `[[service]] name = "..."` alone would give.
fn default_service(name: &str) -> Option<ServiceConfig> {
    Some(ServiceConfig::with_defaults(name))
}

pub(crate) async fn resolve(address: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(ip) = address.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    if address.is_empty() {
        return None;
    }
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((address, port))).await {
        Ok(Ok(mut found)) => found.next(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str, service: &str, ports: &[u16]) -> types::Route {
        types::Route {
            host: None,
            path_prefix: path.into(),
            listen_port: None,
            service: service.into(),
            targets: ports
                .iter()
                .map(|port| types::RouteTarget {
                    instance_id: format!("{service}-{port}"),
                    service: service.into(),
                    address: "127.0.0.1".into(),
                    port: *port,
                    weight: 1.0 / ports.len() as f64,
                })
                .collect(),
            strip: None,
            prepend: None,
            protocol: types::Protocol::Http,
            tls: types::TlsOptions { skip_verify: false },
            upstream_host: None,
            redirect: None,
            access: vec![],
        }
    }

    #[tokio::test]
    async fn routes_become_services_split_by_target_set_and_the_file_wins() {
        let base = sluice_config::parse_str(
            "t.toml",
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\n\
             [[route]]\npath = \"/file\"\nservice = \"api\"\n\
             [[service]]\nname = \"api\"\ninstances = [\"127.0.0.1:9\"]\ntimeouts = { connect = \"250ms\" }\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let tcp_route = |port: u16| {
            let mut tcp = route("", "db", &[5432]);
            tcp.protocol = types::Protocol::Tcp;
            tcp.listen_port = Some(port);
            tcp
        };
        let busy = std::net::TcpListener::bind("0.0.0.0:0").unwrap_or_else(|e| panic!("{e}"));
        let busy_port = busy.local_addr().map(|a| a.port()).unwrap_or_default();
        let free_port = std::net::TcpListener::bind("0.0.0.0:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_default();
        let mut guarded = route("/admin", "web", &[1, 2]);
        guarded.access = vec![types::AccessRule {
            action: types::AccessAction::Allow,
            cidr: "10.0.0.0/8".into(),
        }];
        let routes = [
            route("/a", "web", &[1]),
            route("/b", "web", &[2]),
            route("/api", "api", &[3, 4]),
            route("/file", "api", &[3, 4]),
            tcp_route(busy_port),
            tcp_route(free_port),
            guarded,
        ];
        let (found, skipped) = translate(&routes, "web", &base, &Catalog::empty(), &[]).await;
        let services: Vec<(&str, Vec<u16>)> = found
            .services
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.instances.iter().map(|i| i.address.port()).collect(),
                )
            })
            .collect();
        assert_eq!(
            services,
            [
                ("api", vec![9, 3, 4]),
                ("db", vec![5432]),
                ("web@/a", vec![1]),
                ("web@/admin", vec![1, 2]),
                ("web@/b", vec![2])
            ],
            "one service per distinct target set; the file's api keeps its instance"
        );
        let api = found
            .services
            .iter()
            .find(|s| s.name == "api")
            .unwrap_or_else(|| panic!("api"));
        assert_eq!(
            api.timeouts.connect,
            Duration::from_millis(250),
            "the file's settings"
        );
        let routes: Vec<(&str, &str)> = found
            .routes
            .iter()
            .map(|r| (r.path.as_str(), r.service.as_str()))
            .collect();
        assert_eq!(
            routes,
            [
                ("/a", "web@/a"),
                ("/b", "web@/b"),
                ("/api", "api"),
                ("/admin", "web@/admin")
            ]
        );
        let admin = &found.routes[3];
        assert_eq!(
            admin.access,
            Some(sluice_config::AccessRules {
                action: sluice_config::AccessAction::Allow,
                networks: sluice_config::AccessRules::parse_network("10.0.0.0/8")
                    .into_iter()
                    .collect(),
            }),
            "allow= becomes the route's access rules"
        );
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped[0].contains("the file wins"), "{skipped:?}");
        assert!(skipped[1].contains("cannot be bound"), "{skipped:?}");
        assert_eq!(found.listeners.len(), 1);
        assert_eq!(found.listeners[0].bind.port(), free_port);
        assert_eq!(
            found.listeners[0]
                .tcp
                .as_ref()
                .and_then(|t| t.service.as_deref()),
            Some("db")
        );
        let merged = merge(&base, &found);
        assert_eq!(merged.routes.len(), 5);
        assert_eq!(merged.services.len(), 5);
        assert_eq!(merged.listeners.len(), 2);
        drop(busy);
    }

    #[tokio::test]
    async fn route_options_become_route_fields_and_bad_ones_skip_the_route() {
        let base = sluice_config::parse_str(
            "t.toml",
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut moved = route("/old", "web", &[1]);
        moved.redirect = Some(types::Redirect {
            code: 308,
            url: "https://new.example.com$path".into(),
        });
        moved.upstream_host = Some("dst".into());
        let mut secure = route("/secure", "web", &[1]);
        secure.protocol = types::Protocol::Https;
        secure.tls.skip_verify = true;
        let mut bad_url = route("/bad", "web", &[1]);
        bad_url.redirect = Some(types::Redirect {
            code: 301,
            url: "ftp://x".into(),
        });
        let mut mixed = route("/mixed", "web", &[1]);
        mixed.access = vec![
            types::AccessRule {
                action: types::AccessAction::Allow,
                cidr: "10.0.0.0/8".into(),
            },
            types::AccessRule {
                action: types::AccessAction::Deny,
                cidr: "10.1.0.0/16".into(),
            },
        ];
        let free_port = || {
            std::net::TcpListener::bind("0.0.0.0:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap_or_default()
        };
        let tcp = |port: u16, action: types::AccessAction| {
            let mut tcp = route("", "db", &[5432]);
            tcp.protocol = types::Protocol::Tcp;
            tcp.listen_port = Some(port);
            tcp.access = vec![types::AccessRule {
                action,
                cidr: "10.0.0.0/8".into(),
            }];
            tcp
        };
        let routes = [
            moved,
            secure,
            bad_url,
            mixed,
            tcp(free_port(), types::AccessAction::Allow),
            tcp(free_port(), types::AccessAction::Deny),
        ];
        let (found, skipped) = translate(&routes, "web", &base, &Catalog::empty(), &[]).await;
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped[0].contains("ftp://x"), "{skipped:?}");
        assert!(skipped[1].contains("cannot be combined"), "{skipped:?}");
        assert!(skipped[2].contains("deny= is not supported"), "{skipped:?}");
        let allow: Vec<String> = found.listeners[0]
            .authz
            .iter()
            .flat_map(|a| a.allow_cidr.iter().map(ToString::to_string))
            .collect();
        assert_eq!(
            allow,
            ["10.0.0.0/8"],
            "allow= on a TCP route: the listener's allow-list"
        );
        let old = &found.routes[0];
        assert_eq!(
            old.redirect.as_ref().map(|r| (r.code, r.url.as_str())),
            Some((308, "https://new.example.com$path"))
        );
        assert_eq!(old.upstream_host, Some(sluice_config::UpstreamHost::Dst));
        // Same targets, different TLS: two proxy services.
        let tls: Vec<(&str, Option<bool>)> = found
            .services
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.tls.as_ref().map(|t| t.insecure_skip_verify),
                )
            })
            .collect();
        assert_eq!(
            tls,
            [
                ("db", None),
                ("web@/old", None),
                ("web@/secure", Some(true))
            ]
        );
    }

    #[test]
    fn a_file_service_without_health_gets_the_registrations_check() {
        let base = sluice_config::parse_str(
            Path::new("sluice.toml"),
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
             [[service]]\nname = \"web\"\ntimeouts = { connect = \"500ms\" }\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut service = base.services[0].clone();
        let check = serde_json::from_str(r#"{"tcp": "127.0.0.1:8001", "interval": "1s"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        service.health = Some(
            crate::discovery_checks::health_from_check(&check).unwrap_or_else(|e| panic!("{e}")),
        );
        let found = Discovered {
            services: vec![service],
            ..Discovered::default()
        };
        let merged = merge(&base, &found);
        assert_eq!(merged.services.len(), 1);
        let web = &merged.services[0];
        assert_eq!(
            web.timeouts.connect,
            Duration::from_millis(500),
            "the file's"
        );
        let health = web.health.as_ref().unwrap_or_else(|| panic!("no check"));
        assert_eq!(
            health.interval,
            Duration::from_secs(1),
            "the registration's"
        );
    }

    #[test]
    fn overrides_add_delete_and_reweight() {
        let parse = |text: &str| {
            sluice_config::parse_str(
                "o.toml",
                &format!("[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\n[routing]\noverrides = \"\"\"\n{text}\"\"\"\n"),
            )
            .unwrap_or_else(|e| panic!("{e}"))
            .routing
            .overrides
        };
        let mut routes = vec![route("/web", "web", &[1, 2]), route("/old", "old", &[3])];
        apply_overrides(
            &mut routes,
            &parse(
                "route add canary /web http://127.0.0.1:9/ weight 0.1\n\
                 route del old\n\
                 route add api /api http://127.0.0.1:7\n\
                 route del web /web http://127.0.0.1:2\n",
            ),
        );
        let shares: Vec<(&str, Vec<(u16, f64)>)> = routes
            .iter()
            .map(|r| {
                (
                    r.path_prefix.as_str(),
                    r.targets
                        .iter()
                        .map(|t| (t.port, (t.weight * 1000.0).round() / 1000.0))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            shares,
            [
                ("/web", vec![(1, 0.818), (9, 0.182)]),
                ("/api", vec![(7, 1.0)])
            ],
            "the canary had 0.1 next to two web targets (0.45 each); deleting one rescales the rest in proportion"
        );
        apply_overrides(&mut routes, &parse("route weight canary /web weight 0.2\n"));
        let web: Vec<f64> = routes[0]
            .targets
            .iter()
            .map(|t| (t.weight * 1000.0).round() / 1000.0)
            .collect();
        assert_eq!(web, [0.8, 0.2]);
    }

    #[test]
    fn every_metric_is_documented() {
        let doc = include_str!("../../../docs/metrics.md");
        for name in metric::ALL.iter().chain(crate::discovery_ops::metric::ALL) {
            assert!(
                doc.contains(&format!("`{name}`")),
                "{name} is not in docs/metrics.md"
            );
        }
    }
}
