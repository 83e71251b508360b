//! The catalog as the routing world sees it.

use std::collections::{HashMap, HashSet};

use sluice_discovery::Catalog;
use sluice_policy_host::types;

/// The catalog's health as the routing policy gets it.
#[derive(Debug, Default)]
pub struct InstanceHealth {
    /// By instance id; instances without an entry are `unknown`.
    pub health: HashMap<String, types::HealthStatus>,
    /// Instance ids deregistered for staying critical: left out of the policy's input.
    pub deregistered: HashSet<String>,
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
