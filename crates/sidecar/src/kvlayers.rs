//! The KV sources a sidecar reads, as ordered layers (the first layer holding a key wins), plus
//! the service registry for `services()`. Each layer is mirrored in memory by a watch task, so
//! rendering is synchronous and never waits on the network; every change is reported to the
//! supervisor with the keys it touched.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use sluice_kv::registry::{RegistryKind, ServiceDefinition};
use sluice_kv::{
    Backoff, EnvSource, EtcdClient, EtcdOptions, EtcdSource, KvEntry, KvError, KvMirror, KvSource,
    WatchEvent, WatchOptions,
};
use tokio::sync::mpsc::UnboundedSender;

use crate::config::{Config, KvKind, RegistryKindConfig};
use crate::text::{InvalidByte, NotText};

/// Which mirror a notice is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerId {
    Kv(usize),
    Registry,
}

/// A change (or status change) in one layer.
#[derive(Debug, Clone)]
pub struct KvNotice {
    pub layer: LayerId,
    pub changed: Vec<String>,
    /// Set when the layer became unavailable; cleared state is reported as `Restored`.
    pub status: Option<LayerStatus>,
}

#[derive(Debug, Clone)]
pub enum LayerStatus {
    Unavailable(Arc<KvError>),
    Restored,
    Synced,
}

#[derive(Debug)]
struct Layer {
    /// `None`: a fixed set of entries ([`KvLayers::from_entries`]), never watched.
    source: Option<KvSource>,
    prefix: String,
    options: WatchOptions,
    mirror: KvMirror,
    /// An env layer's variables (under the prefix) whose value is not UTF-8. sluice-kv's
    /// `EnvSource` leaves them out; kept here so a template naming one gets an error saying
    /// so, not a "missing key" it would wait for in vain.
    not_text: BTreeMap<String, InvalidByte>,
}

impl Layer {
    fn new(source: KvSource, prefix: String, options: WatchOptions) -> Self {
        Self {
            source: Some(source),
            prefix,
            options,
            mirror: KvMirror::new(),
            not_text: BTreeMap::new(),
        }
    }

    fn describe(&self) -> String {
        self.source
            .as_ref()
            .map_or_else(|| "in-memory KV".to_owned(), KvSource::describe)
    }

    /// `value` of `key` as text, or which byte is not UTF-8.
    fn text(&self, key: &str, value: Vec<u8>) -> Result<String, NotText> {
        String::from_utf8(value).map_err(|error| self.not_text_error(key, InvalidByte::of(&error)))
    }

    fn not_text_error(&self, key: &str, at: InvalidByte) -> NotText {
        NotText::Kv {
            key: key.to_owned(),
            layer: self.describe(),
            at,
        }
    }
}

/// The process's variables under `prefix` whose value is not UTF-8 (names that are not UTF-8
/// cannot be asked for, so they are skipped).
fn env_not_text(prefix: &str) -> BTreeMap<String, InvalidByte> {
    std::env::vars_os()
        .filter_map(|(name, value)| {
            let at = InvalidByte::find(value.as_bytes())?;
            let name = name.into_string().ok()?;
            name.starts_with(prefix).then_some((name, at))
        })
        .collect()
}

