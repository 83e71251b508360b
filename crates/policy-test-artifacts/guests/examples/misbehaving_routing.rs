//! `routing` guest: one route `/<id>` per instance, unless an instance id is `loop`, `greedy`
//! or `panic`.

use sluice_policy_sdk::{
    Instance, Protocol, Route, RouteEntry, RouteTarget, RoutingPolicy, TlsOptions,
};

struct Misbehaving;

impl RoutingPolicy for Misbehaving {
    fn configure(config: &str) -> Result<Self, String> {
        sluice_policy_test_guests::configure(config).map(|()| Misbehaving)
    }

    fn build_routes(&self, catalog: &[Instance]) -> Result<Vec<RouteEntry>, String> {
        for instance in catalog {
            sluice_policy_test_guests::misbehave_on(&instance.id);
        }
        Ok(catalog
            .iter()
            .map(|instance| {
                RouteEntry::Route(Route {
                    host: None,
                    path_prefix: format!("/{}", instance.id),
                    listen_port: None,
                    service: instance.service.clone(),
                    targets: vec![RouteTarget {
                        instance_id: instance.id.clone(),
                        service: instance.service.clone(),
                        address: instance.address.clone(),
                        port: instance.port,
                        weight: 1.0,
                    }],
                    strip: None,
                    prepend: None,
                    protocol: Protocol::Http,
                    tls: TlsOptions { skip_verify: false },
                    upstream_host: None,
                    redirect: None,
                    access: vec![],
                })
            })
            .collect())
    }
}

sluice_policy_sdk::export_routing!(Misbehaving);
