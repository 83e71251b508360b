//! Typed errors of the policy host.

use std::path::PathBuf;
use std::time::Duration;

use sluice_config::{PolicySource, PolicyWorld};

/// The engine could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// wasmtime refused the engine configuration or the host imports.
    #[error("cannot set up the Wasm engine: {0}")]
    Engine(String),
}

/// Why a module cannot serve as a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    /// The bytes are not a valid WebAssembly component (a core module, or corrupt).
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    /// The module lacks exports of the world it was configured for.
    #[error(
        "does not implement world `{world}`: missing export{s} {missing} (the module exports: {exports})",
        world = world.as_str(),
        s = if missing.len() == 1 { "" } else { "s" },
        missing = quoted(missing),
        exports = listed(exports)
    )]
    MissingExports {
        /// The world asked for.
        world: PolicyWorld,
        /// Required exports that are absent.
        missing: Vec<&'static str>,
        /// Everything the module exports.
        exports: Vec<String>,
    },
    /// The module implements none of the worlds.
    #[error(
        "implements none of the policy worlds (the module exports: {exports}): {detail}",
        exports = listed(exports),
        detail = missing.iter().map(|(w, m)| format!("`{}` lacks {}", w.as_str(), quoted(m))).collect::<Vec<_>>().join("; ")
    )]
    NoWorld {
        /// Per world, the exports it lacks.
        missing: Vec<(PolicyWorld, Vec<&'static str>)>,
        /// Everything the module exports.
        exports: Vec<String>,
    },
    /// The module exports the functions of more than one world.
    #[error("exports the functions of several worlds ({}); a policy implements exactly one", .0.iter().map(|w| w.as_str()).collect::<Vec<_>>().join(", "))]
    SeveralWorlds(Vec<PolicyWorld>),
    /// The module imports something the host does not provide.
    #[error("imports something the host does not provide: {0}")]
    Imports(String),
    /// The exports are there but their types differ from the contract.
    #[error("exports of world `{world}` do not match the contract's types: {detail}", world = world.as_str())]
    ExportTypes {
        /// The world detected or asked for.
        world: PolicyWorld,
        /// wasmtime's description of the mismatch.
        detail: String,
    },
}

/// The WebAssembly magic number every module and component starts with.
const WASM_MAGIC: &[u8; 4] = b"\0asm";
/// The version and layer fields of a core module (version 1, layer 0).
const CORE_MODULE_VERSION: [u8; 4] = [1, 0, 0, 0];

impl ModuleError {
    /// Describes why `bytes` did not compile as a component, in one line: what the file starts
    /// with when it is not WebAssembly at all, a core module named as such, else wasmtime's
    /// message with its line breaks and debug-printed byte arrays flattened.
    pub(crate) fn not_a_component(bytes: &[u8], error: &wasmtime::Error) -> Self {
        let head = &bytes[..bytes.len().min(4)];
        let detail = if head != WASM_MAGIC {
            format!(
                "not WebAssembly: the file ({} bytes) starts with {}, not the magic number \\0asm (00 61 73 6d)",
                bytes.len(),
                if head.is_empty() {
                    "nothing".to_owned()
                } else {
                    hex_bytes(head)
                }
            )
        } else if bytes.get(4..8) == Some(&CORE_MODULE_VERSION[..]) {
            "a core WebAssembly module, not a component: build for `wasm32-wasip2` (or wrap it \
             with `wasm-tools component new`)"
                .to_owned()
        } else {
            one_line(&format!("{error:#}"))
        };
        ModuleError::NotAComponent(detail)
    }
}

/// Bytes as space-separated hex pairs.
fn hex_bytes(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text` on one line: runs of whitespace (line breaks and the indentation of pretty-printed
/// debug output) become one space, and a space after `[` or before `]`/`,` goes.
pub(crate) fn one_line(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    joined
        .replace("[ ", "[")
        .replace(" ]", "]")
        .replace(" ,", ",")
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn listed(names: &[String]) -> String {
    if names.is_empty() {
        "nothing".into()
    } else {
        names.join(", ")
    }
}

/// Why loading (or reloading) one policy was rejected. The previous version, if any, keeps
/// serving.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The policy file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `builtin:NAME` names no module the host carries.
    #[error("no built-in policy `{name}` (built-in policies: {known})")]
    UnknownBuiltin {
        /// The name asked for.
        name: String,
        /// The names there are, comma-separated.
        known: String,
    },
    /// The module is not a policy of the configured world.
    #[error("{module}: {source}")]
    Module {
        /// The policy file, or `builtin:NAME`.
        module: PolicySource,
        /// What is wrong with the module.
        source: ModuleError,
    },
    /// The memory cap exceeds the host's ceiling.
    #[error("max_memory_bytes = {asked} exceeds the host's ceiling of {ceiling} bytes")]
    MemoryCap {
        /// Asked for in `[[policy]]`.
        asked: usize,
        /// [`crate::HostConfig::max_memory_ceiling_bytes`].
        ceiling: usize,
    },
    /// `configure` returned an error.
    #[error("configure rejected the config: {0}")]
    Configure(String),
    /// `configure` (or instantiation) failed without an answer: trap, timeout, memory cap.
    #[error("configure failed: {0}")]
    ConfigureFailed(CallError),
}

/// Why a call produced no policy answer. The caller gets the failure mode's answer instead
/// (see [`crate::AuthzOutcome`], [`crate::HealthOutcome`], [`crate::RoutingOutcome`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Stopped at its deadline.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Tried to grow its memory past the cap.
    #[error("exceeded its memory cap of {0} bytes")]
    MemoryLimit(usize),
    /// Trapped (a panic, `unreachable`, an out-of-bounds access…).
    #[error("trapped: {0}")]
    Trap(String),
    /// Answered, but with an error (routing: `build-routes` returned `err`).
    #[error("rejected the input: {0}")]
    Rejected(String),
    /// Answered with something the host must not act on (a `request` policy's header edit of
    /// a framing field, an oversized reply…).
    #[error("answered with an invalid action: {0}")]
    InvalidAnswer(String),
    /// The input exceeds [`crate::HostConfig::max_input_bytes`]; the guest was not called.
    #[error("input of {size} bytes exceeds the limit of {limit} bytes")]
    InputTooLarge {
        /// Encoded size of the input.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A new instance could not be created (pool exhausted, or its `configure` failed).
    #[error("cannot start an instance: {0}")]
    Instantiate(String),
    /// Suspended by the crash budget after repeated failures.
    #[error("suspended after repeated failures for another {0:?}")]
    Suspended(Duration),
    /// No version of the policy has loaded successfully.
    #[error("no module loaded")]
    NotLoaded,
}

impl CallError {
    /// Whether the failure was the guest's fault (counts against the crash budget and
    /// discards the instance).
    pub fn is_crash(&self) -> bool {
        matches!(
            self,
            CallError::Timeout(_) | CallError::MemoryLimit(_) | CallError::Trap(_)
        )
    }
}
