//! The Wasm policy host as the binary uses it: `sluice policy check`, and the host that serves
//! `[[policy]]` entries, created only once a configuration has policies (its epoch ticker and
//! compiled modules cost nothing to a proxy without any).

use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_config::PolicyConfig;
use sluice_policy_host::{
    HostConfig, MemoryKv, PolicyHost, PolicyStatus, PolicyWatcher, ReloadReport,
};

/// `sluice policy check`: exit 0 when the module loaded, configured and answered.
#[allow(clippy::print_stdout, reason = "the report is the command's output")]
pub(crate) fn check(file: &Path, config: Option<&str>, input: Option<&str>) -> ExitCode {
    match sluice_policy_host::check::check_module(file, config, input) {
        Ok(report) => {
            println!("{report}");
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("sluice: {}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

/// How long file changes must settle before a changed module is reloaded.
const WATCH_DEBOUNCE: Duration = Duration::from_millis(200);

/// The loaded policies and the watcher of their files.
#[derive(Debug, Default)]
pub(crate) struct Policies {
    host: Mutex<Option<Arc<PolicyHost>>>,
    watcher: Mutex<Option<PolicyWatcher>>,
}

impl Policies {
    /// Loads, reloads or removes policies to match `configs` (blocking: compiles modules).
    /// Rejected policies keep their previous version, if any; the report says which.
    pub(crate) fn apply(&self, configs: &[PolicyConfig]) -> Result<ReloadReport, String> {
        let host = {
            let mut slot = self
                .host
                .lock()
                .map_err(|_| "policy host lock poisoned".to_owned())?;
            match (&*slot, configs.is_empty()) {
                (None, true) => return Ok(ReloadReport::default()),
                (Some(h), _) => Arc::clone(h),
                (None, false) => {
                    let host = PolicyHost::new(HostConfig::default(), Arc::new(MemoryKv::new()))
                        .map_err(|e| format!("cannot start the policy host: {e}"))?;
                    Arc::clone(slot.insert(Arc::new(host)))
                }
            }
        };
        let report = host.apply_config(configs);
        // The watcher watches the files that exist when it starts: restart it for the new set.
        let watcher = if configs.is_empty() {
            None
        } else {
            match PolicyWatcher::start(&host, WATCH_DEBOUNCE) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch policy files; use POST /api/policies/reload");
                    None
                }
            }
        };
        if let Ok(mut w) = self.watcher.lock() {
            *w = watcher;
        }
        Ok(report)
    }

    /// Reloads every policy from its file (blocking).
    pub(crate) fn reload(&self) -> ReloadReport {
        self.current().map(|h| h.reload()).unwrap_or_default()
    }

    /// Every loaded policy's state, for `GET /api/policies`.
    pub(crate) fn list(&self) -> Vec<PolicyStatus> {
        self.current().map(|h| h.list()).unwrap_or_default()
    }

    fn current(&self) -> Option<Arc<PolicyHost>> {
        self.host.lock().ok().and_then(|h| h.clone())
    }
}

/// A one-line summary of the policies a report rejected.
pub(crate) fn rejected_summary(report: &ReloadReport) -> Option<String> {
    let rejected: Vec<String> = report
        .rejected()
        .map(|(name, error)| format!("{name}: {error}"))
        .collect();
    (!rejected.is_empty()).then(|| rejected.join("; "))
}
