//! The catalog as the routing world sees it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use sluice_discovery::Catalog;
use sluice_policy_host::types;

/// The catalog's health as the routing policy gets it.
#[derive(Debug, Default)]
pub struct InstanceHealth {
    /// By instance id; instances without an entry are `unknown`.
    pub health: HashMap<String, types::HealthStatus>,
    /// Instance ids deregistered for staying critical: left out of the policy's input.
    pub deregistered: HashSet<String>,
    /// Critical instances kept where the proxy's checker probes them.
    pub parked: Vec<ParkedInstance>,
}

/// An instance the proxy's checker found down. The routing policy may leave it out of every
/// route, but it stays in the proxy service it was probed in (which stays, route-less, if no
/// route uses it any more), so the same checker keeps probing it with its state, and the
/// routes are rebuilt when it passes again. The checker never sends traffic to a down
/// instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedInstance {
    /// The catalog instance id.
    pub id: String,
    pub catalog_service: String,
    /// `<service>` or `<service>@<route>`: where the checker found it down.
    pub proxy_service: String,
    pub address: SocketAddr,
}

/// The policy's input: every catalog instance with its health, without the deregistered ones.
pub fn policy_input(catalog: &Catalog, health: &InstanceHealth) -> Vec<types::Instance> {
    catalog
        .instances()
        .filter(|i| !health.deregistered.contains(&i.id))
        .map(|i| types::Instance {
            id: i.id.clone(),
            service: i.service.clone(),
            address: i.address.clone(),
            port: i.port,
            tags: i.tags.clone(),
            metadata: i.meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            // `unknown` before the checker's first probe and for instances without a check.
            health: health
                .health
                .get(&i.id)
                .copied()
                .unwrap_or(types::HealthStatus::Unknown),
        })
        .collect()
}
