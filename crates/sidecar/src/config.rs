//! The sidecar's configuration: a TOML file (`--config`) and/or command-line flags, parsed and
//! validated before anything runs. Every problem is reported with `file:line:col`. Every
//! duration has a default, listed in `docs/sidecar.md`.

mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Deserialize;

/// A duration written as humantime text (`"250ms"`, `"10s"`, `"1m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map(Span).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?}: {e} (write e.g. \"250ms\", \"10s\")"
            ))
        })
    }
}

/// A signal written as a name (`"SIGHUP"`, `"HUP"`) or number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalName(pub Signal);

impl<'de> Deserialize<'de> for SignalName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        crate::signals::parse_signal(&text)
            .map(SignalName)
            .map_err(serde::de::Error::custom)
    }
}

/// Where a rewritten signal goes: another signal, or nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    To(Signal),
    Drop,
}

impl<'de> Deserialize<'de> for Rewrite {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.eq_ignore_ascii_case("none") {
            return Ok(Rewrite::Drop);
        }
        crate::signals::parse_signal(&text)
            .map(Rewrite::To)
            .map_err(serde::de::Error::custom)
    }
}

/// A command: an argument vector, or one string run by `/bin/sh -c`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    untagged,
    expecting = "a command: an array of strings, or a string run by /bin/sh -c"
)]
pub enum CommandSpec {
    Argv(Vec<String>),
    Shell(String),
}