#[derive(Debug)]
struct Registry {
    kind: RegistryKind,
    layer: Layer,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct KvLayers {
    layers: Vec<Layer>,
    registry: Option<Registry>,
}

fn etcd_client(
    endpoints: &[String],
    timeout: std::time::Duration,
) -> Result<Arc<EtcdClient>, String> {
    EtcdClient::new(
        endpoints,
        EtcdOptions {
            request_timeout: timeout,
        },
    )
    .map(Arc::new)
    .map_err(|e| e.to_string())
}

impl KvLayers {
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let mut layers = Vec::new();
        for kv in &config.kv {
            let source = match kv.source {
                KvKind::Env => KvSource::Env(EnvSource::from_process()),
                KvKind::File => KvSource::File(
                    config.resolve(
                        kv.path
                            .as_deref()
                            .unwrap_or_else(|| std::path::Path::new(".")),
                    ),
                ),
                KvKind::Etcd => KvSource::Etcd(EtcdSource {
                    client: etcd_client(&kv.endpoints, kv.request_timeout.0)?,
                }),
            };
            let options = WatchOptions {
                poll_interval: kv.poll.0,
                ..WatchOptions::default()
            };
            let mut layer = Layer::new(source, kv.prefix.clone(), options);
            if kv.source == KvKind::Env {
                layer.not_text = env_not_text(&kv.prefix);
            }
            layers.push(layer);
        }
        let registry = match &config.registry {
            None => None,
            Some(registry) => {
                let (kind, source, prefix) = match registry.kind {
                    RegistryKindConfig::File => {
                        let dir = config.resolve(
                            registry
                                .dir
                                .as_deref()
                                .unwrap_or_else(|| std::path::Path::new(".")),
                        );
                        // The shared directory may not exist yet on a fresh volume; the
                        // registrar writes into it, and readers must not wait for it.
                        std::fs::create_dir_all(&dir)
                            .map_err(|e| format!("registry dir {}: {e}", dir.display()))?;
                        (RegistryKind::File, KvSource::File(dir), String::new())
                    }
                    RegistryKindConfig::Etcd => (
                        RegistryKind::Etcd {
                            prefix: registry.prefix.clone(),
                        },
                        KvSource::Etcd(EtcdSource {
                            client: etcd_client(
                                &registry.endpoints,
                                sluice_kv::etcd::DEFAULT_REQUEST_TIMEOUT,
                            )?,
                        }),
                        registry.prefix.clone(),
                    ),
                };
                let options = WatchOptions {
                    poll_interval: registry.poll.0,
                    backoff: Backoff::default(),
                    ..WatchOptions::default()
                };
                Some(Registry {
                    kind,
                    layer: Layer::new(source, prefix, options),
                })
            }
        };
        Ok(Self { layers, registry })
    }

    /// One layer holding exactly `entries`, synced and never watched: rendering without KV
    /// sources (fuzzing, tests).
    pub fn from_entries(entries: Vec<KvEntry>) -> Self {
        let mirror = KvMirror::new();
        mirror.apply(&WatchEvent::Snapshot {
            entries,
            revision: 1,
        });
        let layer = Layer {
            source: None,
            prefix: String::new(),
            options: WatchOptions::default(),
            mirror,
            not_text: BTreeMap::new(),
        };
        Self {
            layers: vec![layer],
            registry: None,
        }
    }

    fn all(&self) -> impl Iterator<Item = (LayerId, &Layer)> {
        self.layers
            .iter()
            .enumerate()
            .map(|(i, l)| (LayerId::Kv(i), l))
            .chain(self.registry.iter().map(|r| (LayerId::Registry, &r.layer)))
    }

