//! A loaded policy: its versions, its instance pool, its calls with limits, and the typed
//! outcomes that tell the caller whether the policy answered or the failure mode did.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use crossbeam_queue::ArrayQueue;
use serde::Serialize;
use sluice_config::{FailureMode, PolicyConfig, PolicyWorld};
use wasmtime::{ResourceLimiter, Store, Trap, WasmBacktrace};

use crate::bindings::types::{
    Decision, Instance, Peer, ProbeResult, Route, RouteEntry, RouteError, Verdict,
};
use crate::bindings::{Authz, Health, Request, RequestCopied, Routing};
use crate::budget::CrashBudget;
use crate::builtin::module_bytes;
use crate::engine::{CompiledModule, EngineShared, GuestState, WorldPre, deadline_ticks, unix_ms};
use crate::error::{CallError, LoadError, one_line};
use crate::metrics as names;

/// Longest deny reason or down reason kept from a guest.
const MAX_REASON_BYTES: usize = 1024;

/// A guest instance with its own store, ready for calls.
struct PooledInstance {
    store: Store<GuestState>,
    bindings: WorldBindings,
}

pub(crate) enum WorldBindings {
    Routing(Routing),
    Health(Health),
    Authz(Authz),
    Request(Request),
    RequestCopied(RequestCopied),
}

/// Why a new instance could not be made ready.
enum InstanceError {
    Configure(String),
    Failed(CallError),
}

/// One loaded version of a policy: module, config, and its idle instances. Calls in flight
/// keep their version alive (`Arc`), so a reload never pulls an instance from under a call.
pub(crate) struct PolicyVersion {
    pub(crate) module: Arc<CompiledModule>,
    pub(crate) config: Arc<PolicyConfig>,
    config_json: String,
    pub(crate) loaded_at: SystemTime,
    loaded_at_ms: u64,
    call_ticks: u64,
    configure_ticks: u64,
    /// Idle instances. Lock-free: a call pops one (or makes one), and pushes it back after.
    idle: ArrayQueue<PooledInstance>,
    name: Arc<str>,
}

impl PolicyVersion {
    pub(crate) fn load(
        engine: &EngineShared,
        name: &Arc<str>,
        config: &Arc<PolicyConfig>,
    ) -> Result<Arc<PolicyVersion>, LoadError> {
        let ceiling = engine.config.max_memory_ceiling_bytes;
        if config.limits.max_memory_bytes > ceiling {
            return Err(LoadError::MemoryCap {
                asked: config.limits.max_memory_bytes,
                ceiling,
            });
        }
        let bytes = module_bytes(&config.file, &engine.config.builtins)?;
        let module = engine
            .compile(&bytes, Some(config.world))
            .map_err(|source| LoadError::Module {
                module: config.file.clone(),
                source,
            })?;
        let loaded_at = SystemTime::now();
        let config_json = match &config.config {
            serde_json::Value::Null => "{}".to_owned(),
            value => value.to_string(),
        };
        let tick = engine.config.epoch_tick;
        let version = Arc::new(PolicyVersion {
            module,
            config: Arc::clone(config),
            config_json,
            loaded_at,
            loaded_at_ms: unix_ms(loaded_at),
            call_ticks: deadline_ticks(config.limits.timeout, tick),
            configure_ticks: deadline_ticks(engine.config.configure_timeout, tick),
            idle: ArrayQueue::new(engine.config.pool_capacity.max(1)),
            name: Arc::clone(name),
        });
        // Every instance runs `configure` before serving; the first one proves the config.
        for _ in 0..engine
            .config
            .prewarm
            .clamp(1, engine.config.pool_capacity.max(1))
        {
            let instance = version.new_instance(engine).map_err(|e| match e {
                InstanceError::Configure(message) => LoadError::Configure(message),
                InstanceError::Failed(error) => LoadError::ConfigureFailed(error),
            })?;
            let _ = version.idle.push(instance);
        }
        Ok(version)
    }

    /// Whether loading `config` would give this same version (same bytes, config and limits).
    pub(crate) fn same_as(&self, sha256: &[u8; 32], config: &PolicyConfig) -> bool {
        &self.module.sha256 == sha256 && *self.config == *config
    }

