//! The policy's routes → services, routes and listeners in the file's model.
//!
//! In three steps: each route on its own ([`Translator::route`]: its options, its targets
//! resolved); the routes' target sets become proxy services ([`name_services`]); TCP routes
//! become listeners and every service gets its settings ([`Translator::finish`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use sluice_config::{
    Config, HostMatch, InstanceConfig, ListenerAuthzConfig, ListenerConfig, RouteConfig,
    ServiceConfig, ServiceTlsConfig,
};
use sluice_discovery::Catalog;
use sluice_policy_host::types;

use crate::checks::{
    CheckTarget, apply_check_targets, declared_check, declared_checks, registered_check_target,
};
use crate::rules::{Rules, route_rules};
use crate::{Discovered, ParkedInstance, Resolver};

/// What the routes are translated against.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The `[routing] listener` HTTP routes go on.
    pub listener: &'a str,
    /// The configuration file: its services give settings, its routes win, its ports are
    /// taken.
    pub base: &'a Config,
    /// Where each instance's registration (and its check) is.
    pub catalog: &'a Catalog,
    /// TCP ports the running discovered listeners hold (ours: not test-bound again).
    pub held_ports: &'a [u16],
    /// Critical instances that stay in the proxy services they were probed in.
    pub parked: &'a [ParkedInstance],
}

/// Turns the policy's routes into services, routes and listeners; returns what it skipped and
/// why.
pub async fn routes_to_config(
    routes: &[types::Route],
    scope: Scope<'_>,
) -> (Discovered, Vec<String>) {
    let mut translator = Translator {
        scope,
        skipped: Vec::new(),
        resolver: Resolver::default(),
        check_targets: BTreeMap::new(),
    };
    let mut translated = Vec::with_capacity(routes.len());
    for route in routes {
        if let Some(found) = translator.route(route).await {
            translated.push(found);
        }
    }
    let mut services = name_services(&mut translated);
    translator.keep_parked(&mut services).await;
    let discovered = translator.finish(translated, services);
    (discovered, translator.skipped)
}

/// A route in the file's model, with what decides its proxy service.
struct Translated {
    route: RouteConfig,
    /// The catalog service the policy named.
    service: String,
    label: String,
    instances: Vec<InstanceConfig>,
    /// `proto=https`: TLS to the targets.
    tls: Option<ServiceTlsConfig>,
    tcp_port: Option<u16>,
    /// The targets belong to several services (a weighted canary).
    mixed: bool,
}

/// A proxy service to build: its catalog service, instances and TLS.
struct ServicePlan {
    catalog_service: String,
    instances: Vec<InstanceConfig>,
    tls: Option<ServiceTlsConfig>,
}

struct Translator<'a> {
    scope: Scope<'a>,
    skipped: Vec<String>,
    resolver: Resolver,
    /// Where each instance's registration says its check probes, by instance address; used
    /// when its service runs the registrations' check.
    check_targets: BTreeMap<SocketAddr, CheckTarget>,
}

