//! Answers a `request` policy let the host give again (`cache-answer`), so that a request like
//! an earlier one costs a table lookup instead of a call into WebAssembly.
//!
//! An answer is keyed by everything the call that gave it read: the request parts it asked
//! for and the KV keys it looked up (by the view's generation when it keeps one, else by the
//! values the call saw, hashed). The parts a call read form its *shape*; a policy's code paths give it a few shapes,
//! and a lookup tries each. The caller keeps one [`AnswerMemory`] per data-plane thread, so
//! lookups take no lock shared between threads. A new version of a policy (a reload) forgets
//! what the previous one answered.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Instant;

use crate::bindings::types::{Action, HeaderEdit};
use crate::kv::KvView;
use crate::policy::{PolicySlot, PolicyVersion};
use crate::reads::{Part, ReadLog, kv_value_hash};
use crate::request_view::RequestView;

/// Shapes kept per policy; reads beyond these are not remembered.
const MAX_SHAPES: usize = 8;
/// Bytes of keys and answers kept per policy and thread; past this the memory starts over.
const MAX_BYTES: usize = 1 << 20;

/// The answers a thread may give again, per policy. Create one per data-plane thread and pass
/// it to [`crate::RequestHandle::on_request_view`] with every request.
#[derive(Debug, Default)]
pub struct AnswerMemory {
    policies: Vec<PolicyAnswers>,
    /// The reads of the last call, taken out of the guest's store (keeps its capacity).
    pub(crate) reads: ReadLog,
    /// Answers given again so far.
    pub(crate) reused: u64,
}

/// One policy's remembered answers, valid for one version of it.
#[derive(Debug)]
pub(crate) struct PolicyAnswers {
    slot: Weak<PolicySlot>,
    version: Weak<PolicyVersion>,
    shapes: Vec<Shape>,
    entries: HashMap<Box<[u8]>, Remembered>,
    bytes: usize,
    /// The key being built (keeps its capacity).
    key: Vec<u8>,
}

/// What a call read, in a canonical order.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    parts: Vec<Part>,
    kv_keys: Vec<String>,
}

#[derive(Debug)]
struct Remembered {
    action: Action,
    until: Instant,
    bytes: usize,
}

impl AnswerMemory {
    /// An empty memory.
    pub fn new() -> Self {
        AnswerMemory::default()
    }

    /// How many answers this memory has given again.
    pub fn reused(&self) -> u64 {
        self.reused
    }

    /// Answers remembered now, over every policy.
    pub fn len(&self) -> usize {
        self.policies.iter().map(|p| p.entries.len()).sum()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `slot`'s answers as of `version`: forgotten when the version changed.
    pub(crate) fn of(
        &mut self,
        slot: &Arc<PolicySlot>,
        version: &Arc<PolicyVersion>,
    ) -> &mut PolicyAnswers {
        let at = self
            .policies
            .iter()
            .position(|p| std::ptr::eq(p.slot.as_ptr(), Arc::as_ptr(slot)));
        let at = at.unwrap_or_else(|| {
            // Policies removed from the configuration leave their answers behind: drop them.
            self.policies.retain(|p| p.slot.strong_count() > 0);
            self.policies.push(PolicyAnswers::new(slot, version));
            self.policies.len() - 1
        });
        let answers = &mut self.policies[at];
        if !std::ptr::eq(answers.version.as_ptr(), Arc::as_ptr(version)) {
            *answers = PolicyAnswers::new(slot, version);
        }
        answers
    }
}

impl PolicyAnswers {
    fn new(slot: &Arc<PolicySlot>, version: &Arc<PolicyVersion>) -> Self {
        PolicyAnswers {
            slot: Arc::downgrade(slot),
            version: Arc::downgrade(version),
            shapes: Vec::new(),
            entries: HashMap::new(),
            bytes: 0,
            key: Vec::new(),
        }
    }

    /// An answer given earlier to a request that agrees with `request` on everything that
    /// answer's call read, if one is still valid at `now`.
    pub(crate) fn recall(
        &mut self,
        request: &RequestView,
        kv: &dyn KvView,
        kv_generation: Option<u64>,
        now: Instant,
    ) -> Option<Action> {
        for (index, shape) in self.shapes.iter().enumerate() {
            let state = kv_generation.map_or(KvState::Now(kv), KvState::Generation);
            write_key(&mut self.key, index, shape, request, state);
            match self.entries.get(self.key.as_slice()) {
                Some(remembered) if remembered.until > now => {
                    return Some(remembered.action.clone());
                }
                _ => {}
            }
        }
        None
    }