    fn new_instance(&self, engine: &EngineShared) -> Result<PooledInstance, InstanceError> {
        let limits = self.config.limits;
        let state = GuestState::new(
            Arc::clone(&engine.kv),
            Arc::clone(&self.name),
            self.loaded_at_ms,
            limits.max_memory_bytes,
        );
        let mut store = Store::new(&engine.engine, state);
        store.limiter(|state| state as &mut dyn ResourceLimiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(self.configure_ticks);
        let timeout = engine.config.configure_timeout;
        let failed = |store: &Store<GuestState>, e: wasmtime::Error| {
            InstanceError::Failed(classify(&e, store.data(), timeout, limits.max_memory_bytes))
        };
        let bindings = match &self.module.pre {
            WorldPre::Routing(pre) => pre.instantiate(&mut store).map(WorldBindings::Routing),
            WorldPre::Health(pre) => pre.instantiate(&mut store).map(WorldBindings::Health),
            WorldPre::Authz(pre) => pre.instantiate(&mut store).map(WorldBindings::Authz),
            WorldPre::Request(pre) => pre.instantiate(&mut store).map(WorldBindings::Request),
            WorldPre::RequestCopied(pre) => pre
                .instantiate(&mut store)
                .map(WorldBindings::RequestCopied),
        };
        let bindings = match bindings {
            Ok(bindings) => bindings,
            Err(e) if e.downcast_ref::<Trap>().is_none() && !store.data().memory_denied => {
                return Err(InstanceError::Failed(CallError::Instantiate(format!(
                    "{e:#}"
                ))));
            }
            Err(e) => return Err(failed(&store, e)),
        };
        let configured = match &bindings {
            WorldBindings::Routing(b) => b.call_configure(&mut store, &self.config_json),
            WorldBindings::Health(b) => b.call_configure(&mut store, &self.config_json),
            WorldBindings::Authz(b) => b.call_configure(&mut store, &self.config_json),
            WorldBindings::Request(b) => b.call_configure(&mut store, &self.config_json),
            WorldBindings::RequestCopied(b) => b.call_configure(&mut store, &self.config_json),
        };
        match configured {
            Ok(Ok(())) => Ok(PooledInstance { store, bindings }),
            Ok(Err(message)) => Err(InstanceError::Configure(truncate(message))),
            Err(e) => Err(failed(&store, e)),
        }
    }
}

/// Turns a failed call into the reason the caller and the admin API see.
fn classify(
    error: &wasmtime::Error,
    state: &GuestState,
    timeout: Duration,
    max_memory: usize,
) -> CallError {
    if state.memory_denied {
        return CallError::MemoryLimit(max_memory);
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::Timeout(timeout),
        trap => {
            let mut detail = match trap {
                Some(trap) => trap.to_string(),
                None => one_line(&format!("{error}")),
            };
            let stderr = state.stderr_text();
            if !stderr.is_empty() {
                detail.push_str("; guest stderr: ");
                detail.push_str(&stderr_line(&stderr));
            }
            if let Some(backtrace) = error.downcast_ref::<WasmBacktrace>() {
                detail.push_str(&backtrace_line(backtrace));
            }
            CallError::Trap(truncate(detail))
        }
    }
}

/// A guest's stderr on one line, without Rust's hint about `RUST_BACKTRACE` (the host shows
/// the backtrace itself).
fn stderr_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("note: run with `RUST_BACKTRACE=1`"))
        .collect();
    one_line(&lines.join(" "))
}

/// Frames of the Rust runtime's panic and allocation machinery, left out of the innermost end
/// of a backtrace so the policy's own functions come first.
const RUNTIME_FRAME_PREFIXES: &[&str] = &[
    "std::",
    "core::",
    "alloc::",
    "__rust",
    "rust_panic",
    "rust_begin_unwind",
    "panic_abort::",
    "abort",
    "<std::",
    "<core::",
    "<alloc::",
];

/// Most frames named in a trap message.
const MAX_BACKTRACE_FRAMES: usize = 12;

