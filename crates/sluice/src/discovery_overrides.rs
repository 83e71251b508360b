//! `[routing] overrides_key`: Fabio's route commands read from a `[[kv]]` key, watched, and
//! applied after the file's `[routing] overrides` at every rebuild.
//!
//! Failure rule: an overrides value with a bad line is rejected whole, reported with
//! `key:line:col`, and the last good set keeps applying (`/api/catalog` `overrides`, metric
//! `sluice_routing_overrides_rejected`). An absent key means no KV overrides.

use std::sync::Arc;

use serde_json::json;
use sluice_config::{Config, RouteOverride};

use crate::kv::KvLayers;

/// Metric names (docs/metrics.md).
pub(crate) mod metric {
    pub(crate) const OVERRIDES_REJECTED: &str = "sluice_routing_overrides_rejected";
    pub(crate) const OVERRIDES_COMMANDS: &str = "sluice_routing_overrides_commands";
    #[cfg(test)]
    pub(crate) const ALL: &[&str] = &[OVERRIDES_REJECTED, OVERRIDES_COMMANDS];
}

/// What `[routing] overrides_key` last held; shared by the rebuild task and the admin API.
#[derive(Debug, Default)]
pub(crate) struct KvOverrides {
    state: std::sync::Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
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

impl KvOverrides {
    /// The `[[kv]]` value of `base`'s overrides key as it is now (`None`: no key, or absent).
    fn value(base: &Config, kv: &KvLayers) -> Option<String> {
        use sluice_policy_host::KvView as _;
        base.routing
            .overrides_key
            .as_deref()
            .and_then(|k| kv.get(k))
    }

    /// Whether the overrides key (or its value) differs from what the last rebuild used.
    pub(crate) fn changed(&self, base: &Config, kv: &KvLayers) -> bool {
        let Ok(state) = self.state.lock() else {
            return true;
        };
        state.key != base.routing.overrides_key
            || state.seen.as_ref() != Some(&Self::value(base, kv))
    }

    /// The KV overrides to apply now: the key's commands, or the last good ones when its value
    /// does not parse.
    pub(crate) fn current(&self, base: &Config, kv: &KvLayers) -> Arc<Vec<RouteOverride>> {
        let value = Self::value(base, kv);
        let Ok(mut state) = self.state.lock() else {
            return Arc::default();
        };
        if state.key != base.routing.overrides_key {
            *state = Held {
                key: base.routing.overrides_key.clone(),
                ..Held::default()
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
    pub(crate) fn json(&self) -> serde_json::Value {
        let Ok(state) = self.state.lock() else {
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
