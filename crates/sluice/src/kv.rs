//! `[[kv]]`: the KV sources the Wasm policies' `kv-get` reads (an allow-list of client
//! systems in etcd, for instance), so a policy's answer can change at run time without a reload.
//!
//! The sources are a [`sluice_kv::KvLayers`], the layering the sidecar uses too: each source is
//! mirrored in memory by a watch task, because `kv-get` runs on the connection path and must
//! never wait on the network, and sources are looked up in file order (the first holding a key
//! wins). What stays here is what only the binary has: the mapping from `[[kv]]`, the metrics and
//! logs of each source's events, the bounded wait for a first snapshot, the change counter, and
//! the swap on reload. A source that becomes unreachable keeps serving the last values it
//! delivered; that is logged once per outage and visible in `sluice_kv_source_up`.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use sluice_config::{KvConfig, KvSourceConfig};
use sluice_kv::{
    EnvSource, EtcdClient, EtcdOptions, EtcdSource, KvLayer, KvSource, LayerEvent, LayerStatus,
    WatchOptions,
};
use sluice_proxy::metrics::{KV_CHANGES_TOTAL, KV_SOURCE_UP};

/// How long start-up and a reload that changes `[[kv]]` wait for new sources' first snapshot,
/// at most, so the first connections see real values; a source still silent by then is logged
/// and filled in as soon as it answers.
const FIRST_SYNC_WAIT: Duration = Duration::from_secs(5);

/// The sources in use and the configuration they came from (to tell whether a reload changed
/// it). Dropping the layers stops their watches.
#[derive(Debug, Default)]
struct Current {
    configs: Vec<KvConfig>,
    layers: sluice_kv::KvLayers,
}

/// The configured sources, swapped whole when a reload changes `[[kv]]`.
#[derive(Debug)]
pub(crate) struct KvLayers {
    current: ArcSwap<Current>,
    /// Serialises `apply` (reloads are already one at a time; this keeps it true here too).
    applying: tokio::sync::Mutex<()>,
    /// Bumped whenever a key may have changed (a source reported changed keys, or the sources
    /// were swapped), so readers outside the policy host (`[routing] overrides_key`) re-read.
    changed: tokio::sync::watch::Sender<u64>,
    /// The same count for policies (`KvView::generation`), read without a lock on their path.
    generation: Arc<AtomicU64>,
}

impl Default for KvLayers {
    fn default() -> Self {
        KvLayers {
            current: ArcSwap::default(),
            applying: tokio::sync::Mutex::new(()),
            changed: tokio::sync::watch::channel(0).0,
            generation: Arc::default(),
        }
    }
}

/// The unstarted layer of one `[[kv]]` entry.
fn layer(config: &KvConfig) -> Result<KvLayer, String> {
    let source = match &config.source {
        KvSourceConfig::Env => KvSource::Env(EnvSource::from_process()),
        KvSourceConfig::File(path) => KvSource::File(path.clone()),
        KvSourceConfig::Etcd { endpoints } => KvSource::Etcd(EtcdSource {
            client: Arc::new(
                EtcdClient::new(
                    endpoints,
                    EtcdOptions {
                        request_timeout: config.request_timeout,
                    },
                )
                .map_err(|e| format!("[[kv]] etcd {}: {e}", endpoints.join(",")))?,
            ),
        }),
    };
    let options = WatchOptions {
        poll_interval: config.poll,
        ..WatchOptions::default()
    };
    Ok(KvLayer::new(source, config.prefix.clone(), options))
}

