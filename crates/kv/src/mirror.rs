use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};

use crate::{KvEntry, KvError, WatchEvent};

/// An in-memory copy of a watched prefix, for readers that cannot wait on the network
/// (template rendering, a Wasm host call). Cloning shares the same copy.
///
/// Readers never lock: the copy is an immutable snapshot behind `arc-swap`, replaced whole by
/// [`KvMirror::apply`] (copy on write). Reads happen per policy call, on every proxy thread;
/// changes are rare, and a writer copying a KV prefix is cheap next to the network event that
/// caused it.
#[derive(Debug, Clone, Default)]
pub struct KvMirror {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    current: ArcSwap<MirrorState>,
    /// Serialises writers, so two events applied at once cannot lose one another's change.
    writer: Mutex<()>,
}

#[derive(Debug, Default, Clone)]
struct MirrorState {
    entries: BTreeMap<String, KvEntry>,
    revision: i64,
    synced: bool,
    unavailable: Option<Arc<KvError>>,
}

impl KvMirror {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> Guard<Arc<MirrorState>> {
        self.shared.current.load()
    }

    /// Applies one watch event and returns the keys whose value changed (created, modified or
    /// deleted); empty for status events and for snapshots identical to what was held.
    pub fn apply(&self, event: &WatchEvent) -> Vec<String> {
        // The guarded data is `()`: a poisoned lock protects nothing inconsistent.
        let _writer = self.shared.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = MirrorState::clone(&self.read());
        let changed = match event {
            WatchEvent::Snapshot { entries, revision } => {
                let new: BTreeMap<String, KvEntry> =
                    entries.iter().map(|e| (e.key.clone(), e.clone())).collect();
                let mut changed: Vec<String> = new
                    .iter()
                    .filter(|(k, e)| state.entries.get(*k).map(|old| &old.value) != Some(&e.value))
                    .map(|(k, _)| k.clone())
                    .collect();
                changed.extend(
                    state
                        .entries
                        .keys()
                        .filter(|k| !new.contains_key(*k))
                        .cloned(),
                );
                state.entries = new;
                state.revision = *revision;
                state.synced = true;
                state.unavailable = None;
                changed
            }
            WatchEvent::Put(entry) => {
                state.revision = state.revision.max(entry.revision);
                let same = state.entries.get(&entry.key).map(|e| &e.value) == Some(&entry.value);
                state.entries.insert(entry.key.clone(), entry.clone());
                if same {
                    Vec::new()
                } else {
                    vec![entry.key.clone()]
                }
            }
            WatchEvent::Delete { key, revision } => {
                state.revision = state.revision.max(*revision);
                if state.entries.remove(key).is_some() {
                    vec![key.clone()]
                } else {
                    Vec::new()
                }
            }
            WatchEvent::Unavailable { error } => {
                state.unavailable = Some(error.clone());
                Vec::new()
            }
            WatchEvent::Restored => {
                state.unavailable = None;
                Vec::new()
            }
        };
        self.shared.current.store(Arc::new(state));
        changed
    }

    pub fn get(&self, key: &str) -> Option<KvEntry> {
        self.read().entries.get(key).cloned()
    }

    /// Entries whose key starts with `prefix`, sorted by key.
    pub fn list(&self, prefix: &str) -> Vec<KvEntry> {
        self.read()
            .entries
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Whether a first snapshot has arrived (before that, an absent key means "not known yet").
    pub fn is_synced(&self) -> bool {
        self.read().synced
    }

    /// The error of the current outage, if the source is unavailable.
    pub fn unavailable(&self) -> Option<Arc<KvError>> {
        self.read().unavailable.clone()
    }

    /// Highest revision seen.
    pub fn revision(&self) -> i64 {
        self.read().revision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_report_exactly_the_changed_keys() {
        let mirror = KvMirror::new();
        assert!(!mirror.is_synced());
        let changed = mirror.apply(&WatchEvent::Snapshot {
            entries: vec![KvEntry::new("a/1", "x", 3), KvEntry::new("a/2", "y", 3)],
            revision: 3,
        });
        assert_eq!(changed, ["a/1", "a/2"]);
        assert!(mirror.is_synced());
        assert!(
            mirror
                .apply(&WatchEvent::Put(KvEntry::new("a/1", "x", 4)))
                .is_empty()
        );
        assert_eq!(
            mirror.apply(&WatchEvent::Put(KvEntry::new("a/1", "z", 5))),
            ["a/1"]
        );
        assert_eq!(
            mirror.apply(&WatchEvent::Delete {
                key: "a/2".into(),
                revision: 6
            }),
            ["a/2"]
        );
        assert_eq!(mirror.list("a/").len(), 1);
        assert_eq!(mirror.get("a/1").map(|e| e.value), Some(b"z".to_vec()));
        let changed = mirror.apply(&WatchEvent::Snapshot {
            entries: vec![KvEntry::new("b", "1", 9)],
            revision: 9,
        });
        assert_eq!(changed, ["b", "a/1"]);
        assert_eq!(mirror.revision(), 9);
    }
}
