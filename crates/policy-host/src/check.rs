//! `sluice policy check FILE.wasm [--config JSON] [--input JSON]`: everything the command does
//! and prints, as a library call (the binary only parses arguments and prints the report).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_config::{
    FailureMode, POLICY_MAX_MEMORY_BYTES, POLICY_TIMEOUT, PolicyConfig, PolicyLimits, PolicySource,
    PolicyWorld,
};

use crate::builtin::{BuiltinModules, ReadError, module_bytes};
use crate::engine::{CompiledModule, HostConfig, hex, required_exports};
use crate::error::{HostError, ModuleError};
use crate::host::{PolicyHost, ReloadOutcome};
use crate::kv::MemoryKv;
use crate::log_capture::{self, GuestLogLine};
use crate::world_call::{self, CallInput};

/// Why a module could not be checked at all (the CLI prints it and exits non-zero).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `builtin:NAME` names no built-in policy.
    #[error("no built-in policy `{name}` (built-in policies: {known})")]
    UnknownBuiltin {
        /// The name asked for.
        name: String,
        /// The names there are, comma-separated.
        known: String,
    },
    /// The module is not a policy: which world, export or type is wrong.
    #[error("{module}: {source}")]
    Module {
        /// The file, or `builtin:NAME`.
        module: PolicySource,
        /// What is wrong.
        source: ModuleError,
    },
    /// `--config` is not JSON.
    #[error("--config is not valid JSON: {0}")]
    Config(String),
    /// `--input` does not fit the world's call.
    #[error("--input is not a valid {expected}: {detail}")]
    Input {
        /// What the world's call takes, in words.
        expected: &'static str,
        /// The JSON error.
        detail: String,
    },
    /// The engine could not be set up.
    #[error(transparent)]
    Host(#[from] HostError),
}

/// What `check` found. Its `Display` is the command's output.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// The module checked: its file or `builtin:NAME`.
    pub file: PolicySource,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// Its size.
    pub size_bytes: usize,
    /// Time to compile it to native code (or to read it from the compile cache).
    pub compile_time: Duration,
    /// The native code came from the compile cache ([`HostConfig::compile_cache`]).
    pub from_compile_cache: bool,
    /// The world it implements.
    pub world: PolicyWorld,
    /// `Ok(time to instantiate and configure)` or the error `configure` reported.
    pub configure: Result<Duration, String>,
    /// The call made with `--input`, if any (and if `configure` succeeded).
    pub call: Option<CheckCall>,
    /// What the guest logged (`host::log`) during `configure` and the call, in order.
    pub log: Vec<GuestLogLine>,
}

/// One call made by `check`.
#[derive(Debug, Clone)]
pub struct CheckCall {
    /// The export called (`authorize`, `evaluate`, `build-routes`).
    pub export: &'static str,
    /// Whether the policy answered (as opposed to failing: trap, timeout, memory cap).
    pub answered: bool,
    /// The answer as JSON, or the failure and what the failure mode would do.
    pub result: String,
    /// Time the call took, instance checkout included.
    pub duration: Duration,
}

impl CheckReport {
    /// Whether the module configured and, if it was called, answered: the CLI's exit status.
    pub fn passed(&self) -> bool {
        self.configure.is_ok() && self.call.as_ref().is_none_or(|call| call.answered)
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "module:    {} ({} bytes, sha256 {})",
            self.file, self.size_bytes, self.sha256
        )?;
        let cached = if self.from_compile_cache {
            " (machine code from the compile cache)"
        } else {
            ""
        };
        writeln!(f, "compiled:  in {:.1?}{cached}", self.compile_time)?;
        writeln!(
            f,
            "world:     {} (exports {})",
            self.world.as_str(),
            required_exports(self.world).join(", ")
        )?;
        match &self.configure {
            Ok(took) => writeln!(
                f,
                "configure: ok (instantiated and configured in {took:.1?})"
            )?,
            Err(error) => writeln!(f, "configure: FAILED: {error}")?,
        }
        match (&self.call, &self.configure) {
            (Some(call), _) => {
                let status = if call.answered { "" } else { "FAILED: " };
                write!(
                    f,
                    "{}: {status}{} in {:.1?}",
                    call.export, call.result, call.duration
                )
            }
            (None, Ok(_)) => write!(f, "call:      skipped (no --input given)"),
            (None, Err(_)) => write!(f, "call:      skipped (configure failed)"),
        }?;
        write_log(f, &self.log)
    }
}

/// Writes guest log lines under a `log:` heading (or says there were none).
pub(crate) fn write_log(f: &mut fmt::Formatter<'_>, log: &[GuestLogLine]) -> fmt::Result {
    if log.is_empty() {
        return write!(f, "\nlog:       (nothing logged)");
    }
    write!(f, "\nlog:       {} line{}", log.len(), plural(log.len()))?;
    for line in log {
        write!(f, "\n  {line}")?;
    }
    Ok(())
}

