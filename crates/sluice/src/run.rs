//! `sluice run`: wiring the proxy, the admin API, metrics and signals together.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sluice_config::{Config, LogConfig, LogFormat};
use sluice_proxy::Proxy;
use tokio::signal::unix::{SignalKind, signal};

use crate::app::App;

/// Histogram buckets for every `*_seconds` metric: 0.5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

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
    let policies = Arc::new(crate::policies::Policies::new(
        cfg.runtime.policy_cache.clone(),
    ));
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
    let base = cfg.clone();
    let admin_auth = crate::admin_auth::AdminAuth::load(&cfg.admin)?;
    if cfg.admin.insecure && !cfg.admin.authenticates() && !admin_bind.ip().is_loopback() {
        tracing::warn!(admin = %admin_bind, "[admin] insecure = true: the admin API is open to anyone who reaches {admin_bind}, and can reload the proxy");
    }
    crate::acme::prepare(&cfg)?;
    let hooks = sluice_proxy::Policies {
        evaluators: Arc::clone(&policies) as Arc<dyn sluice_health::EvaluatorSource>,
        authorizer: Arc::clone(&policies) as Arc<dyn sluice_tls::PolicyAuthorizer>,
        requests: Arc::clone(&policies) as Arc<dyn sluice_proxy::RequestPolicies>,
    };
    let proxy = Proxy::start_with_policies(cfg, hooks)
        .await
        .context("starting listeners")?;
    let app = Arc::new(App::new(
        proxy,
        config_path,
        metrics,
        policies,
        (base, admin_auth),
    ));
    app.acme.sync(&app.proxy.config());
    if let Some(state) = discovery {
        app.start_discovery(state);
    }
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
                let _ = app.reload(crate::reloads::Trigger::Signal).await;
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
    app.stop_discovery();
    tracing::info!("stopped");
    Ok(())
}
