//! The file's configuration plus what discovery found.

use sluice_config::Config;

use crate::Discovered;

/// The file's configuration plus what discovery found. A discovered service named like a file
/// service takes the file's settings and adds its instances to the file's.
pub fn merge(base: &Config, discovered: &Discovered) -> Config {
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
