//! The read-only KV view policies see through the `kv-get` import.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

/// What `kv-get` reads. The `sluice` binary hands the host one over its `[[kv]]` sources
/// (`crates/sluice/src/kv.rs`: env, file, etcd, mirrored in memory). Called on the policy call path: implementations must be
/// cheap and must not block on I/O (serve from a snapshot).
pub trait KvView: Send + Sync + 'static {
    /// The value of `key`, or `None` when absent.
    fn get(&self, key: &str) -> Option<String>;

    /// A number that changes after any value changes, if the view keeps one. An answer a policy
    /// lets the host reuse (`cache-answer`) after reading KV is keyed by it, so any change ends
    /// the reuse; without one (`None`, the default) it is keyed by the values it read.
    fn generation(&self) -> Option<u64> {
        None
    }
}

/// An in-memory [`KvView`]: a snapshot map swapped atomically on every change, so readers never
/// wait for writers. Used by tests and `sluice policy check`.
#[derive(Default)]
pub struct MemoryKv {
    entries: ArcSwap<HashMap<String, String>>,
    /// Bumped after every change.
    generation: AtomicU64,
}

impl MemoryKv {
    /// An empty view.
    pub fn new() -> Self {
        MemoryKv::default()
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &str, value: &str) {
        self.entries.rcu(|entries| {
            let mut entries = HashMap::clone(entries);
            entries.insert(key.to_owned(), value.to_owned());
            entries
        });
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Removes `key`.
    pub fn remove(&self, key: &str) {
        self.entries.rcu(|entries| {
            let mut entries = HashMap::clone(entries);
            entries.remove(key);
            entries
        });
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Replaces every entry at once.
    pub fn replace_all(&self, entries: HashMap<String, String>) {
        self.entries.store(Arc::new(entries));
        self.generation.fetch_add(1, Ordering::Release);
    }
}

impl KvView for MemoryKv {
    fn get(&self, key: &str) -> Option<String> {
        self.entries.load().get(key).cloned()
    }

    fn generation(&self) -> Option<u64> {
        Some(self.generation.load(Ordering::Acquire))
    }
}

impl fmt::Debug for MemoryKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryKv")
            .field("keys", &self.entries.load().len())
            .finish()
    }
}
