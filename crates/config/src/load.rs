//! TOML text → [`Config`], collecting every problem instead of stopping at the first.
//!
//! Three passes: syntax (the TOML parser recovers and reports all syntax errors), shape (each
//! section and array element is deserialized on its own, unknown keys collected with
//! `serde_ignored`), then meaning (addresses, durations, references between sections).

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::defaults as d;
use crate::diag::{Diagnostic, Diagnostics, Source, closest};
use crate::discovery::*;
use crate::model::*;
use crate::policy::*;
use crate::raw::*;

mod route_rules;
mod tls;

const SECTIONS: &[&str] = &[
    "admin",
    "runtime",
    "log",
    "access_log",
    "listener",
    "route",
    "service",
    "policy",
    "kv",
    "discovery",
    "routing",
];

/// What validation may look up outside the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookups {
    /// Upstream host names are resolved and TLS files opened (a running proxy).
    Real,
    /// Nothing outside the text: names do not resolve, files are taken as readable (the fuzz
    /// targets, which would otherwise wait on DNS for every name they invent).
    Offline,
}

/// Parses and validates one configuration file's text.
pub(crate) fn parse(source: &Source, lookups: Lookups) -> Result<Config, Diagnostics> {
    let mut cx = Cx {
        src: source,
        lookups,
        diags: Vec::new(),
        declared: Vec::new(),
        tcp_service_refs: Vec::new(),
        health_policy_refs: Vec::new(),
        authz_policy_refs: Vec::new(),
    };
    let (root, syntax_errors) = DeTable::parse_recoverable(source.text());
    if !syntax_errors.is_empty() {
        for e in syntax_errors {
            cx.error(
                e.span(),
                format!("invalid TOML: {}", first_line(e.message())),
            );
        }
        return Err(cx.finish());
    }

    let mut raw = RawFile::default();
    for (key, value) in root.into_inner() {
        if matches!(key.get_ref().as_ref(), "listener" | "service") {
            cx.declared
                .extend(declared_names(key.get_ref(), value.get_ref()));
        }
        let name = key.get_ref().as_ref();
        match name {
            "admin" => raw.admin = cx.section(name, value),
            "runtime" => raw.runtime = cx.section(name, value),
            "log" => raw.log = cx.section(name, value),
            "access_log" => raw.access_log = cx.section(name, value),
            "listener" => raw.listeners = cx.array(name, value),
            "route" => raw.routes = cx.array(name, value),
            "service" => raw.services = cx.array(name, value),
            "policy" => raw.policies = cx.array(name, value),
            "kv" => raw.kv = cx.array(name, value),
            "discovery" => raw.discovery = cx.array(name, value),
            "routing" => raw.routing = cx.section(name, value),
            other => {
                let mut diag = Diagnostic::at(
                    source,
                    Some(key.span()),
                    format!("unknown section `{other}`"),
                );
                if let Some(s) = closest(other.trim_end_matches('s'), SECTIONS) {
                    diag = diag.with_hint(format!(
                        "did you mean `{s}`? (arrays use the singular: [[{s}]])"
                    ));
                } else {
                    diag = diag.with_hint(format!("known sections: {}", SECTIONS.join(", ")));
                }
                cx.diags.push(diag);
            }
        }
    }

    let config = cx.validate(raw);
    if cx.diags.is_empty() {
        Ok(config)
    } else {
        Err(cx.finish())
    }
}

#[derive(Default)]
struct RawFile {
    admin: Option<RawAdmin>,
    runtime: Option<RawRuntime>,
    log: Option<RawLog>,
    access_log: Option<RawAccessLog>,
    listeners: Vec<Spanned<RawListener>>,
    routes: Vec<Spanned<RawRoute>>,
    services: Vec<Spanned<RawService>>,
    policies: Vec<Spanned<RawPolicy>>,
    kv: Vec<Spanned<RawKv>>,
    discovery: Vec<Spanned<RawDiscovery>>,
    routing: Option<RawRouting>,
}

struct Cx<'s> {
    src: &'s Source,
    lookups: Lookups,
    diags: Vec<Diagnostic>,
    /// `(section, name)` of every element that declares a name, even elements that failed to
    /// deserialize: a route naming a broken listener should not get a second, misleading error.
    declared: Vec<(String, String)>,
    /// `service` of each TCP listener, checked once services are known.
    tcp_service_refs: Vec<Spanned<String>>,
    /// `policy` of each health check, checked once policies are known.
    health_policy_refs: Vec<Spanned<String>>,
    /// `policy` of each `[listener.authz]`, checked once policies are known.
    authz_policy_refs: Vec<Spanned<String>>,
}

fn declared_names(section: &str, value: &DeValue<'_>) -> Vec<(String, String)> {
    let Some(items) = value.as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| item.get_ref().get("name")?.get_ref().as_str())
        .map(|name| (section.to_owned(), name.to_owned()))
        .collect()
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim()
}

impl<'s> Cx<'s> {
    fn finish(mut self) -> Diagnostics {
        self.diags.sort_by_key(|d| (d.line, d.col));
        self.diags.dedup();
        Diagnostics(self.diags)
    }

    fn error(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        self.diags.push(Diagnostic::at(self.src, span, message));
    }

    fn error_hint(
        &mut self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.diags
            .push(Diagnostic::at(self.src, span, message).with_hint(hint));
    }

    /// A `[table]` section.
    fn section<'i, T: Deserialize<'i>>(
        &mut self,
        section: &str,
        value: Spanned<DeValue<'i>>,
    ) -> Option<T> {
        if !value.get_ref().is_table() {
            self.error_hint(
                Some(value.span()),
                format!(
                    "`{section}` must be a table, found {}",
                    value.get_ref().type_str()
                ),
                format!("write it as [{section}] followed by its keys"),
            );
            return None;
        }
        self.element(section, value)
    }

    /// A `[[array]]` section: each element is checked on its own so one bad element does not
    /// hide the errors of the others.
    fn array<'i, T: Deserialize<'i>>(
        &mut self,
        section: &str,
        value: Spanned<DeValue<'i>>,
    ) -> Vec<Spanned<T>> {
        let span = value.span();
        match value.into_inner() {
            DeValue::Array(items) => items
                .into_iter()
                .filter_map(|item| {
                    let span = item.span();
                    self.element::<T>(section, item)
                        .map(|t| Spanned::new(span, t))
                })
                .collect(),
            other => {
                self.error_hint(
                    Some(span),
                    format!(
                        "`{section}` must be an array of tables, found {}",
                        other.type_str()
                    ),
                    format!("write each entry as [[{section}]]"),
                );
                Vec::new()
            }
        }
    }

