//! Sluice's configuration: the TOML file format, its defaults, and its validation.
//!
//! Contract:
//! - [`load_file`] / [`parse_str`] return a fully validated [`Config`] or *every* problem found,
//!   each as a [`Diagnostic`] with `file:line:col`, a message and (when we can tell) a hint.
//!   Nothing is bound, resolved against the network (except upstream host names) or started here.
//! - Unknown keys and sections are errors, never silently ignored.
//! - Every tunable has a default, defined once in [`defaults`] and documented in
//!   `docs/configuration.md`.
//! - The returned [`Config`] is plain data (no spans, no serde types) so the data plane can
//!   compare two configurations to decide what a reload changes.

pub mod defaults;
mod diag;
mod discovery;
mod load;
mod model;
mod overrides;
mod policy;
mod raw;
mod tls;

use std::path::Path;

pub use diag::{Diagnostic, Diagnostics, Source};
pub use discovery::{
    DISCOVERY_ETCD_PREFIX, DISCOVERY_FALLBACK_POLL_INTERVAL, DISCOVERY_POLL_INTERVAL,
    DISCOVERY_REQUEST_TIMEOUT, DiscoveryConfig, DiscoverySource, ROUTING_DEBOUNCE,
    ROUTING_TCP_BIND, RoutingConfig, StaticInstance,
};
pub use model::*;
pub use overrides::{OverrideLineError, RouteKey, RouteOverride, parse_overrides};
pub use policy::{
    FailureMode, POLICY_MAX_MEMORY_BYTES, POLICY_TIMEOUT, PolicyConfig, PolicyLimits, PolicyWorld,
};
pub use tls::*;

/// Reads and validates a configuration file.
pub fn load_file(path: &Path) -> Result<Config, Diagnostics> {
    let text = std::fs::read_to_string(path).map_err(|e| Diagnostics::io(path, &e))?;
    parse_str(path, &text)
}

/// Validates configuration text; `path` is only used in diagnostics.
pub fn parse_str(path: impl AsRef<Path>, text: &str) -> Result<Config, Diagnostics> {
    load::parse(&Source::new(path.as_ref(), text))
}