/// `; backtrace (innermost first): f <- g <- …` with the guest's function names (from its
/// `name` section; `wasm-function[N]` without one) and source lines when it carries DWARF.
fn backtrace_line(backtrace: &WasmBacktrace) -> String {
    let frames = backtrace.frames();
    let name = |frame: &wasmtime::FrameInfo| -> String {
        let mut text = match frame.func_name() {
            Some(name) => demangled(name),
            None => format!("wasm-function[{}]", frame.func_index()),
        };
        if let Some(symbol) = frame.symbols().first()
            && let (Some(file), Some(line)) = (symbol.file(), symbol.line())
        {
            text.push_str(&format!(" ({file}:{line})"));
        }
        text
    };
    let runtime = frames
        .iter()
        .take_while(|frame| {
            frame.func_name().is_some_and(|name| {
                let name = demangled(name);
                RUNTIME_FRAME_PREFIXES
                    .iter()
                    .any(|prefix| name.starts_with(prefix))
            })
        })
        .count();
    // A trap inside the runtime alone (no policy frame after it) keeps every frame.
    let skipped = if runtime == frames.len() { 0 } else { runtime };
    let shown: Vec<String> = frames[skipped..]
        .iter()
        .take(MAX_BACKTRACE_FRAMES)
        .map(name)
        .collect();
    if shown.is_empty() {
        return String::new();
    }
    let mut note = String::new();
    if skipped > 0 {
        note.push_str(&format!(", {skipped} Rust runtime frames left out"));
    }
    let more = frames.len() - skipped - shown.len();
    let tail = if more > 0 {
        format!(" <- … {more} more")
    } else {
        String::new()
    };
    format!(
        "; backtrace (innermost first{note}): {}{tail}",
        shown.join(" <- ")
    )
}

/// A Rust symbol (legacy or v0 mangling) as a path without its hash; other names unchanged.
fn demangled(name: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(name))
}

