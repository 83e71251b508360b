//! The route table of one listener: host match, then longest path prefix.
//!
//! Lookup cost is independent of the number of routes: hosts are hash lookups (exact, then each
//! wildcard suffix from the most specific, then "any"), and within a host the path is probed
//! once per *distinct prefix length* present in that host's routes, longest first. A table of
//! 10k routes with prefixes of 20 different lengths costs at most 20 hash probes per host tried.
//!
//! Host precedence falls through: if the exact host's routes have no prefix matching the path,
//! wildcard hosts are tried, then routes without a host (as Fabio does). So a catch-all
//! `path = "/"` route without a host serves whatever more specific hosts do not.

use std::borrow::Cow;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use sluice_config::HostMatch;

use crate::metrics::RouteMetrics;
use crate::rate_limit::{KeySource, RateLimiter};
use crate::request_policy::RoutePolicy;
use crate::route_rules::{LocalAnswer, RouteRules};
use crate::upstream::Service;

/// One route, shared by the table and the requests it serves.
#[derive(Debug)]
pub struct Route {
    /// Name for metrics, logs and the API.
    pub name: Arc<str>,
    /// Host match as configured.
    pub host: HostMatch,
    /// Path prefix.
    pub path: String,
    /// Prefix removed before forwarding.
    pub strip: Option<String>,
    /// Prefix added before forwarding.
    pub prepend: Option<String>,
    /// Where requests go.
    pub service: Arc<Service>,
    pub(crate) metrics: RouteMetrics,
    /// Access rules, redirect and upstream `Host` (route_rules.rs).
    pub(crate) rules: RouteRules,
    /// `policy`: the `request` policy asked about each request (`None`: no call at all).
    pub(crate) policy: Option<RoutePolicy>,
}

impl Route {
    /// The route `rc` describes, sending to `service`; `running` is the rate limiter of the
    /// route it replaces, kept when the limit is unchanged.
    pub(crate) fn new(
        rc: &sluice_config::RouteConfig,
        service: &Arc<Service>,
        running: Option<&Arc<RateLimiter>>,
    ) -> Self {
        let name: Arc<str> = rc.name.as_str().into();
        Route {
            metrics: RouteMetrics::new(
                rc.listener.as_str().into(),
                Arc::clone(&name),
                Arc::clone(&service.name),
            ),
            name,
            host: rc.host.clone(),
            path: rc.path.clone(),
            strip: rc.strip.clone(),
            prepend: rc.prepend.clone(),
            service: Arc::clone(service),
            rules: RouteRules::new(rc, running),
            policy: None,
        }
    }

    /// Sluice's own answer to a request on this route, if it gives one (checked before anything is
    /// sent upstream). `$path` of a redirect is the path the upstream would have seen, after the
    /// route's `strip`/`prepend`.
    pub(crate) fn local_answer(&self, source: &KeySource<'_>) -> Option<LocalAnswer> {
        let rules = &self.rules;
        if !rules.may_answer() {
            return None;
        }
        let path = if rules.redirects() {
            self.rewrite_path(source.head.path())
        } else {
            Cow::Borrowed("")
        };
        rules.answer(source, &path)
    }

    /// The path the upstream sees: `strip` removed when the path starts with it (the remainder
    /// always starts with '/'), then `prepend` added. `/ap1a/csp/x` with strip `/ap1a` is
    /// `/csp/x`; `/ap1a` alone becomes `/`.
    pub fn rewrite_path<'a>(&self, path: &'a str) -> Cow<'a, str> {
        let stripped = match &self.strip {
            Some(strip) if path.starts_with(strip.as_str()) => &path[strip.len()..],
            _ => path,
        };
        let needs_slash = !stripped.starts_with('/');
        match (&self.prepend, needs_slash, stripped.len() == path.len()) {
            (None, false, true) => Cow::Borrowed(path),
            (None, false, false) => Cow::Borrowed(stripped),
            (prepend, _, _) => {
                let prepend = prepend.as_deref().unwrap_or("");
                let mut out = String::with_capacity(prepend.len() + stripped.len() + 1);
                out.push_str(prepend);
                if needs_slash {
                    out.push('/');
                }
                out.push_str(stripped);
                Cow::Owned(out)
            }
        }
    }
}

