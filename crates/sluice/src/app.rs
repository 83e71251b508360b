//! The running application: the proxy and what acts on it (the admin API, signals, discovery
//! rebuilds, TLS file changes), and the one place a configuration is applied — `App::reload`
//! re-reads the file, and the rebuilds the discovery task sends (discovery_rebuild.rs) are
//! merged with the file's and applied here, one apply at a time.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use std::time::Instant;

use metrics_exporter_prometheus::PrometheusHandle;
use sluice_config::Config;
use sluice_proxy::{ApplySummary, Proxy};
use sluice_routing::merge;
use tokio::sync::{mpsc, watch};

use crate::acme::AcmeManager;
use crate::admin_auth::{AdminAuth, TokenError};
use crate::discovery::{DiscoveryState, effective_policies, ms_since};
use crate::discovery_rebuild::{RebuildInputs, Rebuilt};
use crate::discovery_reload::DiscoveryReload;
use crate::policies::Policies;
use crate::reloads::{ReloadHistory, Trigger};

/// Everything the admin API and the signal handlers act on.
#[derive(Debug)]
pub(crate) struct App {
    pub(crate) proxy: Proxy,
    pub(crate) config_path: PathBuf,
    pub(crate) metrics: PrometheusHandle,
    pub(crate) ready: AtomicBool,
    pub(crate) policies: Arc<Policies>,
    /// The admin API's tokens (`[admin]`), read again on every reload.
    pub(crate) admin_auth: AdminAuth,
    /// `[[discovery]]`, once configured (at start-up or by a reload; it stays once started,
    /// with no sources if a reload removes them all).
    pub(crate) discovery: std::sync::OnceLock<Arc<DiscoveryState>>,
    /// The last reloads and how they ended (`GET /api/reloads`).
    pub(crate) reloads: ReloadHistory,
    /// The certificate tasks of `[listener.tls.acme]` listeners.
    pub(crate) acme: AcmeManager,
    /// The configuration file as last loaded, before discovered routes are merged in; the
    /// rebuild task watches it.
    base: watch::Sender<Arc<Config>>,
    /// The rebuild task and the task applying what it sends.
    rebuilds: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    reload_lock: tokio::sync::Mutex<()>,
}

/// Why a reload did not happen; the running configuration is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    #[error("invalid configuration:\n{0}")]
    Invalid(sluice_config::Diagnostics),
    #[error(transparent)]
    Apply(#[from] sluice_proxy::ApplyError),
    /// The `[[discovery]]` set cannot start; the running sources keep serving.
    #[error("[[discovery]] not applied: {0}")]
    Discovery(String),
    /// The proxy configuration was applied; some policies were not (they keep their previous
    /// version, if they had one).
    #[error(
        "configuration applied, but policies were rejected and keep their previous version: {0}"
    )]
    Policies(String),
    /// The configuration was applied; the admin tokens could not be read again and the
    /// previous ones stay.
    #[error("configuration applied, but the admin tokens keep their previous value: {0}")]
    AdminTokens(#[from] TokenError),
}