pub(crate) fn truncate(mut text: String) -> String {
    if text.len() > MAX_REASON_BYTES {
        let mut cut = MAX_REASON_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// Counters behind the admin listing (the `metrics` facade cannot be read back).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) calls: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) traps: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) reused: AtomicU64,
}

struct SlotMetrics {
    calls: metrics::Counter,
    errors: metrics::Counter,
    traps: metrics::Counter,
    timeouts: metrics::Counter,
    duration: metrics::Histogram,
    reused: metrics::Counter,
    reloads: metrics::Counter,
    reload_failures: metrics::Counter,
}

impl SlotMetrics {
    fn new(name: &str, world: PolicyWorld) -> Self {
        let labels = [
            ("policy", name.to_owned()),
            ("world", world.as_str().to_owned()),
        ];
        SlotMetrics {
            calls: metrics::counter!(names::POLICY_CALLS, &labels),
            errors: metrics::counter!(names::POLICY_ERRORS, &labels),
            traps: metrics::counter!(names::POLICY_TRAPS, &labels),
            timeouts: metrics::counter!(names::POLICY_TIMEOUTS, &labels),
            duration: metrics::histogram!(names::POLICY_CALL_DURATION, &labels),
            reused: metrics::counter!(names::POLICY_ANSWERS_REUSED, &labels),
            reloads: metrics::counter!(names::POLICY_RELOADS, &labels),
            reload_failures: metrics::counter!(names::POLICY_RELOAD_FAILURES, &labels),
        }
    }
}

/// A named policy: the version serving now (swapped atomically on reload), what the config
/// asks for, counters, crash budget, and the last good route table.
pub(crate) struct PolicySlot {
    pub(crate) name: Arc<str>,
    pub(crate) world: PolicyWorld,
    /// What the configuration asks for; `reload` re-reads its file (a built-in never changes).
    pub(crate) desired: ArcSwap<PolicyConfig>,
    pub(crate) current: ArcSwapOption<PolicyVersion>,
    pub(crate) engine: Arc<EngineShared>,
    pub(crate) stats: Stats,
    metrics: SlotMetrics,
    pub(crate) budget: CrashBudget,
    last_good_routes: ArcSwapOption<RouteTable>,
    pub(crate) last_call_error: ArcSwapOption<String>,
    pub(crate) last_load_error: ArcSwapOption<String>,
}

impl PolicySlot {
    pub(crate) fn new(engine: &Arc<EngineShared>, config: PolicyConfig) -> Arc<Self> {
        Arc::new(PolicySlot {
            name: Arc::from(config.name.as_str()),
            world: config.world,
            metrics: SlotMetrics::new(&config.name, config.world),
            desired: ArcSwap::from_pointee(config),
            current: ArcSwapOption::empty(),
            engine: Arc::clone(engine),
            stats: Stats::default(),
            budget: CrashBudget::default(),
            last_good_routes: ArcSwapOption::empty(),
            last_call_error: ArcSwapOption::empty(),
            last_load_error: ArcSwapOption::empty(),
        })
    }

    /// Loads `config` (compiling off the data path), and swaps it in only if every step passed.
    pub(crate) fn install(&self, config: PolicyConfig) -> Result<Option<[u8; 32]>, LoadError> {
        let config = Arc::new(config);
        self.desired.store(Arc::clone(&config));
        match PolicyVersion::load(&self.engine, &self.name, &config) {
            Ok(version) => {
                let sha256 = version.module.sha256;
                let compile_ms = version.module.compile_time.as_millis() as u64;
                let from_compile_cache = version.module.from_compile_cache;
                self.current.store(Some(version));
                self.budget.reset();
                self.last_load_error.store(None);
                self.metrics.reloads.increment(1);
                tracing::info!(
                    policy = &*self.name,
                    world = self.world.as_str(),
                    compile_ms,
                    from_compile_cache,
                    "policy loaded"
                );
                Ok(Some(sha256))
            }
            Err(error) => {
                self.last_load_error
                    .store(Some(Arc::new(error.to_string())));
                self.metrics.reload_failures.increment(1);
                tracing::warn!(
                    policy = &*self.name,
                    "policy load rejected, previous version keeps serving: {error}"
                );
                Err(error)
            }
        }
    }

    pub(crate) fn failure_mode(&self) -> FailureMode {
        match &*self.current.load() {
            Some(version) => version.config.failure_mode,
            None => self.desired.load().failure_mode,
        }
    }

    /// Runs one call with the version's limits, recording counters and the crash budget.
    pub(crate) fn call<R>(
        &self,
        input_size: usize,
        invoke: impl FnOnce(&WorldBindings, &mut Store<GuestState>) -> Option<wasmtime::Result<R>>,
    ) -> Result<R, CallError> {
        let started = Instant::now();
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.metrics.calls.increment(1);
        let result = self.call_on_current(started, input_size, invoke);
        self.metrics
            .duration
            .record(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => self.budget.record_success(),
            Err(error) => self.record_failure(error),
        }
        result
    }

    fn call_on_current<R>(
        &self,
        started: Instant,
        input_size: usize,
        invoke: impl FnOnce(&WorldBindings, &mut Store<GuestState>) -> Option<wasmtime::Result<R>>,
    ) -> Result<R, CallError> {
        let current = self.current.load();
        let Some(version) = current.as_ref() else {
            return Err(CallError::NotLoaded);
        };
        let limit = self.engine.config.max_input_bytes;
        if input_size > limit {
            return Err(CallError::InputTooLarge {
                size: input_size,
                limit,
            });
        }
        let now_ms = started
            .saturating_duration_since(self.engine.started)
            .as_millis() as u64;
        self.budget.admit(now_ms).map_err(CallError::Suspended)?;
        let mut instance = match version.idle.pop() {
            Some(instance) => instance,
            None => version.new_instance(&self.engine).map_err(|e| match e {
                InstanceError::Configure(message) => CallError::Instantiate(message),
                InstanceError::Failed(error) => error,
            })?,
        };
        instance.store.set_epoch_deadline(version.call_ticks);
        instance.store.data_mut().begin_call();
        let limits = version.config.limits;
        match invoke(&instance.bindings, &mut instance.store) {
            Some(Ok(answer)) => {
                // A full pool means more instances exist than calls need: drop this one.
                let _ = version.idle.push(instance);
                Ok(answer)
            }
            // The instance is dropped: whatever state the guest was left in dies with it.
            Some(Err(error)) => Err(classify(
                &error,
                instance.store.data(),
                limits.timeout,
                limits.max_memory_bytes,
            )),
            None => Err(CallError::Instantiate(
                "module does not implement this world".into(),
            )),
        }
    }

    /// A request answered again from an answer the policy let the host reuse.
    pub(crate) fn record_reuse(&self) {
        self.stats.reused.fetch_add(1, Ordering::Relaxed);
        self.metrics.reused.increment(1);
    }

    fn record_failure(&self, error: &CallError) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        self.metrics.errors.increment(1);
        match error {
            CallError::Timeout(_) => {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                self.metrics.timeouts.increment(1);
            }
            CallError::Trap(_) | CallError::MemoryLimit(_) => {
                self.stats.traps.fetch_add(1, Ordering::Relaxed);
                self.metrics.traps.increment(1);
            }
            _ => {}
        }
        if error.is_crash() {
            self.budget
                .record_crash(self.engine.clock_ms(), &self.engine.config.crash_budget);
        }
        self.last_call_error
            .store(Some(Arc::new(error.to_string())));
        tracing::warn!(policy = &*self.name, "policy call failed: {error}");
    }
}

