//! The catalog model: instances, immutable versioned snapshots, and diffs between them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_kv::registry::{CheckDefinition, RegistryError, ServiceDefinition};

/// One instance of a service, as some source declared it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Instance {
    /// Unique in a catalog (see [`crate`] for the collision rule).
    pub id: String,
    pub service: String,
    /// As declared: an IP address or a host name; empty when the definition has none.
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    /// `check` and `checks` of the definition, in that order.
    pub checks: Vec<CheckDefinition>,
    /// Name of the source the instance came from.
    pub source: String,
    /// Where in the source: a file path, an etcd key, or `config[N]` for static entries.
    pub origin: String,
    /// The revision of the document it came from (etcd's `mod_revision`; for files, the
    /// watch's counter when the file was last written): a registration put again gets a new
    /// one even with the same content. 0 for static entries.
    pub revision: i64,
}

impl Instance {
    /// An instance from a registry definition.
    pub fn from_definition(definition: ServiceDefinition, source: &str, origin: String) -> Self {
        let id = definition.instance_id().to_owned();
        let mut checks: Vec<CheckDefinition> = definition.check.into_iter().collect();
        checks.extend(definition.checks);
        Instance {
            id,
            service: definition.name,
            address: definition.address,
            port: definition.port,
            tags: definition.tags,
            meta: definition.meta,
            checks,
            source: source.to_owned(),
            origin,
            revision: 0,
        }
    }

    /// The same instance, read from a document at `revision`.
    pub fn at_revision(self, revision: i64) -> Self {
        Self { revision, ..self }
    }
}

/// What kind of source a [`SourceStatus`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Static,
    File,
    Etcd,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Static => "static",
            SourceKind::File => "file",
            SourceKind::Etcd => "etcd",
        }
    }
}

/// How one source is doing, as of a catalog version.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceStatus {
    pub name: String,
    pub kind: SourceKind,
    /// The source has delivered its state at least once. Until then it contributes nothing
    /// (and `last_error` says why, when it could not be reached).
    pub synced: bool,
    /// Set while the source cannot be read after having been synced: its last good instances
    /// are still in the catalog, and this is when it stopped answering.
    pub stale_since: Option<Instant>,
    /// The latest connection or read error, cleared when the source answers again.
    pub last_error: Option<String>,
    /// Instances this source contributes to the catalog (after collisions).
    pub instances: usize,
    /// Documents that could not be used and were skipped, with `origin:line:col: reason`.
    pub invalid: Vec<RegistryError>,
    /// Instance ids this source declared but another source (or an earlier document of this
    /// source) already did; the copies here are not in the catalog.
    pub shadowed: Vec<String>,
}

impl SourceStatus {
    pub fn stale(&self) -> bool {
        self.stale_since.is_some()
    }

    /// How long the source's data has been stale at `now`.
    pub fn stale_age(&self, now: Instant) -> Option<Duration> {
        self.stale_since
            .map(|since| now.saturating_duration_since(since))
    }
}

/// An immutable snapshot of every known instance. Shared as `Arc<Catalog>`; a change makes a
/// new one with a higher version.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    version: u64,
    instances: BTreeMap<String, Arc<Instance>>,
    sources: Vec<SourceStatus>,
}

impl Catalog {
    pub(crate) fn new(
        version: u64,
        instances: BTreeMap<String, Arc<Instance>>,
        sources: Vec<SourceStatus>,
    ) -> Self {
        Catalog {
            version,
            instances,
            sources,
        }
    }

    pub(crate) fn set_version(&mut self, version: u64) {
        self.version = version;
    }

    /// An empty catalog at version 0.
    pub fn empty() -> Self {
        Catalog::new(0, BTreeMap::new(), Vec::new())
    }

    /// Grows by one with every published change (instances or source status).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Every instance, ordered by id.
    pub fn instances(&self) -> impl ExactSizeIterator<Item = &Arc<Instance>> {
        self.instances.values()
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Instance>> {
        self.instances.get(id)
    }

    pub fn len(&self) -> usize {
        self.instances.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// The sources in configuration order.
    pub fn sources(&self) -> &[SourceStatus] {
        &self.sources
    }

    /// Whether any source's part of the catalog is stale.
    pub fn stale(&self) -> bool {
        self.sources.iter().any(SourceStatus::stale)
    }

    /// The age of the oldest stale part at `now`; `None` when nothing is stale.
    pub fn stale_age(&self, now: Instant) -> Option<Duration> {
        self.sources.iter().filter_map(|s| s.stale_age(now)).max()
    }

    /// What changed from `self` to `newer`.
    pub fn diff(&self, newer: &Catalog) -> CatalogDiff {
        let mut diff = CatalogDiff::default();
        for (id, new) in &newer.instances {
            match self.instances.get(id) {
                None => diff.added.push(Arc::clone(new)),
                Some(old) if old != new => diff.changed.push((Arc::clone(old), Arc::clone(new))),
                Some(_) => {}
            }
        }
        for (id, old) in &self.instances {
            if !newer.instances.contains_key(id) {
                diff.removed.push(Arc::clone(old));
            }
        }
        diff
    }
}

/// The instance-level difference between two catalogs, each list ordered by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CatalogDiff {
    pub added: Vec<Arc<Instance>>,
    pub removed: Vec<Arc<Instance>>,
    /// (before, after) for instances whose definition changed or was put again.
    pub changed: Vec<(Arc<Instance>, Arc<Instance>)>,
}

impl CatalogDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, port: u16) -> Arc<Instance> {
        Arc::new(Instance {
            id: id.into(),
            service: "web".into(),
            address: "127.0.0.1".into(),
            port,
            tags: vec![],
            meta: BTreeMap::new(),
            checks: vec![],
            source: "s".into(),
            origin: "o".into(),
            revision: 0,
        })
    }

    #[test]
    fn diff_lists_added_removed_and_changed() {
        let old = Catalog::new(
            1,
            [("a", 1), ("b", 2)]
                .into_iter()
                .map(|(id, p)| (id.to_owned(), instance(id, p)))
                .collect(),
            vec![],
        );
        let new = Catalog::new(
            2,
            [("b", 3), ("c", 4)]
                .into_iter()
                .map(|(id, p)| (id.to_owned(), instance(id, p)))
                .collect(),
            vec![],
        );
        let diff = old.diff(&new);
        assert_eq!(diff.added.iter().map(|i| &i.id).collect::<Vec<_>>(), ["c"]);
        assert_eq!(
            diff.removed.iter().map(|i| &i.id).collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(diff.changed.len(), 1);
        assert_eq!((diff.changed[0].0.port, diff.changed[0].1.port), (2, 3));
        assert!(new.diff(&new).is_empty());
    }

    #[test]
    fn definitions_keep_both_check_forms() {
        let text = r#"{"service": {"name": "web", "port": 8000,
            "check": {"tcp": "localhost:8000", "interval": "30s"},
            "checks": [{"http": "http://localhost:8000/health"}, {"args": ["/bin/true"]}]}}"#;
        let definition = sluice_kv::registry::parse_service_file("w.json".as_ref(), text)
            .expect("valid")
            .remove(0);
        let instance = Instance::from_definition(definition, "files", "w.json".into());
        assert_eq!(instance.id, "web");
        assert_eq!(instance.checks.len(), 3);
        assert_eq!(instance.checks[0].tcp.as_deref(), Some("localhost:8000"));
        assert_eq!(instance.checks[2].args, ["/bin/true"]);
    }
}
