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

mod discovery;
mod globals;
mod health;
mod kv;
mod listeners;
mod policies;
mod rate_limit;
mod route_policy;
mod route_rules;
mod routes;
mod services;
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
    "overload",
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
        request_policy_refs: Vec::new(),
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
            "overload" => raw.overload = cx.section(name, value),
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
    overload: Option<RawOverload>,
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
    /// Request policy names (`[[route]] policy`, `[routing] request_policies`) with who names
    /// them, checked once the policies are known.
    request_policy_refs: Vec<(&'static str, Spanned<String>)>,
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
        // After `routing`: `[routing] request_policies` names request policies too.
        self.request_policy_references(&policies);
        let overload = self.overload(raw.overload.unwrap_or_default());
        Config {
            overload,
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

    /// [`Cx::check_name`], and a name already used in the section (`seen`: each name and the
    /// line it was first defined on) is an error pointing at the first definition.
    fn unique_name<'n>(
        &mut self,
        seen: &mut HashMap<&'n str, usize>,
        name: &'n Spanned<String>,
        what: &str,
    ) {
        self.check_name(name, what);
        let line = self.src.line_col(name.span().start).0;
        if let Some(first) = seen.insert(name.get_ref().as_str(), line) {
            self.error_hint(
                Some(name.span()),
                format!("duplicate {what} name `{}`", name.get_ref()),
                format!("first defined on line {first}"),
            );
        }
    }

    /// The value of the spelling `v` names among `choices`; absent, the first choice (the
    /// default); anything else is reported with the closest spelling, and the default stands.
    fn choice<T: Copy>(
        &mut self,
        v: Option<&Spanned<String>>,
        what: &str,
        choices: &[(&str, T)],
    ) -> T {
        let default = choices[0].1;
        let Some(v) = v else {
            return default;
        };
        if let Some((_, value)) = choices.iter().find(|(name, _)| *name == v.get_ref()) {
            return *value;
        }
        let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        self.bad_choice(v, what, &names);
        default
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
        ("admin", ["tls"]) => fields_of::<RawAdminTls>(),
        ("runtime", []) => fields_of::<RawRuntime>(),
        ("overload", []) => fields_of::<RawOverload>(),
        ("log", []) => fields_of::<RawLog>(),
        ("access_log", []) => fields_of::<RawAccessLog>(),
        ("listener", []) => fields_of::<RawListener>(),
        ("listener", ["tls"]) => fields_of::<RawListenerTls>(),
        ("listener", ["tls", "certificates"]) => fields_of::<RawCertPair>(),
        ("listener", ["tls", "identity_headers"]) => fields_of::<RawIdentityHeaders>(),
        ("listener", ["tls", "acme"]) => fields_of::<RawAcme>(),
        ("listener", ["authz"]) => fields_of::<RawListenerAuthz>(),
        ("listener", ["sni"]) => fields_of::<RawSniRoute>(),
        ("kv", []) => fields_of::<RawKv>(),
        ("route", []) => fields_of::<RawRoute>(),
        ("route", ["redirect"]) => fields_of::<RawRedirect>(),
        ("route", ["rate_limit"]) => fields_of::<RawRateLimit>(),
        ("service", []) => fields_of::<RawService>(),
        ("service", ["timeouts"]) => fields_of::<RawTimeouts>(),
        ("service", ["retries"]) => fields_of::<RawRetries>(),
        ("service", ["outlier"]) => fields_of::<RawOutlier>(),
        ("service", ["pool"]) => fields_of::<RawPool>(),
        ("service", ["concurrency"]) => fields_of::<RawConcurrency>(),
        ("service", ["health"]) => fields_of::<RawHealth>(),
        ("service", ["instances"]) => fields_of::<RawInstanceTable>(),
        ("service", ["tls"]) => fields_of::<RawServiceTls>(),
        ("policy", []) => fields_of::<RawPolicy>(),
        ("discovery", []) => fields_of::<RawDiscovery>(),
        ("discovery", ["instances"]) => fields_of::<RawStaticInstance>(),
        ("routing", []) => fields_of::<RawRouting>(),
        ("routing", ["request_policies", _]) => fields_of::<RawRoutePolicyTable>(),
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
            ("admin", &["tls"]),
            ("runtime", &[]),
            ("overload", &[]),
            ("log", &[]),
            ("access_log", &[]),
            ("listener", &[]),
            ("listener", &["tls"]),
            ("listener", &["tls", "certificates"]),
            ("listener", &["tls", "identity_headers"]),
            ("listener", &["tls", "acme"]),
            ("listener", &["authz"]),
            ("listener", &["sni"]),
            ("kv", &[]),
            ("route", &[]),
            ("route", &["redirect"]),
            ("route", &["rate_limit"]),
            ("service", &[]),
            ("service", &["timeouts"]),
            ("service", &["retries"]),
            ("service", &["outlier"]),
            ("service", &["pool"]),
            ("service", &["concurrency"]),
            ("service", &["health"]),
            ("service", &["instances"]),
            ("service", &["tls"]),
            ("discovery", &[]),
            ("discovery", &["instances"]),
            ("routing", &[]),
            ("routing", &["request_policies", "api"]),
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