// ----- typed handles and outcomes -----

/// What an `authz` call decided, and whether the policy or its failure mode decided it.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthzOutcome {
    /// The policy answered.
    Decided(Decision),
    /// The call failed; `decision` is the failure mode's (`closed`: deny, `open`: allow).
    Failed {
        /// Apply this.
        decision: Decision,
        /// Why the policy did not answer.
        error: CallError,
    },
}

impl AuthzOutcome {
    /// The decision to apply, whoever made it.
    pub fn decision(&self) -> &Decision {
        match self {
            AuthzOutcome::Decided(decision) | AuthzOutcome::Failed { decision, .. } => decision,
        }
    }

    /// Whether the connection may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self.decision(), Decision::Allow)
    }
}

/// What a `health` call concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum HealthOutcome {
    /// The policy's verdict.
    Verdict(Verdict),
    /// The call failed: keep the member's previous verdict and mark it stale.
    KeepPrevious {
        /// Why the policy did not answer.
        error: CallError,
    },
}

/// Routes produced from one catalog: the routes, and the entries the policy rejected.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct RouteTable {
    /// Routes to install.
    pub routes: Vec<Route>,
    /// Per-entry errors (a bad tag); log them, they never block the routes.
    pub errors: Vec<RouteError>,
}

/// What a `routing` call produced.
#[derive(Debug, Clone, PartialEq)]
pub enum RoutingOutcome {
    /// A new table.
    Routes(Arc<RouteTable>),
    /// The call failed: keep serving the last good table (`None` if there never was one).
    KeepLast {
        /// The last table this policy produced successfully.
        last_good: Option<Arc<RouteTable>>,
        /// Why the policy did not answer.
        error: CallError,
    },
}

/// Calls an `authz` policy. Cheap to clone; stays valid across reloads (it follows the slot).
#[derive(Clone)]
pub struct AuthzHandle(pub(crate) Arc<PolicySlot>);

/// Calls a `health` policy. Cheap to clone; stays valid across reloads.
#[derive(Clone)]
pub struct HealthHandle(pub(crate) Arc<PolicySlot>);

/// Calls a `routing` policy. Cheap to clone; stays valid across reloads.
#[derive(Clone)]
pub struct RoutingHandle(pub(crate) Arc<PolicySlot>);

macro_rules! handle_debug {
    ($($handle:ident),*) => {$(
        impl std::fmt::Debug for $handle {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_tuple(stringify!($handle)).field(&&*self.0.name).finish()
            }
        }
    )*};
}
handle_debug!(AuthzHandle, HealthHandle, RoutingHandle);

impl AuthzHandle {
    /// Asks the policy whether `peer` may connect. Never panics; a failed call yields the
    /// failure mode's decision.
    pub fn authorize(&self, peer: &Peer) -> AuthzOutcome {
        let result = self
            .0
            .call(peer_size(peer), |bindings, store| match bindings {
                WorldBindings::Authz(b) => Some(b.call_authorize(store, peer)),
                _ => None,
            });
        match result {
            Ok(Decision::Deny(reason)) => AuthzOutcome::Decided(Decision::Deny(truncate(reason))),
            Ok(decision) => AuthzOutcome::Decided(decision),
            Err(error) => {
                let decision = match self.0.failure_mode() {
                    FailureMode::Open => Decision::Allow,
                    FailureMode::Closed | FailureMode::KeepLast => {
                        Decision::Deny(format!("policy `{}` failed closed: {error}", self.0.name))
                    }
                };
                AuthzOutcome::Failed { decision, error }
            }
        }
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }
}