impl CommandSpec {
    /// The argument vector to execute.
    pub fn argv(&self) -> Vec<String> {
        match self {
            CommandSpec::Argv(argv) => argv.clone(),
            CommandSpec::Shell(line) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            CommandSpec::Argv(argv) => argv.is_empty() || argv[0].is_empty(),
            CommandSpec::Shell(line) => line.trim().is_empty(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalTarget {
    /// Signals go to the workload's pid.
    #[default]
    Child,
    /// The workload runs in its own process group and signals go to the whole group.
    Group,
}

/// Every key has a default (`impl Default`); a key left out takes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignalConfig {
    pub target: SignalTarget,
    /// Sent when the sidecar itself decides to stop a process (a sibling exited, a restart).
    pub stop_signal: SignalName,
    /// Time between the stop signal and SIGKILL.
    pub stop_grace: Span,
    /// Signals that start the stop sequence instead of being merely forwarded.
    pub stop_on: Vec<SignalName>,
    /// Received signal → signal sent to the workload (or `"none"`).
    pub rewrite: BTreeMap<String, Rewrite>,
}

impl Default for SignalConfig {
    fn default() -> Self {
        Self {
            target: SignalTarget::Child,
            stop_signal: SignalName(Signal::SIGTERM),
            stop_grace: Span(Duration::from_secs(10)),
            stop_on: vec![SignalName(Signal::SIGTERM), SignalName(Signal::SIGINT)],
            rewrite: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitPolicy {
    /// Stop every process and exit (foreman/goreman's behaviour).
    #[default]
    StopAll,
    /// Start it again after a backoff.
    Restart,
    /// Leave it exited.
    Ignore,
}

/// One supervised process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    pub name: String,
    pub command: CommandSpec,
    #[serde(default)]
    pub on_exit: ExitPolicy,
}

/// Every key has a default (`impl Default`); a key left out takes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcfileConfig {
    /// A Procfile (`name: command` lines). Its processes come before any `[[process]]`.
    pub path: Option<PathBuf>,
    /// Whose exit code the sidecar exits with; default: the first process.
    pub primary: Option<String>,
    /// Exit policy per process name (default `stop-all`).
    pub on_exit: BTreeMap<String, ExitPolicy>,
    pub restart_backoff_initial: Span,
    pub restart_backoff_max: Span,
    /// Prefix each output line with the process name (default true with several processes).
    pub prefix_output: Option<bool>,
}

impl Default for ProcfileConfig {
    fn default() -> Self {
        Self {
            path: None,
            primary: None,
            on_exit: BTreeMap::new(),
            restart_backoff_initial: Span(Duration::from_secs(1)),
            restart_backoff_max: Span(Duration::from_secs(30)),
            prefix_output: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvKind {
    Env,
    File,
    Etcd,
}

/// One KV layer; lookups try layers in order and the first that holds a key wins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvConfig {
    pub source: KvKind,
    /// `file`: a directory, or a `.toml`/`.json` document.
    pub path: Option<PathBuf>,
    /// `etcd`: client URLs.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Only keys under this prefix are read and watched.
    #[serde(default)]
    pub prefix: String,
    /// `file`: poll interval.
    #[serde(default = "default_poll")]
    pub poll: Span,
    /// `etcd`: per-request timeout.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Span,
}

fn default_poll() -> Span {
    Span(sluice_kv::DEFAULT_POLL_INTERVAL)
}
fn default_request_timeout() -> Span {
    Span(sluice_kv::etcd::DEFAULT_REQUEST_TIMEOUT)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    #[default]
    Jinja,
    Envsubst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MissingPolicy {
    /// Wait for the key (up to `missing_timeout` at start; later, keep the last good file).
    #[default]
    Block,
    /// Fail the render at once.
    Fail,
    /// Use `missing_default`.
    Default,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnChange {
    #[default]
    None,
    Signal,
    Command,
    Restart,
}

/// Accepts `variables = "$A ${B}"` (GNU SHELL-FORMAT) or `variables = ["A", "B"]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    untagged,
    expecting = "a SHELL-FORMAT string like \"$A $B\" or an array of names"
)]
pub enum VariableList {
    ShellFormat(String),
    Names(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    /// The template file; relative paths are relative to the config file.
    pub source: Option<PathBuf>,
    /// The template text inline, instead of `source`.
    pub contents: Option<String>,
    pub destination: PathBuf,
    #[serde(default)]
    pub engine: Engine,
    /// envsubst: allow-list of names.
    pub variables: Option<VariableList>,
    #[serde(default)]
    pub no_unset: bool,
    #[serde(default)]
    pub no_empty: bool,
    #[serde(default)]
    pub missing: MissingPolicy,
    #[serde(default)]
    pub missing_default: String,
    /// How long the first render may wait for missing keys.
    #[serde(default = "default_missing_timeout")]
    pub missing_timeout: Span,
    /// Octal permission bits, e.g. `"0640"`.
    pub mode: Option<String>,
    /// Owner name or uid / group name or gid.
    pub user: Option<String>,
    pub group: Option<String>,
    /// Run on the staged file before it replaces the destination; `{staged}` in an argument is
    /// replaced by the staged file's path. A non-zero exit rejects the new content.
    pub check_cmd: Option<CommandSpec>,
    #[serde(default = "default_command_timeout")]
    pub check_timeout: Span,
    pub on_change: Option<OnChange>,
    pub signal: Option<SignalName>,
    pub command: Option<CommandSpec>,
    #[serde(default = "default_command_timeout")]
    pub command_timeout: Span,
    /// For Procfile mode: which process the signal/restart goes to (default: all).
    pub target: Option<String>,
}

fn default_missing_timeout() -> Span {
    Span(Duration::from_secs(60))
}
fn default_command_timeout() -> Span {
    Span(Duration::from_secs(30))
}

impl TemplateConfig {
    /// The action after a change, inferred from `signal`/`command` when `on_change` is absent.
    pub fn action(&self) -> OnChange {
        match (self.on_change, &self.signal, &self.command) {
            (Some(action), _, _) => action,
            (None, Some(_), _) => OnChange::Signal,
            (None, None, Some(_)) => OnChange::Command,
            (None, None, None) => OnChange::None,
        }
    }

    /// `mode` as permission bits (`None` when not set).
    pub fn mode_bits(&self) -> Result<Option<u32>, ModeBitsError> {
        self.mode
            .as_deref()
            .map(|m| {
                u32::from_str_radix(m.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|bits| *bits <= 0o7777)
                    .ok_or_else(|| ModeBitsError { mode: m.to_owned() })
            })
            .transpose()
    }
}

/// A template's `mode` that is not octal permission bits, as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mode {mode:?} is not octal permission bits like \"0640\"")]
pub struct ModeBitsError {
    pub mode: String,
}

/// Every key has a default (`impl Default`); a key left out takes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchConfig {
    /// Quiescence: wait this long after the last change before rendering...
    pub min: Span,
    /// ...but never longer than this after the first change.
    pub max: Span,
    /// Random extra delay in [0, splay) before each reload, so a fleet does not reload at once.
    pub splay: Span,
    /// Retry pacing after a failed re-render.
    pub retry_initial: Span,
    pub retry_max: Span,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            min: Span(Duration::from_millis(250)),
            max: Span(Duration::from_secs(2)),
            splay: Span(Duration::ZERO),
            retry_initial: Span(Duration::from_secs(1)),
            retry_max: Span(Duration::from_secs(30)),
        }
    }
}

/// Every key has a default (`impl Default`); a key left out takes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StartupConfig {
    /// How long an unreachable KV source is retried at start before the sidecar gives up.
    pub kv_deadline: Span,
    /// While a render waits for keys, the missing keys are logged by name at this interval.
    pub block_log_interval: Span,
}

impl Default for StartupConfig {
    fn default() -> Self {
        Self {
            kv_deadline: Span(Duration::from_secs(30)),
            block_log_interval: Span(Duration::from_secs(5)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryKindConfig {
    File,
    Etcd,
}

/// The registry the sidecar registers into and `services()` reads from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    pub kind: RegistryKindConfig,
    /// `file`: the shared directory of `<id>.json` definitions.
    pub dir: Option<PathBuf>,
    /// `etcd`: client URLs.
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default = "default_registry_prefix")]
    pub prefix: String,
    /// `etcd`: lease TTL; heartbeats go every third of it.
    #[serde(default = "default_ttl")]
    pub ttl: Span,
    /// `file`: poll interval for `services()`.
    #[serde(default = "default_poll")]
    pub poll: Span,
}

fn default_registry_prefix() -> String {
    sluice_kv::registry::DEFAULT_ETCD_PREFIX.to_owned()
}
fn default_ttl() -> Span {
    Span(sluice_kv::registry::DEFAULT_LEASE_TTL)
}

/// A probe: exactly one of `command`, `http`, `tcp`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    pub command: Option<CommandSpec>,
    /// `http://host:port/path`; 2xx passes.
    pub http: Option<String>,
    /// `host:port`; a completed connect passes.
    pub tcp: Option<String>,
    #[serde(default = "default_probe_interval")]
    pub interval: Span,
    #[serde(default = "default_probe_timeout")]
    pub timeout: Span,
}

fn default_probe_interval() -> Span {
    Span(Duration::from_secs(10))
}
fn default_probe_timeout() -> Span {
    Span(Duration::from_secs(2))
}

/// What a role changes in the registration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// Registered service name in this role (default: `register.name`).
    pub name: Option<String>,
    /// Tags added in this role.
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleProbeConfig {
    pub command: Option<CommandSpec>,
    pub http: Option<String>,
    pub tcp: Option<String>,
    #[serde(default = "default_probe_interval")]
    pub interval: Span,
    #[serde(default = "default_probe_timeout")]
    pub timeout: Span,
    /// The role while the probe passes (e.g. `name = "mongo-primary"`).
    #[serde(default)]
    pub pass: RoleConfig,
    /// The role while it fails or times out (e.g. `name = "mongo-secondary"`).
    #[serde(default)]
    pub fail: RoleConfig,
}

impl RoleProbeConfig {
    pub fn probe(&self) -> ProbeConfig {
        ProbeConfig {
            command: self.command.clone(),
            http: self.http.clone(),
            tcp: self.tcp.clone(),
            interval: self.interval,
            timeout: self.timeout,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterConfig {
    pub name: String,
    /// Default: `<name>-<hostname>`.
    pub id: Option<String>,
    /// Default: the host name.
    pub address: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Must pass once before registering; also published in the definition for the proxy.
    pub check: Option<ProbeConfig>,
    pub role: Option<RoleProbeConfig>,
    /// How long deregistration may take during stop.
    #[serde(default = "default_deregister_timeout")]
    pub deregister_timeout: Span,
}

fn default_deregister_timeout() -> Span {
    Span(Duration::from_secs(5))
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub exec: Option<ExecConfig>,
    pub procfile: Option<ProcfileConfig>,
    #[serde(default)]
    pub process: Vec<ProcessConfig>,
    #[serde(default)]
    pub kv: Vec<KvConfig>,
    #[serde(default)]
    pub template: Vec<TemplateConfig>,
    #[serde(default)]
    pub watch: WatchConfig,
    #[serde(default)]
    pub startup: StartupConfig,
    #[serde(default)]
    pub signals: SignalConfig,
    pub registry: Option<RegistryConfig>,
    pub register: Option<RegisterConfig>,
    /// Directory relative paths are resolved against (the config file's).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    pub command: CommandSpec,
}

/// A configuration problem, positioned when it comes from a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct ConfigError {
    pub location: String,
    pub message: String,
}

impl Config {
    /// Reads and validates a TOML configuration file.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError {
                location: path.display().to_string(),
                message: e.to_string(),
            }]
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates configuration text; `path` names it in errors and anchors relative
    /// paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, Vec<ConfigError>> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| sluice_text::line_col(text.as_bytes(), s.start))
                .unwrap_or((1, 1));
            vec![ConfigError {
                location: format!("{}:{line}:{column}", path.display()),
                message: e.message().trim().to_owned(),
            }]
        })?;
        config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.validate(&path.display().to_string(), Some(text))?;
        Ok(config)
    }