    fn element<'i, T: Deserialize<'i>>(
        &mut self,
        section: &str,
        value: Spanned<DeValue<'i>>,
    ) -> Option<T> {
        let tree = value.clone();
        let mut ignored: Vec<Vec<Segment>> = Vec::new();
        let result = serde_ignored::deserialize(ValueDeserializer::from(value), |path| {
            ignored.push(segments(&path));
        });
        for path in ignored {
            self.unknown_key(section, &tree, &path);
        }
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                let span = e.span().or(Some(tree.span()));
                self.error(span, format!("in [{section}]: {}", first_line(e.message())));
                None
            }
        }
    }

    fn unknown_key(&mut self, section: &str, tree: &Spanned<DeValue<'_>>, path: &[Segment]) {
        let Some(Segment::Key(key)) = path.last() else {
            return;
        };
        let parents: Vec<&str> = path[..path.len() - 1]
            .iter()
            .filter_map(|s| match s {
                Segment::Key(k) => Some(k.as_str()),
                Segment::Index(_) => None,
            })
            .collect();
        let span = key_span(tree, path);
        let where_ = if parents.is_empty() {
            format!("[{section}]")
        } else {
            format!("[{section}.{}]", parents.join("."))
        };
        let known = known_keys(section, &parents);
        let hint = match closest(key, known) {
            Some(k) => format!("did you mean `{k}`?"),
            None if known.is_empty() => "remove it".to_owned(),
            None => format!("valid keys here: {}", known.join(", ")),
        };
        self.error_hint(span, format!("unknown key `{key}` in {where_}"), hint);
    }

    fn validate(&mut self, raw: RawFile) -> Config {
        let admin = self.admin(raw.admin.unwrap_or_default());
        let runtime = self.runtime(raw.runtime.unwrap_or_default());
        let log = self.log(raw.log.unwrap_or_default());
        let access_log = self.access_log(raw.access_log.unwrap_or_default());
        let listeners = self.listeners(&raw.listeners, &admin);
        let services = self.services(&raw.services);
        let routes = self.routes(&raw.routes, &listeners, &services);
        let policies = self.policies(&raw.policies);
        let kv = self.kv(&raw.kv);
        self.cross_references(&services, &policies);
        self.authz_policy_references(&policies);
        let discovery = self.discovery(&raw.discovery);
        let routing = self.routing(
            raw.routing,
            &discovery,
            &listeners,
            &policies,
            !kv.is_empty(),
        );
        Config {
            admin,
            runtime,
            log,
            access_log,
            listeners,
            routes,
            services,
            policies,
            kv,
            discovery,
            routing,
        }
    }

    /// References that can only be checked once every section is known.
    fn cross_references(&mut self, services: &[ServiceConfig], policies: &[PolicyConfig]) {
        let service_names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        for svc in std::mem::take(&mut self.tcp_service_refs) {
            let name = svc.get_ref().as_str();
            if !service_names.contains(&name) {
                let hint = closest(name, &service_names).map_or_else(
                    || format!("define it with [[service]] name = \"{name}\""),
                    |c| format!("did you mean `{c}`?"),
                );
                self.error_hint(
                    Some(svc.span()),
                    format!("TCP listener refers to unknown service `{name}`"),
                    hint,
                );
            }
        }
        let health_policies: Vec<&str> = policies
            .iter()
            .filter(|p| p.world == PolicyWorld::Health)
            .map(|p| p.name.as_str())
            .collect();
        for p in std::mem::take(&mut self.health_policy_refs) {
            let name = p.get_ref().as_str();
            if !health_policies.contains(&name) {
                let other_world = policies
                    .iter()
                    .find(|q| q.name == name)
                    .map(|q| q.world.as_str());
                let (message, hint) = match other_world {
                    Some(world) => (
                        format!("policy `{name}` is a {world} policy, not a health policy"),
                        "a health check needs a [[policy]] with world = \"health\"".to_owned(),
                    ),
                    None => (
                        format!("health check refers to unknown policy `{name}`"),
                        format!("define it with [[policy]] name = \"{name}\", world = \"health\""),
                    ),
                };
                self.error_hint(Some(p.span()), message, hint);
            }
        }
    }

    fn policies(&mut self, raw: &[Spanned<RawPolicy>]) -> Vec<PolicyConfig> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut out = Vec::new();
        for p in raw {
            let p = p.get_ref();
            let name = p.name.get_ref().as_str();
            self.check_name(&p.name, "policy");
            if let Some(line) = seen.insert(name, self.src.line_col(p.name.span().start).0) {
                self.error_hint(
                    Some(p.name.span()),
                    format!("duplicate policy name `{name}`"),
                    format!("first defined on line {line}"),
                );
            }
            let world = match p.world.get_ref().as_str() {
                "routing" => PolicyWorld::Routing,
                "health" => PolicyWorld::Health,
                "authz" => PolicyWorld::Authz,
                _ => {
                    self.bad_choice(&p.world, "policy world", &["routing", "health", "authz"]);
                    PolicyWorld::Health
                }
            };
            let failure_mode = match &p.failure_mode {
                None if world == PolicyWorld::Authz => FailureMode::Closed,
                None => FailureMode::KeepLast,
                Some(m) => match (m.get_ref().as_str(), world) {
                    ("closed", PolicyWorld::Authz) => FailureMode::Closed,
                    ("open", PolicyWorld::Authz) => FailureMode::Open,
                    ("keep_last", PolicyWorld::Health | PolicyWorld::Routing) => {
                        FailureMode::KeepLast
                    }
                    (_, PolicyWorld::Authz) => {
                        self.bad_choice(m, "failure_mode for an authz policy", &["closed", "open"]);
                        FailureMode::Closed
                    }
                    _ => {
                        self.bad_choice(m, "failure_mode for this world", &["keep_last"]);
                        FailureMode::KeepLast
                    }
                },
            };
            let config = match &p.config {
                None => serde_json::Value::Object(serde_json::Map::new()),
                Some(v) => crate::policy::config_json(v).unwrap_or_else(|e| {
                    self.error(Some(v.span()), e);
                    serde_json::Value::Null
                }),
            };
            let file = p.file.get_ref();
            if file.is_empty() {
                self.error_hint(
                    Some(p.file.span()),
                    "policy `file` is empty",
                    "give the path of a .wasm component",
                );
            }
            let file = match self.src.path().parent() {
                Some(dir) if std::path::Path::new(file).is_relative() => dir.join(file),
                _ => file.into(),
            };
            out.push(PolicyConfig {
                name: name.to_owned(),
                file,
                world,
                config,
                limits: PolicyLimits {
                    timeout: self.duration(p.timeout.as_ref(), POLICY_TIMEOUT),
                    max_memory_bytes: self.int_in(
                        p.max_memory_bytes.as_ref(),
                        1 << 16,
                        4 << 30,
                        POLICY_MAX_MEMORY_BYTES as i64,
                    ) as usize,
                },
                failure_mode,
            });
        }
        out
    }

    /// `[[kv]]`: each source's keys, checked for the fields its kind needs.
    fn kv(&mut self, raw: &[Spanned<RawKv>]) -> Vec<KvConfig> {
        let mut out = Vec::new();
        for k in raw {
            let span = k.span();
            let k = k.get_ref();
            let misplaced = |s: &mut Self, kind: &str, fields: &[(&str, Option<Range<usize>>)]| {
                for (key, span) in fields {
                    if span.is_some() {
                        s.error_hint(
                            span.clone(),
                            format!("`{key}` does not apply to source = \"{kind}\""),
                            "remove it, or change the source",
                        );
                    }
                }
            };
            let path_span = k.path.as_ref().map(Spanned::span);
            let endpoints_span = k
                .endpoints
                .as_ref()
                .map(|e| e.first().map_or(span.clone(), Spanned::span));
            let timeout_span = k.request_timeout.as_ref().map(Spanned::span);
            let poll_span = k.poll.as_ref().map(Spanned::span);
            let source = match k.source.get_ref().as_str() {
                "env" => {
                    misplaced(
                        self,
                        "env",
                        &[
                            ("path", path_span),
                            ("endpoints", endpoints_span),
                            ("request_timeout", timeout_span),
                            ("poll", poll_span),
                        ],
                    );
                    KvSourceConfig::Env
                }
                "file" => {
                    misplaced(
                        self,
                        "file",
                        &[
                            ("endpoints", endpoints_span),
                            ("request_timeout", timeout_span),
                        ],
                    );
                    let Some(path) = &k.path else {
                        self.error_hint(
                            Some(k.source.span()),
                            "a file KV source needs a `path`",
                            "a directory (one file per key) or a .toml/.json document",
                        );
                        continue;
                    };
                    if path.get_ref().is_empty() {
                        self.error_hint(
                            Some(path.span()),
                            "`path` is empty",
                            "a directory or a .toml/.json document",
                        );
                    }
                    let file = path.get_ref();
                    KvSourceConfig::File(match self.src.path().parent() {
                        Some(dir) if std::path::Path::new(file).is_relative() => dir.join(file),
                        _ => file.into(),
                    })
                }
                "etcd" => {
                    misplaced(self, "etcd", &[("path", path_span), ("poll", poll_span)]);
                    let endpoints: Vec<String> = k
                        .endpoints
                        .iter()
                        .flatten()
                        .filter_map(|e| {
                            let v = e.get_ref();
                            if v.starts_with("http://") && v.len() > "http://".len() {
                                Some(v.clone())
                            } else {
                                self.error_hint(
                                    Some(e.span()),
                                    format!("invalid etcd endpoint `{v}`"),
                                    "write http://HOST:PORT (etcd's gateway over plain HTTP; TLS to etcd is not supported yet)",
                                );
                                None
                            }
                        })
                        .collect();
                    if k.endpoints.as_ref().is_none_or(Vec::is_empty) {
                        self.error_hint(
                            Some(k.source.span()),
                            "an etcd KV source needs `endpoints`",
                            "endpoints = [\"http://127.0.0.1:2379\"]",
                        );
                    }
                    KvSourceConfig::Etcd { endpoints }
                }
                _ => {
                    self.bad_choice(&k.source, "KV source", &["env", "file", "etcd"]);
                    continue;
                }
            };
            out.push(KvConfig {
                source,
                prefix: k
                    .prefix
                    .as_ref()
                    .map(|p| p.get_ref().clone())
                    .unwrap_or_default(),
                request_timeout: self.duration(k.request_timeout.as_ref(), d::KV_REQUEST_TIMEOUT),
                poll: self.duration(k.poll.as_ref(), d::KV_POLL),
            });
        }
        out
    }

    fn discovery(&mut self, raw: &[Spanned<RawDiscovery>]) -> Vec<DiscoveryConfig> {
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
            // Keys that belong to another kind are errors, not silently ignored.
            let mut only_for =
                |present: Option<std::ops::Range<usize>>, key: &str, for_kind: &str| {
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
            let source = match kind {
                "static" => {
                    let Some(instances) = &d.instances else {
                        self.error_hint(
                            Some(d.kind.span()),
                            "a static discovery source needs instances",
                            "add [[discovery.instances]] with name, address and port",
                        );
                        continue;
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
                        continue;
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
                        poll_interval: self
                            .duration(d.poll_interval.as_ref(), DISCOVERY_POLL_INTERVAL),
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
                    continue;
                }
            };
            out.push(DiscoveryConfig { name, source });
        }
        out
    }

    fn static_instance(&mut self, raw: &Spanned<RawStaticInstance>) -> Option<StaticInstance> {
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

    fn routing(
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
        RoutingConfig {
            listener,
            policy,
            debounce: self.duration(raw.debounce.as_ref(), ROUTING_DEBOUNCE),
            tcp_bind,
            overrides,
            overrides_key,
        }
    }

    /// The file offset of byte `offset` of a string value's content. The value is the parsed
    /// string (escapes resolved), so its line is looked up in the literal's source text; when
    /// it cannot be found (escapes on that line), the literal's start is used.
    fn offset_in_string(&self, value: &Spanned<String>, offset: usize) -> usize {
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

    fn admin(&mut self, raw: RawAdmin) -> AdminConfig {
        let bind = match &raw.bind {
            Some(b) => self.socket_addr(b).unwrap_or_else(default_admin_bind),
            None => default_admin_bind(),
        };
        AdminConfig { bind }
    }

    fn runtime(&mut self, raw: RawRuntime) -> RuntimeConfig {
        RuntimeConfig {
            worker_threads: self.int_in(
                raw.worker_threads.as_ref(),
                0,
                1024,
                d::WORKER_THREADS as i64,
            ) as usize,
            shutdown_grace: self.duration(raw.shutdown_grace.as_ref(), d::SHUTDOWN_GRACE),
        }
    }

    fn log(&mut self, raw: RawLog) -> LogConfig {
        let format = match &raw.format {
            None => LogFormat::Text,
            Some(f) => match f.get_ref().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => {
                    self.bad_choice(f, "log format", &["text", "json"]);
                    LogFormat::Text
                }
            },
        };
        LogConfig {
            level: raw
                .level
                .map_or_else(|| d::LOG_LEVEL.to_owned(), Spanned::into_inner),
            format,
        }
    }

    fn access_log(&mut self, raw: RawAccessLog) -> AccessLogConfig {
        let target = match raw.path.as_ref().map(|p| p.get_ref().as_str()) {
            None | Some("stdout") => AccessLogTarget::Stdout,
            Some("off") => AccessLogTarget::Off,
            Some("") => {
                self.error_hint(
                    raw.path.as_ref().map(Spanned::span),
                    "access log path is empty",
                    "use \"stdout\", \"off\" or a file path",
                );
                AccessLogTarget::Off
            }
            Some(p) => AccessLogTarget::File(p.into()),
        };
        let format = match &raw.format {
            None => AccessLogFormat::Json,
            Some(f) => match f.get_ref().as_str() {
                "json" => AccessLogFormat::Json,
                "combined" => AccessLogFormat::Combined,
                _ => {
                    self.bad_choice(f, "access log format", &["json", "combined"]);
                    AccessLogFormat::Json
                }
            },
        };
        AccessLogConfig {
            target,
            format,
            buffer_lines: self.int_in(
                raw.buffer_lines.as_ref(),
                16,
                1 << 24,
                d::ACCESS_LOG_BUFFER_LINES as i64,
            ) as usize,
        }
    }

    fn listeners(
        &mut self,
        raw: &[Spanned<RawListener>],
        admin: &AdminConfig,
    ) -> Vec<ListenerConfig> {
        let mut seen_names: HashMap<&str, usize> = HashMap::new();
        let mut seen_binds: HashMap<SocketAddr, usize> = HashMap::new();
        let mut out = Vec::new();
        for l in raw {
            let l = l.get_ref();
            let name = l.name.get_ref().as_str();
            self.check_name(&l.name, "listener");
            if let Some(line) = seen_names.insert(name, self.src.line_col(l.name.span().start).0) {
                self.error_hint(
                    Some(l.name.span()),
                    format!("duplicate listener name `{name}`"),
                    format!("first defined on line {line}"),
                );
            }
            let bind = self.socket_addr(&l.bind);
            if let Some(bind) = bind {
                if bind == admin.bind {
                    self.error_hint(
                        Some(l.bind.span()),
                        format!("listener `{name}` binds {bind}, which the admin listener uses"),
                        "change [admin] bind or this listener's bind",
                    );
                }
                // Port 0 asks the OS for a fresh port each time, so it never collides.
                let first = (bind.port() != 0)
                    .then(|| seen_binds.insert(bind, self.src.line_col(l.bind.span().start).0))
                    .flatten();
                if let Some(line) = first {
                    self.error_hint(
                        Some(l.bind.span()),
                        format!("address {bind} is bound by two listeners"),
                        format!("the other one is on line {line}"),
                    );
                }
            }
            let protocol = match &l.protocol {
                None => ListenerProtocol::Http,
                Some(p) => match p.get_ref().as_str() {
                    "http" => ListenerProtocol::Http,
                    "tcp" => ListenerProtocol::Tcp,
                    _ => {
                        self.bad_choice(p, "listener protocol", &["http", "tcp"]);
                        ListenerProtocol::Http
                    }
                },
            };
            let tcp = self.tcp_listener(l, protocol);
            let tls = l.tls.as_ref().and_then(|t| self.listener_tls(t, &l.name));
            let authz = l.authz.as_ref().map(|a| self.listener_authz(a));
            out.push(ListenerConfig {
                name: name.to_owned(),
                bind: bind.unwrap_or_else(default_admin_bind),
                protocol,
                max_connections: self.int_in(
                    l.max_connections.as_ref(),
                    1,
                    10_000_000,
                    d::MAX_CONNECTIONS as i64,
                ) as usize,
                header_read_timeout: self
                    .duration(l.header_read_timeout.as_ref(), d::HEADER_READ_TIMEOUT),
                max_header_bytes: self.int_in(
                    l.max_header_bytes.as_ref(),
                    8192,
                    1 << 20,
                    d::MAX_HEADER_BYTES as i64,
                ) as usize,
                keepalive_timeout: self
                    .duration(l.keepalive_timeout.as_ref(), d::KEEPALIVE_TIMEOUT),
                request_body_timeout: self
                    .duration(l.request_body_timeout.as_ref(), d::REQUEST_BODY_TIMEOUT),
                send_timeout: self.duration(l.send_timeout.as_ref(), d::SEND_TIMEOUT),
                http2: l.http2.unwrap_or(true),
                accept_proxy_protocol: l.accept_proxy_protocol.unwrap_or(false),
                max_concurrent_streams: self.int_in(
                    l.max_concurrent_streams.as_ref(),
                    1,
                    65_535,
                    i64::from(d::MAX_CONCURRENT_STREAMS),
                ) as u32,
                http2_max_stalled_streams: self.int_in(
                    l.http2_max_stalled_streams.as_ref(),
                    1,
                    65_535,
                    i64::from(d::HTTP2_MAX_STALLED_STREAMS),
                ) as u32,
                tcp,
                tls,
                authz,
            });
        }
        out
    }

    /// The TCP part of a listener: required for `protocol = "tcp"`, refused for HTTP.
    fn tcp_listener(
        &mut self,
        l: &RawListener,
        protocol: ListenerProtocol,
    ) -> Option<TcpListenerConfig> {
        if protocol != ListenerProtocol::Tcp {
            for (key, span) in [
                ("service", l.service.as_ref().map(Spanned::span)),
                (
                    "proxy_protocol",
                    l.proxy_protocol.as_ref().map(Spanned::span),
                ),
                ("idle_timeout", l.idle_timeout.as_ref().map(Spanned::span)),
                (
                    "sni",
                    l.sni
                        .as_ref()
                        .map(|v| v.first().map_or(l.name.span(), Spanned::span)),
                ),
                ("sni_timeout", l.sni_timeout.as_ref().map(Spanned::span)),
                ("sni_max_bytes", l.sni_max_bytes.as_ref().map(Spanned::span)),
            ] {
                if span.is_some() {
                    self.error_hint(
                        span,
                        format!("`{key}` only applies to a TCP listener"),
                        "add protocol = \"tcp\", or route HTTP with [[route]] entries",
                    );
                }
            }
            return None;
        }
        let sni = self.sni(l);
        if l.service.is_none() && sni.is_none() {
            self.error_hint(
                Some(l.name.span()),
                format!("TCP listener `{}` has no `service`", l.name.get_ref()),
                "a TCP listener sends every connection to one service: add service = \"NAME\"",
            );
            return None;
        }
        if let Some(service) = &l.service {
            self.tcp_service_refs.push(service.clone());
        }
        let proxy_protocol = match l.proxy_protocol.as_ref().map(|p| p.get_ref().as_str()) {
            None | Some("off") => ProxyProtocol::Off,
            Some("v1") => ProxyProtocol::V1,
            Some("v2") => ProxyProtocol::V2,
            Some(_) => {
                if let Some(p) = &l.proxy_protocol {
                    self.bad_choice(p, "proxy_protocol", &["off", "v1", "v2"]);
                }
                ProxyProtocol::Off
            }
        };
        Some(TcpListenerConfig {
            service: l.service.as_ref().map(|s| s.get_ref().clone()),
            sni,
            proxy_protocol,
            idle_timeout: self.duration(l.idle_timeout.as_ref(), d::TCP_IDLE_TIMEOUT),
        })
    }

    /// `[[listener.sni]]` of a TCP listener: TLS passthrough, so no `[listener.tls]` (that
    /// would terminate TLS) and no `[listener.authz]` (there is no verified identity to check).
    fn sni(&mut self, l: &RawListener) -> Option<SniConfig> {
        let Some(entries) = &l.sni else {
            for (key, span) in [
                ("sni_timeout", l.sni_timeout.as_ref().map(Spanned::span)),
                ("sni_max_bytes", l.sni_max_bytes.as_ref().map(Spanned::span)),
            ] {
                if span.is_some() {
                    self.error_hint(
                        span,
                        format!("`{key}` only applies to a listener with [[listener.sni]] entries"),
                        "add [[listener.sni]] host = \"...\", service = \"...\" or remove it",
                    );
                }
            }
            return None;
        };
        if l.tls.is_some() {
            self.error_hint(
                Some(l.name.span()),
                format!(
                    "listener `{}` has both [listener.tls] and [[listener.sni]]",
                    l.name.get_ref()
                ),
                "[[listener.sni]] passes TLS through untouched; [listener.tls] terminates it: choose one",
            );
        }
        if l.authz.is_some() {
            self.error_hint(
                Some(l.name.span()),
                format!(
                    "listener `{}` has [listener.authz] with [[listener.sni]]",
                    l.name.get_ref()
                ),
                "a passthrough listener never sees a client certificate; authorize at the backend, or terminate TLS with [listener.tls]",
            );
        }
        let mut seen: HashMap<HostMatch, usize> = HashMap::new();
        let mut routes = Vec::new();
        for e in entries {
            let e = e.get_ref();
            let host = self.host_match(&e.host);
            if host == HostMatch::Any {
                self.error_hint(
                    Some(e.host.span()),
                    "an SNI entry needs a server name",
                    "use `name.example.com` or `*.example.com`; the listener's `service` takes connections without a match",
                );
                continue;
            }
            let line = self.src.line_col(e.host.span().start).0;
            if let Some(first) = seen.insert(host.clone(), line) {
                self.error_hint(
                    Some(e.host.span()),
                    format!("duplicate SNI entry for `{host}`"),
                    format!("the first one is on line {first}"),
                );
            }
            self.tcp_service_refs.push(e.service.clone());
            routes.push(SniRoute {
                host,
                service: e.service.get_ref().clone(),
            });
        }
        Some(SniConfig {
            routes,
            timeout: self.duration(l.sni_timeout.as_ref(), d::SNI_TIMEOUT),
            max_bytes: self.int_in(
                l.sni_max_bytes.as_ref(),
                512,
                1 << 20,
                d::SNI_MAX_BYTES as i64,
            ) as usize,
        })
    }

    fn health(&mut self, raw: &Spanned<RawHealth>) -> Option<HealthCheckConfig> {
        let h = raw.get_ref();
        let Some(kind_raw) = &h.kind else {
            self.error_hint(
                Some(raw.span()),
                "health check has no `kind`",
                "add kind = \"http\", \"tcp\" or \"command\"",
            );
            return None;
        };
        let misplaced = |s: &mut Self, applies: &str, fields: &[(&str, Option<Range<usize>>)]| {
            for (key, span) in fields {
                if span.is_some() {
                    s.error_hint(
                        span.clone(),
                        format!("`{key}` only applies to kind = \"{applies}\""),
                        "remove it, or change the check's kind",
                    );
                }
            }
        };
        let http_fields = [
            ("method", h.method.as_ref().map(Spanned::span)),
            ("path", h.path.as_ref().map(Spanned::span)),
            ("host", h.host.as_ref().map(Spanned::span)),
            (
                "expect_status",
                h.expect_status
                    .as_ref()
                    .and_then(|v| v.first())
                    .map(Spanned::span),
            ),
            ("expect_body", h.expect_body.as_ref().map(Spanned::span)),
        ];
        let tcp_fields = [
            ("send", h.send.as_ref().map(Spanned::span)),
            ("expect", h.expect.as_ref().map(Spanned::span)),
        ];
        let command_fields = [(
            "args",
            h.args.as_ref().and_then(|v| v.first()).map(Spanned::span),
        )];
        let kind = match kind_raw.get_ref().as_str() {
            "http" => {
                misplaced(self, "tcp", &tcp_fields);
                misplaced(self, "command", &command_fields);
                let path = h.path.as_ref().map_or_else(
                    || "/".to_owned(),
                    |p| {
                        self.check_path(p, "path");
                        p.get_ref().clone()
                    },
                );
                let method = h.method.as_ref().map_or_else(
                    || "GET".to_owned(),
                    |m| {
                        let v = m.get_ref().to_ascii_uppercase();
                        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_uppercase()) {
                            self.error_hint(
                                Some(m.span()),
                                format!("invalid method `{}`", m.get_ref()),
                                "e.g. \"GET\" or \"HEAD\"",
                            );
                        }
                        v
                    },
                );
                let expect_status = match &h.expect_status {
                    None => vec![(200, 399)],
                    Some(list) => list.iter().filter_map(|v| self.status_range(v)).collect(),
                };
                CheckKind::Http {
                    method,
                    path,
                    host: h.host.as_ref().map(|v| v.get_ref().clone()),
                    expect_status,
                    expect_body: h.expect_body.as_ref().map(|v| v.get_ref().clone()),
                }
            }
            "tcp" => {
                misplaced(self, "http", &http_fields);
                misplaced(self, "command", &command_fields);
                CheckKind::Tcp {
                    send: h.send.as_ref().map(|v| v.get_ref().clone()),
                    expect: h.expect.as_ref().map(|v| v.get_ref().clone()),
                }
            }
            "command" => {
                misplaced(self, "http", &http_fields);
                misplaced(self, "tcp", &tcp_fields);
                let args: Vec<String> = h
                    .args
                    .iter()
                    .flatten()
                    .map(|a| a.get_ref().clone())
                    .collect();
                if args.first().is_none_or(String::is_empty) {
                    self.error_hint(
                        Some(raw.span()),
                        "a command check needs `args`",
                        "e.g. args = [\"/usr/local/bin/is-primary\", \"{address}\", \"{port}\"]",
                    );
                }
                CheckKind::Command { args }
            }
            _ => {
                self.bad_choice(kind_raw, "health check kind", &["http", "tcp", "command"]);
                return None;
            }
        };
        let interval = self.duration(h.interval.as_ref(), d::HEALTH_INTERVAL);
        let timeout = self.duration(h.timeout.as_ref(), d::HEALTH_TIMEOUT);
        if let Some(t) = h.timeout.as_ref().filter(|_| timeout > interval) {
            self.error_hint(
                Some(t.span()),
                "health check timeout is longer than its interval",
                "probes of one instance never overlap: make timeout ≤ interval",
            );
        }
        let address = h.address.as_ref().and_then(|a| self.check_address(a));
        if let Some(p) = &h.policy {
            self.health_policy_refs.push(p.clone());
        }
        Some(HealthCheckConfig {
            kind,
            interval,
            timeout,
            rise: self.int_in(h.rise.as_ref(), 1, 100, i64::from(d::HEALTH_RISE)) as u32,
            fall: self.int_in(h.fall.as_ref(), 1, 100, i64::from(d::HEALTH_FALL)) as u32,
            jitter: h.jitter.as_ref().map_or(interval / 10, |j| {
                humantime::parse_duration(j.get_ref()).unwrap_or_else(|e| {
                    self.error_hint(
                        Some(j.span()),
                        format!("invalid duration `{}`: {e}", j.get_ref()),
                        "e.g. \"100ms\"; \"0s\" turns jitter off",
                    );
                    Duration::ZERO
                })
            }),
            address,
            port: h
                .port
                .as_ref()
                .map(|p| self.int_in(Some(p), 1, 65_535, 1) as u16),
            policy: h.policy.as_ref().map(|p| p.get_ref().clone()),
            body_bytes: self.int_in(
                h.body_bytes.as_ref(),
                0,
                1 << 20,
                d::HEALTH_BODY_BYTES as i64,
            ) as usize,
        })
    }

    /// `200`, `"200"`, `"200-299"` or `"2xx"`.
    fn status_range(&mut self, v: &Spanned<toml::Value>) -> Option<(u16, u16)> {
        let parsed = match v.get_ref() {
            toml::Value::Integer(n) => u16::try_from(*n).ok().map(|n| (n, n)),
            toml::Value::String(s) => {
                let s = s.trim();
                if let Some(class) = s.strip_suffix("xx").and_then(|c| c.parse::<u16>().ok()) {
                    Some((class * 100, class * 100 + 99))
                } else if let Some((a, b)) = s.split_once('-') {
                    a.trim().parse().ok().zip(b.trim().parse().ok())
                } else {
                    s.parse().ok().map(|n| (n, n))
                }
            }
            _ => None,
        };
        match parsed {
            Some((a, b)) if (100..=599).contains(&a) && (a..=599).contains(&b) => Some((a, b)),
            _ => {
                self.error_hint(
                    Some(v.span()),
                    format!("invalid expected status `{}`", v.get_ref()),
                    "use 200, \"200-299\" or \"2xx\"",
                );
                None
            }
        }
    }

    fn services(&mut self, raw: &[Spanned<RawService>]) -> Vec<ServiceConfig> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut out = Vec::new();
        for s in raw {
            let s = s.get_ref();
            let name = s.name.get_ref().as_str();
            self.check_name(&s.name, "service");
            if let Some(line) = seen.insert(name, self.src.line_col(s.name.span().start).0) {
                self.error_hint(
                    Some(s.name.span()),
                    format!("duplicate service name `{name}`"),
                    format!("first defined on line {line}"),
                );
            }
            let balancer = self.balancer(s);
            let instances = self.instances(s.instances.as_deref().unwrap_or_default());
            let t = s.timeouts.as_ref();
            let timeouts = Timeouts {
                connect: self.duration(t.and_then(|t| t.connect.as_ref()), d::CONNECT_TIMEOUT),
                response_header: self.duration(
                    t.and_then(|t| t.response_header.as_ref()),
                    d::RESPONSE_HEADER_TIMEOUT,
                ),
                idle: self.duration(t.and_then(|t| t.idle.as_ref()), d::IDLE_TIMEOUT),
                total: self.duration(t.and_then(|t| t.total.as_ref()), d::TOTAL_TIMEOUT),
                tunnel_idle: self.duration(
                    t.and_then(|t| t.tunnel_idle.as_ref()),
                    d::TUNNEL_IDLE_TIMEOUT,
                ),
            };
            let retries = self.retries(s.retries.as_ref());
            let outlier = self.outlier(s.outlier.as_ref());
            let p = s.pool.as_ref();
            let pool = PoolConfig {
                max_idle_per_instance: self.int_in(
                    p.and_then(|p| p.max_idle_per_instance.as_ref()),
                    0,
                    100_000,
                    d::POOL_MAX_IDLE as i64,
                ) as usize,
                idle_timeout: self.duration(
                    p.and_then(|p| p.idle_timeout.as_ref()),
                    d::POOL_IDLE_TIMEOUT,
                ),
            };
            let serve = match s.serve.as_ref().map(|v| v.get_ref().as_str()) {
                None | Some("any") => Serve::Any,
                Some("primary") => Serve::Primary,
                Some(_) => {
                    if let Some(v) = &s.serve {
                        self.bad_choice(v, "serve", &["any", "primary"]);
                    }
                    Serve::Any
                }
            };
            let health = s.health.as_ref().and_then(|h| self.health(h));
            let reports_roles = health.as_ref().is_some_and(|h| h.policy.is_some());
            if let (Serve::Primary, false, Some(v)) = (serve, reports_roles, &s.serve) {
                self.error_hint(
                    Some(v.span()),
                    "serve = \"primary\" needs a health check whose policy reports roles",
                    "add [service.health] with policy = \"NAME\" of a health policy such as mirror-primary",
                );
            }
            let on_demotion = match s.on_demotion.as_ref().map(|v| v.get_ref().as_str()) {
                None | Some("close") => OnDemotion::Close,
                Some("keep") => OnDemotion::Keep,
                Some(_) => {
                    if let Some(v) = &s.on_demotion {
                        self.bad_choice(v, "on_demotion", &["close", "keep"]);
                    }
                    OnDemotion::Close
                }
            };
            out.push(ServiceConfig {
                name: name.to_owned(),
                balancer,
                instances,
                timeouts,
                retries,
                outlier,
                pool,
                serve,
                health,
                on_demotion,
                tls: s.tls.as_ref().and_then(|t| self.service_tls(t, &s.name)),
            });
        }
        out
    }

    fn balancer(&mut self, s: &RawService) -> Balancer {
        const CHOICES: &[&str] = &["round_robin", "least_request", "p2c_ewma", "hash"];
        let kind = s
            .balancer
            .as_ref()
            .map_or("round_robin", |b| b.get_ref().as_str());
        let balancer = match kind {
            "round_robin" => Balancer::RoundRobin,
            "least_request" => Balancer::LeastRequest,
            "p2c_ewma" => Balancer::P2cEwma,
            "hash" => Balancer::Hash(
                s.hash_on
                    .as_ref()
                    .map_or(HashKey::ClientIp, |h| self.hash_key(h)),
            ),
            _ => {
                if let Some(b) = &s.balancer {
                    self.bad_choice(b, "balancer", CHOICES);
                }
                Balancer::RoundRobin
            }
        };
        if let (Some(h), false) = (&s.hash_on, matches!(balancer, Balancer::Hash(_))) {
            self.error_hint(
                Some(h.span()),
                "`hash_on` only applies to balancer = \"hash\"",
                "set balancer = \"hash\" or remove `hash_on`",
            );
        }
        balancer
    }

    fn hash_key(&mut self, h: &Spanned<String>) -> HashKey {
        let v = h.get_ref().as_str();
        let key = match v.split_once(':') {
            None if v == "client_ip" => Some(HashKey::ClientIp),
            Some(("header", name)) if is_token(name) => {
                Some(HashKey::Header(name.to_ascii_lowercase()))
            }
            Some(("cookie", name)) if is_token(name) => Some(HashKey::Cookie(name.to_owned())),
            _ => None,
        };
        key.unwrap_or_else(|| {
            self.error_hint(
                Some(h.span()),
                format!("invalid hash_on `{v}`"),
                "use \"client_ip\", \"header:NAME\" or \"cookie:NAME\"",
            );
            HashKey::ClientIp
        })
    }

    fn instances(&mut self, raw: &[Spanned<RawInstance>]) -> Vec<InstanceConfig> {
        let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
        let mut out = Vec::new();
        for i in raw {
            let span = i.span();
            let inst = i.get_ref();
            let address = if inst.address.span() == (0..0) {
                Spanned::new(span.clone(), inst.address.get_ref().clone())
            } else {
                inst.address.clone()
            };
            let Some(addr) = self.upstream_addr(&address) else {
                continue;
            };
            if let Some(line) = seen.insert(addr, self.src.line_col(address.span().start).0) {
                self.error_hint(
                    Some(address.span()),
                    format!("instance {addr} is listed twice"),
                    format!("first listed on line {line}; raise its weight instead"),
                );
            }
            let weight = self.int_in(inst.weight.as_ref(), 1, 10_000, 1) as u32;
            out.push(InstanceConfig {
                address: addr,
                weight,
                check_address: inst
                    .check_address
                    .as_ref()
                    .and_then(|a| self.check_address(a)),
                check_port: inst
                    .check_port
                    .as_ref()
                    .map(|p| self.int_in(Some(p), 1, 65_535, 1) as u16),
            });
        }
        out
    }

    /// A check `address` (`[service.health]`) or an instance's `check_address`: an IP.
    fn check_address(&mut self, a: &Spanned<String>) -> Option<std::net::IpAddr> {
        match a.get_ref().parse::<std::net::IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.error_hint(
                    Some(a.span()),
                    format!("invalid check address `{}`", a.get_ref()),
                    "use an IP address; omit it to probe the instance's own address",
                );
                None
            }
        }
    }

    fn retries(&mut self, r: Option<&RawRetries>) -> RetryPolicy {
        let on_status = match r.and_then(|r| r.on_status.as_ref()) {
            None => d::RETRY_ON_STATUS.to_vec(),
            Some(list) => list
                .iter()
                .filter_map(|s| {
                    let v = *s.get_ref();
                    if (500..=599).contains(&v) {
                        Some(v as u16)
                    } else {
                        self.error_hint(
                            Some(s.span()),
                            format!("cannot retry on status {v}"),
                            "only 5xx statuses are retried",
                        );
                        None
                    }
                })
                .collect(),
        };
        let budget_ratio = match r.and_then(|r| r.budget_ratio.as_ref()) {
            None => d::RETRY_BUDGET_RATIO,
            Some(v) if (0.0..=1.0).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                self.error_hint(
                    Some(v.span()),
                    format!("budget_ratio {} is out of range", v.get_ref()),
                    "use a fraction between 0.0 and 1.0, e.g. 0.2 for 20%",
                );
                d::RETRY_BUDGET_RATIO
            }
        };
        RetryPolicy {
            attempts: self.int_in(
                r.and_then(|r| r.attempts.as_ref()),
                0,
                10,
                i64::from(d::RETRY_ATTEMPTS),
            ) as u32,
            on_status,
            budget_ratio,
            budget_min_per_sec: self.int_in(
                r.and_then(|r| r.budget_min_per_sec.as_ref()),
                0,
                1_000_000,
                i64::from(d::RETRY_BUDGET_MIN_PER_SEC),
            ) as u32,
            buffer_bytes: self.int_in(
                r.and_then(|r| r.buffer_bytes.as_ref()),
                0,
                16 << 20,
                d::RETRY_BUFFER_BYTES as i64,
            ) as usize,
        }
    }

    fn outlier(&mut self, o: Option<&RawOutlier>) -> OutlierConfig {
        let base = self.duration(
            o.and_then(|o| o.base_ejection.as_ref()),
            d::OUTLIER_BASE_EJECTION,
        );
        let max_raw = o.and_then(|o| o.max_ejection.as_ref());
        let max = self.duration(max_raw, d::OUTLIER_MAX_EJECTION);
        if max < base {
            self.error_hint(
                max_raw.map(Spanned::span),
                "max_ejection is shorter than base_ejection",
                "ejections start at base_ejection and double up to max_ejection",
            );
        }
        OutlierConfig {
            consecutive_failures: self.int_in(
                o.and_then(|o| o.consecutive_failures.as_ref()),
                0,
                1000,
                i64::from(d::OUTLIER_CONSECUTIVE_FAILURES),
            ) as u32,
            base_ejection: base,
            max_ejection: max.max(base),
            max_ejected_percent: self.int_in(
                o.and_then(|o| o.max_ejected_percent.as_ref()),
                0,
                100,
                i64::from(d::OUTLIER_MAX_EJECTED_PERCENT),
            ) as u8,
        }
    }

    fn routes<'a>(
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
            let listener = match &r.listener {
                Some(l) => {
                    let name = l.get_ref().as_str();
                    if !listener_names.contains(&name) {
                        let hint = closest(name, &listener_names).map_or_else(
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
            };
            let service = match &r.service {
                Some(s) => {
                    let service = s.get_ref().as_str();
                    if !service_names.contains(&service) {
                        let hint = closest(service, &service_names).map_or_else(
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
            };
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
            });
        }
        out
    }

    fn host_match(&mut self, h: &Spanned<String>) -> HostMatch {
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

    fn check_path(&mut self, p: &Spanned<String>, what: &str) {
        let v = p.get_ref();
        if !v.starts_with('/') {
            self.error_hint(
                Some(p.span()),
                format!("`{what}` must start with '/', found `{v}`"),
                format!("write \"/{}\"", v.trim_start_matches('/')),
            );
        } else if v
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'?' || b == b'#')
        {
            self.error_hint(
                Some(p.span()),
                format!("`{what}` contains characters not allowed in a path: `{v}`"),
                "percent-encode them; queries and fragments are not part of a prefix",
            );
        }
    }

    fn check_name(&mut self, name: &Spanned<String>, what: &str) {
        let v = name.get_ref();
        if v.is_empty()
            || !v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            self.error_hint(
                Some(name.span()),
                format!("invalid {what} name `{v}`"),
                "use letters, digits, '-', '_' and '.'",
            );
        }
    }

    fn bad_choice(&mut self, v: &Spanned<String>, what: &str, choices: &[&str]) {
        let got = v.get_ref();
        let hint = match closest(got, choices) {
            Some(c) => format!("did you mean \"{c}\"?"),
            None => format!("choose one of: {}", choices.join(", ")),
        };
        self.error_hint(Some(v.span()), format!("unknown {what} \"{got}\""), hint);
    }

    fn socket_addr(&mut self, v: &Spanned<String>) -> Option<SocketAddr> {
        match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error_hint(
                    Some(v.span()),
                    format!("invalid bind address `{}`", v.get_ref()),
                    "use IP:PORT, e.g. \"0.0.0.0:8080\" or \"[::]:8080\"",
                );
                None
            }
        }
    }

    /// An upstream address: `IP:PORT`, or `NAME:PORT` resolved now (first address wins).
    fn upstream_addr(&mut self, v: &Spanned<String>) -> Option<SocketAddr> {
        let s = v.get_ref();
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Some(a);
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            self.error_hint(
                Some(v.span()),
                format!("instance address `{s}` has no port"),
                format!("write \"{s}:PORT\""),
            );
            return None;
        };
        if host.is_empty() || port.parse::<u16>().is_err() {
            self.error_hint(
                Some(v.span()),
                format!("invalid instance address `{s}`"),
                "use IP:PORT or NAME:PORT, e.g. \"127.0.0.1:9001\"",
            );
            return None;
        }
        let resolved = match self.lookups {
            Lookups::Real => (host, port.parse::<u16>().unwrap_or(0))
                .to_socket_addrs()
                .map(|mut it| it.next()),
            Lookups::Offline => Ok(None),
        };
        match resolved {
            Ok(Some(a)) => Some(a),
            Ok(None) | Err(_) => {
                self.error_hint(
                    Some(v.span()),
                    format!("cannot resolve instance host `{host}`"),
                    "check the name, or use an IP address",
                );
                None
            }
        }
    }

    fn duration(&mut self, v: Option<&Spanned<String>>, default: Duration) -> Duration {
        let Some(v) = v else { return default };
        match humantime::parse_duration(v.get_ref()) {
            Ok(dur) if dur.is_zero() => {
                self.error_hint(
                    Some(v.span()),
                    "duration must be greater than zero",
                    format!("the default is {}", humantime::format_duration(default)),
                );
                default
            }
            Ok(dur) => dur,
            Err(e) => {
                self.error_hint(
                    Some(v.span()),
                    format!("invalid duration `{}`: {e}", v.get_ref()),
                    "write a number with a unit: \"500ms\", \"2s\", \"1m\"",
                );
                default
            }
        }
    }

    fn int_in(&mut self, v: Option<&Spanned<i64>>, min: i64, max: i64, default: i64) -> i64 {
        let Some(v) = v else { return default };
        let n = *v.get_ref();
        if (min..=max).contains(&n) {
            n
        } else {
            self.error_hint(
                Some(v.span()),
                format!("{n} is out of range"),
                format!("use a value from {min} to {max}"),
            );
            default
        }
    }
}