impl Translator<'_> {
    /// One route, or `None` (the reason recorded) when it cannot be served.
    async fn route(&mut self, route: &types::Route) -> Option<Translated> {
        let label = label(route);
        let (rules, tls) = match self.servable(route) {
            Ok(found) => found,
            Err(reason) => {
                self.skip_route(&label, route, &reason);
                return None;
            }
        };
        let host = host_match(route.host.as_deref());
        let tcp_port = route
            .listen_port
            .filter(|_| route.protocol == types::Protocol::Tcp);
        let base = self.scope.base;
        let defined_in_file = tcp_port.is_none()
            && base.routes.iter().any(|r| {
                r.listener == self.scope.listener && r.host == host && r.path == route.path_prefix
            });
        if defined_in_file {
            let reason = "the configuration file defines this route; the file wins";
            self.skip_route(&label, route, reason);
            return None;
        }
        let instances = self.instances(route).await;
        Some(Translated {
            route: self.route_config(route, &label, host, rules),
            service: route.service.clone(),
            label,
            instances,
            tls,
            tcp_port,
            mixed: route.targets.iter().any(|t| t.service != route.service),
        })
    }

    /// The route's rules and TLS in the file's model, or why it cannot be served.
    fn servable(&self, route: &types::Route) -> Result<(Rules, Option<ServiceTlsConfig>), String> {
        let base = self.scope.base;
        match route.protocol {
            types::Protocol::Tcp if route.listen_port.is_none() => {
                return Err("a TCP route needs a `:PORT`".to_owned());
            }
            types::Protocol::Tcp => {
                if let Some(problem) =
                    tcp_port_problem(route.listen_port, base, self.scope.held_ports)
                {
                    return Err(problem.to_owned());
                }
            }
            types::Protocol::Http | types::Protocol::Https
                if !route.path_prefix.starts_with('/') =>
            {
                return Err("the path does not start with '/'".to_owned());
            }
            types::Protocol::Http | types::Protocol::Https => {}
        }
        route_rules(route, base)
    }

    fn skip_route(&mut self, label: &str, route: &types::Route, reason: &str) {
        self.skipped.push(format!(
            "route `{label}` of service `{}`: {reason}",
            route.service
        ));
    }

    fn route_config(
        &self,
        route: &types::Route,
        label: &str,
        host: HostMatch,
        rules: Rules,
    ) -> RouteConfig {
        let attached = self.scope.base.routing.request_policy_for(&route.service);
        RouteConfig {
            name: format!("discovered:{label}"),
            listener: self.scope.listener.to_owned(),
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
            rate_limit: None,
            policy: attached.map(|p| p.policy.clone()),
            policy_services: attached.map(|p| p.services.clone()).unwrap_or_default(),
        }
    }

    /// The route's targets with a share, resolved, once per address, ordered by address.
    async fn instances(&mut self, route: &types::Route) -> Vec<InstanceConfig> {
        let mut instances: Vec<InstanceConfig> = Vec::new();
        for target in route.targets.iter().filter(|t| t.weight > 0.0) {
            let Some(address) = self.resolve_target(target).await else {
                continue;
            };
            if instances.iter().any(|i| i.address == address) {
                continue;
            }
            self.find_check_target(&target.instance_id, address).await;
            instances.push(InstanceConfig {
                // Shares in [0, 1] onto the proxy's integer weights (1..=10000).
                weight: ((target.weight * 10_000.0).round() as u32).clamp(1, 10_000),
                ..InstanceConfig::new(address)
            });
        }
        instances.sort_by_key(|i| i.address);
        instances
    }

    /// Parked instances join the proxy services they were probed in; a service no route uses
    /// any more is kept for them alone.
    async fn keep_parked(&mut self, services: &mut BTreeMap<String, ServicePlan>) {
        for parked in self.scope.parked {
            let plan = services
                .entry(parked.proxy_service.clone())
                .or_insert_with(|| ServicePlan {
                    catalog_service: parked.catalog_service.clone(),
                    instances: Vec::new(),
                    tls: None,
                });
            if plan.instances.iter().any(|i| i.address == parked.address) {
                continue;
            }
            plan.instances.push(InstanceConfig::new(parked.address));
            plan.instances.sort_by_key(|i| i.address);
            self.find_check_target(&parked.id, parked.address).await;
        }
    }

    /// Where the registration of instance `id` says its check probes it, looked up once per
    /// address.
    async fn find_check_target(&mut self, id: &str, address: SocketAddr) {
        if self.check_targets.contains_key(&address) {
            return;
        }
        let catalog = self.scope.catalog;
        let found = registered_check_target(catalog, id, address, &mut self.resolver)
            .await
            .unwrap_or_else(|reason| {
                self.skipped.push(reason.to_string());
                CheckTarget::default()
            });
        self.check_targets.insert(address, found);
    }

    /// The target's address; a name that does not resolve is reported once.
    async fn resolve_target(&mut self, target: &types::RouteTarget) -> Option<SocketAddr> {
        let fresh = !self.resolver.seen(&target.address, target.port);
        let found = self.resolver.resolve(&target.address, target.port).await;
        if found.is_none() && fresh {
            self.skipped.push(format!(
                "instance `{}` of service `{}`: cannot resolve `{}`",
                target.instance_id, target.service, target.address
            ));
        }
        found
    }

    /// TCP routes as listeners, the others as routes, and every proxy service with its
    /// settings; what cannot get settings is dropped with what uses it.
    fn finish(
        &mut self,
        translated: Vec<Translated>,
        services: BTreeMap<String, ServicePlan>,
    ) -> Discovered {
        let mut routes = Vec::with_capacity(translated.len());
        let mut listeners = Vec::new();
        for found in translated {
            match found.tcp_port {
                None => routes.push(found.route),
                Some(port) => listeners.push(tcp_listener(self.scope.base, port, &found.route)),
            }
        }
        let checks = declared_checks(self.scope.catalog);
        let services = services
            .into_iter()
            .map(|(name, plan)| self.service(name, plan, &checks))
            .collect();
        Discovered {
            services,
            routes,
            listeners,
        }
    }

    /// A proxy service: the file's `[[service]]` of the catalog name gives the settings and
    /// keeps its own instances (discovered ones are added), else every default.
    fn service(
        &mut self,
        name: String,
        plan: ServicePlan,
        checks: &BTreeMap<&str, &sluice_discovery::CheckDefinition>,
    ) -> ServiceConfig {
        let ServicePlan {
            catalog_service,
            mut instances,
            tls,
        } = plan;
        let file = self.scope.base.service(&catalog_service);
        let mut service = file
            .cloned()
            .unwrap_or_else(|| ServiceConfig::with_defaults(&name));
        service.name.clone_from(&name);
        for own in file.iter().flat_map(|f| f.instances.iter().rev()) {
            if !instances.iter().any(|i| i.address == own.address) {
                instances.insert(0, own.clone());
            }
        }
        // The file's [service.health] wins; otherwise the registrations' own check, each
        // instance probed where its registration says.
        if service.health.is_none() {
            match declared_check(checks, &catalog_service) {
                Some(Ok(health)) => {
                    service.health = Some(health);
                    apply_check_targets(&mut instances, &self.check_targets);
                }
                Some(Err(reason)) => self.skipped.push(format!(
                    "health check of service `{name}`: {reason}; the service runs without one"
                )),
                None => {}
            }
        }
        // `proto=https`: the route's TLS settings (built from the file's, if any).
        if tls.is_some() {
            service.tls = tls;
        }
        ServiceConfig {
            instances,
            ..service
        }
    }
}

