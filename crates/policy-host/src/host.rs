//! [`PolicyHost`]: the set of loaded policies, their (re)loading, and the admin listing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;
use sluice_config::{PolicyConfig, PolicyWorld};

use crate::builtin::module_bytes;
use crate::engine::{EngineShared, HostConfig, hex, unix_ms};
use crate::error::HostError;
use crate::kv::KvView;
use crate::policy::{AuthzHandle, HealthHandle, PolicySlot, RoutingHandle};

/// Runs the configured policies. Calls go through typed handles ([`PolicyHost::authz`],
/// [`PolicyHost::health`], [`PolicyHost::routing`]) that the data plane keeps; loading and
/// reloading happen here, off the data path, one at a time.
pub struct PolicyHost {
    engine: Arc<EngineShared>,
    slots: ArcSwap<BTreeMap<String, Arc<PolicySlot>>>,
    /// Serialises (re)loads; never taken on the call path.
    reloading: Mutex<()>,
}

impl std::fmt::Debug for PolicyHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyHost")
            .field("policies", &self.slots.load().keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The result of loading one policy during [`PolicyHost::apply_config`] or
/// [`PolicyHost::reload`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// A new version was compiled, configured and swapped in.
    Loaded {
        /// SHA-256 of the module, hex.
        sha256: String,
    },
    /// File, config and limits are unchanged: nothing was done.
    Unchanged {
        /// SHA-256 of the module, hex.
        sha256: String,
    },
    /// Rejected; the previous version (if any) keeps serving.
    Rejected {
        /// What went wrong, for operators.
        error: String,
    },
    /// No longer in the configuration.
    Removed,
}

/// One policy's line in a [`ReloadReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadEntry {
    /// The policy's name.
    pub name: String,
    /// What happened to it.
    #[serde(flatten)]
    pub outcome: ReloadOutcome,
}

/// What a (re)load did, policy by policy. The body of `POST /api/policies/reload`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ReloadReport {
    /// In name order.
    pub policies: Vec<ReloadEntry>,
}

impl ReloadReport {
    /// Whether no policy was rejected.
    pub fn is_ok(&self) -> bool {
        !self
            .policies
            .iter()
            .any(|e| matches!(e.outcome, ReloadOutcome::Rejected { .. }))
    }

    /// `(name, error)` of every rejected policy.
    pub fn rejected(&self) -> impl Iterator<Item = (&str, &str)> {
        self.policies.iter().filter_map(|e| match &e.outcome {
            ReloadOutcome::Rejected { error } => Some((e.name.as_str(), error.as_str())),
            _ => None,
        })
    }
}

/// Whether a policy is serving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PolicyState {
    /// A version is loaded and answering.
    Active,
    /// Suspended by the crash budget; calls get the failure mode until then.
    Suspended {
        /// Milliseconds until calls are tried again.
        retry_in_ms: u64,
    },
    /// No version ever loaded; calls get the failure mode.
    Failed,
}

/// One loaded policy, as `GET /api/policies` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyStatus {
    /// `[[policy]] name`.
    pub name: String,
    /// `routing`, `health` or `authz`.
    pub world: &'static str,
    /// The file configured, or `builtin:NAME`.
    pub file: String,
    /// SHA-256 (hex) of the module serving, if any.
    pub sha256: Option<String>,
    /// Serving state.
    #[serde(flatten)]
    pub state: PolicyState,
    /// When the serving version was loaded (ms since the Unix epoch).
    pub loaded_at_unix_ms: Option<u64>,
    /// Calls so far (all versions).
    pub calls: u64,
    /// Calls without a policy answer.
    pub errors: u64,
    /// Calls that trapped (including the memory cap).
    pub traps: u64,
    /// Calls stopped at their deadline.
    pub timeouts: u64,
    /// Requests given an earlier answer again without a call (`cache-answer`).
    pub answers_reused: u64,
    /// The last call error.
    pub last_error: Option<String>,
    /// Why the last (re)load was rejected, if it was.
    pub last_load_error: Option<String>,
}

impl PolicyHost {
    /// Sets up the engine. `kv` answers the policies' `kv-get`.
    pub fn new(config: HostConfig, kv: Arc<dyn KvView>) -> Result<Self, HostError> {
        Ok(PolicyHost {
            engine: EngineShared::new(config, kv)?,
            slots: ArcSwap::from_pointee(BTreeMap::new()),
            reloading: Mutex::new(()),
        })
    }

    /// Makes the loaded set match `policies`: loads new ones, reloads changed ones (file bytes,
    /// config or limits), removes those no longer listed. Each policy is compiled, checked and
    /// configured before it is swapped in; a rejected one keeps its previous version (or, if it
    /// never loaded, answers every call with its failure mode). At start-up, treat any
    /// rejection as fatal ([`ReloadReport::is_ok`]).
    pub fn apply_config(&self, policies: &[PolicyConfig]) -> ReloadReport {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.slots.load_full();
        let mut new = BTreeMap::new();
        let mut report = ReloadReport::default();
        for config in policies {
            let slot = match old.get(&config.name) {
                // A slot keeps its world: handles held by the data plane stay typed correctly.
                Some(slot) if slot.world == config.world => Arc::clone(slot),
                _ => PolicySlot::new(&self.engine, config.clone()),
            };
            let outcome = load_into(&slot, config.clone());
            report.policies.push(ReloadEntry {
                name: config.name.clone(),
                outcome,
            });
            new.insert(config.name.clone(), slot);
        }
        for name in old.keys().filter(|name| !new.contains_key(*name)) {
            report.policies.push(ReloadEntry {
                name: name.clone(),
                outcome: ReloadOutcome::Removed,
            });
        }
        report.policies.sort_by(|a, b| a.name.cmp(&b.name));
        self.slots.store(Arc::new(new));
        report
    }

