//! The wasmtime engine shared by every policy: configuration, the epoch ticker, the linker with
//! the host imports, the guest's store state and limits, and the compile cache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use sluice_config::PolicyWorld;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::{
    AuthzPre, HealthPre, OLDER_HOST_NAMES, RequestCopiedPre, RequestPre, RoutingPre, host_imports,
    http_imports, types::LogLevel,
};
use crate::budget::CrashBudgetConfig;
use crate::builtin::BuiltinModules;
use crate::error::{HostError, ModuleError};
use crate::kv::KvView;
use crate::reads::ReadLog;
use crate::request_view::RequestView;

/// Engine-wide settings. Per-policy limits come from `[[policy]]` ([`sluice_config::PolicyLimits`]).
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Instances that may exist at once across all policies (pooling allocator slots).
    pub max_instances: u32,
    /// The largest memory cap any policy may ask for (the size of a pooled memory slot).
    pub max_memory_ceiling_bytes: usize,
    /// Granularity of call deadlines: the epoch advances this often.
    pub epoch_tick: Duration,
    /// Deadline of `configure` (it runs off the data path, except when a pool runs dry).
    pub configure_timeout: Duration,
    /// Idle instances kept per policy version; more are created under load and dropped after.
    pub pool_capacity: usize,
    /// Instances created (and configured) when a version loads, before it serves calls.
    pub prewarm: usize,
    /// Encoded size limit of one call's input (a catalog, a probe, a peer).
    pub max_input_bytes: usize,
    /// When repeated failures suspend a policy, and for how long.
    pub crash_budget: CrashBudgetConfig,
    /// Compile modules on every core. Off in the proxy (a reload must not take the data
    /// plane's cores); on for the command-line tools, where nothing else runs and a Python
    /// component (18 MB, the interpreter inside) compiles in half the time on two cores.
    pub parallel_compilation: bool,
    /// The modules `builtin:NAME` policies load from (none by default).
    pub builtins: Arc<BuiltinModules>,
    /// Folder of wasmtime's compile cache: machine code of modules compiled before, by a hash
    /// of their bytes and of the engine's settings, so a restart or `policy check` does not
    /// compile them again (a Python policy takes seconds). `None`: compile every time.
    pub compile_cache: Option<PathBuf>,
}

impl Default for HostConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        HostConfig {
            max_instances: 256,
            max_memory_ceiling_bytes: 256 << 20,
            epoch_tick: Duration::from_millis(1),
            configure_timeout: Duration::from_secs(1),
            pool_capacity: (2 * cores).max(4),
            prewarm: cores.min(4),
            max_input_bytes: 16 << 20,
            crash_budget: CrashBudgetConfig::default(),
            parallel_compilation: false,
            builtins: Arc::default(),
            compile_cache: None,
        }
    }
}

/// State of one guest instance's store.
pub(crate) struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    stderr: MemoryOutputPipe,
    kv: Arc<dyn KvView>,
    policy: Arc<str>,
    loaded_at_ms: u64,
    max_memory_bytes: usize,
    /// Set when the limiter refused a memory growth: a trap that follows is the memory cap.
    pub(crate) memory_denied: bool,
    log_lines_this_call: u32,
    /// The request an `on-request` call is deciding on (swapped in for the call's duration):
    /// what the `http.request` resource's methods read.
    pub(crate) request: RequestView,
    /// What the call in progress read, for answers it lets the host reuse.
    pub(crate) reads: ReadLog,
}

