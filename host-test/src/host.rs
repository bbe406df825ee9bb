//! The compiled filter ready to run: one wasmtime engine, module and linker per filter build
//! ([`Host`]), the watchdog that stops a runaway guest, and what instantiating a VM takes.

use std::sync::Arc;

use wasmtime::{Config, Engine, Instance, Linker, Module, Result, Store, TypedFunc, bail};

use crate::abi;
use crate::state::{GuestExports, HostState, World};

/// How often the watchdog advances the engine's epoch.
pub const EPOCH_TICK: std::time::Duration = std::time::Duration::from_millis(10);

/// Epoch ticks one callback into the guest may run (about 2 s of wall time): far more than any
/// callback needs, so reaching it means a runaway guest, which then traps instead of hanging the
/// simulation. (Epochs, not fuel: fuel metering slows down every guest instruction.)
pub const EPOCHS_PER_CALL: u64 = 200;

/// The compiled filter, ready to be instantiated as many VMs.
pub struct Host {
    pub(crate) factory: Arc<Factory>,
    #[allow(dead_code)] // held for its Drop: stops the thread with the host
    watchdog: Watchdog,
}

/// What instantiating a VM takes; shared with the VMs, which need it again for FAIL_RELOAD.
pub(crate) struct Factory {
    engine: Engine,
    module: Module,
    linker: Linker<HostState>,
    memory_limit: usize,
}

/// The most linear memory one VM may have unless [`Host::with_memory_limit`] says otherwise. V8
/// refuses to grow a memory past its own limit (`memory.grow` returns -1), after which a Rust
/// guest's allocator aborts: the VM traps. host-test does the same at this size, so a guest that
/// leaks, or a simulation that asks too much, fails like in Envoy instead of taking the machine's
/// memory. The filter needs a few MiB.
pub const DEFAULT_MEMORY_LIMIT: usize = 256 << 20;

/// A thread that advances the engine's epoch every [`EPOCH_TICK`], stopped when the host is dropped.
struct Watchdog {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(engine: Engine) -> Watchdog {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("host-test-epochs".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::park_timeout(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        Watchdog { stop, thread }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Host")
    }
}

impl Host {
    pub fn from_file(path: &std::path::Path) -> Result<Host> {
        let bytes = std::fs::read(path).map_err(|e| wasmtime::format_err!("{}: {e}", path.display()))?;
        Host::new(&bytes)
    }

    /// The filter this workspace builds ([`crate::FILTER_WASM`] under the workspace root), for the
    /// workspace's own tests and benchmarks; the error says how to build it.
    pub fn from_workspace() -> Result<Host> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(crate::FILTER_WASM);
        if !path.exists() {
            bail!("{} is missing: build it with `./dev build-wasm`", path.display());
        }
        Host::from_file(&path)
    }

    pub fn new(wasm: &[u8]) -> Result<Host> {
        Host::with_memory_limit(wasm, DEFAULT_MEMORY_LIMIT)
    }