    /// Re-reads every policy's file and reloads those whose bytes changed
    /// (`POST /api/policies/reload`, and the file watcher). A built-in policy's module cannot
    /// change, so it is reported unchanged.
    pub fn reload(&self) -> ReloadReport {
        let configs: Vec<PolicyConfig> = self
            .slots
            .load()
            .values()
            .map(|slot| PolicyConfig::clone(&slot.desired.load()))
            .collect();
        self.apply_config(&configs)
    }

    /// The listing of `GET /api/policies`, in name order.
    pub fn list(&self) -> Vec<PolicyStatus> {
        let now_ms = self.engine.clock_ms();
        self.slots
            .load()
            .values()
            .map(|slot| {
                let current = slot.current.load();
                let state = match (&*current, slot.budget.suspended_for(now_ms)) {
                    (None, _) => PolicyState::Failed,
                    (Some(_), Some(remaining)) => PolicyState::Suspended {
                        retry_in_ms: remaining.as_millis() as u64,
                    },
                    (Some(_), None) => PolicyState::Active,
                };
                let stats = &slot.stats;
                let read = |counter: &std::sync::atomic::AtomicU64| {
                    counter.load(std::sync::atomic::Ordering::Relaxed)
                };
                PolicyStatus {
                    name: slot.name.to_string(),
                    world: slot.world.as_str(),
                    file: slot.desired.load().file.to_string(),
                    sha256: current.as_ref().map(|v| hex(&v.module.sha256)),
                    state,
                    loaded_at_unix_ms: current.as_ref().map(|v| unix_ms(v.loaded_at)),
                    calls: read(&stats.calls),
                    errors: read(&stats.errors),
                    traps: read(&stats.traps),
                    timeouts: read(&stats.timeouts),
                    answers_reused: read(&stats.reused),
                    last_error: slot.last_call_error.load_full().map(|e| e.to_string()),
                    last_load_error: slot.last_load_error.load_full().map(|e| e.to_string()),
                }
            })
            .collect()
    }

    /// The `authz` policy called `name`, if configured with that world.
    pub fn authz(&self, name: &str) -> Option<AuthzHandle> {
        self.slot(name, PolicyWorld::Authz).map(AuthzHandle)
    }

    /// The `health` policy called `name`, if configured with that world.
    pub fn health(&self, name: &str) -> Option<HealthHandle> {
        self.slot(name, PolicyWorld::Health).map(HealthHandle)
    }

    /// The `routing` policy called `name`, if configured with that world.
    pub fn routing(&self, name: &str) -> Option<RoutingHandle> {
        self.slot(name, PolicyWorld::Routing).map(RoutingHandle)
    }

    /// The `request` policy called `name`, if configured with that world.
    pub fn request(&self, name: &str) -> Option<crate::RequestHandle> {
        self.slot(name, PolicyWorld::Request)
            .map(crate::RequestHandle)
    }

    fn slot(&self, name: &str, world: PolicyWorld) -> Option<Arc<PolicySlot>> {
        self.slots
            .load()
            .get(name)
            .filter(|slot| slot.world == world)
            .cloned()
    }

    pub(crate) fn engine_shared(&self) -> &EngineShared {
        &self.engine
    }

    /// The files of the configured policies (what the watcher watches); built-in policies
    /// have none.
    pub fn files(&self) -> Vec<std::path::PathBuf> {
        self.slots
            .load()
            .values()
            .filter_map(|slot| slot.desired.load().file.path().map(ToOwned::to_owned))
            .collect()
    }
}

fn load_into(slot: &PolicySlot, config: PolicyConfig) -> ReloadOutcome {
    // Cheap pre-check: same bytes, config and limits as the version serving → nothing to do.
    if let Some(current) = &*slot.current.load()
        && let Ok(bytes) = module_bytes(&config.file, &slot.engine.config.builtins)
    {
        let sha256: [u8; 32] =
            sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&bytes)).into();
        if current.same_as(&sha256, &config) {
            slot.desired.store(Arc::new(config));
            return ReloadOutcome::Unchanged {
                sha256: hex(&sha256),
            };
        }
    }
    match slot.install(config) {
        Ok(Some(sha256)) => ReloadOutcome::Loaded {
            sha256: hex(&sha256),
        },
        Ok(None) => ReloadOutcome::Rejected {
            error: "no version loaded".into(),
        },
        Err(error) => ReloadOutcome::Rejected {
            error: error.to_string(),
        },
    }
}