impl HealthHandle {
    /// Turns one probe result of `instance` into a verdict.
    pub fn evaluate(&self, instance: &Instance, probe: &ProbeResult) -> HealthOutcome {
        let size = instance_size(instance) + probe_size(probe);
        let result = self.0.call(size, |bindings, store| match bindings {
            WorldBindings::Health(b) => Some(b.call_evaluate(store, instance, probe)),
            _ => None,
        });
        match result {
            Ok(Verdict::Down(reason)) => HealthOutcome::Verdict(Verdict::Down(truncate(reason))),
            Ok(verdict) => HealthOutcome::Verdict(verdict),
            Err(error) => HealthOutcome::KeepPrevious { error },
        }
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }
}

impl RoutingHandle {
    /// Builds the route table for `catalog`.
    pub fn build_routes(&self, catalog: &[Instance]) -> RoutingOutcome {
        let size = catalog.iter().map(instance_size).sum();
        let result = self.0.call(size, |bindings, store| match bindings {
            WorldBindings::Routing(b) => Some(b.call_build_routes(store, catalog)),
            _ => None,
        });
        let error = match result {
            Ok(Ok(entries)) => {
                let table = Arc::new(route_table(entries));
                self.0.last_good_routes.store(Some(Arc::clone(&table)));
                return RoutingOutcome::Routes(table);
            }
            Ok(Err(message)) => {
                let error = CallError::Rejected(truncate(message));
                // An answer, not a crash, but still no table: count it as an error.
                self.0.record_failure(&error);
                error
            }
            Err(error) => error,
        };
        RoutingOutcome::KeepLast {
            last_good: self.0.last_good_routes.load_full(),
            error,
        }
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }
}

/// Splits the guest's entries, turning routes the proxy could not apply into errors.
fn route_table(entries: Vec<RouteEntry>) -> RouteTable {
    let mut table = RouteTable::default();
    for entry in entries {
        match entry {
            RouteEntry::Route(route) => {
                let bad_weight = route
                    .targets
                    .iter()
                    .find(|t| !(0.0..=1.0).contains(&t.weight));
                match bad_weight {
                    Some(target) => table.errors.push(RouteError {
                        instance_id: target.instance_id.clone(),
                        input: route.path_prefix.clone(),
                        message: format!("policy returned weight {} outside [0, 1]", target.weight),
                    }),
                    None => table.routes.push(route),
                }
            }
            RouteEntry::Error(error) => table.errors.push(error),
        }
    }
    table
}

// Encoded sizes, close enough to bound what is copied into a guest.
fn instance_size(instance: &Instance) -> usize {
    64 + instance.id.len()
        + instance.service.len()
        + instance.address.len()
        + instance.tags.iter().map(|t| t.len() + 8).sum::<usize>()
        + instance
            .metadata
            .iter()
            .map(|(k, v)| k.len() + v.len() + 16)
            .sum::<usize>()
}

fn probe_size(probe: &ProbeResult) -> usize {
    64 + probe.body_prefix.len()
        + probe
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 16)
            .sum::<usize>()
        + probe.error.as_ref().map_or(0, |e| e.message.len())
}

pub(crate) fn peer_size(peer: &Peer) -> usize {
    64 + peer.listener.len()
        + peer.source_address.len()
        + peer.sni.as_ref().map_or(0, String::len)
        + peer.alpn.as_ref().map_or(0, String::len)
        + peer.client_certificate.as_ref().map_or(0, |c| {
            c.subject_cn.as_ref().map_or(0, String::len)
                + c.dns_sans
                    .iter()
                    .chain(&c.uri_sans)
                    .map(|s| s.len() + 8)
                    .sum::<usize>()
                + c.issuer.len()
                + c.sha256_fingerprint.len()
        })
}
