//! The KV sources a sidecar reads, as ordered layers (the first layer holding a key wins), plus
//! the service registry for `services()`. Each layer is mirrored in memory by a watch task, so
//! rendering is synchronous and never waits on the network; every change is reported to the
//! supervisor with the keys it touched.

use std::sync::Arc;

use sluice_kv::registry::{RegistryKind, ServiceDefinition};
use sluice_kv::{
    Backoff, EnvSource, EtcdClient, EtcdOptions, EtcdSource, KvEntry, KvError, KvMirror, KvSource,
    WatchEvent, WatchOptions,
};
use tokio::sync::mpsc::UnboundedSender;

use crate::config::{Config, KvKind, RegistryKindConfig};

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
    source: KvSource,
    prefix: String,
    options: WatchOptions,
    mirror: KvMirror,
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
            layers.push(Layer {
                source,
                prefix: kv.prefix.clone(),
                options: WatchOptions {
                    poll_interval: kv.poll.0,
                    ..WatchOptions::default()
                },
                mirror: KvMirror::new(),
            });
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
                Some(Registry {
                    kind,
                    layer: Layer {
                        source,
                        prefix,
                        options: WatchOptions {
                            poll_interval: registry.poll.0,
                            backoff: Backoff::default(),
                            ..WatchOptions::default()
                        },
                        mirror: KvMirror::new(),
                    },
                })
            }
        };
        Ok(Self { layers, registry })
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
            let mut watch = layer.source.watch(&layer.prefix, layer.options);
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
                    LayerId::Kv(_) => format!("KV source {}", layer.source.describe()),
                    LayerId::Registry => format!("registry {}", layer.source.describe()),
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
            LayerId::Kv(i) => self
                .layers
                .get(i)
                .map(|l| l.source.describe())
                .unwrap_or_default(),
            LayerId::Registry => self
                .registry
                .as_ref()
                .map(|r| r.layer.source.describe())
                .unwrap_or_default(),
        }
    }

    /// The first layer's value for `key`.
    pub fn get(&self, key: &str) -> Option<KvEntry> {
        self.layers.iter().find_map(|layer| layer.mirror.get(key))
    }

    /// Every key under `prefix` across layers; for a key in several layers, the first wins.
    pub fn list(&self, prefix: &str) -> Vec<KvEntry> {
        let mut merged = std::collections::BTreeMap::new();
        for layer in &self.layers {
            for entry in layer.mirror.list(prefix) {
                merged.entry(entry.key.clone()).or_insert(entry);
            }
        }
        merged.into_values().collect()
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
