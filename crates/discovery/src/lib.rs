//! Service discovery for Sluice: one merged, versioned catalog of service instances fed by
//! several sources at once.
//!
//! Contract:
//! - A [`Catalog`] is an immutable snapshot (shared as `Arc<Catalog>`) of [`Instance`]s — id,
//!   service, address, port, tags, meta, checks — plus each source's [`SourceStatus`]. Every
//!   published change (instances or a source's status) gets a higher [`Catalog::version`];
//!   [`Catalog::diff`] lists what was added, removed and changed between two snapshots.
//! - Sources ([`SourceSpec`]): `static` (definitions given in the configuration), `file` (a
//!   directory of Consul-format definitions, `sluice_kv::registry`, watched by `sluice_kv`'s
//!   polling file watch), `etcd` (definitions under a prefix, `sluice_kv`'s etcd watch). No
//!   second parser or etcd client lives here: the registry format and the watches are
//!   `sluice_kv`'s.
//! - **Collisions**: when two sources declare the same instance id, the source listed first in
//!   the configuration wins; inside one source, the document whose key (file name, etcd key)
//!   sorts first wins. The losing copies are reported in [`SourceStatus::shadowed`] and logged.
//! - A malformed document is skipped and reported as `origin:line:col: reason`
//!   ([`SourceStatus::invalid`], and a warning in the log); the rest of the source keeps
//!   working. A removed document removes its instances; a document that becomes malformed
//!   removes the instances it used to declare.
//! - An etcd registrant whose lease expires disappears (etcd deletes its key; the watch reports
//!   it). A source unreachable at start contributes nothing, is retried with backoff, and says
//!   why in [`SourceStatus::last_error`]; the other sources are served meanwhile. A source that
//!   becomes unreachable later keeps its last good instances, marked stale with the time it
//!   stopped answering ([`SourceStatus::stale_since`]); the watch resumes from the last revision
//!   seen when the source comes back.
//! - Changes are debounced (default 100 ms quiet, at most 1 s late) so a burst of file writes
//!   or etcd events makes one new catalog, not one per event.
//! - Nothing here panics on bad input; errors are typed ([`DiscoveryError`]).

mod catalog;
mod merge;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_kv::registry::ServiceDefinition;
use sluice_kv::{EtcdClient, EtcdOptions, EtcdSource, KvSource, WatchEvent, WatchOptions};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use catalog::{Catalog, CatalogDiff, Instance, SourceKind, SourceStatus};
pub use sluice_kv::registry::{CheckDefinition, DEFAULT_ETCD_PREFIX, RegistryError};

use merge::{Parser, SourceState};

/// Default quiet time before a burst of changes is published as one catalog.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);
/// Default longest delay of a change under a continuous stream of events.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(1);

/// One configured source.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Unique among the sources; shown in the catalog and the logs.
    pub name: String,
    pub spec: SourceSpec,
}

/// What a source reads.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// Definitions from the configuration itself.
    Static(Vec<ServiceDefinition>),
    /// A directory of `*.json` definitions, polled (`watch.poll_interval`, default 1 s).
    File { dir: PathBuf, watch: WatchOptions },
    /// Definitions under `prefix` in etcd.
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
        client: EtcdOptions,
        watch: WatchOptions,
    },
}

/// Merger settings; every field has a default.
#[derive(Debug, Clone, Copy)]
pub struct DiscoveryOptions {
    pub debounce: Duration,
    pub max_delay: Duration,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        DiscoveryOptions {
            debounce: DEFAULT_DEBOUNCE,
            max_delay: DEFAULT_MAX_DELAY,
        }
    }
}

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("discovery source name `{0}` is used twice")]
    DuplicateName(String),
    #[error("discovery source `{name}`: {message}")]
    Invalid { name: String, message: String },
    #[error("discovery source `{name}`: {source}")]
    Kv {
        name: String,
        #[source]
        source: sluice_kv::KvError,
    },
}

