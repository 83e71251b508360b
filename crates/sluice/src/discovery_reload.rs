//! `[[discovery]]` changes applied by a reload.
//!
//! Failure rule: a reload whose `[[discovery]]` set cannot start (an etcd endpoint the client
//! refuses, a static instance that does not validate) is rejected before anything changes; the
//! running sources keep serving. Unchanged sources keep their watch and catalog; only added or
//! changed ones start (`sluice_discovery::Discovery::apply`).

use std::sync::Arc;

use sluice_config::Config;
use sluice_discovery::{Discovery, DiscoveryOptions, SourcePlan};

use crate::discovery::DiscoveryState;

/// The discovery sources a reload moves to, validated before anything changes.
#[derive(Debug)]
pub(crate) enum DiscoveryReload {
    /// No `[[discovery]]` before or after.
    None,
    /// Running sources replaced by the plan (unchanged ones are kept by `Discovery::apply`).
    Update(Arc<DiscoveryState>, SourcePlan),
    /// The process had no discovery; this one starts (its sources already connecting).
    Start(Arc<DiscoveryState>),
}

impl DiscoveryReload {
    /// Validates `cfg`'s `[[discovery]]` against the running state.
    pub(crate) fn prepare(
        running: Option<&Arc<DiscoveryState>>,
        cfg: &Config,
    ) -> Result<DiscoveryReload, String> {
        match running {
            Some(state) => {
                let sources = cfg
                    .discovery
                    .iter()
                    .map(crate::discovery::source_config)
                    .collect();
                let plan = Discovery::prepare(sources).map_err(|e| e.to_string())?;
                Ok(DiscoveryReload::Update(Arc::clone(state), plan))
            }
            None if cfg.discovery.is_empty() => Ok(DiscoveryReload::None),
            None => match DiscoveryState::start(cfg) {
                Ok(Some(state)) => Ok(DiscoveryReload::Start(state)),
                Ok(None) => Ok(DiscoveryReload::None),
                Err(e) => Err(format!("{e:#}")),
            },
        }
    }

    /// The discovery state the reloaded configuration runs with, if any.
    pub(crate) fn state(&self) -> Option<&DiscoveryState> {
        match self {
            DiscoveryReload::None => None,
            DiscoveryReload::Update(state, _) | DiscoveryReload::Start(state) => Some(state),
        }
    }

    /// The reload was refused after all: sources started for it stop (they are dropped).
    pub(crate) fn abandon(self) {
        drop(self);
    }

    /// The reload is applied: switches the sources and asks for a rebuild against `cfg`; a
    /// discovery this reload starts is handed to `started` (which runs its rebuilds).
    pub(crate) async fn commit(self, cfg: &Config, started: impl FnOnce(Arc<DiscoveryState>)) {
        let options = DiscoveryOptions {
            debounce: cfg.routing.debounce,
            ..DiscoveryOptions::default()
        };
        match self {
            DiscoveryReload::None => {}
            DiscoveryReload::Update(state, plan) => {
                match state.discovery.apply(plan, options).await {
                    Ok(summary) if summary.started.is_empty() && summary.stopped.is_empty() => {}
                    Ok(summary) => tracing::info!(
                        kept = ?summary.kept,
                        started = ?summary.started,
                        stopped = ?summary.stopped,
                        "[[discovery]] sources changed by the reload"
                    ),
                    Err(e) => tracing::error!(error = %e, "[[discovery]] sources not changed"),
                }
                // The file's routes, services or routing policy may differ now.
                state.rebuild_now.notify_one();
            }
            DiscoveryReload::Start(state) => {
                tracing::info!("[[discovery]] started by the reload");
                started(state);
            }
        }
    }
}
