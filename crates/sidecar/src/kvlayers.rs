//! The KV sources a sidecar reads, as ordered layers (the first layer holding a key wins), plus
//! the service registry for `services()`. Each layer is mirrored in memory by a watch task, so
//! rendering is synchronous and never waits on the network; every change is reported to the
//! supervisor with the keys it touched.
//!
//! The layering itself is [`sluice_kv::KvLayers`], shared with the proxy binary's `[[kv]]`. What
//! stays here is the sidecar's own: the mapping from its configuration, the registry layer, the
//! notices its supervisor reads, and the values that are not UTF-8 (templates render text).

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::ops::ControlFlow;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use sluice_kv::registry::{RegistryKind, ServiceDefinition};
use sluice_kv::{
    Backoff, EnvSource, EtcdClient, EtcdOptions, EtcdSource, KvEntry, KvError, KvLayer, KvSource,
    LayerEvent, WatchOptions,
};
use tokio::sync::mpsc::UnboundedSender;

use crate::config::{Config, KvKind, RegistryKindConfig};
use crate::text::{InvalidByte, NotText};

/// A layer's change of state, as `sluice-kv` reports it.
pub use sluice_kv::LayerStatus;

/// Why the KV layers of a configuration cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum KvSetupError {
    /// An etcd client (of a `[[kv]]` source or of the registry) cannot be made.
    #[error(transparent)]
    EtcdClient(#[from] KvError),
    /// The file registry's directory cannot be created.
    #[error("registry dir {}: {source}", dir.display())]
    RegistryDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `services()` was called without a `[registry]` to read instances from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("services() needs a [registry] in the configuration")]
pub struct NoRegistryError;

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
    /// Set when the layer became unavailable, available again, or (re)synced.
    pub status: Option<LayerStatus>,
}

/// The sink of layer `id`'s watch: each event becomes a notice; the watch stops once the
/// supervisor no longer reads them.
fn notify(
    id: LayerId,
    notices: &UnboundedSender<KvNotice>,
) -> impl FnMut(LayerEvent) -> ControlFlow<()> + Send + 'static {
    let notices = notices.clone();
    move |LayerEvent { changed, status }| {
        let notice = KvNotice {
            layer: id,
            changed,
            status,
        };
        match notices.send(notice) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    }
}

/// `value` of `key`, held by `layer`, as text, or which byte is not UTF-8.
fn text(layer: &KvLayer, key: &str, value: Vec<u8>) -> Result<String, NotText> {
    String::from_utf8(value).map_err(|error| not_text_error(layer, key, InvalidByte::of(&error)))
}

fn not_text_error(layer: &KvLayer, key: &str, at: InvalidByte) -> NotText {
    NotText::Kv {
        key: key.to_owned(),
        layer: layer.describe(),
        at,
    }
}

/// Variables whose value is not UTF-8, with the first byte that is not.
type NotTextVars = BTreeMap<String, InvalidByte>;

/// The process's variables under `prefix` whose value is not UTF-8 (names that are not UTF-8
/// cannot be asked for, so they are skipped).
fn env_not_text(prefix: &str) -> NotTextVars {
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
    layer: KvLayer,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct KvLayers {
    layers: sluice_kv::KvLayers,
    /// For each layer (same index), its variables whose value is not UTF-8: an env layer's
    /// under its prefix, empty for the others. sluice-kv's `EnvSource` leaves them out; kept
    /// here so a template naming one gets an error saying so, not a "missing key" it would wait
    /// for in vain.
    not_text: Vec<NotTextVars>,
    registry: Option<Registry>,
}

fn etcd_client(
    endpoints: &[String],
    timeout: std::time::Duration,
) -> Result<Arc<EtcdClient>, KvError> {
    EtcdClient::new(
        endpoints,
        EtcdOptions {
            request_timeout: timeout,
        },
    )
    .map(Arc::new)
}

/// The layers of `[[kv]]`, each with its variables that are not UTF-8.
fn kv_layers(config: &Config) -> Result<(Vec<KvLayer>, Vec<NotTextVars>), KvError> {
    let mut layers = Vec::new();
    let mut not_text = Vec::new();
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
        layers.push(KvLayer::new(source, kv.prefix.clone(), options));
        not_text.push(match kv.source {
            KvKind::Env => env_not_text(&kv.prefix),
            KvKind::File | KvKind::Etcd => BTreeMap::new(),
        });
    }
    Ok((layers, not_text))
}