    /// Keeps `action`, which a call that read `reads` let the host reuse, for `request`'s key.
    /// `kv_generation` is the one read before the call, so that a change during the call
    /// keys the answer to the state before it (and it is not found after).
    pub(crate) fn remember(
        &mut self,
        reads: &ReadLog,
        request: &RequestView,
        kv_generation: Option<u64>,
        action: &Action,
        now: Instant,
    ) {
        let Some(reuse_for) = reads.reuse_for.filter(|d| !d.is_zero()) else {
            return;
        };
        let shape = Shape::of(reads);
        let index = match self.shapes.iter().position(|s| *s == shape) {
            Some(index) => index,
            None if self.shapes.len() < MAX_SHAPES => {
                self.shapes.push(shape);
                self.shapes.len() - 1
            }
            None => return,
        };
        let state = kv_generation.map_or(KvState::Seen(&reads.kv_reads), KvState::Generation);
        write_key(&mut self.key, index, &self.shapes[index], request, state);
        let bytes = 2 * self.key.len() + action_bytes(action);
        if self.bytes + bytes > MAX_BYTES {
            self.entries.clear();
            self.bytes = 0;
        }
        let remembered = Remembered {
            action: action.clone(),
            until: now + reuse_for,
            bytes,
        };
        self.bytes += bytes;
        let key = self.key.clone().into_boxed_slice();
        if let Some(replaced) = self.entries.insert(key, remembered) {
            self.bytes -= replaced.bytes;
        }
    }
}

impl Shape {
    fn of(reads: &ReadLog) -> Shape {
        let mut parts = reads.parts.clone();
        parts.sort_unstable();
        parts.dedup();
        let mut kv_keys: Vec<String> = reads.kv_reads.iter().map(|(k, _)| k.clone()).collect();
        kv_keys.sort_unstable();
        Shape { parts, kv_keys }
    }
}

/// What a key says of the KV state: the view's generation, or a hash of each value read — as
/// the call saw it (when remembering) or as the view holds it now (when looking up).
#[derive(Clone, Copy)]
enum KvState<'a> {
    Generation(u64),
    Seen(&'a [(String, u64)]),
    Now(&'a dyn KvView),
}

/// The key of a request under `shape` (number `index`): the parts the shape names, then the KV
/// state it read.
fn write_key(
    key: &mut Vec<u8>,
    index: usize,
    shape: &Shape,
    request: &RequestView,
    kv: KvState<'_>,
) {
    key.clear();
    key.push(index as u8);
    for part in &shape.parts {
        request.write_part(part, key);
    }
    for name in &shape.kv_keys {
        key.extend_from_slice(&kv.state_of(name).to_le_bytes());
    }
}

impl KvState<'_> {
    /// What the key holds for the KV key `name`.
    fn state_of(self, name: &str) -> u64 {
        match self {
            KvState::Generation(generation) => generation,
            KvState::Seen(reads) => reads.iter().find(|(k, _)| k == name).map_or(0, |(_, h)| *h),
            KvState::Now(view) => kv_value_hash(view.get(name).as_deref()),
        }
    }
}

/// About what an answer keeps on the heap.
fn action_bytes(action: &Action) -> usize {
    let edits = |edits: &[HeaderEdit]| -> usize {
        edits
            .iter()
            .map(|edit| match edit {
                HeaderEdit::Set((n, v)) | HeaderEdit::Append((n, v)) => 48 + n.len() + v.len(),
                HeaderEdit::Remove(n) => 48 + n.len(),
            })
            .sum()
    };
    128 + match action {
        Action::Forward(forward) => {
            edits(&forward.headers)
                + forward.path.as_ref().map_or(0, String::len)
                + forward.service.as_ref().map_or(0, String::len)
                + forward.response_context.as_ref().map_or(0, String::len)
        }
        Action::Reply(reply) => {
            reply.body.len()
                + reply
                    .headers
                    .iter()
                    .map(|(n, v)| 48 + n.len() + v.len())
                    .sum::<usize>()
        }
    }
}
