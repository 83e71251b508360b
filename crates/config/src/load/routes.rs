//! `[[route]]`: matching and where a route sends (its rules in `route_rules.rs`).

use std::collections::HashMap;
use std::ops::Range;

use toml::Spanned;

use super::Cx;
use crate::construct::PathProblem;
use crate::diag::closest;
use crate::model::*;
use crate::raw::*;

impl Cx<'_> {
    pub(super) fn routes<'a>(
        &mut self,
        raw: &[Spanned<RawRoute>],
        listeners: &'a [ListenerConfig],
        services: &'a [ServiceConfig],
    ) -> Vec<RouteConfig> {
        let declared = std::mem::take(&mut self.declared);
        let named = |section: &str, valid: Vec<&'a str>| -> Vec<String> {
            let mut names: Vec<String> = valid.into_iter().map(str::to_owned).collect();
            for (s, n) in &declared {
                if s == section && !names.contains(n) {
                    names.push(n.clone());
                }
            }
            names
        };
        let listener_names = named(
            "listener",
            listeners.iter().map(|l| l.name.as_str()).collect(),
        );
        let listener_names: Vec<&str> = listener_names.iter().map(String::as_str).collect();
        let tcp_listeners: Vec<&str> = listeners
            .iter()
            .filter(|l| l.protocol == ListenerProtocol::Tcp)
            .map(|l| l.name.as_str())
            .collect();
        let http_listeners: Vec<&str> = listener_names
            .iter()
            .copied()
            .filter(|n| !tcp_listeners.contains(n))
            .collect();
        let service_names = named(
            "service",
            services.iter().map(|s| s.name.as_str()).collect(),
        );
        let service_names: Vec<&str> = service_names.iter().map(String::as_str).collect();
        let mut seen: HashMap<(String, HostMatch, String), usize> = HashMap::new();
        let mut seen_names: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::new();
        for r in raw {
            let r_span = r.span();
            let r = r.get_ref();
            let listener =
                self.route_listener(r, &r_span, &listener_names, &tcp_listeners, &http_listeners);
            let service = self.route_service(r, &r_span, &service_names);
            let (redirect, access, upstream_host) = self.route_rules(r);
            let host = r
                .host
                .as_ref()
                .map_or(HostMatch::Any, |h| self.host_match(h));
            let path = match &r.path {
                None => "/".to_owned(),
                Some(p) => {
                    self.check_path(p, "path");
                    p.get_ref().clone()
                }
            };
            let strip = r.strip.as_ref().map(|s| {
                self.check_path(s, "strip");
                s.get_ref().clone()
            });
            let prepend = r.prepend.as_ref().map(|s| {
                self.check_path(s, "prepend");
                s.get_ref().trim_end_matches('/').to_owned()
            });
            let line = self.src.line_col(r_span.start).0;
            if let Some(first) = seen.insert((listener.clone(), host.clone(), path.clone()), line) {
                let span = r.path.as_ref().map_or(r_span.clone(), Spanned::span);
                self.error_hint(
                    Some(span),
                    format!("duplicate route for host `{host}` and path `{path}`"),
                    format!("the first one is on line {first}"),
                );
            }
            let name = match &r.name {
                Some(n) => {
                    if let Some(first) = seen_names.insert(n.get_ref().clone(), line) {
                        self.error_hint(
                            Some(n.span()),
                            format!("duplicate route name `{}`", n.get_ref()),
                            format!("the first one is on line {first}"),
                        );
                    }
                    n.get_ref().clone()
                }
                None => match &host {
                    HostMatch::Any => path.clone(),
                    h => format!("{h}{path}"),
                },
            };
            out.push(RouteConfig {
                name,
                listener,
                host,
                path,
                strip,
                prepend,
                service: service.to_owned(),
                redirect,
                access,
                upstream_host,
                upgrades: r
                    .upgrades
                    .as_ref()
                    .map_or_else(crate::model::default_upgrades, |u| self.upgrades(u)),
                rate_limit: r.rate_limit.as_ref().and_then(|v| self.rate_limit(v)),
                policy: r.policy.as_ref().map(|p| {
                    self.request_policy_refs.push(("route", p.clone()));
                    p.get_ref().clone()
                }),
                policy_services: self.policy_services(r, &service_names),
            });
        }
        out
    }

    /// The listener a route is on: the one it names (an HTTP listener), or the only HTTP
    /// listener there is.
    fn route_listener(
        &mut self,
        r: &RawRoute,
        r_span: &Range<usize>,
        listener_names: &[&str],
        tcp_listeners: &[&str],
        http_listeners: &[&str],
    ) -> String {
        match &r.listener {
            Some(l) => {
                let name = l.get_ref().as_str();
                if !listener_names.contains(&name) {
                    let hint = closest(name, listener_names).map_or_else(
                        || format!("defined listeners: {}", listener_names.join(", ")),
                        |c| format!("did you mean `{c}`?"),
                    );
                    self.error_hint(
                        Some(l.span()),
                        format!("route refers to unknown listener `{name}`"),
                        hint,
                    );
                }
                if tcp_listeners.contains(&name) {
                    self.error_hint(
                        Some(l.span()),
                        format!(
                            "listener `{name}` is a TCP listener; routes are for HTTP listeners"
                        ),
                        "a TCP listener sends everything to its `service`",
                    );
                }
                name.to_owned()
            }
            None if http_listeners.len() == 1 => http_listeners[0].to_owned(),
            None => {
                self.error_hint(
                    Some(r_span.clone()),
                    "route has no `listener`",
                    format!(
                        "there are {} HTTP listeners; name one of: {}",
                        http_listeners.len(),
                        http_listeners.join(", ")
                    ),
                );
                String::new()
            }
        }
    }

    /// The service a route sends to; empty for a redirect (answered by Sluice itself).
    fn route_service<'r>(
        &mut self,
        r: &'r RawRoute,
        r_span: &Range<usize>,
        service_names: &[&str],
    ) -> &'r str {
        match &r.service {
            Some(s) => {
                let service = s.get_ref().as_str();
                if !service_names.contains(&service) {
                    let hint = closest(service, service_names).map_or_else(
                        || format!("define it with [[service]] name = \"{service}\""),
                        |c| format!("did you mean `{c}`?"),
                    );
                    self.error_hint(
                        Some(s.span()),
                        format!("route refers to unknown service `{service}`"),
                        hint,
                    );
                }
                service
            }
            // A redirect is answered by Sluice itself and needs no service.
            None if r.redirect.is_some() => "",
            None => {
                self.error_hint(
                    Some(r_span.clone()),
                    "route has no `service`",
                    "add service = \"NAME\" (or redirect = { code = 301, url = \"...\" })",
                );
                ""
            }
        }
    }

    pub(super) fn host_match(&mut self, h: &Spanned<String>) -> HostMatch {
        let raw = h.get_ref().trim();
        let lower = raw.to_ascii_lowercase();
        if lower.is_empty() || lower == "*" {
            return HostMatch::Any;
        }
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let valid = name.starts_with('[')
            && name.ends_with(']')
            && name[1..name.len() - 1]
                .parse::<std::net::Ipv6Addr>()
                .is_ok()
            || name.split('.').all(valid_label);
        if !valid {
            self.error_hint(Some(h.span()), format!("invalid host `{raw}`"), "use a host name without port (`example.com`), a wildcard (`*.example.com`) or omit `host` to match any");
            return HostMatch::Any;
        }
        if wild {
            HostMatch::Wildcard(name.to_owned())
        } else {
            HostMatch::Exact(name.to_owned())
        }
    }

    pub(super) fn check_path(&mut self, p: &Spanned<String>, what: &str) {
        let v = p.get_ref();
        match crate::construct::check_path(v) {
            Ok(()) => {}
            Err(PathProblem::NoLeadingSlash) => self.error_hint(
                Some(p.span()),
                format!("`{what}` must start with '/', found `{v}`"),
                format!("write \"/{}\"", v.trim_start_matches('/')),
            ),
            Err(PathProblem::NotAllowed) => self.error_hint(
                Some(p.span()),
                format!("`{what}` contains characters not allowed in a path: `{v}`"),
                "percent-encode them; queries and fragments are not part of a prefix",
            ),
        }
    }
}