    /// As [`Host::new`], each VM's linear memory capped at `bytes`.
    pub fn with_memory_limit(wasm: &[u8], bytes: usize) -> Result<Host> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // `perf record` can name the guest's functions with BREAKWATER_PERF_MAP=1 (/tmp/perf-PID.map).
        if std::env::var_os("BREAKWATER_PERF_MAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config)?;
        let module = Module::new(&engine, wasm)?;
        let mut linker = Linker::new(&engine);
        abi::add_all(&mut linker)?;
        let watchdog = Watchdog::start(engine.clone());
        Ok(Host { factory: Arc::new(Factory { engine, module, linker, memory_limit: bytes }), watchdog })
    }
}

impl Factory {
    /// A new store with the filter instantiated in it (the instance lives in the store), and the
    /// guest's callbacks.
    pub(crate) fn instantiate(
        &self,
        world: std::rc::Rc<World>,
        index: usize,
    ) -> Result<(Store<HostState>, Exports)> {
        let state = HostState {
            world,
            vm: index,
            effective_context: 0,
            root_context: 0,
            calls: Vec::new(),
            next_call_token: 1,
            call_response: None,
            grpc_calls: Vec::new(),
            next_grpc_token: 1,
            grpc_response: None,
            plugin_config: Vec::new(),
            vm_config: Vec::new(),
            streams: Default::default(),
            tick_period_ms: 0,
            log_level: 1,
            plugin_name: "breakwater".into(),
            vm_id: "breakwater".into(),
            guest: Default::default(),
            metric_ids: Vec::new(),
            scratch: Vec::new(),
            limits: wasmtime::StoreLimitsBuilder::new().memory_size(self.memory_limit).build(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(EPOCHS_PER_CALL);
        let instance = self.linker.instantiate(&mut store, &self.module)?;
        store.data_mut().guest = GuestExports::new(&instance, &mut store);
        let exports = Exports::new(&instance, &mut store)?;
        Ok((store, exports))
    }
}

/// The guest's proxy-wasm callbacks, looked up once per VM.
pub(crate) struct Exports {
    pub(crate) initialize: Option<TypedFunc<(), ()>>,
    pub(crate) on_context_create: TypedFunc<(i32, i32), ()>,
    pub(crate) on_vm_start: TypedFunc<(i32, i32), i32>,
    pub(crate) on_configure: TypedFunc<(i32, i32), i32>,
    pub(crate) on_request_headers: TypedFunc<(i32, i32, i32), i32>,
    pub(crate) on_response_headers: TypedFunc<(i32, i32, i32), i32>,
    pub(crate) on_log: TypedFunc<i32, ()>,
    pub(crate) on_done: TypedFunc<i32, i32>,
    pub(crate) on_delete: TypedFunc<i32, ()>,
    pub(crate) on_tick: TypedFunc<i32, ()>,
    pub(crate) on_queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    pub(crate) on_http_call_response: Option<CallResponseFn>,
    /// `proxy_on_grpc_receive(context, token, message size)`.
    pub(crate) on_grpc_receive: Option<TypedFunc<(i32, i32, i32), ()>>,
    /// `proxy_on_grpc_close(context, token, status)`.
    pub(crate) on_grpc_close: Option<TypedFunc<(i32, i32, i32), ()>>,
}

/// `proxy_on_http_call_response(context, token, headers, body size, trailers)`.
type CallResponseFn = TypedFunc<(i32, i32, i32, i32, i32), ()>;

impl Exports {
    pub(crate) fn new(i: &Instance, s: &mut Store<HostState>) -> Result<Exports> {
        Ok(Exports {
            initialize: i.get_typed_func(&mut *s, "_initialize").ok(),
            on_context_create: i.get_typed_func(&mut *s, "proxy_on_context_create")?,
            on_vm_start: i.get_typed_func(&mut *s, "proxy_on_vm_start")?,
            on_configure: i.get_typed_func(&mut *s, "proxy_on_configure")?,
            on_request_headers: i.get_typed_func(&mut *s, "proxy_on_request_headers")?,
            on_response_headers: i.get_typed_func(&mut *s, "proxy_on_response_headers")?,
            on_log: i.get_typed_func(&mut *s, "proxy_on_log")?,
            on_done: i.get_typed_func(&mut *s, "proxy_on_done")?,
            on_delete: i.get_typed_func(&mut *s, "proxy_on_delete")?,
            on_tick: i.get_typed_func(&mut *s, "proxy_on_tick")?,
            on_queue_ready: i.get_typed_func(&mut *s, "proxy_on_queue_ready").ok(),
            on_http_call_response: i.get_typed_func(&mut *s, "proxy_on_http_call_response").ok(),
            on_grpc_receive: i.get_typed_func(&mut *s, "proxy_on_grpc_receive").ok(),
            on_grpc_close: i.get_typed_func(&mut *s, "proxy_on_grpc_close").ok(),
        })
    }
}