fn default_admin_bind() -> SocketAddr {
    d::ADMIN_BIND
        .parse()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9901)))
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[derive(Debug, Clone)]
enum Segment {
    Key(String),
    Index(usize),
}

fn segments(path: &serde_ignored::Path<'_>) -> Vec<Segment> {
    use serde_ignored::Path;
    let mut out = Vec::new();
    let mut cur = path;
    loop {
        match cur {
            Path::Root => break,
            Path::Map { parent, key } => {
                // `Spanned<T>` deserializes through private wrapper keys: not part of the file.
                if !key.starts_with("$__serde_spanned") {
                    out.push(Segment::Key(key.clone()));
                }
                cur = parent;
            }
            Path::Seq { parent, index } => {
                out.push(Segment::Index(*index));
                cur = parent;
            }
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => cur = parent,
        }
    }
    out.reverse();
    out
}

/// The span of the key at `path` inside `tree`, falling back to the nearest enclosing value.
fn key_span(tree: &Spanned<DeValue<'_>>, path: &[Segment]) -> Option<Range<usize>> {
    let mut node = tree;
    let mut span = tree.span();
    for seg in path {
        match (seg, node.get_ref()) {
            (Segment::Key(k), DeValue::Table(t)) => {
                let (key, value) = t
                    .iter()
                    .find(|(key, _)| key.get_ref().as_ref() == k.as_str())?;
                span = key.span();
                node = value;
            }
            (Segment::Index(i), DeValue::Array(a)) => {
                node = a.get(*i)?;
                span = node.span();
            }
            _ => break,
        }
    }
    Some(span)
}

