//! Ordered KV layers: several sources, each mirrored in memory by its own watch task, looked up
//! in order (the first layer holding a key wins). The proxy binary's `[[kv]]` and the sidecar's
//! KV sources are both this; each maps its own configuration to [`KvLayer::new`] and turns the
//! [`LayerEvent`]s into what it needs (metrics and logs, or notices for its supervisor).

use std::fmt;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::{KvEntry, KvError, KvMirror, KvSource, WatchEvent, WatchOptions};

/// What one watch event did to a layer, as its sink receives it.
#[derive(Debug, Clone)]
pub struct LayerEvent {
    /// The keys whose value changed (created, modified or deleted); empty for status events and
    /// for puts or snapshots that repeat what the mirror held.
    pub changed: Vec<String>,
    /// Set when the event was about the source's state rather than (only) its keys.
    pub status: Option<LayerStatus>,
}

/// A change of a layer's state.
#[derive(Debug, Clone)]
pub enum LayerStatus {
    /// The source cannot be read; the mirror keeps serving the last values it delivered.
    Unavailable(Arc<KvError>),
    /// The source answers again after [`LayerStatus::Unavailable`].
    Restored,
    /// A full snapshot of `keys` keys arrived (the first one, or a resynchronisation).
    Synced { keys: usize },
}

impl LayerStatus {
    fn of(event: &WatchEvent) -> Option<Self> {
        match event {
            WatchEvent::Unavailable { error } => Some(LayerStatus::Unavailable(error.clone())),
            WatchEvent::Restored => Some(LayerStatus::Restored),
            WatchEvent::Snapshot { entries, .. } => Some(LayerStatus::Synced {
                keys: entries.len(),
            }),
            WatchEvent::Put(_) | WatchEvent::Delete { .. } => None,
        }
    }
}

/// Why a layer has not delivered its first snapshot; displayed as the reason in messages.
#[derive(Debug, Clone)]
pub enum NotSynced {
    /// The source has neither answered nor failed yet.
    NoAnswerYet,
    /// The source failed with this error (the watch keeps retrying).
    Unavailable(Arc<KvError>),
}

impl fmt::Display for NotSynced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotSynced::NoAnswerYet => f.write_str("no answer yet"),
            NotSynced::Unavailable(error) => error.fmt(f),
        }
    }
}

/// One source under a prefix, mirrored in memory once [`KvLayer::start`]ed. Dropping it stops
/// its watch.
#[derive(Debug)]
pub struct KvLayer {
    /// `None`: a fixed set of entries ([`KvLayer::fixed`]), never watched.
    source: Option<KvSource>,
    prefix: String,
    options: WatchOptions,
    mirror: KvMirror,
    /// The running watch task. A mutex rather than `&mut self` in `start`, because the layers
    /// are shared (`Arc`) with their readers by the time the watches start.
    task: Mutex<Option<JoinHandle<()>>>,
}

impl KvLayer {
    /// The keys of `source` under `prefix`, watched with `options`; empty and unsynced until
    /// started.
    pub fn new(source: KvSource, prefix: impl Into<String>, options: WatchOptions) -> Self {
        Self {
            source: Some(source),
            prefix: prefix.into(),
            options,
            mirror: KvMirror::new(),
            task: Mutex::new(None),
        }
    }

    /// A layer holding exactly `entries`, synced and never watched (rendering without KV
    /// sources: fuzzing, tests).
    pub fn fixed(entries: Vec<KvEntry>) -> Self {
        let mirror = KvMirror::new();
        mirror.apply(&WatchEvent::Snapshot {
            entries,
            revision: 1,
        });
        Self {
            source: None,
            prefix: String::new(),
            options: WatchOptions::default(),
            mirror,
            task: Mutex::new(None),
        }
    }

    /// What this layer reads, for messages: the source's [`KvSource::describe`], or
    /// `in-memory KV` for a [`KvLayer::fixed`] one.
    pub fn describe(&self) -> String {
        self.source
            .as_ref()
            .map_or_else(|| "in-memory KV".to_owned(), KvSource::describe)
    }

    /// The watched prefix (every key of the mirror starts with it).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The in-memory copy, for reads.
    pub fn mirror(&self) -> &KvMirror {
        &self.mirror
    }

    /// Whether the first snapshot arrived (before that, an absent key means "not known yet").
    pub fn is_synced(&self) -> bool {
        self.mirror.is_synced()
    }

    /// `None` once the first snapshot arrived; otherwise why it has not.
    pub fn not_synced(&self) -> Option<NotSynced> {
        if self.mirror.is_synced() {
            return None;
        }
        Some(
            self.mirror
                .unavailable()
                .map_or(NotSynced::NoAnswerYet, NotSynced::Unavailable),
        )
    }

    /// Starts the watch on the current tokio runtime (it must be called inside one, as
    /// [`KvSource::watch`]): each event is applied to the mirror, then handed to `sink`, until
    /// `sink` answers [`ControlFlow::Break`] or the layer is dropped. Starting again replaces
    /// the previous watch; a [`KvLayer::fixed`] layer has nothing to watch.
    pub fn start<S>(&self, mut sink: S)
    where
        S: FnMut(LayerEvent) -> ControlFlow<()> + Send + 'static,
    {
        let Some(source) = &self.source else {
            return;
        };
        let mut watch = source.watch(&self.prefix, self.options);
        let mirror = self.mirror.clone();
        let task = tokio::spawn(async move {
            while let Some(event) = watch.next().await {
                let changed = mirror.apply(&event);
                let status = LayerStatus::of(&event);
                if sink(LayerEvent { changed, status }).is_break() {
                    return;
                }
            }
        });
        if let Some(previous) = self.task_slot().replace(task) {
            previous.abort();
        }
    }

