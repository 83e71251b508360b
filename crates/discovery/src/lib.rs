//! Service discovery for Sluice: one merged, versioned catalog of service instances fed by
//! several sources at once.
//!
//! Contract:
//! - A [`Catalog`] is an immutable snapshot (shared as `Arc<Catalog>`) of [`Instance`]s — id,
//!   service, address, port, tags, meta, checks — plus each source's [`SourceStatus`]. Every
//!   published change (instances or a source's status) gets a higher [`Catalog::version`];
//!   [`Catalog::diff`] lists what was added, removed and changed between two snapshots.
//! - Sources ([`SourceSpec`]): `static` (definitions given in the configuration), `file` (a
//!   directory of Consul-format definitions, `sluice_kv::registry`, re-read by `sluice_kv`'s
//!   file watch when inotify reports a change, with a slow poll as the safety net), `etcd`
//!   (definitions under a prefix, `sluice_kv`'s etcd watch). No second parser or etcd client
//!   lives here: the registry format and the watches are `sluice_kv`'s.
//! - Sources can be replaced while running ([`Discovery::prepare`] then [`Discovery::apply`]):
//!   a source whose configuration is unchanged keeps its watch and its last catalog (stale or
//!   not); only added or changed sources start, removed ones stop. Preparing validates
//!   everything first, so a set that cannot start changes nothing.
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
mod dir_watch;
mod merge;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_kv::registry::ServiceDefinition;
use sluice_kv::{EtcdClient, EtcdOptions, EtcdSource, KvSource, WatchEvent, WatchOptions};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use catalog::{Catalog, CatalogDiff, Instance, SourceKind, SourceStatus};
pub use dir_watch::{
    EVENT_DEBOUNCE as FILE_EVENT_DEBOUNCE, EVENT_MAX_DELAY as FILE_EVENT_MAX_DELAY,
};
pub use sluice_kv::registry::{CheckDefinition, DEFAULT_ETCD_PREFIX, RegistryError};

use merge::{Parser, SourceState};

/// Entry points for the fuzz targets (`fuzz/fuzz_targets/consul_json.rs`); not a stable API.
///
/// Public only because cargo-fuzz builds the targets as a separate crate. Each runs the code a
/// running source applies to one document it reads, so the fuzzer exercises exactly that path.
#[doc(hidden)]
pub mod fuzzing {
    use std::path::Path;

    use sluice_kv::KvEntry;

    use crate::merge::{Parser, parse_entry};
    use crate::{Instance, RegistryError};

    /// What the `file` source `source` over `dir` makes of the file `key` holding `value`
    /// (`None`: not a registry file name, ignored).
    pub fn file_document(
        source: &str,
        dir: &Path,
        key: &str,
        value: &[u8],
    ) -> Option<Result<Vec<Instance>, RegistryError>> {
        let parser = Parser::File {
            dir: dir.to_path_buf(),
        };
        parse_entry(&parser, source, &KvEntry::new(key, value, 1))
    }

    /// What the `etcd` source `source` under `prefix` makes of the key `key` holding `value`.
    pub fn etcd_document(
        source: &str,
        prefix: &str,
        key: &str,
        value: &[u8],
    ) -> Option<Result<Vec<Instance>, RegistryError>> {
        let parser = Parser::Etcd {
            prefix: prefix.to_owned(),
        };
        parse_entry(&parser, source, &KvEntry::new(key, value, 1))
    }
}

/// Default quiet time before a burst of changes is published as one catalog.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);
/// Default longest delay of a change under a continuous stream of events.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(1);

/// One configured source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    /// Unique among the sources; shown in the catalog and the logs.
    pub name: String,
    pub spec: SourceSpec,
}

/// What a source reads.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    /// Definitions from the configuration itself.
    Static(Vec<ServiceDefinition>),
    /// A directory of `*.json` definitions.
    ///
    /// `safety_poll: Some(interval)`: inotify wakes a re-read as soon as the directory changes
    /// (debounced by [`FILE_EVENT_DEBOUNCE`]), and the directory is also re-read every
    /// `interval` for what inotify misses; while no inotify watch can be armed it is polled
    /// every `watch.poll_interval`. `None`: polled every `watch.poll_interval` only.
    File {
        dir: PathBuf,
        watch: WatchOptions,
        safety_poll: Option<Duration>,
    },
    /// Definitions under `prefix` in etcd.
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
        client: EtcdOptions,
        watch: WatchOptions,
    },
}

/// Merger settings; every field has a default.
#[derive(Debug, Clone, Copy, PartialEq)]
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

/// Why discovery could not start (or a new set of sources was refused).
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
    #[error("discovery has stopped")]
    Stopped,
}

/// A validated set of sources, ready for [`Discovery::apply`] (nothing is started yet).
#[derive(Debug)]
pub struct SourcePlan {
    sources: Vec<Prepared>,
}

/// What [`Discovery::apply`] did, by source name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplySummary {
    /// Unchanged: their watches and catalogs carried over.
    pub kept: Vec<String>,
    /// New or changed: started afresh.
    pub started: Vec<String>,
    /// Gone from the configuration (or changed): stopped.
    pub stopped: Vec<String>,
}

