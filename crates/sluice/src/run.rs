//! `sluice run`: wiring the proxy, the admin API, metrics and signals together.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sluice_config::{Config, LogConfig, LogFormat};
use sluice_proxy::{ApplySummary, Proxy};
use tokio::signal::unix::{SignalKind, signal};

/// Histogram buckets for every `*_seconds` metric: 0.5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

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

pub(crate) fn run(config_path: PathBuf, cfg: Config) -> anyhow::Result<()> {
    init_tracing(&cfg.log);
    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .context("configuring metric buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    // One worker: a single-threaded runtime does the same work without the cross-thread
    // scheduling machinery (remote wakeups, work-stealing queues) — like one nginx worker.
    let mut builder = if cfg.runtime.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if cfg.runtime.worker_threads > 0 {
            b.worker_threads(cfg.runtime.worker_threads);
        }
        b
    };
    let runtime = builder
        .enable_all()
        .thread_name("sluice-worker")
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(config_path, cfg, metrics))
}

fn init_tracing(log: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

async fn serve(config_path: PathBuf, cfg: Config, metrics: PrometheusHandle) -> anyhow::Result<()> {
    let admin_bind = cfg.admin.bind;
    let grace = cfg.runtime.shutdown_grace;
    // Signals first: a SIGHUP during start-up must not kill the process.
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("installing SIGUSR1 handler")?;

    // Discovery first: its sources start connecting while policies compile; the embedded
    // routing policy is loaded with the others.
    let discovery = crate::discovery::DiscoveryState::start(&cfg).context("starting discovery")?;
    // Policies first: health checks that name one evaluate through it from their first probe.
    let policies = Arc::new(crate::policies::Policies::default());
    policies
        .kv
        .apply(&cfg.kv)
        .await
        .map_err(anyhow::Error::msg)
        .context("starting [[kv]] sources")?;
    {
        let (policies, configs) = (
            Arc::clone(&policies),
            crate::discovery::effective_policies(&cfg, discovery.as_deref()),
        );
        let report = tokio::task::spawn_blocking(move || policies.apply(&configs))
            .await
            .context("loading policies")?
            .map_err(anyhow::Error::msg)?;
        if let Some(rejected) = crate::policies::rejected_summary(&report) {
            // A policy that cannot load at start-up is a configuration error: refuse to run.
            anyhow::bail!("policies could not be loaded: {rejected}");
        }
    }
    let base = std::sync::Mutex::new(Arc::new(cfg.clone()));
    let proxy = Proxy::start_with_policies(
        cfg,
        Arc::clone(&policies) as Arc<dyn sluice_health::EvaluatorSource>,
        Arc::clone(&policies) as Arc<dyn sluice_tls::PolicyAuthorizer>,
    )
    .await
    .context("starting listeners")?;
    let app = Arc::new(App {
        proxy,
        config_path,
        metrics,
        ready: AtomicBool::new(false),
        policies,
        discovery: discovery
            .clone()
            .map(std::sync::OnceLock::from)
            .unwrap_or_default(),
        base,
        reload_lock: tokio::sync::Mutex::new(()),
    });
    let rebuilds = discovery.map(|state| crate::discovery::spawn_rebuilds(Arc::clone(&app), state));
    let admin = crate::admin::start(admin_bind, Arc::clone(&app))
        .await
        .with_context(|| format!("starting the admin listener on {admin_bind}"))?;
    app.ready.store(true, Ordering::SeqCst);
    tracing::info!(admin = %admin_bind, version = env!("CARGO_PKG_VERSION"), "sluice is ready");

    let upkeep = {
        let handle = app.metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        })
    };

    let tls_watch = crate::tls_watch::spawn(Arc::clone(&app));

    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading configuration");
                let _ = app.reload().await;
            }
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1: reopening the access log");
                app.proxy.reopen_access_log();
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: draining in-flight requests"
    );
    app.ready.store(false, Ordering::SeqCst);
    app.proxy.shutdown(grace).await;
    admin.abort();
    upkeep.abort();
    tls_watch.abort();
    if let Some(task) = rebuilds {
        task.abort();
    }
    if let Some(discovery) = app.discovery.get() {
        discovery.cleanup();
    }
    tracing::info!("stopped");
    Ok(())
}