    /// Starts one watch per layer; each keeps its mirror current and reports to `notices`.
    /// The watches run until the runtime stops.
    pub fn start(&self, notices: UnboundedSender<KvNotice>) {
        for (id, layer) in self.all() {
            let Some(source) = &layer.source else {
                continue;
            };
            let mut watch = source.watch(&layer.prefix, layer.options);
            let mirror = layer.mirror.clone();
            let notices = notices.clone();
            tokio::spawn(async move {
                while let Some(event) = watch.next().await {
                    let changed = mirror.apply(&event);
                    let status = match &event {
                        WatchEvent::Unavailable { error } => {
                            Some(LayerStatus::Unavailable(error.clone()))
                        }
                        WatchEvent::Restored => Some(LayerStatus::Restored),
                        WatchEvent::Snapshot { .. } => Some(LayerStatus::Synced),
                        _ => None,
                    };
                    if notices
                        .send(KvNotice {
                            layer: id,
                            changed,
                            status,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    }

    /// Layers that have not delivered their first snapshot, with the reason when known.
    pub fn unsynced(&self) -> Vec<String> {
        self.all()
            .filter(|(_, layer)| !layer.mirror.is_synced())
            .map(|(id, layer)| {
                let what = match id {
                    LayerId::Kv(_) => format!("KV source {}", layer.describe()),
                    LayerId::Registry => format!("registry {}", layer.describe()),
                };
                match layer.mirror.unavailable() {
                    Some(error) => format!("{what}: {error}"),
                    None => format!("{what}: no answer yet"),
                }
            })
            .collect()
    }

    pub fn describe(&self, id: LayerId) -> String {
        match id {
            LayerId::Kv(i) => self.layers.get(i).map(Layer::describe).unwrap_or_default(),
            LayerId::Registry => self
                .registry
                .as_ref()
                .map(|r| r.layer.describe())
                .unwrap_or_default(),
        }
    }

    /// The first layer's value for `key` as text; `Ok(None)` when no layer holds it, an error
    /// when the value that wins is not UTF-8 (templates render text; a silent U+FFFD in a
    /// config file would be worse).
    pub fn get_text(&self, key: &str) -> Result<Option<String>, NotText> {
        for layer in &self.layers {
            if let Some(entry) = layer.mirror.get(key) {
                return layer.text(key, entry.value).map(Some);
            }
            if let Some(at) = layer.not_text.get(key) {
                return Err(layer.not_text_error(key, *at));
            }
        }
        Ok(None)
    }

    /// Every key under `prefix` across layers with its value as text, sorted by key; for a key
    /// in several layers the first wins. An error names the first winning value that is not
    /// UTF-8.
    pub fn list_text(&self, prefix: &str) -> Result<Vec<(String, String)>, NotText> {
        let mut merged = BTreeMap::new();
        for layer in &self.layers {
            for entry in layer.mirror.list(prefix) {
                if let Entry::Vacant(slot) = merged.entry(entry.key) {
                    let value = layer.text(slot.key(), entry.value);
                    slot.insert(value);
                }
            }
            let invalid = layer.not_text.range(prefix.to_owned()..);
            for (key, at) in invalid.take_while(|(key, _)| key.starts_with(prefix)) {
                merged
                    .entry(key.clone())
                    .or_insert_with(|| Err(layer.not_text_error(key, *at)));
            }
        }
        merged
            .into_iter()
            .map(|(key, value)| value.map(|value| (key, value)))
            .collect()
    }

    /// Registered instances of `service` (registration implies the registrant's check passed;
    /// in etcd, also that its lease is alive). Documents that cannot be parsed are logged.
    pub fn services(&self, service: &str) -> Result<Vec<ServiceDefinition>, String> {
        let registry = self
            .registry
            .as_ref()
            .ok_or_else(|| "services() needs a [registry] in the configuration".to_owned())?;
        let entries = registry.layer.mirror.list(&registry.layer.prefix);
        let (instances, errors) =
            sluice_kv::registry::instances_from_entries(&registry.kind, &entries);
        for error in errors {
            tracing::warn!(%error, "unusable registry entry skipped");
        }
        let mut found: Vec<ServiceDefinition> = instances
            .into_iter()
            .filter(|i| i.name == service)
            .collect();
        found.sort_by(|a, b| a.instance_id().cmp(b.instance_id()));
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers() -> KvLayers {
        KvLayers::from_entries(vec![
            KvEntry::new("a/ok", "café", 1),
            KvEntry::new("a/bad", b"caf\xe9".to_vec(), 1),
        ])
    }

    #[test]
    fn values_that_are_not_utf8_are_errors_naming_key_layer_and_byte() {
        let kv = layers();
        assert_eq!(kv.get_text("a/ok"), Ok(Some("café".to_owned())));
        assert_eq!(kv.get_text("a/none"), Ok(None));
        let error = kv.get_text("a/bad").expect_err("Latin-1");
        assert_eq!(
            error.to_string(),
            "KV key \"a/bad\" in in-memory KV is not valid UTF-8 (byte 0xE9 at offset 3): a jinja template renders text and cannot insert it"
        );
        assert_eq!(kv.list_text("a/").expect_err("a/bad is listed"), error);
        assert_eq!(
            kv.list_text("a/o"),
            Ok(vec![("a/ok".to_owned(), "café".to_owned())])
        );
    }

    #[test]
    fn an_env_layers_non_utf8_variable_wins_like_any_value() {
        let mut kv = layers();
        let mut env = Layer::new(
            KvSource::Env(EnvSource::default()),
            String::new(),
            WatchOptions::default(),
        );
        let at = InvalidByte {
            offset: 1,
            byte: 0xFF,
        };
        env.not_text.insert("a/ok".to_owned(), at);
        env.not_text.insert("a/env".to_owned(), at);
        // After the in-memory layer: its valid a/ok wins; a/env is only in the env layer.
        kv.layers.push(env);
        assert_eq!(kv.get_text("a/ok"), Ok(Some("café".to_owned())));
        assert!(matches!(kv.get_text("a/env"), Err(NotText::Kv { layer, .. }) if layer == "env"));
        // First: the env layer's a/ok now wins, and it is not text.
        kv.layers.rotate_right(1);
        assert!(kv.get_text("a/ok").is_err());
    }
}
