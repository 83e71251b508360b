//! What one `on-request` call read from the host: the request parts it asked for and the KV keys
//! it looked up, and whether it let the host give its answer again (`cache-answer`). Recorded
//! on every call, because a guest reads before it decides whether its answer may be reused.

use std::time::Duration;

/// Longest a guest may let the host give one answer again.
pub const MAX_ANSWER_REUSE: Duration = Duration::from_secs(600);

/// A part of the request a call read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Part {
    Method,
    Scheme,
    Host,
    Path,
    Query,
    /// Every value of the field with this (lower-case) name.
    Field(Box<str>),
    AllFields,
    Peer,
    Route,
}

/// The reads of the call in progress; cleared when a call begins (keeping its capacity).
#[derive(Debug, Default)]
pub(crate) struct ReadLog {
    pub(crate) parts: Vec<Part>,
    /// Each KV key read, with a hash of the value the call saw ([`kv_value_hash`]).
    pub(crate) kv_reads: Vec<(String, u64)>,
    /// What the guest passed to `cache-answer`, capped at [`MAX_ANSWER_REUSE`].
    pub(crate) reuse_for: Option<Duration>,
}

impl ReadLog {
    pub(crate) fn clear(&mut self) {
        self.parts.clear();
        self.kv_reads.clear();
        self.reuse_for = None;
    }

    pub(crate) fn read(&mut self, part: Part) {
        self.parts.push(part);
    }

    /// Takes the name the guest passed (already a copy of its own), so recording allocates
    /// nothing more.
    pub(crate) fn read_field(&mut self, mut name: String) {
        name.make_ascii_lowercase();
        self.parts.push(Part::Field(name.into_boxed_str()));
    }

    pub(crate) fn read_kv(&mut self, key: String, value: Option<&str>) {
        if !self.kv_reads.iter().any(|(read, _)| *read == key) {
            self.kv_reads.push((key, kv_value_hash(value)));
        }
    }

    pub(crate) fn allow_reuse(&mut self, ttl_ms: u32) {
        self.reuse_for = Some(Duration::from_millis(ttl_ms.into()).min(MAX_ANSWER_REUSE));
    }
}

/// A hash of a KV value as a call saw it (absent and empty differ). Unseeded: KV values are the
/// operator's, not a client's, so nobody picks collisions, and two differing values share a
/// hash by chance with odds of 2^-64.
pub(crate) fn kv_value_hash(value: Option<&str>) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&value, &mut hasher);
    std::hash::Hasher::finish(&hasher)
}