#[derive(Debug)]
struct Prepared {
    config: SourceConfig,
    start: Start,
}

#[derive(Debug)]
enum Start {
    Static(Vec<Instance>),
    Watch {
        kind: SourceKind,
        parser: Parser,
        kv: KvSource,
        prefix: String,
        options: WatchOptions,
        /// File sources: the inotify re-read (see [`SourceSpec::File`]).
        dir_watch: Option<(PathBuf, Duration)>,
    },
}

/// A started source: its state and the tasks feeding it (stopped when it is dropped).
#[derive(Debug)]
struct Running {
    /// Tags its watch events, so events of a source already replaced are ignored.
    id: u64,
    config: SourceConfig,
    state: SourceState,
    _tasks: Vec<AbortOnDrop>,
    _dir_watch: Option<dir_watch::DirWatch>,
}

#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Events = mpsc::Sender<(u64, WatchEvent)>;

struct Control {
    plan: SourcePlan,
    options: DiscoveryOptions,
    done: oneshot::Sender<ApplySummary>,
}

/// The running sources and the merged catalog. Dropping it stops every watch.
#[derive(Debug)]
pub struct Discovery {
    catalog: watch::Receiver<Arc<Catalog>>,
    control: mpsc::Sender<Control>,
    merger: JoinHandle<()>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

impl Discovery {
    /// Starts every source's watch and the merger on the current tokio runtime. The first
    /// catalog (version 1: the static sources, the others not yet synced) is available at once.
    pub fn start(
        sources: Vec<SourceConfig>,
        options: DiscoveryOptions,
    ) -> Result<Discovery, DiscoveryError> {
        let plan = Discovery::prepare(sources)?;
        let (events_tx, events_rx) = mpsc::channel(1024);
        let mut next_id = 0;
        let running: Vec<Running> = plan
            .sources
            .into_iter()
            .map(|p| launch(p, &mut next_id, &events_tx))
            .collect();
        let states: Vec<&SourceState> = running.iter().map(|r| &r.state).collect();
        let first = merge::next_catalog(&Catalog::empty(), &states)
            .unwrap_or_else(|| Catalog::new(1, Default::default(), Vec::new()));
        let (publish, catalog) = watch::channel(Arc::new(first));
        let (control, control_rx) = mpsc::channel(4);
        let merger = tokio::spawn(
            Merger {
                running,
                next_id,
                events_tx,
                options,
            }
            .run(events_rx, control_rx, publish),
        );
        Ok(Discovery {
            catalog,
            control,
            merger,
        })
    }

    /// Validates `sources` (unique names, static definitions, etcd prefixes and endpoints)
    /// without starting anything.
    pub fn prepare(sources: Vec<SourceConfig>) -> Result<SourcePlan, DiscoveryError> {
        let mut prepared: Vec<Prepared> = Vec::with_capacity(sources.len());
        for source in sources {
            if prepared.iter().any(|p| p.config.name == source.name) {
                return Err(DiscoveryError::DuplicateName(source.name));
            }
            let start = prepare_one(&source)?;
            prepared.push(Prepared {
                config: source,
                start,
            });
        }
        Ok(SourcePlan { sources: prepared })
    }

