//! `{{name}}`: a Sluice `routing` policy. Every service gets one route, `/<service>` (under
//! `path_prefix`, default `/`), spreading its traffic evenly over the instances whose health
//! is not `critical`.

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_policy_sdk::{
    HealthStatus, Instance, Protocol, Route, RouteEntry, RouteTarget, RoutingPolicy, TlsOptions,
    host,
};

/// `[[policy]] config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Prefix of every route's path.
    path_prefix: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            path_prefix: "/".into(),
        }
    }
}

/// The configured policy, built once per instance by `configure`.
pub struct Policy {
    path_prefix: String,
}

impl RoutingPolicy for Policy {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config =
            serde_json::from_str(config).map_err(|e| format!("invalid config: {e}"))?;
        if !config.path_prefix.starts_with('/') {
            return Err(format!(
                "path_prefix {:?} must start with /",
                config.path_prefix
            ));
        }
        let mut path_prefix = config.path_prefix;
        if !path_prefix.ends_with('/') {
            path_prefix.push('/');
        }
        host::info(&format!("configured: routes under {path_prefix}"));
        Ok(Policy { path_prefix })
    }

    fn build_routes(&self, catalog: &[Instance]) -> Result<Vec<RouteEntry>, String> {
        let mut services: BTreeMap<&str, Vec<&Instance>> = BTreeMap::new();
        for instance in catalog {
            if instance.health != HealthStatus::Critical {
                services
                    .entry(&instance.service)
                    .or_default()
                    .push(instance);
            }
        }
        Ok(services
            .into_iter()
            .map(|(service, instances)| RouteEntry::Route(self.route(service, &instances)))
            .collect())
    }
}

impl Policy {
    fn route(&self, service: &str, instances: &[&Instance]) -> Route {
        let weight = 1.0 / instances.len() as f64;
        Route {
            host: None,
            path_prefix: format!("{}{service}", self.path_prefix),
            listen_port: None,
            service: service.into(),
            targets: instances
                .iter()
                .map(|instance| RouteTarget {
                    instance_id: instance.id.clone(),
                    service: service.into(),
                    address: instance.address.clone(),
                    port: instance.port,
                    weight,
                })
                .collect(),
            strip: None,
            prepend: None,
            protocol: Protocol::Http,
            tls: TlsOptions { skip_verify: false },
            upstream_host: None,
            redirect: None,
            access: Vec::new(),
        }
    }
}

sluice_policy_sdk::export_routing!(Policy);

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, service: &str, health: HealthStatus) -> Instance {
        Instance {
            id: id.into(),
            service: service.into(),
            address: "127.0.0.1".into(),
            port: 8080,
            tags: Vec::new(),
            metadata: Vec::new(),
            health,
        }
    }

    #[test]
    fn one_route_per_service_without_critical_instances() {
        let policy = Policy::configure("{}").unwrap();
        let catalog = [
            instance("web-1", "web", HealthStatus::Passing),
            instance("web-2", "web", HealthStatus::Critical),
            instance("api-1", "api", HealthStatus::Unknown),
        ];
        let entries = policy.build_routes(&catalog).unwrap();
        assert_eq!(entries.len(), 2);
        let RouteEntry::Route(web) = &entries[1] else {
            panic!("expected a route: {entries:?}");
        };
        assert_eq!(web.path_prefix, "/web");
        assert_eq!(web.targets.len(), 1);
    }
}