/// The sink of the source `describe`'s watch: its state in `sluice_kv_source_up` and the log,
/// its changes counted, logged and announced on `notify`.
fn report(
    describe: String,
    notify: tokio::sync::watch::Sender<u64>,
    generation: Arc<AtomicU64>,
) -> impl FnMut(LayerEvent) -> ControlFlow<()> + Send + 'static {
    let up = metrics::gauge!(KV_SOURCE_UP, "source" => describe.clone());
    let changes = metrics::counter!(KV_CHANGES_TOTAL, "source" => describe.clone());
    move |event| {
        match &event.status {
            Some(LayerStatus::Unavailable(error)) => {
                up.set(0.0);
                tracing::warn!(source = %describe, %error, "KV source unreachable; policies keep reading its last values until it answers again");
            }
            Some(LayerStatus::Restored) => {
                up.set(1.0);
                tracing::info!(source = %describe, "KV source reachable again");
            }
            Some(LayerStatus::Synced { keys }) => {
                up.set(1.0);
                tracing::info!(source = %describe, keys, "KV source read");
            }
            None => {}
        }
        let changed = event.changed;
        if !changed.is_empty() {
            changes.increment(changed.len() as u64);
            generation.fetch_add(1, Ordering::Release);
            notify.send_modify(|n| *n = n.wrapping_add(1));
            tracing::info!(source = %describe, keys = ?changed, "KV keys changed");
        }
        // The sources are replaced by dropping them, which ends this watch; never before.
        ControlFlow::Continue(())
    }
}

impl KvLayers {
    /// Starts the sources of `configs`, unless they are the ones already running. Waits (a
    /// bounded time) for their first snapshot before they replace the previous ones, so a reload
    /// never shows policies an empty store.
    pub(crate) async fn apply(&self, configs: &[KvConfig]) -> Result<(), String> {
        let _one = self.applying.lock().await;
        if self.current.load().configs == configs {
            return Ok(());
        }
        let layers = sluice_kv::KvLayers::new(configs.iter().map(layer).collect::<Result<_, _>>()?);
        layers.start(|_, layer| {
            let generation = Arc::clone(&self.generation);
            report(layer.describe(), self.changed.clone(), generation)
        });
        if !layers.wait_synced(FIRST_SYNC_WAIT).await {
            for (layer, why) in layers.unsynced() {
                tracing::warn!(source = %layer.describe(), reason = %why, "KV source not read yet; its keys are absent for policies until it answers");
            }
        }
        for layer in layers.layers() {
            tracing::info!(source = %layer.describe(), "KV source in use");
        }
        self.current.store(Arc::new(Current {
            configs: configs.to_vec(),
            layers,
        }));
        self.generation.fetch_add(1, Ordering::Release);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// Notified whenever a key may have changed (see `changed`).
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

impl sluice_policy_host::KvView for KvLayers {
    fn get(&self, key: &str) -> Option<String> {
        self.current
            .load()
            .layers
            .get(key)
            .map(|e| e.value_str().into_owned())
    }

    fn generation(&self) -> Option<u64> {
        Some(self.generation.load(Ordering::Acquire))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sluice_policy_host::KvView;

    fn file(path: &std::path::Path) -> KvConfig {
        KvConfig {
            source: KvSourceConfig::File(path.to_owned()),
            prefix: String::new(),
            request_timeout: Duration::from_secs(1),
            poll: Duration::from_millis(50),
        }
    }

    #[tokio::test]
    async fn first_source_holding_a_key_wins_and_changes_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.toml"), dir.path().join("b.json"));
        std::fs::write(&a, "[ecp]\nCLIENT_SYSTEMS = \"app1\"\n").unwrap();
        std::fs::write(&b, r#"{"ecp": {"CLIENT_SYSTEMS": "other", "ONLY_B": "b"}}"#).unwrap();
        let kv = KvLayers::default();
        kv.apply(&[file(&a), file(&b)]).await.unwrap();
        assert_eq!(kv.get("ecp/CLIENT_SYSTEMS").as_deref(), Some("app1"));
        assert_eq!(kv.get("ecp/ONLY_B").as_deref(), Some("b"));
        assert_eq!(kv.get("missing"), None);
        std::fs::write(&a, "[ecp]\nCLIENT_SYSTEMS = \"app1;app3\"\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while kv.get("ecp/CLIENT_SYSTEMS").as_deref() != Some("app1;app3") {
            assert!(std::time::Instant::now() < deadline, "change not seen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The same sources again: kept (no restart of the watches); none: every key gone.
        kv.apply(&[file(&a), file(&b)]).await.unwrap();
        assert_eq!(kv.get("ecp/ONLY_B").as_deref(), Some("b"));
        kv.apply(&[]).await.unwrap();
        assert_eq!(kv.get("ecp/CLIENT_SYSTEMS"), None);
    }
}
