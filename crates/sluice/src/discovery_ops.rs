//! Discovery operations on a running process: `[[discovery]]` changes applied by a reload, and
//! `[routing] overrides_key` (Fabio's route commands read from a `[[kv]]` key, watched).
//!
//! Kept apart from `discovery.rs` (catalog → routes translation) so each stays small.
//!
//! Failure rules:
//! - A reload whose `[[discovery]]` set cannot start (an etcd endpoint the client refuses, a
//!   static instance that does not validate) is rejected before anything changes; the running
//!   sources keep serving. Unchanged sources keep their watch and catalog; only added or
//!   changed ones start (`sluice_discovery::Discovery::apply`).
//! - An overrides value with a bad line is rejected whole, reported with `key:line:col`, and
//!   the last good set keeps applying (`/api/catalog` `overrides`, metric
//!   `sluice_routing_overrides_rejected`). An absent key means no KV overrides.

use std::sync::Arc;

use serde_json::json;
use sluice_config::{Config, RouteOverride};
use sluice_discovery::{Discovery, DiscoveryOptions, SourcePlan};

use crate::app::App;
use crate::discovery::DiscoveryState;

/// Metric names (docs/metrics.md).
pub(crate) mod metric {
    pub(crate) const OVERRIDES_REJECTED: &str = "sluice_routing_overrides_rejected";
    pub(crate) const OVERRIDES_COMMANDS: &str = "sluice_routing_overrides_commands";
    #[cfg(test)]
    pub(crate) const ALL: &[&str] = &[OVERRIDES_REJECTED, OVERRIDES_COMMANDS];
}

/// What `[routing] overrides_key` last held.
#[derive(Debug, Default)]
pub(crate) struct KvOverrides {
    /// The key the state below belongs to (a reload may name another).
    key: Option<String>,
    /// The value last looked at (`Some(None)`: the key was absent), so an unchanged value is
    /// not parsed again.
    seen: Option<Option<String>>,
    /// The last good commands: applied after `[routing] overrides` at every rebuild.
    good: Arc<Vec<RouteOverride>>,
    /// Why the current value is rejected (each bad line as `key:line:col: reason`).
    error: Option<String>,
}

impl DiscoveryState {
    /// The `[[kv]]` value of `base`'s overrides key as it is now (`None`: no key, or absent).
    fn overrides_value(base: &Config, kv: &crate::kv::KvLayers) -> Option<String> {
        use sluice_policy_host::KvView as _;
        base.routing
            .overrides_key
            .as_deref()
            .and_then(|k| kv.get(k))
    }

    /// Whether the overrides key (or its value) differs from what the last rebuild used.
    pub(crate) fn kv_overrides_changed(&self, base: &Config, kv: &crate::kv::KvLayers) -> bool {
        let Ok(state) = self.kv_overrides.lock() else {
            return true;
        };
        state.key != base.routing.overrides_key
            || state.seen.as_ref() != Some(&Self::overrides_value(base, kv))
    }

    /// The KV overrides to apply now: the key's commands, or the last good ones when its value
    /// does not parse.
    pub(crate) fn kv_overrides(
        &self,
        base: &Config,
        kv: &crate::kv::KvLayers,
    ) -> Arc<Vec<RouteOverride>> {
        let value = Self::overrides_value(base, kv);
        let Ok(mut state) = self.kv_overrides.lock() else {
            return Arc::default();
        };
        if state.key != base.routing.overrides_key {
            *state = KvOverrides {
                key: base.routing.overrides_key.clone(),
                ..KvOverrides::default()
            };
        }
        if state.seen.as_ref() == Some(&value) {
            return Arc::clone(&state.good);
        }
        let key = state.key.clone().unwrap_or_default();
        match sluice_config::parse_overrides(value.as_deref().unwrap_or_default()) {
            Ok(commands) => {
                if state.key.is_some() {
                    tracing::info!(key = %key, commands = commands.len(), "routing overrides read from KV");
                }
                state.good = Arc::new(commands);
                state.error = None;
            }
            Err(errors) => {
                let lines: Vec<String> = errors
                    .iter()
                    .map(|e| format!("{key}:{}:{}: {}", e.line, e.column, e.message))
                    .collect();
                for line in &lines {
                    tracing::warn!(error = %line, "routing overrides rejected; the last good set keeps applying");
                }
                state.error = Some(lines.join("; "));
            }
        }
        state.seen = Some(value);
        metrics::gauge!(metric::OVERRIDES_REJECTED).set(if state.error.is_some() {
            1.0
        } else {
            0.0
        });
        metrics::gauge!(metric::OVERRIDES_COMMANDS).set(state.good.len() as f64);
        Arc::clone(&state.good)
    }

    /// `overrides` in `GET /api/catalog`.
    pub(crate) fn kv_overrides_json(&self) -> serde_json::Value {
        let Ok(state) = self.kv_overrides.lock() else {
            return serde_json::Value::Null;
        };
        json!({
            "key": state.key,
            "present": state.seen.as_ref().is_some_and(Option::is_some),
            "applied_commands": state.good.len(),
            "rejected": state.error.is_some(),
            "error": state.error,
        })
    }
}

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
    pub(crate) fn prepare(app: &App, cfg: &Config) -> Result<DiscoveryReload, String> {
        match app.discovery.get() {
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

    /// The reload was refused after all: sources started for it stop (dropped), files go.
    pub(crate) fn abandon(self) {
        if let DiscoveryReload::Start(state) = self {
            state.cleanup();
        }
    }

    /// The reload is applied: switches the sources and asks for a rebuild against `cfg`.
    pub(crate) async fn commit(self, app: &Arc<App>, cfg: &Config) {
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
                if app.discovery.set(Arc::clone(&state)).is_ok() {
                    tracing::info!("[[discovery]] started by the reload");
                    crate::discovery::spawn_rebuilds(Arc::clone(app), state);
                }
            }
        }
    }
}
