//! Discovered routes to proxy configuration: what the routing policy made of the catalog
//! becomes `sluice-config` services, routes and listeners, built through that crate's
//! constructors (never by writing and parsing TOML), ready to merge with the file's.
//!
//! Contract:
//! - [`routes_to_config`] turns a policy's routes into a [`Discovered`] set and the reasons it
//!   skipped what cannot be served (a redirect URL, a network or a `host=` the file's rules
//!   refuse, `proto=https` with no CA, a TCP port the file or another process holds, a host
//!   name that does not resolve). Skipping one route never blocks the others.
//! - Every value a policy produces is checked again with the file's rules: any routing policy
//!   may produce it.
//! - A service the file also defines takes the file's settings and keeps its instances;
//!   a route the file defines wins over a discovered one ([`merge`]).
//! - Registration checks (Consul's `check`) become `[service.health]` values with Consul's
//!   semantics ([`checks`]).
//! - Instances found critical stay in the proxy services they were probed in
//!   ([`ParkedInstance`]): the proxy's checker is the one owner of discovered instances' checks.
//! - The only I/O: resolving instance host names (bounded by a timeout) and test-binding a
//!   port a TCP route asks for. Nothing here starts, swaps or logs.
//!
//! Modules, from the bottom: `resolve`, `overrides`, `rules`, `checks`, `input` (values) →
//! `translate` → `merge`.

pub mod checks;
mod input;
mod merge;
mod overrides;
mod resolve;
mod rules;
mod translate;

pub use input::{InstanceHealth, ParkedInstance, policy_input};
pub use merge::merge;
pub use overrides::apply_overrides;
pub use resolve::{Resolver, resolve};
pub use translate::{Scope, routes_to_config};

use sluice_config::{ListenerConfig, RouteConfig, ServiceConfig};

/// Services, routes and listeners found by discovery, ready to merge with the file's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Discovered {
    pub services: Vec<ServiceConfig>,
    pub routes: Vec<RouteConfig>,
    /// Listeners for TCP routes (`urlprefix-:PORT proto=tcp`).
    pub listeners: Vec<ListenerConfig>,
}