/// Guest log lines longer than this are cut (a guest must not flood the proxy's log).
const MAX_LOG_LINE: usize = 1024;
/// Guest log lines per call beyond this are dropped.
const MAX_LOG_LINES_PER_CALL: u32 = 32;
/// Guest stderr kept for error messages (panic messages land there).
const STDERR_CAPACITY: usize = 4096;
/// Table elements a guest may grow to.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl GuestState {
    pub(crate) fn new(
        kv: Arc<dyn KvView>,
        policy: Arc<str>,
        loaded_at_ms: u64,
        max_memory_bytes: usize,
    ) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        // No files, no environment, no arguments, no network: a policy sees only its inputs,
        // its config and the `host` imports. Stdout is discarded; stderr kept for diagnostics.
        let wasi = WasiCtx::builder().stderr(stderr.clone()).build();
        GuestState {
            wasi,
            table: ResourceTable::new(),
            stderr,
            kv,
            policy,
            loaded_at_ms,
            max_memory_bytes,
            memory_denied: false,
            log_lines_this_call: 0,
            request: RequestView::default(),
            reads: ReadLog::default(),
        }
    }

    pub(crate) fn begin_call(&mut self) {
        self.log_lines_this_call = 0;
        self.reads.clear();
    }

    /// What the guest wrote to stderr (a Rust panic message, typically), trimmed.
    pub(crate) fn stderr_text(&self) -> String {
        let bytes = self.stderr.contents();
        String::from_utf8_lossy(&bytes).trim().to_owned()
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for GuestState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory_bytes {
            self.memory_denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

impl host_imports::Host for GuestState {
    fn log(&mut self, level: LogLevel, message: String) {
        self.log_lines_this_call += 1;
        if self.log_lines_this_call > MAX_LOG_LINES_PER_CALL {
            return;
        }
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let policy = &*self.policy;
        match level {
            LogLevel::Trace => tracing::trace!(target: "sluice::policy", policy, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "sluice::policy", policy, "{message}"),
            LogLevel::Info => tracing::info!(target: "sluice::policy", policy, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "sluice::policy", policy, "{message}"),
            LogLevel::Error => tracing::error!(target: "sluice::policy", policy, "{message}"),
        }
    }

    fn now_ms(&mut self) -> u64 {
        unix_ms(SystemTime::now())
    }

    fn kv_get(&mut self, key: String) -> Option<String> {
        let value = self.kv.get(&key);
        self.reads.read_kv(key, value.as_deref());
        value
    }

    fn loaded_at_ms(&mut self) -> u64 {
        self.loaded_at_ms
    }
}

pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The typed pre-instantiated form of a module, for the world it implements.
#[derive(Clone)]
pub(crate) enum WorldPre {
    Routing(RoutingPre<GuestState>),
    Health(HealthPre<GuestState>),
    Authz(AuthzPre<GuestState>),
    Request(RequestPre<GuestState>),
    /// A `request` policy built against contract 0.2.0 (the request copied whole).
    RequestCopied(RequestCopiedPre<GuestState>),
}

/// A compiled, linked and type-checked module. Shared by every policy loading the same bytes.
pub(crate) struct CompiledModule {
    pub(crate) sha256: [u8; 32],
    pub(crate) size_bytes: usize,
    pub(crate) world: PolicyWorld,
    pub(crate) pre: WorldPre,
    pub(crate) compile_time: Duration,
    /// The machine code came from the compile cache.
    pub(crate) from_compile_cache: bool,
}

/// Required exports per world, as written in the WIT.
pub(crate) fn required_exports(world: PolicyWorld) -> &'static [&'static str] {
    match world {
        PolicyWorld::Routing => &["configure", "build-routes"],
        PolicyWorld::Health => &["configure", "evaluate"],
        PolicyWorld::Authz => &["configure", "authorize"],
        PolicyWorld::Request => &["configure", "on-request", "on-response"],
    }
}

const WORLDS: [PolicyWorld; 4] = [
    PolicyWorld::Routing,
    PolicyWorld::Health,
    PolicyWorld::Authz,
    PolicyWorld::Request,
];

/// `SLUICE_POLICY_PERFMAP=1` writes `/tmp/perf-PID.map`, so that `perf` names guest functions.
pub(crate) const PERF_MAP_ENV: &str = "SLUICE_POLICY_PERFMAP";

/// The engine, the linker and the compile cache. One per [`crate::PolicyHost`].
pub(crate) struct EngineShared {
    pub(crate) engine: Engine,
    linker: Linker<GuestState>,
    pub(crate) config: HostConfig,
    pub(crate) kv: Arc<dyn KvView>,
    /// Compiled modules by SHA-256 of their bytes; weak so unused versions are freed.
    cache: Mutex<HashMap<[u8; 32], Weak<CompiledModule>>>,
    /// The on-disk compile cache, when configured (its hit counter tells a hit from a compile).
    disk_cache: Option<wasmtime::Cache>,
    /// Monotonic origin of the crash budget's clock.
    pub(crate) started: Instant,
}

impl EngineShared {
    pub(crate) fn new(config: HostConfig, kv: Arc<dyn KvView>) -> Result<Arc<Self>, HostError> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances.saturating_mul(4))
            .total_memories(config.max_instances.saturating_mul(2))
            .total_tables(config.max_instances.saturating_mul(4))
            .max_memory_size(config.max_memory_ceiling_bytes);
        let mut wasm = wasmtime::Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            // In the proxy, compiling on every core would starve the data plane's threads
            // during a reload (and push their policy calls past wall-clock deadlines).
            .parallel_compilation(config.parallel_compilation)
            // Traps name the guest's functions (from the `name` section) and, when the module
            // carries DWARF, their source lines.
            .wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let disk_cache = config.compile_cache.as_deref().and_then(disk_cache);
        wasm.cache(disk_cache.clone());
        if std::env::var_os(PERF_MAP_ENV).is_some_and(|v| v == "1") {
            // Names the guest's compiled functions for `perf report` (/tmp/perf-PID.map).
            wasm.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&wasm).map_err(|e| HostError::Engine(format!("{e:#}")))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| HostError::Engine(format!("{e:#}")))?;
        crate::nonblocking_io::shadow_blocking_io(&mut linker)
            .map_err(|e| HostError::Engine(format!("{e:#}")))?;
        host_imports::add_to_linker::<GuestState, HasSelf<GuestState>>(&mut linker, |state| state)
            .map_err(|e| HostError::Engine(format!("{e:#}")))?;
        http_imports::add_to_linker::<GuestState, HasSelf<GuestState>>(&mut linker, |state| state)
            .map_err(|e| HostError::Engine(format!("{e:#}")))?;
        link_older_host_names(&mut linker).map_err(|e| HostError::Engine(format!("{e:#}")))?;

        spawn_epoch_ticker(&engine, config.epoch_tick);
        Ok(Arc::new(EngineShared {
            engine,
            linker,
            config,
            kv,
            cache: Mutex::new(HashMap::new()),
            disk_cache,
            started: Instant::now(),
        }))
    }

    /// Milliseconds since this engine started (the crash budget's clock).
    pub(crate) fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Compiles `bytes` (or reuses the module compiled from the same bytes) and checks that it
    /// implements `expected`, or — with `None` — detects which world it implements.
    pub(crate) fn compile(
        &self,
        bytes: &[u8],
        expected: Option<PolicyWorld>,
    ) -> Result<Arc<CompiledModule>, ModuleError> {
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(module) = self.cached(&sha256)
            && expected.is_none_or(|world| world == module.world)
        {
            return Ok(module);
        }
        let started = Instant::now();
        let hits_before = self.disk_cache.as_ref().map(wasmtime::Cache::cache_hits);
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| ModuleError::not_a_component(bytes, &e))?;
        let compile_time = started.elapsed();
        // Another thread's hit in between would count here too: only a log line depends on it.
        let from_compile_cache = hits_before.is_some_and(|before| {
            self.disk_cache
                .as_ref()
                .is_some_and(|cache| cache.cache_hits() > before)
        });
        let world = self.detect_world(&component, expected)?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| ModuleError::Imports(format!("{e:#}")))?;
        let type_error = |e: wasmtime::Error| ModuleError::ExportTypes {
            world,
            detail: format!("{e:#}"),
        };
        let pre = match world {
            PolicyWorld::Routing => {
                WorldPre::Routing(RoutingPre::new(instance_pre).map_err(type_error)?)
            }
            PolicyWorld::Health => {
                WorldPre::Health(HealthPre::new(instance_pre).map_err(type_error)?)
            }
            PolicyWorld::Authz => WorldPre::Authz(AuthzPre::new(instance_pre).map_err(type_error)?),
            PolicyWorld::Request => request_pre(instance_pre).map_err(type_error)?,
        };
        let module = Arc::new(CompiledModule {
            sha256,
            size_bytes: bytes.len(),
            world,
            pre,
            compile_time,
            from_compile_cache,
        });
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.retain(|_, module| module.strong_count() > 0);
        cache.insert(sha256, Arc::downgrade(&module));
        Ok(module)
    }

    fn cached(&self, sha256: &[u8; 32]) -> Option<Arc<CompiledModule>> {
        let cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.get(sha256).and_then(Weak::upgrade)
    }

    fn detect_world(
        &self,
        component: &Component,
        expected: Option<PolicyWorld>,
    ) -> Result<PolicyWorld, ModuleError> {
        let exports: Vec<String> = component
            .component_type()
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let missing = |world: PolicyWorld| -> Vec<&'static str> {
            required_exports(world)
                .iter()
                .copied()
                .filter(|name| !exports.iter().any(|export| export == name))
                .collect()
        };
        if let Some(world) = expected {
            let missing = missing(world);
            if missing.is_empty() {
                return Ok(world);
            }
            return Err(ModuleError::MissingExports {
                world,
                missing,
                exports,
            });
        }
        let complete: Vec<PolicyWorld> = WORLDS
            .into_iter()
            .filter(|w| missing(*w).is_empty())
            .collect();
        match complete.as_slice() {
            [world] => Ok(*world),
            [] => Err(ModuleError::NoWorld {
                missing: WORLDS.into_iter().map(|w| (w, missing(w))).collect(),
                exports,
            }),
            several => Err(ModuleError::SeveralWorlds(several.to_vec())),
        }
    }
}