impl App {
    /// The application around a started proxy, ready for reloads.
    pub(crate) fn new(
        proxy: Proxy,
        config_path: PathBuf,
        metrics: PrometheusHandle,
        policies: Arc<Policies>,
        (base, admin_auth): (Config, AdminAuth),
    ) -> Self {
        App {
            acme: AcmeManager::new(proxy.acme_challenges(), proxy.acme_alpn_challenges()),
            proxy,
            config_path,
            metrics,
            ready: AtomicBool::new(false),
            policies,
            admin_auth,
            discovery: std::sync::OnceLock::new(),
            reloads: ReloadHistory::default(),
            base: watch::channel(Arc::new(base)).0,
            rebuilds: std::sync::Mutex::default(),
            reload_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs `state`'s discovery for the rest of the process: its rebuild task, and the task
    /// applying what that sends. A second discovery is refused (there is one per process).
    pub(crate) fn start_discovery(self: &Arc<Self>, state: Arc<DiscoveryState>) {
        if self.discovery.set(Arc::clone(&state)).is_err() {
            return;
        }
        // One rebuild in flight: the rebuild task waits while the previous one applies, so
        // each is applied in order and none is dropped.
        let (sender, receiver) = mpsc::channel(1);
        let inputs = RebuildInputs {
            proxy: self.proxy.clone(),
            policies: Arc::clone(&self.policies),
            base: self.base.subscribe(),
        };
        let rebuilds = crate::discovery_rebuild::spawn(inputs, Arc::clone(&state), sender);
        let applier = tokio::spawn(Arc::clone(self).apply_rebuilds(state, receiver));
        if let Ok(mut tasks) = self.rebuilds.lock() {
            tasks.extend([rebuilds, applier]);
        }
    }

    /// Stops discovery's tasks (at shutdown).
    pub(crate) fn stop_discovery(&self) {
        if let Ok(mut tasks) = self.rebuilds.lock() {
            tasks.drain(..).for_each(|t| t.abort());
        }
    }

    /// Applies each rebuild the discovery task sends, and finishes its report.
    async fn apply_rebuilds(
        self: Arc<Self>,
        state: Arc<DiscoveryState>,
        mut rebuilds: mpsc::Receiver<Rebuilt>,
    ) {
        while let Some(Rebuilt {
            discovered,
            mut report,
            started,
            instances,
        }) = rebuilds.recv().await
        {
            let apply_started = Instant::now();
            let applied = self.apply_discovered(&state, discovered).await;
            report.apply_ms = ms_since(apply_started);
            if let Err(e) = applied {
                report.failed("apply_failed", e.to_string());
            }
            state.record(report, started, instances);
        }
    }

    /// Re-reads the configuration file and applies it, one reload at a time; logs, counts and
    /// remembers (`GET /api/reloads`) how it ended.
    pub(crate) async fn reload(
        self: &Arc<Self>,
        trigger: Trigger,
    ) -> Result<ApplySummary, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let outcome = self.reload_file().await;
        let result = log_outcome(&outcome);
        metrics::counter!(sluice_proxy::metrics::RELOADS_TOTAL, "result" => result).increment(1);
        let error = outcome.as_ref().err().map(ToString::to_string);
        self.reloads.record(trigger, result, error);
        outcome
    }

    /// Loads the file and applies it (the caller holds `reload_lock`).
    async fn reload_file(self: &Arc<Self>) -> Result<ApplySummary, ReloadError> {
        let loaded = sluice_config::load_file(&self.config_path)
            .map_err(ReloadError::Invalid)
            .and_then(|cfg| {
                // Validated before anything changes: a set that cannot start changes nothing.
                let discovery = DiscoveryReload::prepare(self.discovery.get(), &cfg)
                    .map_err(ReloadError::Discovery)?;
                Ok((cfg, discovery))
            });
        let (cfg, discovery) = loaded?;
        let current = self.proxy.config();
        if cfg.admin != current.admin || cfg.runtime != current.runtime || cfg.log != current.log {
            tracing::warn!("[admin], [runtime] and [log] changes take effect at the next restart");
        }
        // KV before policies, so a policy configured to read a new source finds it.
        if let Err(e) = self.policies.kv.apply(&cfg.kv).await {
            tracing::error!(error = %e, "[[kv]] not applied; the previous sources stay in use");
        }
        // Policies first, so new health checks find the policies they name.
        let policies = self
            .apply_policies(effective_policies(&cfg, discovery.state()))
            .await;
        let merged = match discovery.state() {
            Some(state) => merge(&cfg, &state.discovered()),
            None => cfg.clone(),
        };
        if let Err(e) = crate::acme::prepare(&cfg) {
            tracing::error!(error = format!("{e:#}"), "ACME storage not ready");
        }
        let applied = self.proxy.apply(merged).await;
        if applied.is_ok() {
            self.acme.sync(&cfg);
            self.set_base(cfg.clone());
            // Sources switch, then the routes are rebuilt against the new file.
            discovery
                .commit(&cfg, |state| self.start_discovery(state))
                .await;
        } else {
            discovery.abandon();
        }
        match (applied, policies) {
            (Err(e), _) => Err(ReloadError::from(e)),
            (Ok(_), Err(e)) => Err(ReloadError::Policies(e)),
            (Ok(summary), Ok(())) => self
                .admin_auth
                .reload()
                .map(|()| summary)
                .map_err(ReloadError::from),
        }
    }

    /// The configuration file as last applied, without discovered routes.
    pub(crate) fn base_config(&self) -> Arc<Config> {
        Arc::clone(&self.base.borrow())
    }

    fn set_base(&self, cfg: Config) {
        self.base.send_replace(Arc::new(cfg));
    }

    /// Applies the file's configuration merged with `discovered` (one apply at a time, with
    /// reloads); on success `discovered` becomes the set later reloads merge in.
    async fn apply_discovered(
        &self,
        state: &DiscoveryState,
        discovered: sluice_routing::Discovered,
    ) -> Result<ApplySummary, sluice_proxy::ApplyError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let merged = merge(&self.base_config(), &discovered);
        let summary = self.proxy.apply(merged).await?;
        state.set_discovered(discovered);
        Ok(summary)
    }

    /// Loads the configuration's policies off the async threads (compiling takes a while).
    async fn apply_policies(
        &self,
        configs: Vec<sluice_config::PolicyConfig>,
    ) -> Result<(), String> {
        let policies = Arc::clone(&self.policies);
        let report = tokio::task::spawn_blocking(move || policies.apply(&configs))
            .await
            .map_err(|e| format!("policy loading panicked: {e}"))??;
        match crate::policies::rejected_summary(&report) {
            None => Ok(()),
            Some(rejected) => Err(rejected),
        }
    }
}

/// Logs how a reload ended and names the result: `ok`, `invalid` (refused before anything
/// changed) or `failed` (the label of `sluice_reloads_total` and the history's `result`).
fn log_outcome(outcome: &Result<ApplySummary, ReloadError>) -> crate::reloads::Outcome {
    match outcome {
        Ok(summary) => {
            tracing::info!(?summary, "configuration reloaded");
            "ok"
        }
        Err(ReloadError::Invalid(d)) => {
            tracing::error!("reload rejected, the previous configuration keeps serving:\n{d}");
            "invalid"
        }
        Err(e @ ReloadError::Discovery(_)) => {
            tracing::error!(error = %e, "reload rejected, the previous configuration keeps serving");
            "invalid"
        }
        Err(e) => {
            tracing::error!(error = %e, "reload failed, the previous configuration keeps serving");
            "failed"
        }
    }
}