/// The registry layer of `[registry]`, if any.
fn registry(config: &Config) -> Result<Option<Registry>, KvSetupError> {
    let Some(registry) = &config.registry else {
        return Ok(None);
    };
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
            if let Err(source) = std::fs::create_dir_all(&dir) {
                return Err(KvSetupError::RegistryDir { dir, source });
            }
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
    Ok(Some(Registry {
        kind,
        layer: KvLayer::new(source, prefix, options),
    }))
}

impl KvLayers {
    /// The layers of `config`'s `[[kv]]` and `[registry]`, not yet watched (see [`Self::start`]).
    pub fn from_config(config: &Config) -> Result<Self, KvSetupError> {
        let (layers, not_text) = kv_layers(config)?;
        Ok(Self {
            layers: sluice_kv::KvLayers::new(layers),
            not_text,
            registry: registry(config)?,
        })
    }

    /// One layer holding exactly `entries`, synced and never watched: rendering without KV
    /// sources (fuzzing, tests).
    pub fn from_entries(entries: Vec<KvEntry>) -> Self {
        Self {
            layers: sluice_kv::KvLayers::new(vec![KvLayer::fixed(entries)]),
            not_text: vec![BTreeMap::new()],
            registry: None,
        }
    }

    /// Starts one watch per layer; each keeps its mirror current and reports to `notices`.
    /// The watches run until these layers are dropped or `notices`' receiver is.
    pub fn start(&self, notices: UnboundedSender<KvNotice>) {
        self.layers
            .start(|index, _| notify(LayerId::Kv(index), &notices));
        if let Some(registry) = &self.registry {
            registry.layer.start(notify(LayerId::Registry, &notices));
        }
    }

    /// Layers that have not delivered their first snapshot, with the reason when known.
    pub fn unsynced(&self) -> Vec<String> {
        let kv = self
            .layers
            .unsynced()
            .map(|(layer, why)| format!("KV source {}: {why}", layer.describe()));
        let registry = self.registry.iter().filter_map(|r| {
            let why = r.layer.not_synced()?;
            Some(format!("registry {}: {why}", r.layer.describe()))
        });
        kv.chain(registry).collect()
    }

    pub fn describe(&self, id: LayerId) -> String {
        match id {
            LayerId::Kv(i) => self
                .layers
                .layers()
                .get(i)
                .map(KvLayer::describe)
                .unwrap_or_default(),
            LayerId::Registry => self
                .registry
                .as_ref()
                .map(|r| r.layer.describe())
                .unwrap_or_default(),
        }
    }

    /// Each layer in lookup order, with its variables that are not UTF-8.
    fn with_not_text(&self) -> impl Iterator<Item = (&KvLayer, &NotTextVars)> {
        self.layers.layers().iter().zip(&self.not_text)
    }

    /// The first layer's value for `key` as text; `Ok(None)` when no layer holds it, an error
    /// when the value that wins is not UTF-8 (templates render text; a silent U+FFFD in a
    /// config file would be worse).
    pub fn get_text(&self, key: &str) -> Result<Option<String>, NotText> {
        for (layer, not_text) in self.with_not_text() {
            if let Some(entry) = layer.mirror().get(key) {
                return text(layer, key, entry.value).map(Some);
            }
            if let Some(at) = not_text.get(key) {
                return Err(not_text_error(layer, key, *at));
            }
        }
        Ok(None)
    }