/// The keys valid in the table at `parents` inside an element of `section`.
fn known_keys(section: &str, parents: &[&str]) -> &'static [&'static str] {
    match (section, parents) {
        ("admin", []) => fields_of::<RawAdmin>(),
        ("runtime", []) => fields_of::<RawRuntime>(),
        ("log", []) => fields_of::<RawLog>(),
        ("access_log", []) => fields_of::<RawAccessLog>(),
        ("listener", []) => fields_of::<RawListener>(),
        ("listener", ["tls"]) => fields_of::<RawListenerTls>(),
        ("listener", ["tls", "certificates"]) => fields_of::<RawCertPair>(),
        ("listener", ["tls", "identity_headers"]) => fields_of::<RawIdentityHeaders>(),
        ("listener", ["authz"]) => fields_of::<RawListenerAuthz>(),
        ("listener", ["sni"]) => fields_of::<RawSniRoute>(),
        ("kv", []) => fields_of::<RawKv>(),
        ("route", []) => fields_of::<RawRoute>(),
        ("route", ["redirect"]) => fields_of::<RawRedirect>(),
        ("service", []) => fields_of::<RawService>(),
        ("service", ["timeouts"]) => fields_of::<RawTimeouts>(),
        ("service", ["retries"]) => fields_of::<RawRetries>(),
        ("service", ["outlier"]) => fields_of::<RawOutlier>(),
        ("service", ["pool"]) => fields_of::<RawPool>(),
        ("service", ["health"]) => fields_of::<RawHealth>(),
        ("service", ["instances"]) => fields_of::<RawInstanceTable>(),
        ("service", ["tls"]) => fields_of::<RawServiceTls>(),
        ("policy", []) => fields_of::<RawPolicy>(),
        ("discovery", []) => fields_of::<RawDiscovery>(),
        ("discovery", ["instances"]) => fields_of::<RawStaticInstance>(),
        ("routing", []) => fields_of::<RawRouting>(),
        _ => &[],
    }
}