    /// Resolves `path` against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() || self.base_dir.as_os_str().is_empty() {
            path.to_owned()
        } else {
            self.base_dir.join(path)
        }
    }

    /// Cross-field checks serde cannot express. `text` (the file) lets messages point at the
    /// table they are about.
    pub fn validate(&self, origin: &str, text: Option<&str>) -> Result<(), Vec<ConfigError>> {
        validate::all(self, origin, text)
    }
}

fn valid_process_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Parses a Procfile: `name: command` per line; blank lines and `#` comments ignored.
pub fn parse_procfile(path: &Path, text: &str) -> Result<Vec<ProcessConfig>, Vec<ConfigError>> {
    let mut processes = Vec::new();
    let mut errors = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let location = format!("{}:{}:1", path.display(), number + 1);
        let Some((name, command)) = trimmed.split_once(':') else {
            errors.push(ConfigError {
                location,
                message: format!("expected `name: command`, found {trimmed:?}"),
            });
            continue;
        };
        let name = name.trim();
        if !valid_process_name(name) {
            errors.push(ConfigError {
                location,
                message: format!("process name {name:?} must be letters, digits, '-', '_' or '.'"),
            });
            continue;
        }
        if command.trim().is_empty() {
            errors.push(ConfigError {
                location,
                message: format!("process {name:?} has no command"),
            });
            continue;
        }
        if processes.iter().any(|p: &ProcessConfig| p.name == name) {
            errors.push(ConfigError {
                location,
                message: format!("process {name:?} is defined twice"),
            });
            continue;
        }
        processes.push(ProcessConfig {
            name: name.to_owned(),
            command: CommandSpec::Shell(command.trim().to_owned()),
            on_exit: ExitPolicy::StopAll,
        });
    }
    if errors.is_empty() {
        Ok(processes)
    } else {
        Err(errors)
    }
}