/// How a route is named in reports and proxy service names: host and path, or `:PORT`.
fn label(route: &types::Route) -> String {
    let host = route.host.as_deref().unwrap_or("");
    if route.path_prefix.is_empty() {
        let port = route.listen_port.map(|p| format!(":{p}"));
        format!("{host}{}", port.unwrap_or_default())
    } else {
        format!("{host}{}", route.path_prefix)
    }
}

fn host_match(host: Option<&str>) -> HostMatch {
    match host {
        None => HostMatch::Any,
        Some(h) => match h.strip_prefix("*.") {
            Some(rest) => HostMatch::Wildcard(rest.to_ascii_lowercase()),
            None => HostMatch::Exact(h.to_ascii_lowercase()),
        },
    }
}

/// Names each route's proxy service and plans the services. Routes of one service usually
/// target all its instances: one proxy service. When tags give its routes different target
/// sets (instance a: `/a`, instance b: `/b`), each set is its own proxy service,
/// `<service>@<route>`, so a route reaches only its targets. Routes speaking TLS to their
/// targets (`proto=https`) and routes that do not cannot share a proxy service either, so the
/// TLS settings are part of a set. A route mixing services is always its own proxy service.
fn name_services(translated: &mut [Translated]) -> BTreeMap<String, ServicePlan> {
    type TargetSet<'a> = (&'a [InstanceConfig], &'a Option<ServiceTlsConfig>);
    let mut sets: BTreeMap<&str, Vec<TargetSet<'_>>> = BTreeMap::new();
    for found in translated.iter() {
        let known = sets.entry(found.service.as_str()).or_default();
        let set = (found.instances.as_slice(), &found.tls);
        if !known.contains(&set) {
            known.push(set);
        }
    }
    let shared: Vec<bool> = translated
        .iter()
        .map(|t| !t.mixed && sets.get(t.service.as_str()).map_or(0, Vec::len) <= 1)
        .collect();
    let mut services = BTreeMap::new();
    for (found, shared) in translated.iter_mut().zip(shared) {
        let name = if shared {
            found.service.clone()
        } else {
            format!("{}@{}", found.service, found.label)
        };
        found.route.service.clone_from(&name);
        services.entry(name).or_insert_with(|| ServicePlan {
            catalog_service: found.service.clone(),
            instances: found.instances.clone(),
            tls: found.tls.clone(),
        });
    }
    services
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

/// A TCP listener with every default on `[routing] tcp_bind`:`port`, relaying to the route's
/// service; `allow=` on the route becomes its source allow-list.
fn tcp_listener(base: &Config, port: u16, route: &RouteConfig) -> ListenerConfig {
    let bind = SocketAddr::new(base.routing.tcp_bind, port);
    let name = format!("discovered-tcp-{port}");
    let mut listener = ListenerConfig::tcp_with_defaults(&name, bind, &route.service);
    if let Some(access) = &route.access {
        listener.authz = Some(ListenerAuthzConfig {
            allow_cidr: access.networks.clone(),
            ..Default::default()
        });
    }
    listener
}