#[cfg(test)]
mod docs_tests {
    use super::*;

    /// docs/configuration.md documents every key the loader accepts.
    #[test]
    fn every_key_is_documented() {
        let doc = include_str!("../../../docs/configuration.md");
        let sections: &[(&str, &[&str])] = &[
            ("admin", &[]),
            ("runtime", &[]),
            ("log", &[]),
            ("access_log", &[]),
            ("listener", &[]),
            ("listener", &["tls"]),
            ("listener", &["tls", "certificates"]),
            ("listener", &["tls", "identity_headers"]),
            ("listener", &["authz"]),
            ("listener", &["sni"]),
            ("kv", &[]),
            ("route", &[]),
            ("route", &["redirect"]),
            ("service", &[]),
            ("service", &["timeouts"]),
            ("service", &["retries"]),
            ("service", &["outlier"]),
            ("service", &["pool"]),
            ("service", &["health"]),
            ("service", &["instances"]),
            ("service", &["tls"]),
            ("discovery", &[]),
            ("discovery", &["instances"]),
            ("routing", &[]),
        ];
        let mut missing = Vec::new();
        for (section, parents) in sections {
            for key in known_keys(section, parents) {
                if !doc.contains(&format!("`{key}`")) {
                    missing.push(format!("{section}{parents:?}.{key}"));
                }
            }
        }
        assert!(missing.is_empty(), "undocumented keys: {missing:?}");
    }
}