pub(crate) fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Checks a policy module: detects its world (or names exactly which export or type does not
/// match), runs `configure` with `config_json` (default `{}`), and — given `input_json` — makes
/// one call with the default limits, reporting the answer, the time it took and what the guest
/// logged.
///
/// Input formats (field names as in the WIT with `_` for `-`; enum cases capitalised, e.g.
/// `"Http"`): `authz` takes a `Peer` object; `health` takes `{"instance": …, "probe": …}`;
/// `routing` takes an array of instances. See docs/policy-authoring.md for examples.
pub fn check_module(
    path: &Path,
    config_json: Option<&str>,
    input_json: Option<&str>,
) -> Result<CheckReport, CheckError> {
    let source = PolicySource::File(path.to_owned());
    check_source(&source, &Arc::default(), config_json, input_json)
}

/// [`check_module`] for a file or a built-in policy (`builtin:NAME`, looked up in `builtins`).
pub fn check_source(
    source: &PolicySource,
    builtins: &Arc<BuiltinModules>,
    config_json: Option<&str>,
    input_json: Option<&str>,
) -> Result<CheckReport, CheckError> {
    let loaded = load(source, builtins, config_json)?;
    let world = loaded.module.world;
    let input = input_json
        .map(|text| {
            let value: serde_json::Value =
                serde_json::from_str(text).map_err(|e| CheckError::Input {
                    expected: "JSON value",
                    detail: e.to_string(),
                })?;
            CallInput::parse(world, value).map_err(|e| CheckError::Input {
                expected: e.expected,
                detail: e.detail,
            })
        })
        .transpose()?;
    let mut log = loaded.log;
    let call = match (&loaded.configure, input) {
        (Ok(_), Some(input)) => {
            let started = Instant::now();
            let (outcome, call_log) =
                log_capture::capture(|| world_call::call(&loaded.host, POLICY_NAME, &input));
            log.extend(call_log);
            let duration = started.elapsed();
            let export = world_call::call_export(world);
            Some(match outcome {
                Ok(answer) => CheckCall {
                    export,
                    answered: true,
                    result: world_call::answer_json(&answer),
                    duration,
                },
                Err(failure) => CheckCall {
                    export,
                    answered: false,
                    result: format!("{} ({})", failure.error, failure.instead),
                    duration,
                },
            })
        }
        _ => None,
    };
    Ok(CheckReport {
        file: source.clone(),
        sha256: hex(&loaded.module.sha256),
        size_bytes: loaded.module.size_bytes,
        compile_time: loaded.module.compile_time,
        from_compile_cache: loaded.module.from_compile_cache,
        world,
        configure: loaded.configure,
        call,
        log,
    })
}

/// The name the checked module is loaded under.
pub(crate) const POLICY_NAME: &str = "check";

/// A module loaded for `check` or `test`: its host (the policy is [`POLICY_NAME`]), the
/// compiled module, whether `configure` passed, and what the guest logged meanwhile.
pub(crate) struct Loaded {
    pub(crate) host: PolicyHost,
    pub(crate) module: Arc<CompiledModule>,
    pub(crate) configure: Result<Duration, String>,
    pub(crate) log: Vec<GuestLogLine>,
}

/// Reads, compiles and configures the module (a file or `builtin:NAME`) in a host of its own.
pub(crate) fn load(
    source: &PolicySource,
    builtins: &Arc<BuiltinModules>,
    config_json: Option<&str>,
) -> Result<Loaded, CheckError> {
    let config: serde_json::Value = match config_json {
        Some(text) => serde_json::from_str(text).map_err(|e| CheckError::Config(e.to_string()))?,
        None => serde_json::json!({}),
    };
    let bytes = module_bytes(source, builtins).map_err(|error| match error {
        ReadError::File { path, error } => CheckError::Read {
            path,
            source: error,
        },
        ReadError::UnknownBuiltin { name, known } => CheckError::UnknownBuiltin { name, known },
    })?;
    let host_config = HostConfig {
        max_instances: 8,
        prewarm: 1,
        pool_capacity: 1,
        builtins: Arc::clone(builtins),
        parallel_compilation: true,
        // As `sluice run` does by default: a policy checked once loads fast after.
        compile_cache: sluice_config::defaults::policy_cache(),
        ..HostConfig::default()
    };
    let host = PolicyHost::new(host_config, Arc::new(MemoryKv::new()))?;
    let module = host
        .engine()
        .compile(&bytes, None)
        .map_err(|error| CheckError::Module {
            module: source.clone(),
            source: error,
        })?;
    let world = module.world;
    let policy = PolicyConfig {
        name: POLICY_NAME.into(),
        file: source.clone(),
        world,
        config,
        limits: PolicyLimits {
            timeout: POLICY_TIMEOUT,
            max_memory_bytes: POLICY_MAX_MEMORY_BYTES,
        },
        failure_mode: match world {
            PolicyWorld::Authz | PolicyWorld::Request => FailureMode::Closed,
            PolicyWorld::Health | PolicyWorld::Routing => FailureMode::KeepLast,
        },
        request_fields: None,
    };
    let started = Instant::now();
    let (report, log) = log_capture::capture(|| host.apply_config(std::slice::from_ref(&policy)));
    let configure = match report.policies.first().map(|entry| &entry.outcome) {
        Some(ReloadOutcome::Loaded { .. } | ReloadOutcome::Unchanged { .. }) => {
            Ok(started.elapsed())
        }
        Some(ReloadOutcome::Rejected { error }) => Err(error.clone()),
        Some(ReloadOutcome::Removed) | None => Err("the policy was not loaded".into()),
    };
    Ok(Loaded {
        host,
        module,
        configure,
        log,
    })
}