    /// Every key under `prefix` across layers with its value as text, sorted by key; for a key
    /// in several layers the first wins. An error names the first winning value that is not
    /// UTF-8.
    pub fn list_text(&self, prefix: &str) -> Result<Vec<(String, String)>, NotText> {
        let mut merged = BTreeMap::new();
        for (layer, not_text) in self.with_not_text() {
            for entry in layer.mirror().list(prefix) {
                if let Entry::Vacant(slot) = merged.entry(entry.key) {
                    let value = text(layer, slot.key(), entry.value);
                    slot.insert(value);
                }
            }
            let invalid = not_text.range(prefix.to_owned()..);
            for (key, at) in invalid.take_while(|(key, _)| key.starts_with(prefix)) {
                merged
                    .entry(key.clone())
                    .or_insert_with(|| Err(not_text_error(layer, key, *at)));
            }
        }
        merged
            .into_iter()
            .map(|(key, value)| value.map(|value| (key, value)))
            .collect()
    }

    /// Registered instances of `service` (registration implies the registrant's check passed;
    /// in etcd, also that its lease is alive). Documents that cannot be parsed are logged.
    pub fn services(&self, service: &str) -> Result<Vec<ServiceDefinition>, NoRegistryError> {
        let registry = self.registry.as_ref().ok_or(NoRegistryError)?;
        let entries = registry.layer.mirror().list(registry.layer.prefix());
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

    fn entries() -> Vec<KvEntry> {
        vec![
            KvEntry::new("a/ok", "café", 1),
            KvEntry::new("a/bad", b"caf\xe9".to_vec(), 1),
        ]
    }

    fn layers() -> KvLayers {
        KvLayers::from_entries(entries())
    }

    /// The in-memory layer of `layers()` and an env layer whose `a/ok` and `a/env` are not
    /// UTF-8, in that order, or the env layer first.
    fn with_env_layer(env_first: bool) -> KvLayers {
        let at = InvalidByte {
            offset: 1,
            byte: 0xFF,
        };
        let env = KvLayer::new(
            KvSource::Env(EnvSource::default()),
            String::new(),
            WatchOptions::default(),
        );
        let env_not_text = BTreeMap::from([("a/ok".to_owned(), at), ("a/env".to_owned(), at)]);
        let mut both = vec![
            (KvLayer::fixed(entries()), BTreeMap::new()),
            (env, env_not_text),
        ];
        if env_first {
            both.rotate_right(1);
        }
        let (layers, not_text) = both.into_iter().unzip();
        KvLayers {
            layers: sluice_kv::KvLayers::new(layers),
            not_text,
            registry: None,
        }
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
    fn setup_and_services_errors_say_what_is_missing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("file"), "").expect("write");
        let text = "[registry]\nkind = \"file\"\ndir = \"file/sub\"\n";
        let config = Config::parse(&tmp.path().join("s.toml"), text).expect("valid");
        let error = KvLayers::from_config(&config).expect_err("a file is in the way");
        let wanted = tmp.path().join("file/sub");
        assert!(
            matches!(&error, KvSetupError::RegistryDir { dir, .. } if *dir == wanted),
            "{error:?}"
        );
        let prefix = format!("registry dir {}: ", wanted.display());
        assert!(error.to_string().starts_with(&prefix), "{error}");
        assert_eq!(layers().services("web"), Err(NoRegistryError));
        assert_eq!(
            NoRegistryError.to_string(),
            "services() needs a [registry] in the configuration"
        );
    }

    #[test]
    fn an_env_layers_non_utf8_variable_wins_like_any_value() {
        // After the in-memory layer: its valid a/ok wins; a/env is only in the env layer.
        let kv = with_env_layer(false);
        assert_eq!(kv.get_text("a/ok"), Ok(Some("café".to_owned())));
        assert!(matches!(kv.get_text("a/env"), Err(NotText::Kv { layer, .. }) if layer == "env"));
        // First: the env layer's a/ok now wins, and it is not text.
        let kv = with_env_layer(true);
        assert!(kv.get_text("a/ok").is_err());
    }
}