/// A `request` module in the form of this contract (the request as a resource) or, failing
/// that, of contract 0.2.0 (the request copied whole). The error names both mismatches.
fn request_pre(
    instance_pre: wasmtime::component::InstancePre<GuestState>,
) -> wasmtime::Result<WorldPre> {
    let resource_form = match RequestPre::new(instance_pre.clone()) {
        Ok(pre) => return Ok(WorldPre::Request(pre)),
        Err(e) => e,
    };
    RequestCopiedPre::new(instance_pre)
        .map(WorldPre::RequestCopied)
        .map_err(|copied_form| {
            wasmtime::format_err!(
                "{resource_form:#} (nor does it match contract 0.2.0's form: {copied_form:#})"
            )
        })
}

/// The `host` imports once more under the names of contracts 0.1.0 and 0.2.0, so modules built
/// against them keep loading: the interface is unchanged since, and component types match by
/// structure, so the same functions serve every name.
fn link_older_host_names(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    use host_imports::Host as _;
    for name in OLDER_HOST_NAMES {
        let mut host = linker.instance(name)?;
        host.func_wrap("log", |mut cx, (level, message): (LogLevel, String)| {
            cx.data_mut().log(level, message);
            Ok(())
        })?;
        host.func_wrap("now-ms", |mut cx, (): ()| Ok((cx.data_mut().now_ms(),)))?;
        host.func_wrap("kv-get", |mut cx, (key,): (String,)| {
            Ok((cx.data_mut().kv_get(key),))
        })?;
        host.func_wrap("loaded-at-ms", |mut cx, (): ()| {
            Ok((cx.data_mut().loaded_at_ms(),))
        })?;
    }
    Ok(())
}

