//! Per-source state and the merge of all sources into one catalog.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sluice_kv::registry::{self, RegistryError};
use sluice_kv::{KvEntry, WatchEvent};

use crate::catalog::{Catalog, Instance, SourceKind, SourceStatus};

/// How a source's KV entries become instances.
#[derive(Debug, Clone)]
pub(crate) enum Parser {
    /// Entries are keyed by file name relative to `dir`.
    File { dir: PathBuf },
    /// Entries are keyed by full etcd key.
    Etcd { prefix: String },
    /// Instances come from the configuration, nothing to parse.
    Static,
}

/// What one source holds right now.
#[derive(Debug)]
pub(crate) struct SourceState {
    pub(crate) name: String,
    pub(crate) kind: SourceKind,
    parser: Parser,
    /// Instances per document (file name or etcd key), so a removed document removes exactly
    /// its instances.
    documents: BTreeMap<String, Vec<Arc<Instance>>>,
    invalid: BTreeMap<String, RegistryError>,
    synced: bool,
    stale_since: Option<Instant>,
    last_error: Option<String>,
}

impl SourceState {
    pub(crate) fn new(name: String, kind: SourceKind, parser: Parser) -> Self {
        SourceState {
            name,
            kind,
            parser,
            documents: BTreeMap::new(),
            invalid: BTreeMap::new(),
            synced: false,
            stale_since: None,
            last_error: None,
        }
    }

    /// A source whose instances are known up front (static).
    pub(crate) fn with_instances(name: String, instances: Vec<Instance>) -> Self {
        let mut state = SourceState::new(name, SourceKind::Static, Parser::Static);
        for instance in instances {
            state
                .documents
                .entry(instance.origin.clone())
                .or_default()
                .push(Arc::new(instance));
        }
        state.synced = true;
        state
    }

    /// Applies one watch event.
    pub(crate) fn apply(&mut self, event: WatchEvent) {
        match event {
            WatchEvent::Snapshot { entries, .. } => {
                self.documents.clear();
                self.invalid.clear();
                for entry in &entries {
                    self.put(entry);
                }
                if !self.synced {
                    tracing::info!(
                        source = %self.name,
                        kind = self.kind.as_str(),
                        documents = self.documents.len(),
                        "discovery source synced"
                    );
                }
                self.synced = true;
                self.mark_up();
            }
            WatchEvent::Put(entry) => {
                self.put(&entry);
                self.mark_up();
            }
            WatchEvent::Delete { key, .. } => {
                if self.documents.remove(&key).is_some() {
                    tracing::info!(source = %self.name, document = %key, "discovery document removed");
                }
                self.invalid.remove(&key);
                self.mark_up();
            }
            WatchEvent::Unavailable { error } => {
                let error = error.to_string();
                if self.synced {
                    if self.stale_since.is_none() {
                        self.stale_since = Some(Instant::now());
                    }
                    tracing::warn!(
                        source = %self.name,
                        %error,
                        instances = self.documents.values().map(Vec::len).sum::<usize>(),
                        "discovery source unavailable: keeping its last known instances, marked stale"
                    );
                } else {
                    tracing::warn!(
                        source = %self.name,
                        %error,
                        "discovery source unreachable at start: retrying; the other sources are served meanwhile"
                    );
                }
                self.last_error = Some(error);
            }
            WatchEvent::Restored => self.mark_up(),
        }
    }

    fn mark_up(&mut self) {
        if self.stale_since.take().is_some() {
            tracing::info!(source = %self.name, "discovery source available again");
        }
        self.last_error = None;
    }

    fn put(&mut self, entry: &KvEntry) {
        let Some(parsed) = parse_entry(&self.parser, &self.name, entry) else {
            return;
        };
        match parsed {
            Ok(instances) => {
                self.invalid.remove(&entry.key);
                self.documents.insert(
                    entry.key.clone(),
                    instances.into_iter().map(Arc::new).collect(),
                );
            }
            Err(error) => {
                // The document's previous instances go too: what the file says now is not them.
                self.documents.remove(&entry.key);
                if self.invalid.get(&entry.key) != Some(&error) {
                    tracing::warn!(source = %self.name, %error, "discovery document skipped");
                }
                self.invalid.insert(entry.key.clone(), error);
            }
        }
    }
}