    fn task_slot(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
        // The guarded handle is replaced whole: a poisoned lock holds nothing half-written.
        self.task.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for KvLayer {
    fn drop(&mut self) {
        if let Some(task) = self.task_slot().take() {
            task.abort();
        }
    }
}

/// Layers looked up in order: the first holding a key wins. Dropping them stops their watches.
#[derive(Debug, Default)]
pub struct KvLayers {
    layers: Vec<KvLayer>,
}

impl KvLayers {
    /// `layers` in lookup order, as they are (started or not).
    pub fn new(layers: Vec<KvLayer>) -> Self {
        Self { layers }
    }

    /// The layers, in lookup order (an index here is the one [`KvLayers::start`] passes on).
    pub fn layers(&self) -> &[KvLayer] {
        &self.layers
    }

    /// Starts every layer's watch (see [`KvLayer::start`]) with the sink `sink_for` returns
    /// for it, given its index and the layer.
    pub fn start<S>(&self, mut sink_for: impl FnMut(usize, &KvLayer) -> S)
    where
        S: FnMut(LayerEvent) -> ControlFlow<()> + Send + 'static,
    {
        for (index, layer) in self.layers.iter().enumerate() {
            layer.start(sink_for(index, layer));
        }
    }

    /// The entry of `key` in the first layer that holds it.
    pub fn get(&self, key: &str) -> Option<KvEntry> {
        self.layers.iter().find_map(|l| l.mirror.get(key))
    }

    /// Whether every layer has delivered its first snapshot.
    pub fn is_synced(&self) -> bool {
        self.layers.iter().all(KvLayer::is_synced)
    }

    /// The layers without a first snapshot yet, in order, with the reason.
    pub fn unsynced(&self) -> impl Iterator<Item = (&KvLayer, NotSynced)> {
        self.layers
            .iter()
            .filter_map(|layer| Some((layer, layer.not_synced()?)))
    }

    /// Waits until every layer is synced, `within` at most; `false` if some still is not.
    pub async fn wait_synced(&self, within: Duration) -> bool {
        let synced = async {
            // Polled: sinks belong to the caller, and a first snapshot comes once per layer.
            while !self.is_synced() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(within, synced).await.is_ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn file(path: &std::path::Path) -> KvLayer {
        let options = WatchOptions {
            poll_interval: Duration::from_millis(20),
            ..WatchOptions::default()
        };
        KvLayer::new(KvSource::File(path.to_owned()), "ecp/", options)
    }

    #[tokio::test]
    async fn first_layer_wins_changes_are_reported_and_drop_stops_the_watches() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let a = write("a.toml", "[ecp]\nCLIENT_SYSTEMS = \"app1\"\n");
        let b = write(
            "b.json",
            r#"{"ecp": {"CLIENT_SYSTEMS": "other", "ONLY_B": "b"}}"#,
        );
        let layers = KvLayers::new(vec![file(&a), file(&b)]);
        assert_eq!(layers.unsynced().count(), 2);
        let (tx, mut events) = mpsc::unbounded_channel();
        layers.start(|index, _| {
            let tx = tx.clone();
            move |event| match tx.send((index, event)) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            }
        });
        drop(tx);
        assert!(layers.wait_synced(Duration::from_secs(5)).await);
        let value = |key| layers.get(key).map(|e| e.value_str().into_owned());
        assert_eq!(value("ecp/CLIENT_SYSTEMS").as_deref(), Some("app1"));
        assert_eq!(value("ecp/ONLY_B").as_deref(), Some("b"));
        assert_eq!(value("missing"), None);
        assert_eq!(
            layers.layers()[1].describe(),
            format!("file {}", b.display())
        );

        write("a.toml", "[ecp]\nCLIENT_SYSTEMS = \"app1;app3\"\n");
        let changed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let (index, event) = events.recv().await.unwrap();
                if index == 0 && event.status.is_none() && !event.changed.is_empty() {
                    return event.changed;
                }
            }
        });
        assert_eq!(changed.await.unwrap(), ["ecp/CLIENT_SYSTEMS"]);
        assert_eq!(value("ecp/CLIENT_SYSTEMS").as_deref(), Some("app1;app3"));

        // Dropped: the tasks end, and with them the sinks holding the last senders.
        drop(layers);
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while events.recv().await.is_some() {}
        });
        assert!(closed.await.is_ok(), "a watch outlived its layers");
    }

    #[test]
    fn a_fixed_layer_is_synced_and_named_in_memory() {
        let layers = KvLayers::new(vec![KvLayer::fixed(vec![KvEntry::new("k", "v", 1)])]);
        assert!(layers.is_synced());
        assert_eq!(layers.unsynced().count(), 0);
        assert_eq!(layers.get("k").map(|e| e.value), Some(b"v".to_vec()));
        assert_eq!(layers.layers()[0].describe(), "in-memory KV");
    }

    #[test]
    fn the_reason_a_layer_is_not_synced_reads_as_text() {
        assert_eq!(NotSynced::NoAnswerYet.to_string(), "no answer yet");
        let error = KvError::Invalid {
            what: "etcd".into(),
            message: "refused".into(),
        };
        assert_eq!(
            NotSynced::Unavailable(Arc::new(error)).to_string(),
            "etcd: refused"
        );
    }
}
