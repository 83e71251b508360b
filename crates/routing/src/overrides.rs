//! `[routing] overrides` (Fabio's `route add|del|weight`) applied to the policy's routes.

use std::net::SocketAddr;

use sluice_config::{RouteKey, RouteOverride};
use sluice_policy_host::types;

/// Applies `[routing] overrides` (Fabio's `route add|del|weight`) in order to the policy's
/// routes. Shares are kept summing to 1: a fixed `weight` gives the service that share of the
/// route, split evenly among its targets, and the other targets share the rest in their
/// previous proportions; removing targets rescales the remaining ones.
pub fn apply_overrides(routes: &mut Vec<types::Route>, overrides: &[RouteOverride]) {
    for command in overrides {
        match command {
            RouteOverride::Add {
                service,
                route,
                target,
                weight,
            } => add_target(routes, service, route, *target, *weight),
            RouteOverride::Del {
                service,
                route,
                target,
            } => {
                for found in routes.iter_mut() {
                    if route.as_ref().is_none_or(|key| matches(found, key)) {
                        remove_targets(found, service, *target);
                    }
                }
                routes.retain(|r| !r.targets.is_empty());
            }
            RouteOverride::Weight {
                service,
                route,
                weight,
            } => {
                for found in routes.iter_mut().filter(|r| matches(r, route)) {
                    set_share(found, service, *weight);
                }
            }
        }
    }
}

/// Whether an override's route key names `route` (HTTP routes only).
fn matches(route: &types::Route, key: &RouteKey) -> bool {
    route.protocol != types::Protocol::Tcp
        && route.host.as_deref() == key.host.as_deref()
        && route.path_prefix == key.path
}

/// `route add`: `target` joins the route (created when absent) as `service`, with `weight`
/// as its service's share when given.
fn add_target(
    routes: &mut Vec<types::Route>,
    service: &str,
    key: &RouteKey,
    target: SocketAddr,
    weight: Option<f64>,
) {
    let index = match routes.iter().position(|r| matches(r, key)) {
        Some(index) => index,
        None => {
            routes.push(empty_route(key, service));
            routes.len() - 1
        }
    };
    let route = &mut routes[index];
    let address = target.ip().to_string();
    let already = route
        .targets
        .iter()
        .any(|t| t.service == service && t.port == target.port() && t.address == address);
    if !already {
        let count = route.targets.len() as f64;
        route.targets.push(types::RouteTarget {
            instance_id: format!("override:{target}"),
            service: service.to_owned(),
            address,
            port: target.port(),
            // An equal share until a weight says otherwise.
            weight: 1.0 / (count + 1.0),
        });
    }
    match weight {
        Some(weight) => set_share(route, service, weight),
        None => normalise(route),
    }
}

/// An HTTP route at `key` with no target yet.
fn empty_route(key: &RouteKey, service: &str) -> types::Route {
    types::Route {
        host: key.host.clone(),
        path_prefix: key.path.clone(),
        listen_port: None,
        service: service.to_owned(),
        targets: Vec::new(),
        strip: None,
        prepend: None,
        protocol: types::Protocol::Http,
        tls: types::TlsOptions { skip_verify: false },
        upstream_host: None,
        redirect: None,
        access: Vec::new(),
    }
}

/// `route del`: `service`'s targets leave the route (only the one at `target` when given).
fn remove_targets(route: &mut types::Route, service: &str, target: Option<SocketAddr>) {
    route.targets.retain(|t| {
        t.service != service
            || target.is_some_and(|a| t.port != a.port() || t.address != a.ip().to_string())
    });
    normalise(route);
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