/// The running sources and the merged catalog. Dropping it stops every watch.
#[derive(Debug)]
pub struct Discovery {
    catalog: watch::Receiver<Arc<Catalog>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Discovery {
    /// Starts every source's watch and the merger on the current tokio runtime. The first
    /// catalog (version 1: the static sources, the others not yet synced) is available at once.
    pub fn start(
        sources: Vec<SourceConfig>,
        options: DiscoveryOptions,
    ) -> Result<Discovery, DiscoveryError> {
        let mut states = Vec::with_capacity(sources.len());
        let mut watches = Vec::new();
        for (index, source) in sources.into_iter().enumerate() {
            if states.iter().any(|s: &SourceState| s.name == source.name) {
                return Err(DiscoveryError::DuplicateName(source.name));
            }
            match source.spec {
                SourceSpec::Static(definitions) => {
                    let mut instances = Vec::with_capacity(definitions.len());
                    for (n, definition) in definitions.into_iter().enumerate() {
                        definition
                            .validate()
                            .map_err(|message| DiscoveryError::Invalid {
                                name: source.name.clone(),
                                message: format!("instance {n}: {message}"),
                            })?;
                        instances.push(Instance::from_definition(
                            definition,
                            &source.name,
                            format!("config[{n}]"),
                        ));
                    }
                    states.push(SourceState::with_instances(source.name, instances));
                }
                SourceSpec::File { dir, watch } => {
                    let kv = KvSource::File(dir.clone());
                    watches.push((index, kv, String::new(), watch));
                    states.push(SourceState::new(
                        source.name,
                        SourceKind::File,
                        Parser::File { dir },
                    ));
                }
                SourceSpec::Etcd {
                    endpoints,
                    prefix,
                    client,
                    watch,
                } => {
                    if prefix.is_empty() {
                        return Err(DiscoveryError::Invalid {
                            name: source.name,
                            message: "the etcd prefix is empty".into(),
                        });
                    }
                    let client =
                        EtcdClient::new(&endpoints, client).map_err(|e| DiscoveryError::Kv {
                            name: source.name.clone(),
                            source: e,
                        })?;
                    let kv = KvSource::Etcd(EtcdSource {
                        client: Arc::new(client),
                    });
                    watches.push((index, kv, prefix.clone(), watch));
                    states.push(SourceState::new(
                        source.name,
                        SourceKind::Etcd,
                        Parser::Etcd { prefix },
                    ));
                }
            }
        }

        let first = merge::next_catalog(&Catalog::empty(), &states)
            .unwrap_or_else(|| Catalog::new(1, Default::default(), Vec::new()));
        let (publish, catalog) = watch::channel(Arc::new(first));
        let (events_tx, events_rx) = mpsc::channel(1024);
        let mut tasks = Vec::with_capacity(watches.len() + 1);
        for (index, kv, prefix, options) in watches {
            let events = events_tx.clone();
            tasks.push(tokio::spawn(async move {
                let mut watch = kv.watch(&prefix, options);
                while let Some(event) = watch.next().await {
                    if events.send((index, event)).await.is_err() {
                        return;
                    }
                }
            }));
        }
        drop(events_tx);
        tasks.push(tokio::spawn(run_merger(
            states, events_rx, publish, options,
        )));
        Ok(Discovery { catalog, tasks })
    }

    /// The latest catalog.
    pub fn current(&self) -> Arc<Catalog> {
        Arc::clone(&self.catalog.borrow())
    }

    /// A receiver that is notified of every new catalog.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Catalog>> {
        self.catalog.clone()
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn run_merger(
    mut states: Vec<SourceState>,
    mut events: mpsc::Receiver<(usize, WatchEvent)>,
    publish: watch::Sender<Arc<Catalog>>,
    options: DiscoveryOptions,
) {
    let mut open = true;
    while open {
        let Some((index, event)) = events.recv().await else {
            return;
        };
        apply(&mut states, index, event);
        let deadline = tokio::time::Instant::now() + options.max_delay;
        loop {
            let wait = options
                .debounce
                .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            match tokio::time::timeout(wait, events.recv()).await {
                Ok(Some((index, event))) => apply(&mut states, index, event),
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_) => break,
            }
        }
        let current = Arc::clone(&publish.borrow());
        if let Some(next) = merge::next_catalog(&current, &states) {
            tracing::debug!(
                version = next.version(),
                instances = next.len(),
                "discovery catalog changed"
            );
            // No receivers is fine: the catalog is still kept for `current`.
            publish.send_replace(Arc::new(next));
        }
    }
}

fn apply(states: &mut [SourceState], index: usize, event: WatchEvent) {
    if let Some(state) = states.get_mut(index) {
        state.apply(event);
    }
}