    /// Replaces the running sources by `plan`: sources whose configuration is unchanged keep
    /// running with their catalog; the others stop, and new or changed ones start. The merged
    /// catalog is republished at once (without waiting for the debounce).
    pub async fn apply(
        &self,
        plan: SourcePlan,
        options: DiscoveryOptions,
    ) -> Result<ApplySummary, DiscoveryError> {
        let (done, summary) = oneshot::channel();
        self.control
            .send(Control {
                plan,
                options,
                done,
            })
            .await
            .map_err(|_| DiscoveryError::Stopped)?;
        summary.await.map_err(|_| DiscoveryError::Stopped)
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
        // The merger owns the sources; dropping them (with the aborted task) stops their watches.
        self.merger.abort();
    }
}

fn prepare_one(source: &SourceConfig) -> Result<Start, DiscoveryError> {
    Ok(match &source.spec {
        SourceSpec::Static(definitions) => {
            let mut instances = Vec::with_capacity(definitions.len());
            for (n, definition) in definitions.iter().enumerate() {
                definition
                    .validate()
                    .map_err(|invalid| DiscoveryError::Invalid {
                        name: source.name.clone(),
                        message: format!("instance {n}: {invalid}"),
                    })?;
                instances.push(Instance::from_definition(
                    definition.clone(),
                    &source.name,
                    format!("config[{n}]"),
                ));
            }
            Start::Static(instances)
        }
        SourceSpec::File {
            dir,
            watch,
            safety_poll,
        } => {
            let mut options = *watch;
            if let Some(safety) = safety_poll {
                // The poll is only the safety net; the directory watch wakes it on changes.
                options.poll_interval = *safety;
            }
            Start::Watch {
                kind: SourceKind::File,
                parser: Parser::File { dir: dir.clone() },
                kv: KvSource::File(dir.clone()),
                prefix: String::new(),
                options,
                dir_watch: safety_poll.map(|_| (dir.clone(), watch.poll_interval)),
            }
        }
        SourceSpec::Etcd {
            endpoints,
            prefix,
            client,
            watch,
        } => {
            if prefix.is_empty() {
                return Err(DiscoveryError::Invalid {
                    name: source.name.clone(),
                    message: "the etcd prefix is empty".into(),
                });
            }
            let client =
                EtcdClient::new(endpoints, client.clone()).map_err(|e| DiscoveryError::Kv {
                    name: source.name.clone(),
                    source: e,
                })?;
            Start::Watch {
                kind: SourceKind::Etcd,
                parser: Parser::Etcd {
                    prefix: prefix.clone(),
                },
                kv: KvSource::Etcd(EtcdSource {
                    client: Arc::new(client),
                }),
                prefix: prefix.clone(),
                options: *watch,
                dir_watch: None,
            }
        }
    })
}

/// Starts a prepared source's watch (if it has one), feeding `events` under a new id.
fn launch(prepared: Prepared, next_id: &mut u64, events: &Events) -> Running {
    *next_id += 1;
    let id = *next_id;
    let name = prepared.config.name.clone();
    let mut tasks = Vec::new();
    let mut dir_watcher = None;
    let state = match prepared.start {
        Start::Static(instances) => SourceState::with_instances(name, instances),
        Start::Watch {
            kind,
            parser,
            kv,
            prefix,
            options,
            dir_watch,
        } => {
            let mut watch = match dir_watch {
                Some((dir, poll_interval)) => {
                    let wake = Arc::new(tokio::sync::Notify::new());
                    let timings = dir_watch::DirWatchTimings {
                        poll_interval,
                        safety_poll: options.poll_interval,
                    };
                    dir_watcher = Some(dir_watch::start(&name, dir, timings, Arc::clone(&wake)));
                    kv.watch_woken(&prefix, options, wake)
                }
                None => kv.watch(&prefix, options),
            };
            let events = events.clone();
            tasks.push(AbortOnDrop(tokio::spawn(async move {
                while let Some(event) = watch.next().await {
                    if events.send((id, event)).await.is_err() {
                        return;
                    }
                }
            })));
            SourceState::new(name, kind, parser)
        }
    };
    Running {
        id,
        config: prepared.config,
        state,
        _tasks: tasks,
        _dir_watch: dir_watcher,
    }
}

/// The merger task's state: the running sources in configuration order.
struct Merger {
    running: Vec<Running>,
    next_id: u64,
    /// Kept so sources started later can send; also means `events` never closes on its own.
    events_tx: Events,
    options: DiscoveryOptions,
}

impl Merger {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<(u64, WatchEvent)>,
        mut control: mpsc::Receiver<Control>,
        publish: watch::Sender<Arc<Catalog>>,
    ) {
        loop {
            tokio::select! {
                event = events.recv() => {
                    let Some((id, event)) = event else { return };
                    self.apply_event(id, event);
                    self.collect_burst(&mut events).await;
                }
                request = control.recv() => {
                    let Some(Control { plan, options, done }) = request else { return };
                    self.options = options;
                    let summary = self.replace(plan);
                    tracing::debug!(kept = ?summary.kept, started = ?summary.started, stopped = ?summary.stopped, "discovery sources replaced");
                    self.publish(&publish);
                    // The caller may have given up waiting; the sources are replaced anyway.
                    let _ = done.send(summary);
                    continue;
                }
            }
            self.publish(&publish);
        }
    }

    /// Applies further events until the quiet time or the longest delay passes.
    async fn collect_burst(&mut self, events: &mut mpsc::Receiver<(u64, WatchEvent)>) {
        let deadline = tokio::time::Instant::now() + self.options.max_delay;
        loop {
            let wait = self
                .options
                .debounce
                .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            match tokio::time::timeout(wait, events.recv()).await {
                Ok(Some((id, event))) => self.apply_event(id, event),
                Ok(None) | Err(_) => return,
            }
        }
    }

    fn apply_event(&mut self, id: u64, event: WatchEvent) {
        // Events of a source replaced meanwhile find no owner and are dropped.
        if let Some(source) = self.running.iter_mut().find(|r| r.id == id) {
            source.state.apply(event);
        }
    }

    fn replace(&mut self, plan: SourcePlan) -> ApplySummary {
        let mut old = std::mem::take(&mut self.running);
        let mut summary = ApplySummary::default();
        for prepared in plan.sources {
            match old.iter().position(|r| r.config == prepared.config) {
                Some(index) => {
                    summary.kept.push(prepared.config.name.clone());
                    self.running.push(old.remove(index));
                }
                None => {
                    summary.started.push(prepared.config.name.clone());
                    self.running
                        .push(launch(prepared, &mut self.next_id, &self.events_tx));
                }
            }
        }
        summary.stopped = old.iter().map(|r| r.config.name.clone()).collect();
        // Dropping `old` stops the watches of removed and changed sources.
        drop(old);
        summary
    }

    fn publish(&self, publish: &watch::Sender<Arc<Catalog>>) {
        let current = Arc::clone(&publish.borrow());
        let states: Vec<&SourceState> = self.running.iter().map(|r| &r.state).collect();
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
