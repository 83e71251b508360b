//! The rebuild task: on every new catalog (and when an instance's health, the KV overrides or
//! the file change) it runs the routing policy, turns its routes into configuration
//! (`sluice_routing::routes_to_config`) and hands the result to the application over a
//! channel. Data flows one way: catalog → policy → configuration → `App` applies and swaps.
//! This module never applies anything itself.
//!
//! Failure rules: a bad tag or a route that cannot be served is logged, counted and skipped; a
//! failing policy keeps the last good table (reported, nothing sent).

use std::sync::Arc;
use std::time::Instant;

use sluice_config::Config;
use sluice_discovery::Catalog;
use sluice_policy_host::{RouteTable, RoutingOutcome};
use sluice_proxy::Proxy;
use sluice_routing::{
    Discovered, InstanceHealth, Scope, apply_overrides, policy_input, routes_to_config,
};
use tokio::sync::{mpsc, watch};

use crate::discovery::{DiscoveryState, RebuildReport, metric, ms_since, routing_policy_name};
use crate::policies::Policies;

/// What a rebuild reads: the running proxy (instance health), the policies (the routing
/// policy and the KV it reads) and the configuration file as last loaded.
#[derive(Debug, Clone)]
pub(crate) struct RebuildInputs {
    pub(crate) proxy: Proxy,
    pub(crate) policies: Arc<Policies>,
    pub(crate) base: watch::Receiver<Arc<Config>>,
}

/// Routes rebuilt from one catalog, for the application to apply; it finishes the report.
#[derive(Debug)]
pub(crate) struct Rebuilt {
    pub(crate) discovered: Discovered,
    pub(crate) report: RebuildReport,
    pub(crate) started: Instant,
    pub(crate) instances: usize,
}

/// Rebuilds until the process ends (or the receiving side of `out` goes away).
pub(crate) fn spawn(
    inputs: RebuildInputs,
    state: Arc<DiscoveryState>,
    out: mpsc::Sender<Rebuilt>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut changes = Changes::subscribe(&inputs, &state);
        loop {
            let catalog = Arc::clone(&changes.catalogs.borrow_and_update());
            state.refresh_gauges();
            if let Some(rebuilt) = rebuild(&inputs, &state, catalog).await
                && out.send(rebuilt).await.is_err()
            {
                return;
            }
            if !changes.next(&inputs, &state).await {
                return;
            }
        }
    })
}

/// What starts a rebuild.
struct Changes {
    catalogs: watch::Receiver<Arc<Catalog>>,
    proxy_health: watch::Receiver<u64>,
    recoveries: watch::Receiver<u64>,
    kv: watch::Receiver<u64>,
}

impl Changes {
    fn subscribe(inputs: &RebuildInputs, state: &DiscoveryState) -> Self {
        Changes {
            catalogs: state.discovery.subscribe(),
            proxy_health: inputs.proxy.health_changes(),
            recoveries: state.health.subscribe(),
            kv: inputs.policies.kv.subscribe(),
        }
    }

    /// Waits for the next reason to rebuild; `false` when the catalog's source is gone.
    async fn next(&mut self, inputs: &RebuildInputs, state: &DiscoveryState) -> bool {
        let debounce = || inputs.base.borrow().routing.debounce;
        let more = loop {
            tokio::select! {
                changed = self.catalogs.changed() => break changed.is_ok(),
                () = state.rebuild_now.notified() => break true,
                // An instance went up or down (not every probe: only status changes), or a
                // parked one recovered or was deregistered. Waiting out the debounce folds a
                // burst into one rebuild.
                Ok(()) = self.proxy_health.changed() => {
                    tokio::time::sleep(debounce()).await;
                    break true;
                }
                Ok(()) = self.recoveries.changed() => {
                    tokio::time::sleep(debounce()).await;
                    break true;
                }
                // Any KV key moved: rebuild only if it is `[routing] overrides_key`'s.
                changed = self.kv.changed() => {
                    if changed.is_err() {
                        break false;
                    }
                    let base = Arc::clone(&inputs.base.borrow());
                    if state.kv_overrides.changed(&base, &inputs.policies.kv) {
                        break true;
                    }
                }
            }
        };
        self.proxy_health.borrow_and_update();
        self.recoveries.borrow_and_update();
        more
    }
}

/// One rebuild: `None` when there is nothing to apply (the policy failed, or the routes are
/// the running ones), the report already recorded.
async fn rebuild(
    inputs: &RebuildInputs,
    state: &DiscoveryState,
    catalog: Arc<Catalog>,
) -> Option<Rebuilt> {
    let started = Instant::now();
    let mut report = RebuildReport::new(catalog.version());
    let health = state.health.statuses(&inputs.proxy, &catalog).await;
    let Some(table) = policy_routes(inputs, &catalog, &health, &mut report).await else {
        state.record(report, started, catalog.len());
        return None;
    };
    report_tag_errors(&table, &mut report);
    let translate_started = Instant::now();
    let base = Arc::clone(&inputs.base.borrow());
    let mut routes = table.routes.clone();
    apply_overrides(&mut routes, &base.routing.overrides);
    apply_overrides(
        &mut routes,
        &state.kv_overrides.current(&base, &inputs.policies.kv),
    );
    let held: Vec<u16> = state
        .discovered()
        .listeners
        .iter()
        .map(|l| l.bind.port())
        .collect();
    let scope = Scope {
        listener: base.routing.listener.as_deref().unwrap_or_default(),
        base: &base,
        catalog: &catalog,
        held_ports: &held,
        parked: &health.parked,
    };
    let (discovered, skipped) = routes_to_config(&routes, scope).await;
    for reason in &skipped {
        tracing::warn!(%reason, "discovery: route skipped");
        metrics::counter!(metric::ROUTE_ERRORS, "kind" => "route").increment(1);
    }
    report.skipped.extend(skipped);
    report.routes = discovered.routes.len();
    report.translate_ms = ms_since(translate_started);
    // A catalog change that moves no route (meta, a check's text) applies nothing: the
    // running tables are already these.
    if *state.discovered() == discovered {
        report.result = "unchanged";
        state.record(report, started, catalog.len());
        return None;
    }
    Some(Rebuilt {
        discovered,
        report,
        started,
        instances: catalog.len(),
    })
}

/// The routing policy's table for `catalog`, or `None` with the failure in `report`.
async fn policy_routes(
    inputs: &RebuildInputs,
    catalog: &Catalog,
    health: &InstanceHealth,
    report: &mut RebuildReport,
) -> Option<Arc<RouteTable>> {
    let policy = routing_policy_name(&inputs.base.borrow()).to_owned();
    let Some(handle) = inputs.policies.routing(&policy) else {
        let error = format!("routing policy `{policy}` is not loaded");
        report.failed("policy_failed", error);
        return None;
    };
    let input = policy_input(catalog, health);
    let policy_started = Instant::now();
    let outcome = tokio::task::spawn_blocking(move || handle.build_routes(&input)).await;
    report.policy_ms = ms_since(policy_started);
    match outcome {
        Err(e) => {
            report.failed("policy_failed", format!("routing policy task failed: {e}"));
            None
        }
        Ok(RoutingOutcome::KeepLast { error, .. }) => {
            let error = format!("routing policy `{policy}` failed: {error}");
            report.failed("policy_failed", error);
            None
        }
        Ok(RoutingOutcome::Routes(table)) => Some(table),
    }
}

/// The tags the policy could not read: logged, counted and listed in the report.
fn report_tag_errors(table: &RouteTable, report: &mut RebuildReport) {
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
}