/// A probe URL that cannot be requested.
#[derive(Debug, thiserror::Error)]
pub enum ProbeUrlError {
    /// Not `http://...` (probes speak plain HTTP).
    #[error("probe URL {url:?} must start with http://")]
    NotHttp { url: String },
    /// The host and port do not make an endpoint.
    #[error(transparent)]
    Endpoint(#[from] sluice_kv::KvError),
}

/// Splits `http://host:port/path?query` into an endpoint and a request target.
pub fn parse_http_url(url: &str) -> Result<(sluice_kv::http::HttpEndpoint, String), ProbeUrlError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ProbeUrlError::NotHttp {
            url: url.to_owned(),
        })?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    };
    let endpoint = sluice_kv::http::HttpEndpoint::parse(&format!("http://{authority}"))?;
    Ok((endpoint, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_configuration_parses() {
        let text = r#"
[signals]
target = "group"
stop_grace = "3s"
rewrite = { SIGTERM = "SIGQUIT", SIGWINCH = "none" }

[[kv]]
source = "etcd"
endpoints = ["http://127.0.0.1:2379"]
prefix = "web/"

[[template]]
source = "data-server.json.in"
destination = "/tmp/data-server.json"
engine = "envsubst"
variables = "$CLIENT_SYSTEMS $CA_ROOT"
no_unset = true
mode = "0640"

[[template]]
contents = "debug={{ kv('web/debug') }}"
destination = "/tmp/settings.py"
signal = "SIGHUP"

[registry]
kind = "file"
dir = "/tmp/registry"

[register]
name = "mongo"
port = 27017
[register.role]
command = "mongo --eval 'db.isMaster().ismaster' | grep -q true"
interval = "10s"
pass = { name = "mongo-primary" }
fail = { name = "mongo-secondary" }

[exec]
command = ["mongod", "--replSet", "rs0"]
"#;
        let config = Config::parse(Path::new("/etc/sidecar.toml"), text).expect("valid");
        assert_eq!(config.signals.target, SignalTarget::Group);
        assert_eq!(
            config.signals.rewrite["SIGTERM"],
            Rewrite::To(Signal::SIGQUIT)
        );
        assert_eq!(config.signals.rewrite["SIGWINCH"], Rewrite::Drop);
        assert_eq!(config.template[0].mode_bits(), Ok(Some(0o640)));
        assert_eq!(config.template[1].action(), OnChange::Signal);
        assert_eq!(
            config.resolve(Path::new("data-server.json.in")),
            Path::new("/etc/data-server.json.in")
        );
        let role = config
            .register
            .as_ref()
            .and_then(|r| r.role.as_ref())
            .expect("role");
        assert_eq!(role.pass.name.as_deref(), Some("mongo-primary"));
        assert_eq!(role.probe().interval.0, Duration::from_secs(10));
    }

    #[test]
    fn errors_carry_file_line_and_column() {
        let err = Config::parse(Path::new("s.toml"), "[watch]\nmin = \"fast\"\n")
            .expect_err("bad duration");
        assert_eq!(err.len(), 1);
        assert!(
            err[0]
                .to_string()
                .starts_with("s.toml:2:7: invalid duration \"fast\""),
            "{}",
            err[0]
        );
        let err = Config::parse(
            Path::new("s.toml"),
            "[signals]\nstop_signal = \"SIGNOPE\"\n",
        )
        .expect_err("bad signal");
        assert!(err[0].to_string().starts_with("s.toml:2:"), "{}", err[0]);
        let err = Config::parse(Path::new("s.toml"), "[[template]]\ndestinaton = \"x\"\n")
            .expect_err("typo");
        assert!(err[0].message.contains("destinaton"), "{}", err[0]);
    }

    #[test]
    fn cross_field_problems_are_all_listed() {
        let text = "[[template]]\ndestination = \"a\"\n\n[[template]]\nsource = \"b\"\ndestination = \"b\"\non_change = \"signal\"\nmode = \"999\"\n\n[[kv]]\nsource = \"etcd\"\n";
        let errors = Config::parse(Path::new("s.toml"), text).expect_err("invalid");
        let lines: Vec<_> = errors.iter().map(|e| e.to_string()).collect();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("s.toml:10:1: an etcd source needs")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("s.toml:1:1: a template needs")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("s.toml:4:1: mode \"999\"")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("s.toml:4:1: on_change = \"signal\" needs")),
            "{lines:#?}"
        );
    }

    #[test]
    fn procfiles_parse_like_goreman_reads_them() {
        let text = "# Mongo\nmongo: /opt/mongo.sh\n\nconsul_check: while true; do /opt/checks_toggler.sh && sleep 10; done\n";
        let processes = parse_procfile(Path::new("Procfile"), text).expect("valid");
        assert_eq!(processes.len(), 2);
        assert_eq!(
            processes[1].command.argv()[2],
            "while true; do /opt/checks_toggler.sh && sleep 10; done"
        );
        let errors = parse_procfile(
            Path::new("Procfile"),
            "ok: x\nno colon\nbad name: x\nok: y\n",
        )
        .expect_err("invalid");
        let lines: Vec<_> = errors.iter().map(|e| e.location.as_str()).collect();
        assert_eq!(lines, ["Procfile:2:1", "Procfile:3:1", "Procfile:4:1"]);
    }
}
