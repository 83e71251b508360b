//! The `file` source: a directory where every file is a key (its path relative to the directory,
//! `/`-separated) and its content the value, or one TOML/JSON document whose nested tables are
//! flattened into `/`-separated keys.
//!
//! Changes are found by polling (default every second), comparing each file's size, mtime and
//! inode and re-reading only what moved. Polling rather than inotify because KV directories are
//! often bind mounts, network filesystems or Kubernetes volumes updated by swapping a symlink —
//! all places where inotify misses events — and because a few `stat` calls a second cost less
//! than the dependency.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{KvEntry, KvError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Directory,
    Toml,
    Json,
}

/// Files on disk as a KV source.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    layout: Layout,
    /// (size, mtime ns, inode) and value per key, so a poll re-reads only changed files.
    cache: BTreeMap<String, (Fingerprint, Vec<u8>)>,
    document_fingerprint: Option<Fingerprint>,
    /// Keys the last directory read found written again with the same bytes.
    rewritten: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    size: u64,
    mtime_ns: i128,
    inode: u64,
}

impl Fingerprint {
    fn of(metadata: &std::fs::Metadata) -> Self {
        Self {
            size: metadata.len(),
            mtime_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
            inode: metadata.ino(),
        }
    }
}

impl FileSource {
    /// A directory, or a `.toml` / `.json` file (decided by the extension; a directory is
    /// recognised by being one when first read).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let layout = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Layout::Toml,
            Some("json") => Layout::Json,
            _ => Layout::Directory,
        };
        Self {
            path,
            layout,
            cache: BTreeMap::new(),
            document_fingerprint: None,
            rewritten: Vec::new(),
        }
    }

    /// Keys whose file the last [`FileSource::load`] of a directory found replaced or written
    /// again with the same bytes: a writer putting a key again (a registrant re-registering
    /// after a restart), which a comparison of values cannot see.
    pub fn rewritten(&self) -> &[String] {
        &self.rewritten
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the whole source now. A file that cannot be parsed fails the whole read (with
    /// `path:line:col`), so a half-written document never becomes visible.
    pub fn load(&mut self) -> Result<BTreeMap<String, Vec<u8>>, KvError> {
        match self.layout {
            Layout::Directory => self.load_directory(),
            Layout::Toml | Layout::Json => self.load_document(),
        }
    }

    fn load_document(&mut self) -> Result<BTreeMap<String, Vec<u8>>, KvError> {
        let io = |source| KvError::Io {
            path: self.path.clone(),
            source,
        };
        let metadata = std::fs::metadata(&self.path).map_err(io)?;
        let fingerprint = Fingerprint::of(&metadata);
        if self.document_fingerprint == Some(fingerprint) {
            return Ok(self
                .cache
                .iter()
                .map(|(k, (_, v))| (k.clone(), v.clone()))
                .collect());
        }
        let text = std::fs::read_to_string(&self.path).map_err(io)?;
        let flattened = flatten_document(&self.path, &text)?;
        self.cache = flattened
            .iter()
            .map(|(k, v)| (k.clone(), (fingerprint, v.clone())))
            .collect();
        self.document_fingerprint = Some(fingerprint);
        Ok(flattened)
    }

    fn load_directory(&mut self) -> Result<BTreeMap<String, Vec<u8>>, KvError> {
        self.rewritten.clear();
        let mut found = BTreeMap::new();
        let mut stack = vec![(self.path.clone(), String::new())];
        while let Some((dir, key_prefix)) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|source| KvError::Io {
                path: dir.clone(),
                source,
            })?;
            for entry in entries {
                let entry = entry.map_err(|source| KvError::Io {
                    path: dir.clone(),
                    source,
                })?;
                let name = entry.file_name().to_string_lossy().into_owned();
                // Dot files are temporaries (ours, editors') and Kubernetes' `..data` links.
                if name.starts_with('.') {
                    continue;
                }
                let path = entry.path();
                let key = format!("{key_prefix}{name}");
                // `metadata` follows symlinks, so a linked file or directory counts as itself.
                let metadata = match std::fs::metadata(&path) {
                    Ok(metadata) => metadata,
                    // Removed between listing and stat, or a dangling link: not a key.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(source) => return Err(KvError::Io { path, source }),
                };
                if metadata.is_dir() {
                    stack.push((path, format!("{key}/")));
                    continue;
                }
                if !metadata.is_file() {
                    continue;
                }
                let fingerprint = Fingerprint::of(&metadata);
                let value = match self.cache.get(&key) {
                    Some((known, value)) if *known == fingerprint => value.clone(),
                    _ => {
                        let mut value = match std::fs::read(&path) {
                            Ok(value) => value,
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                            Err(source) => return Err(KvError::Io { path, source }),
                        };
                        // `echo value > key` is how people write these; the newline is not data.
                        if value.last() == Some(&b'\n') {
                            value.pop();
                        }
                        if self
                            .cache
                            .get(&key)
                            .is_some_and(|(_, known)| *known == value)
                        {
                            self.rewritten.push(key.clone());
                        }
                        value
                    }
                };
                found.insert(key, (fingerprint, value));
            }
        }
        let values = found
            .iter()
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect();
        self.cache = found;
        Ok(values)
    }
}

