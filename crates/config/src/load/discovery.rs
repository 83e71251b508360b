//! `[[discovery]]` sources and `[routing]`, from catalog to routes.

use std::collections::{BTreeMap, HashMap};

use toml::Spanned;

use super::Cx;
use crate::diag::closest;
use crate::discovery::*;
use crate::model::*;
use crate::policy::*;
use crate::raw::S;

impl Cx<'_> {
    pub(super) fn discovery(&mut self, raw: &[Spanned<RawDiscovery>]) -> Vec<DiscoveryConfig> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::new();
        for d in raw {
            let d = d.get_ref();
            let kind = d.kind.get_ref().as_str();
            let name = match &d.name {
                Some(n) => {
                    self.check_name(n, "discovery source");
                    n.get_ref().clone()
                }
                None => kind.to_owned(),
            };
            let name_span = d.name.as_ref().map_or(d.kind.span(), Spanned::span);
            if let Some(line) = seen.insert(name.clone(), self.src.line_col(name_span.start).0) {
                self.error_hint(
                    Some(name_span),
                    format!("duplicate discovery source name `{name}`"),
                    format!(
                        "first defined on line {line}; give each [[discovery]] a distinct `name`"
                    ),
                );
            }
            self.keys_of_other_kinds(d, kind);
            let Some(source) = self.discovery_source(d, kind) else {
                continue;
            };
            out.push(DiscoveryConfig { name, source });
        }
        out
    }

    /// Keys that belong to another kind of source are errors, not silently ignored.
    fn keys_of_other_kinds(&mut self, d: &RawDiscovery, kind: &str) {
        // Keys that belong to another kind are errors, not silently ignored.
        let mut only_for = |present: Option<std::ops::Range<usize>>, key: &str, for_kind: &str| {
            if let Some(span) = present
                && kind != for_kind
            {
                self.error_hint(
                    Some(span),
                    format!("`{key}` is only valid with kind = \"{for_kind}\""),
                    "remove it or change `kind`",
                );
            }
        };
        only_for(d.dir.as_ref().map(Spanned::span), "dir", "file");
        only_for(
            d.poll_interval.as_ref().map(Spanned::span),
            "poll_interval",
            "file",
        );
        only_for(d.notify.as_ref().map(Spanned::span), "notify", "file");
        only_for(
            d.fallback_poll_interval.as_ref().map(Spanned::span),
            "fallback_poll_interval",
            "file",
        );
        only_for(d.endpoints.as_ref().map(Spanned::span), "endpoints", "etcd");
        only_for(d.prefix.as_ref().map(Spanned::span), "prefix", "etcd");
        only_for(
            d.request_timeout.as_ref().map(Spanned::span),
            "request_timeout",
            "etcd",
        );
        only_for(
            d.instances.as_ref().map(Spanned::span),
            "instances",
            "static",
        );
    }

    /// What a `[[discovery]]` of `kind` reads; `None` (reported) when it cannot.
    fn discovery_source(&mut self, d: &RawDiscovery, kind: &str) -> Option<DiscoverySource> {
        let source = match kind {
            "static" => {
                let Some(instances) = &d.instances else {
                    self.error_hint(
                        Some(d.kind.span()),
                        "a static discovery source needs instances",
                        "add [[discovery.instances]] with name, address and port",
                    );
                    return None;
                };
                DiscoverySource::Static {
                    instances: instances
                        .get_ref()
                        .iter()
                        .filter_map(|i| self.static_instance(i))
                        .collect(),
                }
            }
            "file" => {
                let Some(dir) = &d.dir else {
                    self.error_hint(
                        Some(d.kind.span()),
                        "a file discovery source needs `dir`",
                        "dir = \"/var/lib/sluice/registry\" (the directory the sidecars register into)",
                    );
                    return None;
                };
                if dir.get_ref().is_empty() {
                    self.error(Some(dir.span()), "`dir` is empty");
                }
                let dir = match self.src.path().parent() {
                    Some(parent) if std::path::Path::new(dir.get_ref()).is_relative() => {
                        parent.join(dir.get_ref())
                    }
                    _ => dir.get_ref().into(),
                };
                DiscoverySource::File {
                    dir,
                    poll_interval: self.duration(d.poll_interval.as_ref(), DISCOVERY_POLL_INTERVAL),
                    notify: d.notify.as_ref().is_none_or(|n| *n.get_ref()),
                    fallback_poll_interval: self.duration(
                        d.fallback_poll_interval.as_ref(),
                        DISCOVERY_FALLBACK_POLL_INTERVAL,
                    ),
                }
            }
            "etcd" => {
                let endpoints: Vec<String> = match &d.endpoints {
                    Some(e) if !e.get_ref().is_empty() => {
                        for endpoint in e.get_ref() {
                            let text = endpoint.get_ref();
                            let host = text.strip_prefix("http://").unwrap_or("");
                            if host.is_empty() || host.contains('/') && !host.ends_with('/') {
                                self.error_hint(
                                    Some(endpoint.span()),
                                    format!("invalid etcd endpoint `{text}`"),
                                    "use http://HOST:PORT (TLS to etcd is not supported yet)",
                                );
                            }
                        }
                        e.get_ref().iter().map(|e| e.get_ref().clone()).collect()
                    }
                    other => {
                        self.error_hint(
                            Some(other.as_ref().map_or(d.kind.span(), Spanned::span)),
                            "an etcd discovery source needs at least one endpoint",
                            "endpoints = [\"http://127.0.0.1:2379\"]",
                        );
                        Vec::new()
                    }
                };
                let prefix = match &d.prefix {
                    None => DISCOVERY_ETCD_PREFIX.to_owned(),
                    Some(p) => {
                        if !p.get_ref().ends_with('/') {
                            self.error_hint(
                                Some(p.span()),
                                format!("etcd prefix `{}` must end with '/'", p.get_ref()),
                                format!("write \"{}/\"", p.get_ref()),
                            );
                        }
                        p.get_ref().clone()
                    }
                };
                DiscoverySource::Etcd {
                    endpoints,
                    prefix,
                    request_timeout: self
                        .duration(d.request_timeout.as_ref(), DISCOVERY_REQUEST_TIMEOUT),
                }
            }
            _ => {
                self.bad_choice(&d.kind, "discovery kind", &["static", "file", "etcd"]);
                return None;
            }
        };
        Some(source)
    }

    pub(super) fn static_instance(
        &mut self,
        raw: &Spanned<RawStaticInstance>,
    ) -> Option<StaticInstance> {
        let i = raw.get_ref();
        let segment_ok = |v: &str| {
            !v.is_empty()
                && !v.contains('/')
                && !v.starts_with('.')
                && !v.chars().any(char::is_control)
        };
        let mut ok = true;
        if !segment_ok(i.name.get_ref()) {
            self.error_hint(
                Some(i.name.span()),
                format!("invalid instance name `{}`", i.name.get_ref()),
                "a service name must be non-empty, without '/' or control characters, not starting with '.'",
            );
            ok = false;
        }
        if let Some(id) = &i.id
            && !segment_ok(id.get_ref())
        {
            self.error_hint(
                Some(id.span()),
                format!("invalid instance id `{}`", id.get_ref()),
                "an id must be non-empty, without '/' or control characters, not starting with '.'",
            );
            ok = false;
        }
        let port = self.int_in(i.port.as_ref(), 1, 65535, 0) as u16;
        if i.port.is_none() {
            self.error_hint(
                Some(raw.span()),
                "static instance has no `port`",
                "add port = N",
            );
            ok = false;
        }
        ok.then(|| StaticInstance {
            name: i.name.get_ref().clone(),
            id: i
                .id
                .as_ref()
                .map_or_else(|| i.name.get_ref().clone(), |id| id.get_ref().clone()),
            address: i
                .address
                .as_ref()
                .map(|a| a.get_ref().clone())
                .unwrap_or_default(),
            port,
            tags: i.tags.clone().unwrap_or_default(),
            meta: i.meta.clone().unwrap_or_default(),
        })
    }

    pub(super) fn routing(
        &mut self,
        raw: Option<RawRouting>,
        discovery: &[DiscoveryConfig],
        listeners: &[ListenerConfig],
        policies: &[PolicyConfig],
        has_kv: bool,
    ) -> RoutingConfig {
        let raw = raw.unwrap_or_default();
        let http: Vec<&str> = listeners
            .iter()
            .filter(|l| l.protocol == ListenerProtocol::Http)
            .map(|l| l.name.as_str())
            .collect();
        let listener = match &raw.listener {
            Some(l) => {
                if !http.contains(&l.get_ref().as_str()) {
                    let hint = closest(l.get_ref(), &http).map_or_else(
                        || "name a [[listener]] with protocol = \"http\"".to_owned(),
                        |c| format!("did you mean `{c}`?"),
                    );
                    self.error_hint(
                        Some(l.span()),
                        format!(
                            "[routing] listener `{}` is not an HTTP listener",
                            l.get_ref()
                        ),
                        hint,
                    );
                }
                Some(l.get_ref().clone())
            }
            None => http.first().map(|l| (*l).to_owned()),
        };
        if listener.is_none() && !discovery.is_empty() {
            self.error_hint(
                None,
                "[[discovery]] needs an HTTP listener for the routes it finds",
                "add a [[listener]] with protocol = \"http\" (or name one in [routing] listener)",
            );
        }
        let policy = raw.policy.as_ref().map(|p| {
            match policies.iter().find(|q| q.name == *p.get_ref()) {
                Some(q) if q.world == PolicyWorld::Routing => {}
                Some(q) => self.error_hint(
                    Some(p.span()),
                    format!("policy `{}` is a {} policy, not a routing policy", q.name, q.world.as_str()),
                    "[routing] policy needs a [[policy]] with world = \"routing\"",
                ),
                None => self.error_hint(
                    Some(p.span()),
                    format!("[routing] refers to unknown policy `{}`", p.get_ref()),
                    format!("define it with [[policy]] name = \"{}\", world = \"routing\", or leave `policy` out to use the built-in urlprefix", p.get_ref()),
                ),
            }
            p.get_ref().clone()
        });
        let tcp_bind = match &raw.tcp_bind {
            None => ROUTING_TCP_BIND,
            Some(ip) => ip.get_ref().parse().unwrap_or_else(|_| {
                self.error_hint(
                    Some(ip.span()),
                    format!("invalid tcp_bind address `{}`", ip.get_ref()),
                    "an IP address without port, e.g. \"0.0.0.0\" or \"127.0.0.1\"",
                );
                ROUTING_TCP_BIND
            }),
        };
        let overrides = match &raw.overrides {
            None => Vec::new(),
            Some(text) => {
                let (commands, errors) = crate::overrides::parse(text.get_ref());
                for error in errors {
                    let offset = self.offset_in_string(text, error.offset);
                    self.error_hint(
                        Some(offset..offset + 1),
                        format!("in [routing] overrides: {}", error.message),
                        "route add <service> <[host]/path> http://IP:PORT [weight W] | route del <service> [<[host]/path> [http://IP:PORT]] | route weight <service> <[host]/path> weight W",
                    );
                }
                commands
            }
        };
        let overrides_key = raw.overrides_key.as_ref().map(|key| {
            if key.get_ref().is_empty() {
                self.error_hint(
                    Some(key.span()),
                    "[routing] overrides_key is empty",
                    "name the [[kv]] key holding the commands, e.g. \"sluice/overrides\"",
                );
            } else if !has_kv {
                self.error_hint(
                    Some(key.span()),
                    format!("[routing] overrides_key `{}` needs a [[kv]] source to read it from", key.get_ref()),
                    "add a [[kv]] source (file or etcd) holding the key",
                );
            } else if discovery.is_empty() {
                self.error_hint(
                    Some(key.span()),
                    "[routing] overrides_key applies to discovered routes, and there is no [[discovery]] source",
                    "add a [[discovery]] source, or remove overrides_key",
                );
            }
            key.get_ref().clone()
        });
        let request_policies = self.routing_request_policies(&raw, discovery);
        RoutingConfig {
            listener,
            policy,
            debounce: self.duration(raw.debounce.as_ref(), ROUTING_DEBOUNCE),
            tcp_bind,
            overrides,
            overrides_key,
            request_policies,
        }
    }

    /// `[routing] request_policies`: service names (or `"*"`) to `request` policies, checked
    /// with the routes' `policy` references, each with the services it may pick.
    fn routing_request_policies(
        &mut self,
        raw: &RawRouting,
        discovery: &[DiscoveryConfig],
    ) -> BTreeMap<String, DiscoveredRoutePolicy> {
        let Some(table) = &raw.request_policies else {
            return BTreeMap::new();
        };
        if discovery.is_empty() {
            self.error_hint(
                Some(table.span()),
                "[routing] request_policies applies to discovered routes, and there is no [[discovery]] source",
                "add a [[discovery]] source, or attach the policy to [[route]]s with policy = \"NAME\"",
            );
        }
        let mut out = BTreeMap::new();
        for (service, entry) in table.get_ref() {
            let mut policy = entry.get_ref().policy.clone();
            if policy.span() == (0..0) {
                policy = Spanned::new(entry.span(), policy.into_inner());
            }
            if service.is_empty() {
                self.error_hint(
                    Some(policy.span()),
                    "[routing] request_policies has an empty service name",
                    "name a catalog service, or \"*\" for every service not named",
                );
            }
            let services = self.discovered_policy_services(entry.get_ref().services.as_ref());
            let name = policy.get_ref().clone();
            self.request_policy_refs
                .push(("[routing] request_policies", policy));
            out.insert(
                service.clone(),
                DiscoveredRoutePolicy {
                    policy: name,
                    services,
                },
            );
        }
        out
    }

    /// `services = [...]` of a `[routing] request_policies` entry: names, each once. Catalog
    /// services come and go, so a name is not checked against them here.
    fn discovered_policy_services(&mut self, list: Option<&S<Vec<S<String>>>>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in list.map(|l| l.get_ref().as_slice()).unwrap_or_default() {
            let name = s.get_ref();
            if name.is_empty() {
                self.error(Some(s.span()), "an empty service name in `services`");
            } else if out.contains(name) {
                self.error(Some(s.span()), format!("service `{name}` is listed twice"));
            } else {
                out.push(name.clone());
            }
        }
        out
    }

    /// The file offset of byte `offset` of a string value's content. The value is the parsed
    /// string (escapes resolved), so its line is looked up in the literal's source text; when
    /// it cannot be found (escapes on that line), the literal's start is used.
    pub(super) fn offset_in_string(&self, value: &Spanned<String>, offset: usize) -> usize {
        let text = value.get_ref();
        let span = value.span();
        let line_start = text[..offset.min(text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let line_end = text[line_start..]
            .find('\n')
            .map_or(text.len(), |i| line_start + i);
        let line = &text[line_start..line_end];
        let source = &self.src.text()[span.clone()];
        match source.find(line) {
            Some(found) if !line.is_empty() => span.start + found + (offset - line_start),
            _ => span.start,
        }
    }
}
