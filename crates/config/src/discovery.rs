//! `[[discovery]]` (catalog sources) and `[routing]` (how the catalog becomes routes).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::raw::S;

pub use crate::defaults::{
    DISCOVERY_ETCD_PREFIX, DISCOVERY_FALLBACK_POLL_INTERVAL, DISCOVERY_POLL_INTERVAL,
    DISCOVERY_REQUEST_TIMEOUT, ROUTING_DEBOUNCE, ROUTING_TCP_BIND,
};

/// One `[[discovery]]` source.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryConfig {
    /// Unique name (default: the kind).
    pub name: String,
    pub source: DiscoverySource,
}

/// What a discovery source reads.
#[derive(Debug, Clone, PartialEq)]
pub enum DiscoverySource {
    /// `kind = "static"`: `[[discovery.instances]]` in this file.
    Static { instances: Vec<StaticInstance> },
    /// `kind = "file"`: a directory of Consul-format definitions.
    File {
        /// Relative paths are resolved against the config file's folder.
        dir: PathBuf,
        /// Polling period when inotify is off (`notify = false`) or cannot watch the directory.
        poll_interval: Duration,
        /// Re-read the directory when inotify reports a change (default true).
        notify: bool,
        /// With `notify`: the safety-net re-read for changes inotify does not report.
        fallback_poll_interval: Duration,
    },
    /// `kind = "etcd"`: definitions under a prefix.
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
        request_timeout: Duration,
    },
}

/// `[[discovery.instances]]`: one instance in Consul's field names.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticInstance {
    pub name: String,
    /// Defaults to `name`.
    pub id: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
}

/// `[routing]`: turning the catalog into routes.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingConfig {
    /// The HTTP listener discovered routes are attached to. `None` only when there is no
    /// `[[discovery]]`; otherwise validation fills in the first HTTP listener.
    pub listener: Option<String>,
    /// A `[[policy]]` with `world = "routing"`; `None`: the embedded `urlprefix` policy.
    pub policy: Option<String>,
    /// Quiet time before a burst of catalog changes becomes one rebuild.
    pub debounce: Duration,
    /// The address TCP routes (`urlprefix-:PORT proto=tcp`) listen on, with their port.
    pub tcp_bind: std::net::IpAddr,
    /// Fabio-style manual commands applied, in order, to the policy's routes.
    pub overrides: Vec<crate::overrides::RouteOverride>,
    /// A `[[kv]]` key holding more commands (same language), watched and applied after
    /// `overrides`.
    pub overrides_key: Option<String>,
    /// `request_policies = { SERVICE = "POLICY", "*" = { policy = "POLICY", services = [..] } }`:
    /// the `request` policy each discovered route of that service gets (`"*"`: of any service
    /// not named).
    pub request_policies: BTreeMap<String, DiscoveredRoutePolicy>,
}

/// The `request` policy of a discovered route, and the services it may send a request to
/// instead of the route's own (a route's `policy_services`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredRoutePolicy {
    /// A `[[policy]]` with `world = "request"`.
    pub policy: String,
    /// Services of the routing table by name: a `[[service]]` of the file, or a catalog
    /// service that has routes. A name the table lacks is left out of what the policy may pick.
    pub services: Vec<String>,
}

impl RoutingConfig {
    /// The `request` policy a discovered route of `service` is attached to, if any.
    pub fn request_policy_for(&self, service: &str) -> Option<&DiscoveredRoutePolicy> {
        self.request_policies
            .get(service)
            .or_else(|| self.request_policies.get(ANY_SERVICE))
    }
}

/// The key of `[routing] request_policies` that stands for every service not named.
pub(crate) const ANY_SERVICE: &str = "*";

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            listener: None,
            policy: None,
            debounce: ROUTING_DEBOUNCE,
            tcp_bind: ROUTING_TCP_BIND,
            overrides: Vec::new(),
            overrides_key: None,
            request_policies: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawDiscovery {
    pub(crate) name: Option<S<String>>,
    pub(crate) kind: S<String>,
    pub(crate) dir: Option<S<String>>,
    pub(crate) poll_interval: Option<S<String>>,
    pub(crate) notify: Option<S<bool>>,
    pub(crate) fallback_poll_interval: Option<S<String>>,
    pub(crate) endpoints: Option<S<Vec<S<String>>>>,
    pub(crate) prefix: Option<S<String>>,
    pub(crate) request_timeout: Option<S<String>>,
    pub(crate) instances: Option<S<Vec<S<RawStaticInstance>>>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawStaticInstance {
    pub(crate) name: S<String>,
    pub(crate) id: Option<S<String>>,
    pub(crate) address: Option<S<String>>,
    pub(crate) port: Option<S<i64>>,
    pub(crate) tags: Option<Vec<String>>,
    pub(crate) meta: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRouting {
    pub(crate) listener: Option<S<String>>,
    pub(crate) policy: Option<S<String>>,
    pub(crate) debounce: Option<S<String>>,
    pub(crate) tcp_bind: Option<S<String>>,
    pub(crate) overrides: Option<S<String>>,
    pub(crate) overrides_key: Option<S<String>>,
    pub(crate) request_policies: Option<S<BTreeMap<String, S<RawRoutePolicy>>>>,
}

/// A `[routing] request_policies` value: `"POLICY"` or `{ policy = "POLICY", services = [..] }`.
#[derive(Debug)]
pub(crate) struct RawRoutePolicy {
    pub(crate) policy: S<String>,
    pub(crate) services: Option<S<Vec<S<String>>>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawRoutePolicyTable {
    pub(crate) policy: S<String>,
    pub(crate) services: Option<S<Vec<S<String>>>>,
}

impl<'de> Deserialize<'de> for RawRoutePolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RoutePolicyVisitor;

        impl<'de> Visitor<'de> for RoutePolicyVisitor {
            type Value = RawRoutePolicy;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(r#"a policy name like "jwt" or a table { policy = "jwt", services = ["canary"] }"#)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawRoutePolicy, E> {
                // The span of a bare string is the enclosing `Spanned`'s; the loader copies it.
                Ok(RawRoutePolicy {
                    policy: S::new(0..0, v.to_owned()),
                    services: None,
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawRoutePolicy, A::Error> {
                let table =
                    RawRoutePolicyTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawRoutePolicy {
                    policy: table.policy,
                    services: table.services,
                })
            }
        }

        deserializer.deserialize_any(RoutePolicyVisitor)
    }
}