/// Flattens a TOML or JSON document (by `path`'s extension) into `/`-separated keys: nested
/// tables become path segments, strings are taken as they are, numbers and booleans in their
/// text form, arrays and empty tables as compact JSON, JSON `null` as the empty string.
pub fn flatten_document(path: &Path, text: &str) -> Result<BTreeMap<String, Vec<u8>>, KvError> {
    let is_json = path.extension().and_then(|e| e.to_str()) == Some("json");
    let document: Value = if is_json {
        serde_json::from_str(text).map_err(|e| KvError::Parse {
            path: path.to_owned(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?
    } else {
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|span| sluice_text::line_col(text.as_bytes(), span.start))
                .unwrap_or((1, 1));
            KvError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().to_owned(),
            }
        })?;
        serde_json::to_value(table).map_err(|e| KvError::Parse {
            path: path.to_owned(),
            line: 1,
            column: 1,
            message: e.to_string(),
        })?
    };
    let Value::Object(root) = document else {
        return Err(KvError::Parse {
            path: path.to_owned(),
            line: 1,
            column: 1,
            message: "the document must be a table/object at the top".into(),
        });
    };
    let mut out = BTreeMap::new();
    let mut stack: Vec<(String, Value)> = root.into_iter().collect();
    while let Some((key, value)) = stack.pop() {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (child, value) in map {
                    stack.push((format!("{key}/{child}"), value));
                }
            }
            Value::String(text) => {
                out.insert(key, text.into_bytes());
            }
            Value::Null => {
                out.insert(key, Vec::new());
            }
            Value::Bool(_) | Value::Number(_) | Value::Array(_) | Value::Object(_) => {
                out.insert(key, value.to_string().into_bytes());
            }
        }
    }
    Ok(out)
}

/// Turns a map read from a file source into entries with the given revision.
pub(crate) fn entries(map: &BTreeMap<String, Vec<u8>>, revision: i64) -> Vec<KvEntry> {
    map.iter()
        .map(|(k, v)| KvEntry::new(k.clone(), v.clone(), revision))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_documents_flatten_to_slash_keys() {
        let text = "[web]\ndebug = true\nallowed_hosts = \"localhost, 33.10.0.100\"\nport = 8000\napps = [\"a\", \"b\"]\n[web.db]\nhost = \"mongo-primary\"\n";
        let map = flatten_document(Path::new("kv.toml"), text).expect("valid toml");
        assert_eq!(map["web/debug"], b"true");
        assert_eq!(map["web/allowed_hosts"], b"localhost, 33.10.0.100");
        assert_eq!(map["web/port"], b"8000");
        assert_eq!(map["web/apps"], br#"["a","b"]"#);
        assert_eq!(map["web/db/host"], b"mongo-primary");
    }

    #[test]
    fn bad_documents_report_line_and_column() {
        let err = flatten_document(Path::new("kv.toml"), "[web]\ndebug = = true\n")
            .expect_err("invalid toml");
        let text = err.to_string();
        assert!(text.starts_with("kv.toml:2:"), "{text}");
        let err = flatten_document(Path::new("kv.json"), "{\n  \"a\": 1,\n  \"b\": }\n")
            .expect_err("invalid json");
        assert!(err.to_string().starts_with("kv.json:3:"), "{err}");
        let err = flatten_document(Path::new("kv.json"), "[1]").expect_err("not an object");
        assert!(err.to_string().contains("table/object"), "{err}");
    }
}
