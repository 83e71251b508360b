//! `Config::validate`: the checks serde cannot express, each error placed at the section it
//! is about (`file:line:1` of the n-th `[[name]]` or `[name]` header).

use std::time::Duration;

use super::*;

/// Collects errors, locating sections in the file's text.
struct Checker<'a> {
    origin: &'a str,
    text: Option<&'a str>,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    /// Position of the n-th `[[header]]` (or of `[header]`), for messages.
    fn locate(&self, header: &str, index: usize) -> String {
        let Some(text) = self.text else {
            return self.origin.to_owned();
        };
        let mut seen = 0;
        for (number, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if trimmed == format!("[[{header}]]") || trimmed == format!("[{header}]") {
                if seen == index {
                    return format!("{}:{}:1", self.origin, number + 1);
                }
                seen += 1;
            }
        }
        self.origin.to_owned()
    }

    fn error(&mut self, location: String, message: String) {
        self.errors.push(ConfigError { location, message });
    }
}

pub(super) fn all(
    config: &Config,
    origin: &str,
    text: Option<&str>,
) -> Result<(), Vec<ConfigError>> {
    let mut c = Checker {
        origin,
        text,
        errors: Vec::new(),
    };
    kv_sources(&mut c, config);
    templates(&mut c, config);
    processes(&mut c, config);
    registry(&mut c, config);
    register(&mut c, config);
    if c.errors.is_empty() {
        Ok(())
    } else {
        Err(c.errors)
    }
}

fn kv_sources(c: &mut Checker<'_>, config: &Config) {
    for (i, kv) in config.kv.iter().enumerate() {
        match kv.source {
            KvKind::File if kv.path.is_none() => {
                c.error(c.locate("kv", i), "a file source needs `path`".into())
            }
            KvKind::Etcd if kv.endpoints.is_empty() => {
                c.error(c.locate("kv", i), "an etcd source needs `endpoints`".into())
            }
            KvKind::Etcd => {
                for endpoint in &kv.endpoints {
                    if let Err(e) = sluice_kv::http::HttpEndpoint::parse(endpoint) {
                        c.error(c.locate("kv", i), e.to_string());
                    }
                }
            }
            _ => {}
        }
    }
}

fn templates(c: &mut Checker<'_>, config: &Config) {
    for (i, template) in config.template.iter().enumerate() {
        let here = c.locate("template", i);
        match (&template.source, &template.contents) {
            (None, None) => c.error(
                here.clone(),
                "a template needs `source` or `contents`".into(),
            ),
            (Some(_), Some(_)) => {
                c.error(here.clone(), "`source` and `contents` are exclusive".into())
            }
            _ => {}
        }
        if let Err(error) = template.mode_bits() {
            c.error(here.clone(), error.to_string());
        }
        if template.engine == Engine::Envsubst && template.missing != MissingPolicy::Block {
            c.error(here.clone(), "`missing` applies to jinja templates; envsubst uses no_unset/no_empty and ${VAR:?msg}".into());
        }
        if template.engine == Engine::Jinja
            && (template.no_unset || template.no_empty || template.variables.is_some())
        {
            c.error(
                here.clone(),
                "`no_unset`, `no_empty` and `variables` apply to engine = \"envsubst\"".into(),
            );
        }
        match template.action() {
            OnChange::Signal if template.signal.is_none() => {
                c.error(here.clone(), "on_change = \"signal\" needs `signal`".into())
            }
            OnChange::Command if template.command.as_ref().is_none_or(CommandSpec::is_empty) => c
                .error(
                    here.clone(),
                    "on_change = \"command\" needs a non-empty `command`".into(),
                ),
            _ => {}
        }
        if let Some(check) = &template.check_cmd
            && check.is_empty()
        {
            c.error(here.clone(), "`check_cmd` is empty".into());
        }
    }
}

/// `[exec]` or the Procfile processes, and their names.
fn processes(c: &mut Checker<'_>, config: &Config) {
    if config.exec.is_some()
        && (!config.process.is_empty()
            || config.procfile.as_ref().is_some_and(|p| p.path.is_some()))
    {
        c.error(
            c.locate("exec", 0),
            "[exec] and Procfile processes are exclusive".into(),
        );
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, process) in config.process.iter().enumerate() {
        if process.command.is_empty() {
            c.error(
                c.locate("process", i),
                format!("process {:?} has an empty command", process.name),
            );
        }
        if !valid_process_name(&process.name) {
            c.error(
                c.locate("process", i),
                format!(
                    "process name {:?} must be letters, digits, '-', '_' or '.'",
                    process.name
                ),
            );
        }
        if !names.insert(process.name.clone()) {
            c.error(
                c.locate("process", i),
                format!("process {:?} is defined twice", process.name),
            );
        }
    }
    if let Some(exec) = &config.exec
        && exec.command.is_empty()
    {
        c.error(c.locate("exec", 0), "[exec] command is empty".into());
    }
    for (received, _) in config.signals.rewrite.iter() {
        if let Err(error) = crate::signals::parse_signal(received) {
            c.error(c.locate("signals.rewrite", 0), error.to_string());
        }
    }
}

fn registry(c: &mut Checker<'_>, config: &Config) {
    if let Some(registry) = &config.registry {
        match registry.kind {
            RegistryKindConfig::File if registry.dir.is_none() => c.error(
                c.locate("registry", 0),
                "a file registry needs `dir`".into(),
            ),
            RegistryKindConfig::Etcd if registry.endpoints.is_empty() => c.error(
                c.locate("registry", 0),
                "an etcd registry needs `endpoints`".into(),
            ),
            _ => {}
        }
        if registry.ttl.0 < Duration::from_secs(1) {
            c.error(
                c.locate("registry", 0),
                "ttl must be at least 1s (etcd leases have whole seconds)".into(),
            );
        }
    }
}

fn register(c: &mut Checker<'_>, config: &Config) {
    if let Some(register) = &config.register {
        if config.registry.is_none() {
            c.error(
                c.locate("register", 0),
                "[register] needs a [registry] to write into".into(),
            );
        }
        let probes = [
            ("check", register.check.clone()),
            ("role", register.role.as_ref().map(RoleProbeConfig::probe)),
        ];
        for (what, probe) in probes {
            if let Some(probe) = &probe {
                let count = usize::from(probe.command.is_some())
                    + usize::from(probe.http.is_some())
                    + usize::from(probe.tcp.is_some());
                if count != 1 {
                    c.error(
                        c.locate(&format!("register.{what}"), 0),
                        format!("register.{what} needs exactly one of `command`, `http`, `tcp`"),
                    );
                }
                if let Some(url) = &probe.http
                    && let Err(e) = parse_http_url(url)
                {
                    c.error(c.locate(&format!("register.{what}"), 0), e.to_string());
                }
            }
        }
        let mut definition_names = vec![register.name.clone()];
        if let Some(role) = &register.role {
            definition_names.extend(role.pass.name.clone());
            definition_names.extend(role.fail.name.clone());
        }
        for name in definition_names {
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                c.error(
                    c.locate("register", 0),
                    format!(
                        "service name {name:?} must be non-empty, without '/' or a leading '.'"
                    ),
                );
            }
        }
    }
}
