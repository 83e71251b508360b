use std::borrow::Cow;
use std::sync::Arc;

/// One key and its value as a source holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    pub value: Vec<u8>,
    /// The source's version of this key: etcd's `mod_revision`; for files and the environment a
    /// counter that grows with every change the watcher saw.
    pub revision: i64,
}

impl KvEntry {
    pub fn new(key: impl Into<String>, value: impl Into<Vec<u8>>, revision: i64) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
            revision,
        }
    }

    /// The value as text; bytes that are not UTF-8 become U+FFFD rather than an error, because
    /// templates and policies deal in text.
    pub fn value_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.value)
    }
}

/// What a [`crate::KvWatch`] delivers.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    /// The complete state of the watched prefix. Always the first event; sent again after a
    /// resynchronisation (etcd compaction, a file source that was unreadable and came back).
    Snapshot {
        entries: Vec<KvEntry>,
        revision: i64,
    },
    /// A key was created or changed.
    Put(KvEntry),
    /// A key was removed.
    Delete { key: String, revision: i64 },
    /// The source cannot be read right now. The last delivered state is still the best known
    /// one; the watch keeps retrying and resumes with events (or a snapshot) when it can.
    Unavailable { error: Arc<crate::KvError> },
    /// The source answers again after an [`WatchEvent::Unavailable`].
    Restored,
}