/// wasmtime's compile cache in `folder`, or `None` (with a warning) when it cannot be used:
/// policies then compile on every load, which costs time but nothing else.
fn disk_cache(folder: &Path) -> Option<wasmtime::Cache> {
    // wasmtime creates the folder, and wants its path absolute.
    let ready = std::path::absolute(folder)
        .map_err(|e| e.to_string())
        .and_then(|absolute| {
            let mut config = wasmtime::CacheConfig::new();
            config.with_directory(absolute);
            wasmtime::Cache::new(config).map_err(|e| format!("{e:#}"))
        });
    match ready {
        Ok(cache) => Some(cache),
        Err(error) => {
            tracing::warn!(folder = %folder.display(), %error, "policy compile cache unavailable: policies compile on every load");
            None
        }
    }
}

/// Advances the engine's epoch every `tick` until the engine is dropped. Call deadlines are
/// counted in ticks, so a stuck guest is interrupted within one tick of its deadline.
fn spawn_epoch_ticker(engine: &Engine, tick: Duration) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("sluice-policy-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(tick);
            }
        });
    if let Err(e) = spawned {
        // Without the ticker deadlines never fire; a call then runs to completion. Say so loudly.
        tracing::error!(
            "cannot start the policy epoch ticker: {e}; policy deadlines are not enforced"
        );
    }
}

/// Number of epoch ticks that covers `timeout`, plus one because the first tick may come at
/// once.
pub(crate) fn deadline_ticks(timeout: Duration, tick: Duration) -> u64 {
    let tick_ns = tick.as_nanos().max(1);
    (timeout.as_nanos().div_ceil(tick_ns) as u64).saturating_add(1)
}

/// Lower-case hex of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}
