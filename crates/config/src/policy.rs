//! `[[policy]]`: Wasm policy modules the proxy loads (see docs/policy-authoring.md).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::raw::S;

/// Which WIT world a policy implements, i.e. which decision it makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyWorld {
    /// `routing`: catalog → routes.
    Routing,
    /// `health`: probe result → verdict and role.
    Health,
    /// `authz`: connecting peer → allow or deny.
    Authz,
    /// `request`: HTTP request → forward (edited) or reply, on routes naming the policy.
    Request,
}

impl PolicyWorld {
    /// The world's name as written in WIT and in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyWorld::Routing => "routing",
            PolicyWorld::Health => "health",
            PolicyWorld::Authz => "authz",
            PolicyWorld::Request => "request",
        }
    }
}

/// What a failing (trapping, timing out) policy call results in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Deny (authz), answer `503` (request). The default for both.
    Closed,
    /// Allow (authz), forward the request unchanged (request) — only for policies whose
    /// failure must not lock clients out.
    Open,
    /// Keep the last good result (health: previous verdict, marked stale; routing: last table).
    KeepLast,
}

/// Per-call limits of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyLimits {
    /// Wall-clock deadline of one call (enforced by epoch interruption).
    pub timeout: Duration,
    /// Linear memory a guest instance may grow to.
    pub max_memory_bytes: usize,
}

/// One `[[policy]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// Unique name, referenced by the attachments (`health.policy = "..."`).
    pub name: String,
    /// Where the component comes from: a `.wasm` file or a policy built into the binary.
    pub file: PolicySource,
    /// The world it must implement.
    pub world: PolicyWorld,
    /// JSON handed to the policy's `configure` export.
    pub config: serde_json::Value,
    /// Limits per call.
    pub limits: PolicyLimits,
    /// Behaviour when a call fails.
    pub failure_mode: FailureMode,
    /// `request` policies: the only request fields shown to `on-request` (lower-case names);
    /// `None` shows them all. Every field crosses into the guest as two strings per call.
    pub request_fields: Option<Vec<String>>,
}

/// Where a policy's component comes from (`[[policy]] file`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PolicySource {
    /// A `.wasm` file: watched and re-read on reload.
    File(PathBuf),
    /// `builtin:NAME`: a module compiled into the binary (one of [`BUILTIN_POLICIES`]). It
    /// never changes while the process runs, so it is neither watched nor reloaded.
    ///
    /// [`BUILTIN_POLICIES`]: crate::BUILTIN_POLICIES
    Builtin(String),
}

impl PolicySource {
    /// What marks a built-in policy in `file`.
    pub const BUILTIN_PREFIX: &'static str = "builtin:";

    /// Reads a `file` value: `builtin:NAME` names a built-in policy (the name is not checked
    /// here), anything else is a path, made relative to `base` (the config file's folder) when
    /// it is relative.
    pub fn parse(text: &str, base: Option<&Path>) -> PolicySource {
        match text.strip_prefix(Self::BUILTIN_PREFIX) {
            Some(name) => PolicySource::Builtin(name.to_owned()),
            None => match base {
                Some(dir) if Path::new(text).is_relative() => PolicySource::File(dir.join(text)),
                _ => PolicySource::File(text.into()),
            },
        }
    }

    /// The file, unless the policy is built in.
    pub fn path(&self) -> Option<&Path> {
        match self {
            PolicySource::File(path) => Some(path),
            PolicySource::Builtin(_) => None,
        }
    }
}

/// A path as it is, a built-in policy as `builtin:NAME` (as written in the config file).
impl fmt::Display for PolicySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicySource::File(path) => write!(f, "{}", path.display()),
            PolicySource::Builtin(name) => write!(f, "{}{name}", Self::BUILTIN_PREFIX),
        }
    }
}

/// Default per-call deadline.
pub const POLICY_TIMEOUT: Duration = Duration::from_millis(5);
/// Default memory cap per guest instance.
pub const POLICY_MAX_MEMORY_BYTES: usize = 16 << 20;

#[derive(Debug, Deserialize)]
pub(crate) struct RawPolicy {
    pub(crate) name: S<String>,
    pub(crate) file: S<String>,
    pub(crate) world: S<String>,
    pub(crate) config: Option<S<toml::Value>>,
    pub(crate) timeout: Option<S<String>>,
    pub(crate) max_memory_bytes: Option<S<i64>>,
    pub(crate) failure_mode: Option<S<String>>,
    pub(crate) request_fields: Option<S<Vec<S<String>>>>,
}

/// The policy's `config` may be a TOML table (converted to JSON) or a string of JSON text.
pub(crate) fn config_json(v: &Spanned<toml::Value>) -> Result<serde_json::Value, String> {
    match v.get_ref() {
        toml::Value::String(text) => {
            serde_json::from_str(text).map_err(|e| format!("`config` is not valid JSON: {e}"))
        }
        other => serde_json::to_value(other)
            .map_err(|e| format!("`config` cannot be expressed as JSON: {e}")),
    }
}
