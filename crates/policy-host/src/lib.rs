//! Runs Sluice's WebAssembly policies: the host side of the contract in `wit/policy.wit`.
//!
//! Contract:
//! - [`PolicyHost::apply_config`] loads `[[policy]]` entries: each module is compiled once per
//!   content (SHA-256), checked against its world (a mismatch names the missing export or the
//!   mistyped one), instantiated and `configure`d — all off the data path — then swapped in
//!   atomically. A module failing any step is rejected and the previous version keeps serving.
//!   [`PolicyHost::reload`] (the admin API) and [`PolicyWatcher`] (file changes) do the same.
//! - A policy comes from a `.wasm` file or, as `builtin:NAME`, from the [`BuiltinModules`] the
//!   embedding binary registers in [`HostConfig::builtins`]; a built-in one is never watched
//!   and a reload leaves it as it is (its bytes cannot change).
//! - The data plane calls through typed handles — [`AuthzHandle::authorize`],
//!   [`HealthHandle::evaluate`], [`RoutingHandle::build_routes`],
//!   [`RequestHandle::on_request`] — which never panic and never
//!   block on a lock shared by all threads: instances come from a lock-free pool per version.
//! - Each call runs under its policy's limits: an epoch deadline, a memory cap, an input size
//!   bound. A trap or timeout discards the instance, is counted, feeds the crash budget
//!   (repeated crashes suspend the policy with backoff), and returns the failure mode's answer
//!   as a typed outcome: authz fails closed (or open if configured), health keeps the previous
//!   verdict (stale), routing keeps the last good table, a request policy refuses the request
//!   (or forwards it unchanged if configured open). A request policy's answer is checked before
//!   the proxy acts on it: framing and hop-by-hop fields, CR/LF, reply size, services outside the
//!   route's allowed list are refused as a failed call.
//! - A `request` policy reads the request on demand through the `http.request` resource: the
//!   caller fills a reusable [`RequestView`], lent to the guest for the call, and only the parts
//!   the guest asks for are copied into it.
//! - A `request` policy may let the host give an answer again (`cache-answer`): through
//!   [`RequestHandle::on_request_remembered`] and a caller-owned [`AnswerMemory`] per thread,
//!   later requests that agree on every part the call read (request parts, fields, KV keys by
//!   the [`KvView`]'s generation) get it without a call, until its time is up or a reload.
//! - Modules built against contracts 0.1.0 (routing, health, authz) and 0.2.0 load unchanged:
//!   the `host` imports are linked under every version's name, and a 0.2.0 `request` module
//!   (the request copied whole) is recognised by its export's type and called that way.
//! - Guests get no files, environment, arguments or network: only their inputs, their config,
//!   and the `host` imports (log, clock, [`KvView`] reads).
//! - [`check::check_module`] is `sluice policy check` (it shows what the guest logged);
//!   [`cases::run_cases`] is `sluice policy test` (recorded inputs against expected answers);
//!   [`PolicyHost::list`] is `GET /api/policies`. Metric names are in [`metrics`].
//! - A trap is reported on one line with the guest's function names (its backtrace) and what
//!   it wrote to stderr; a module that is not a component says why in one line.

mod answer_memory;
mod bindings;
mod budget;
mod builtin;
pub mod cases;
pub mod check;
mod engine;
mod error;
mod host;
mod kv;
mod log_capture;
pub mod metrics;
mod nonblocking_io;
mod policy;
mod reads;
mod request;
mod request_view;
mod watch;
mod world_call;

pub use answer_memory::AnswerMemory;
pub use bindings::types;
pub use budget::CrashBudgetConfig;
pub use builtin::BuiltinModules;
pub use engine::HostConfig;
pub use error::{CallError, HostError, LoadError, ModuleError};
pub use host::{PolicyHost, PolicyState, PolicyStatus, ReloadEntry, ReloadOutcome, ReloadReport};
pub use kv::{KvView, MemoryKv};
pub use log_capture::GuestLogLine;
pub use policy::{
    AuthzHandle, AuthzOutcome, HealthHandle, HealthOutcome, RouteTable, RoutingHandle,
    RoutingOutcome,
};
pub use reads::MAX_ANSWER_REUSE;
pub use request::{
    FieldFilter, MAX_HEADER_EDITS, MAX_REPLY_BODY, MAX_RESPONSE_CONTEXT, RequestHandle,
    RequestOutcome,
};
pub use request_view::{RequestView, empty_peer, lossy_text, set_text};
pub use watch::{PolicyWatcher, WatchError};

impl PolicyHost {
    pub(crate) fn engine(&self) -> &engine::EngineShared {
        self.engine_shared()
    }
}
