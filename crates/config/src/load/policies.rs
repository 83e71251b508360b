//! `[[policy]]` and the references from other sections to policies.

use std::collections::HashMap;

use toml::Spanned;

use super::Cx;
use crate::diag::closest;
use crate::model::*;
use crate::policy::*;

impl Cx<'_> {
    /// References that can only be checked once every section is known.
    pub(super) fn cross_references(
        &mut self,
        services: &[ServiceConfig],
        policies: &[PolicyConfig],
    ) {
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

    pub(super) fn policies(&mut self, raw: &[Spanned<RawPolicy>]) -> Vec<PolicyConfig> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut out = Vec::new();
        for p in raw {
            let p = p.get_ref();
            let name = p.name.get_ref().as_str();
            self.unique_name(&mut seen, &p.name, "policy");
            let world = match p.world.get_ref().as_str() {
                "routing" => PolicyWorld::Routing,
                "health" => PolicyWorld::Health,
                "authz" => PolicyWorld::Authz,
                "request" => PolicyWorld::Request,
                _ => {
                    let worlds = ["routing", "health", "authz", "request"];
                    self.bad_choice(&p.world, "policy world", &worlds);
                    PolicyWorld::Health
                }
            };
            let failure_mode = match &p.failure_mode {
                None if matches!(world, PolicyWorld::Authz | PolicyWorld::Request) => {
                    FailureMode::Closed
                }
                None => FailureMode::KeepLast,
                Some(m) => match (m.get_ref().as_str(), world) {
                    ("closed", PolicyWorld::Authz | PolicyWorld::Request) => FailureMode::Closed,
                    ("open", PolicyWorld::Authz | PolicyWorld::Request) => FailureMode::Open,
                    ("keep_last", PolicyWorld::Health | PolicyWorld::Routing) => {
                        FailureMode::KeepLast
                    }
                    (_, PolicyWorld::Authz | PolicyWorld::Request) => {
                        let what = format!("failure_mode for a {} policy", world.as_str());
                        self.bad_choice(m, &what, &["closed", "open"]);
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
            let file = self.policy_source(&p.file);
            let request_fields = self.request_fields(p.request_fields.as_ref(), world);
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
                request_fields,
            });
        }
        out
    }

    /// `request_fields`: only for `request` policies; field names, kept in lower case.
    fn request_fields(
        &mut self,
        raw: Option<&Spanned<Vec<Spanned<String>>>>,
        world: PolicyWorld,
    ) -> Option<Vec<String>> {
        let list = raw?;
        if world != PolicyWorld::Request {
            self.error_hint(
                Some(list.span()),
                format!(
                    "`request_fields` is for request policies, not {}",
                    world.as_str()
                ),
                "remove it, or set world = \"request\"",
            );
            return None;
        }
        let is_token = |name: &str| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        let mut names = Vec::new();
        for name in list.get_ref() {
            if is_token(name.get_ref()) {
                names.push(name.get_ref().to_ascii_lowercase());
            } else {
                let shown = name.get_ref();
                self.error(Some(name.span()), format!("`{shown}` is not a field name"));
            }
        }
        Some(names)
    }

    /// `file`: a path (relative to the config file's folder) or `builtin:NAME`, whose name must
    /// be one the binary carries.
    fn policy_source(&mut self, file: &Spanned<String>) -> PolicySource {
        let text = file.get_ref();
        if text.is_empty() {
            self.error_hint(
                Some(file.span()),
                "policy `file` is empty",
                "give the path of a .wasm component, or builtin:NAME",
            );
        }
        let source = PolicySource::parse(text, self.src.path().parent());
        if let PolicySource::Builtin(name) = &source
            && !crate::BUILTIN_POLICIES.contains(&name.as_str())
        {
            let known = crate::BUILTIN_POLICIES.join(", ");
            let hint = match closest(name, crate::BUILTIN_POLICIES) {
                Some(c) => format!("did you mean \"builtin:{c}\"? built-in policies: {known}"),
                None => format!("built-in policies: {known}"),
            };
            self.error_hint(
                Some(file.span()),
                format!("unknown built-in policy `{name}`"),
                hint,
            );
        }
        source
    }
}
