//! Key/value sources for Sluice — the process environment, files on disk and etcd v3 — behind one
//! small API (`get`, `list(prefix)`, `watch(prefix)`), plus the service-registry format that the
//! sidecar writes and discovery reads.
//!
//! Contract:
//! - Keys are UTF-8 strings, `/`-separated by convention; values are bytes ([`KvEntry`]).
//! - [`KvSource::watch`] returns a [`KvWatch`]: first a full [`WatchEvent::Snapshot`] of the
//!   prefix, then individual puts and deletes. The watch owns reconnection: on an outage it
//!   reports [`WatchEvent::Unavailable`] once, retries with jittered exponential backoff, and
//!   resumes from the last revision it delivered (etcd), or sends a fresh snapshot when the
//!   revision was compacted. Consumers never see a half-applied state.
//! - [`KvMirror`] keeps a watched prefix in memory for synchronous readers (template rendering,
//!   the Wasm policy host's `kv-get`) and reports which keys each event changed.
//! - [`KvLayers`] is the one layering of sources both the proxy binary (`[[kv]]`) and the
//!   sidecar use: [`KvLayer`]s in order, the first holding a key wins. Each layer's watch task
//!   applies events to its mirror and hands a [`LayerEvent`] (changed keys, and
//!   unavailable/restored/synced) to a sink the caller supplies; dropping a layer stops its
//!   watch. Configuration types stay with the callers, which map them to a [`KvSource`], a
//!   prefix and [`WatchOptions`].
//! - etcd is spoken through its JSON gateway over plain HTTP/1.1 ([`etcd`], [`http`]): no gRPC
//!   stack, so the sidecar stays small and starts fast. Every network call has a timeout with a
//!   default.
//! - [`registry`] fixes the service-definition format: Consul-style JSON files in a directory,
//!   and JSON values under an etcd prefix bound to a lease. See `docs/registry-format.md`.
//! - Errors are typed ([`KvError`]); a file that cannot be parsed is reported with
//!   `path:line:col`; nothing here panics on bad input.

mod entry;
mod error;
pub mod etcd;
mod file;
pub mod http;
mod layers;
mod mirror;
pub mod registry;
mod source;

pub use entry::{KvEntry, WatchEvent};
pub use error::KvError;
pub use etcd::{EtcdClient, EtcdOptions};
pub use file::{FileSource, flatten_document};
pub use layers::{KvLayer, KvLayers, LayerEvent, LayerStatus, NotSynced};
pub use mirror::KvMirror;
pub use source::{
    Backoff, DEFAULT_LIVENESS_INTERVAL, DEFAULT_POLL_INTERVAL, EnvSource, EtcdSource, KvSource,
    KvWatch, WatchOptions,
};