#[derive(Debug, Default)]
struct PathTable {
    by_prefix: FxHashMap<Box<str>, Arc<Route>>,
    /// Distinct prefix lengths, longest first.
    lengths: Vec<usize>,
}

impl PathTable {
    fn insert(&mut self, route: Arc<Route>) {
        let len = route.path.len();
        if !self.lengths.contains(&len) {
            self.lengths.push(len);
            self.lengths.sort_unstable_by(|a, b| b.cmp(a));
        }
        self.by_prefix
            .insert(route.path.clone().into_boxed_str(), route);
    }

    fn lookup(&self, path: &str) -> Option<&Arc<Route>> {
        self.lengths
            .iter()
            .filter(|&&len| len <= path.len() && path.is_char_boundary(len))
            .find_map(|&len| self.by_prefix.get(&path[..len]))
    }
}

/// All routes of one listener.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: FxHashMap<Box<str>, PathTable>,
    wildcard: FxHashMap<Box<str>, PathTable>,
    any: PathTable,
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    /// Builds a table; later routes with the same host and path replace earlier ones (the
    /// config validator rejects such duplicates before this is reached).
    pub fn new(routes: Vec<Arc<Route>>) -> Self {
        let mut table = RouteTable::default();
        for route in &routes {
            let target = match &route.host {
                HostMatch::Any => &mut table.any,
                HostMatch::Exact(h) => table.exact.entry(h.clone().into_boxed_str()).or_default(),
                HostMatch::Wildcard(s) => table
                    .wildcard
                    .entry(s.clone().into_boxed_str())
                    .or_default(),
            };
            target.insert(Arc::clone(route));
        }
        table.routes = routes;
        table
    }

    /// Builds the table of one listener from a validated configuration, with fresh services
    /// (no live state). The proxy builds its tables itself during `apply`; this exists for
    /// tools and benchmarks that want a table without running a proxy.
    pub fn from_config(config: &sluice_config::Config, listener: &str) -> Self {
        let services: rustc_hash::FxHashMap<&str, Arc<Service>> = config
            .services
            .iter()
            .map(|sc| {
                (
                    sc.name.as_str(),
                    Arc::new(Service::new(sc.clone(), Arc::default(), |_| None)),
                )
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .filter(|r| r.listener == listener)
            .filter_map(|rc| {
                let service = match services.get(rc.service.as_str()) {
                    Some(service) => Arc::clone(service),
                    None if rc.redirect.is_some() => no_service(),
                    None => return None,
                };
                Some(Arc::new(Route::new(rc, &service, None)))
            })
            .collect();
        Self::new(routes)
    }

    /// Every route, in configuration order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The route for a request. `host` is the Host header or `:authority` as received (any
    /// case, with or without port); `path` is the request path without the query.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        if let Some(host) = host.map(normalize_host).filter(|h| !h.is_empty()) {
            if let Some(route) = self.exact.get(host.as_ref()).and_then(|t| t.lookup(path)) {
                return Some(route);
            }
            if !self.wildcard.is_empty() {
                let mut rest: &str = &host;
                while let Some((_, suffix)) = rest.split_once('.') {
                    if let Some(route) = self.wildcard.get(suffix).and_then(|t| t.lookup(path)) {
                        return Some(route);
                    }
                    rest = suffix;
                }
            }
        }
        self.any.lookup(path)
    }
}

/// The service of a redirect route that names none: it never forwards, but routes carry a
/// service for their metric labels and log lines. Empty name, no instances.
pub(crate) fn no_service() -> Arc<Service> {
    let empty = sluice_config::ServiceConfig::with_defaults("");
    Arc::new(Service::new(empty, Arc::default(), |_| None))
}

/// Lower-cases a host and removes its port; borrows when nothing changes (the common case).
pub(crate) fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = if host.starts_with('[') {
        // [v6]:port → [v6]
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert!(matches!(normalize_host("a.b"), Cow::Borrowed(_)));
    }
}
