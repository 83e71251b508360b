//! The running application: the proxy and what acts on it (the admin API, signals, discovery
//! rebuilds, TLS file changes), and the one way a configuration changes — `App::reload`
//! re-reads the file, and a rebuild swaps in discovered routes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use metrics_exporter_prometheus::PrometheusHandle;
use sluice_config::Config;
use sluice_proxy::{ApplySummary, Proxy};

/// Everything the admin API and the signal handlers act on.
#[derive(Debug)]
pub(crate) struct App {
    pub(crate) proxy: Proxy,
    pub(crate) config_path: PathBuf,
    pub(crate) metrics: PrometheusHandle,
    pub(crate) ready: AtomicBool,
    pub(crate) policies: Arc<crate::policies::Policies>,
    /// `[[discovery]]`, once configured (at start-up or by a reload; it stays once started,
    /// with no sources if a reload removes them all).
    pub(crate) discovery: std::sync::OnceLock<Arc<crate::discovery::DiscoveryState>>,
    /// The configuration file as last loaded, before discovered routes are merged in.
    base: std::sync::Mutex<Arc<Config>>,
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
}

impl App {
    /// The application around a started proxy, ready for reloads.
    pub(crate) fn new(
        proxy: Proxy,
        config_path: PathBuf,
        metrics: PrometheusHandle,
        policies: Arc<crate::policies::Policies>,
        discovery: Option<Arc<crate::discovery::DiscoveryState>>,
        base: Config,
    ) -> Self {
        App {
            proxy,
            config_path,
            metrics,
            ready: AtomicBool::new(false),
            policies,
            discovery: discovery.map(std::sync::OnceLock::from).unwrap_or_default(),
            base: std::sync::Mutex::new(Arc::new(base)),
            reload_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Re-reads the configuration file and applies it, one reload at a time.
    pub(crate) async fn reload(self: &Arc<Self>) -> Result<ApplySummary, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let loaded = sluice_config::load_file(&self.config_path)
            .map_err(ReloadError::Invalid)
            .and_then(|cfg| {
                // Validated before anything changes: a set that cannot start changes nothing.
                let discovery = crate::discovery_ops::DiscoveryReload::prepare(self, &cfg)
                    .map_err(ReloadError::Discovery)?;
                Ok((cfg, discovery))
            });
        let outcome = match loaded {
            Err(e) => Err(e),
            Ok((cfg, discovery)) => {
                let current = self.proxy.config();
                if cfg.admin != current.admin
                    || cfg.runtime != current.runtime
                    || cfg.log != current.log
                {
                    tracing::warn!(
                        "[admin], [runtime] and [log] changes take effect at the next restart"
                    );
                }
                // KV before policies, so a policy configured to read a new source finds it.
                if let Err(e) = self.policies.kv.apply(&cfg.kv).await {
                    tracing::error!(error = %e, "[[kv]] not applied; the previous sources stay in use");
                }
                // Policies first, so new health checks find the policies they name.
                let policies = self
                    .apply_policies(crate::discovery::effective_policies(
                        &cfg,
                        discovery.state(),
                    ))
                    .await;
                let merged = match discovery.state() {
                    Some(state) => crate::discovery::merge(&cfg, &state.discovered()),
                    None => cfg.clone(),
                };
                let applied = self.proxy.apply(merged).await;
                if applied.is_ok() {
                    self.set_base(cfg.clone());
                    // Sources switch, then the routes are rebuilt against the new file.
                    discovery.commit(self, &cfg).await;
                } else {
                    discovery.abandon();
                }
                match (applied, policies) {
                    (Err(e), _) => Err(ReloadError::from(e)),
                    (Ok(_), Err(e)) => Err(ReloadError::Policies(e)),
                    (Ok(summary), Ok(())) => Ok(summary),
                }
            }
        };
        let result = match &outcome {
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
        };
        metrics::counter!(sluice_proxy::metrics::RELOADS_TOTAL, "result" => result).increment(1);
        outcome
    }

    /// The configuration file as last applied, without discovered routes.
    pub(crate) fn base_config(&self) -> Arc<Config> {
        self.base
            .lock()
            .map(|b| Arc::clone(&b))
            .unwrap_or_else(|p| Arc::clone(&p.into_inner()))
    }

    fn set_base(&self, cfg: Config) {
        let mut base = self.base.lock().unwrap_or_else(|p| p.into_inner());
        *base = Arc::new(cfg);
    }

    /// Applies the file's configuration merged with `discovered` (one apply at a time, with
    /// reloads); on success `discovered` becomes the set later reloads merge in.
    pub(crate) async fn apply_discovered(
        &self,
        state: &crate::discovery::DiscoveryState,
        discovered: crate::discovery::Discovered,
    ) -> Result<ApplySummary, sluice_proxy::ApplyError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let merged = crate::discovery::merge(&self.base_config(), &discovered);
        let summary = self.proxy.apply(merged).await?;
        if let Ok(mut current) = state.discovered.lock() {
            *current = Arc::new(discovered);
        }
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