/// The instances one KV entry declares, as source `source` reads it; `None` when the entry is
/// not a registry document for this parser (not `<id>.json` directly in a `file` source's
/// directory; any entry of a static source).
pub(crate) fn parse_entry(
    parser: &Parser,
    source: &str,
    entry: &KvEntry,
) -> Option<Result<Vec<Instance>, RegistryError>> {
    match parser {
        Parser::Static => None,
        Parser::File { dir } => {
            // The registry format: `<id>.json` directly in the directory.
            if !entry.key.ends_with(".json") || entry.key.contains('/') {
                return None;
            }
            let path = dir.join(&entry.key);
            Some(
                registry::parse_service_file(&path, &entry.value_str()).map(|definitions| {
                    definitions
                        .into_iter()
                        .map(|d| {
                            Instance::from_definition(d, source, display(&path))
                                .at_revision(entry.revision)
                        })
                        .collect()
                }),
            )
        }
        Parser::Etcd { prefix } => Some(registry::parse_etcd_entry(prefix, entry).map(|d| {
            vec![
                Instance::from_definition(d, source, entry.key.clone()).at_revision(entry.revision),
            ]
        })),
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// Merges the sources in order into a catalog (without a version: the caller decides whether
/// anything changed). Collisions: the first source in configuration order wins; inside a
/// source, the document whose key sorts first.
pub(crate) fn merge(
    sources: &[&SourceState],
) -> (BTreeMap<String, Arc<Instance>>, Vec<SourceStatus>) {
    let mut instances: BTreeMap<String, Arc<Instance>> = BTreeMap::new();
    let mut statuses = Vec::with_capacity(sources.len());
    for source in sources {
        let mut contributed = 0;
        let mut shadowed = BTreeSet::new();
        for instance in source.documents.values().flatten() {
            if instances.contains_key(&instance.id) {
                shadowed.insert(instance.id.clone());
            } else {
                instances.insert(instance.id.clone(), Arc::clone(instance));
                contributed += 1;
            }
        }
        statuses.push(SourceStatus {
            name: source.name.clone(),
            kind: source.kind,
            synced: source.synced,
            stale_since: source.stale_since,
            last_error: source.last_error.clone(),
            instances: contributed,
            invalid: source.invalid.values().cloned().collect(),
            shadowed: shadowed.into_iter().collect(),
        });
    }
    (instances, statuses)
}

/// Builds the next catalog from `sources`, or `None` when it would equal `current`.
pub(crate) fn next_catalog(current: &Catalog, sources: &[&SourceState]) -> Option<Catalog> {
    let (instances, statuses) = merge(sources);
    let mut candidate = Catalog::new(current.version(), instances, statuses);
    if candidate == *current {
        return None;
    }
    for status in candidate.sources() {
        let before = current.sources().iter().find(|s| s.name == status.name);
        if !status.shadowed.is_empty() && before.map(|b| &b.shadowed) != Some(&status.shadowed) {
            tracing::warn!(
                source = %status.name,
                ids = ?status.shadowed,
                "instance ids already declared by an earlier source (or document) are ignored here"
            );
        }
    }
    candidate.set_version(current.version() + 1);
    Some(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn static_source(name: &str, ids: &[(&str, u16)]) -> SourceState {
        SourceState::with_instances(
            name.into(),
            ids.iter()
                .map(|(id, port)| Instance {
                    id: (*id).into(),
                    service: "web".into(),
                    address: "127.0.0.1".into(),
                    port: *port,
                    tags: vec![],
                    meta: BTreeMap::new(),
                    checks: vec![],
                    source: name.into(),
                    origin: format!("config[{id}]"),
                    revision: 0,
                })
                .collect(),
        )
    }

    #[test]
    fn first_source_wins_a_collision() {
        let (a, b) = (
            static_source("a", &[("x", 1), ("y", 2)]),
            static_source("b", &[("y", 3), ("z", 4)]),
        );
        let sources = [&a, &b];
        let catalog = next_catalog(&Catalog::empty(), &sources).expect("changed");
        assert_eq!(catalog.version(), 1);
        assert_eq!(catalog.get("y").map(|i| i.port), Some(2));
        assert_eq!(catalog.sources()[1].shadowed, ["y"]);
        assert_eq!(catalog.sources()[1].instances, 1);
        assert!(
            next_catalog(&catalog, &sources).is_none(),
            "no change, no version"
        );
    }

    #[test]
    fn a_malformed_file_is_skipped_and_replaces_its_old_instances() {
        let mut source = SourceState::new(
            "files".into(),
            SourceKind::File,
            Parser::File { dir: "/reg".into() },
        );
        source.apply(WatchEvent::Snapshot {
            entries: vec![
                KvEntry::new("a.json", r#"{"service": {"name": "web", "id": "a"}}"#, 1),
                KvEntry::new("b.json", r#"{"service": {"name": "web", "id": "b"}}"#, 1),
                KvEntry::new("notes.txt", "not a definition", 1),
            ],
            revision: 1,
        });
        source.apply(WatchEvent::Put(KvEntry::new(
            "b.json",
            "{\n  \"service\": {",
            2,
        )));
        let (instances, statuses) = merge(&[&source]);
        assert_eq!(instances.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(statuses[0].invalid.len(), 1);
        assert!(
            statuses[0].invalid[0]
                .to_string()
                .starts_with("/reg/b.json:2:"),
            "{}",
            statuses[0].invalid[0]
        );
    }
}
