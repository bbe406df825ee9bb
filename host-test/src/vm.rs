//! One simulated Envoy VM running the filter: the lifecycle calls in Envoy's order, and HTTP
//! streams from request headers to `on_delete`, any number of them open at once (a stream is
//! begun, left waiting on its upstream, and completed later, as Envoy interleaves them).

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use wasmtime::{Config, Engine, Instance, Linker, Module, Result, Store, TypedFunc, bail};

use crate::abi;
use crate::state::{HeaderMap, HostState, LocalReply, PendingCall, Stream, StreamInfo, World};

/// How often the watchdog advances the engine's epoch.
pub const EPOCH_TICK: std::time::Duration = std::time::Duration::from_millis(10);
/// Epoch ticks one callback into the guest may run (about 2 s of wall time): far more than any
/// callback needs, so reaching it means a runaway guest, which then traps instead of hanging the
/// simulation. (Epochs, not fuel: fuel metering slows down every guest instruction.)
pub const EPOCHS_PER_CALL: u64 = 200;

/// The compiled filter, ready to be instantiated as many VMs.
pub struct Host {
    factory: Arc<Factory>,
    #[allow(dead_code)] // held for its Drop: stops the thread with the host
    watchdog: Watchdog,
}

/// What instantiating a VM takes; shared with the VMs, which need it again for FAIL_RELOAD.
struct Factory {
    engine: Engine,
    module: Module,
    linker: Linker<HostState>,
}

/// What a VM does after its guest trapped (Envoy's `failure_policy` of a Wasm plugin).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// The stream that trapped and every later one on this worker get 503 (Envoy's default).
    #[default]
    FailClosed,
    /// The stream that trapped continues as the filter left it; later streams skip the filter.
    FailOpen,
    /// The stream that trapped gets 503; the next one starts a new VM (statics reset, shared data
    /// and stats kept, the last accepted configuration applied again).
    FailReload,
}

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
        Ok(Host { factory: Arc::new(Factory { engine, module, linker }), watchdog })
    }

    /// A new VM of an Envoy (`world`), not yet started; FAIL_CLOSED unless
    /// [`Vm::set_failure_policy`] says otherwise.
    pub fn vm(&self, world: Rc<World>, index: usize) -> Result<Vm> {
        let (store, instance, exports) = self.factory.instantiate(world, index)?;
        let mut vm = Vm {
            store,
            instance,
            exports,
            next_context: 1,
            root: 0,
            failed: false,
            failure: FailurePolicy::default(),
            bypassed: HashMap::new(),
            keep_forwarded: true,
            attempt_count_in_response: true,
            reloads: 0,
            accepted: Vec::new(),
            factory: self.factory.clone(),
        };
        vm.initialize()?;
        Ok(vm)
    }
}

impl Factory {
    fn instantiate(&self, world: Rc<World>, index: usize) -> Result<(Store<HostState>, Instance, Exports)> {
        let state = HostState {
            world,
            vm: index,
            effective_context: 0,
            root_context: 0,
            calls: Vec::new(),
            next_call_token: 1,
            call_response: None,
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
        };
        let mut store = Store::new(&self.engine, state);
        store.set_epoch_deadline(EPOCHS_PER_CALL);
        let instance = self.linker.instantiate(&mut store, &self.module)?;
        store.data_mut().guest = crate::state::GuestExports::new(&instance, &mut store);
        let exports = Exports::new(&instance, &mut store)?;
        Ok((store, instance, exports))
    }
}

struct Exports {
    initialize: Option<TypedFunc<(), ()>>,
    on_context_create: TypedFunc<(i32, i32), ()>,
    on_vm_start: TypedFunc<(i32, i32), i32>,
    on_configure: TypedFunc<(i32, i32), i32>,
    on_request_headers: TypedFunc<(i32, i32, i32), i32>,
    on_response_headers: TypedFunc<(i32, i32, i32), i32>,
    on_log: TypedFunc<i32, ()>,
    on_done: TypedFunc<i32, i32>,
    on_delete: TypedFunc<i32, ()>,
    on_tick: TypedFunc<i32, ()>,
    on_queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    on_http_call_response: Option<CallResponseFn>,
}

/// `proxy_on_http_call_response(context, token, headers, body size, trailers)`.
type CallResponseFn = TypedFunc<(i32, i32, i32, i32, i32), ()>;

impl Exports {
    fn new(i: &Instance, s: &mut Store<HostState>) -> Result<Exports> {
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
        })
    }
}

/// A request as it reaches the filter.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    pub authority: String,
    pub path: String,
    pub headers: HeaderMap,
    /// `source.address`, e.g. `10.0.0.1:5555`.
    pub source: String,
}

impl Request {
    pub fn get(authority: &str, path: &str) -> Request {
        Request {
            method: "GET".into(),
            authority: authority.into(),
            path: path.into(),
            source: "10.0.0.1:40000".into(),
            ..Request::default()
        }
    }
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Request {
        self.headers.push((name.to_ascii_lowercase().into(), value.into()));
        self
    }
}

/// What the upstream side (router + upstream) produced for a forwarded request.
#[derive(Debug, Clone, Default)]
pub struct UpstreamAnswer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub flags: u64,
    pub details: String,
    pub attempts: u64,
    pub duration_ns: u64,
    /// The attempts that reached the upstream (connect failures did not), as (start, end) in ns
    /// since the request reached the router.
    pub tries: Vec<(u64, u64)>,
}

impl UpstreamAnswer {
    pub fn status(status: u16) -> UpstreamAnswer {
        UpstreamAnswer { status, attempts: 1, details: "via_upstream".into(), ..UpstreamAnswer::default() }
    }

    pub(crate) fn with_tries(mut self, tries: Vec<(u64, u64)>) -> UpstreamAnswer {
        self.tries = tries;
        self
    }
}

/// Where a stream stands after [`Vm::begin`].
#[derive(Debug, Clone)]
pub enum Begun {
    /// The filter let it through; [`Vm::forwarded`] has the headers the router receives.
    Forwarded { stream: u32 },
    /// The filter answered it itself (complete it with no upstream outcome).
    Answered { stream: u32 },
    /// The VM has failed (fail closed): this is the answer.
    Failed(ClientResponse),
}

/// How a stream ended, as the client saw it.
#[derive(Debug, Clone)]
pub struct ClientResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The filter answered itself (on the request path, or replacing the upstream's response).
    pub local: bool,
    /// The request headers as the upstream side received them (None when not forwarded).
    pub forwarded: Option<HeaderMap>,
    /// Counter increments the filter made for this stream: (metric id, by).
    pub counted: Vec<(u32, u64)>,
}

impl ClientResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

pub struct Vm {
    store: Store<HostState>,
    #[allow(dead_code)]
    instance: Instance,
    exports: Exports,
    next_context: u32,
    root: u32,
    /// A guest trap happened; what follows depends on `failure`.
    failed: bool,
    failure: FailurePolicy,
    /// Streams that run without the filter (FAIL_OPEN after a trap), with their request headers.
    bypassed: HashMap<u32, HeaderMap>,
    /// Whether responses carry the request headers as forwarded ([`ClientResponse::forwarded`]).
    keep_forwarded: bool,
    /// Whether the router writes `x-envoy-attempt-count` on every response it gives (Envoy's
    /// virtual host option `include_attempt_count_in_response`).
    attempt_count_in_response: bool,
    reloads: u32,
    /// The configuration the plugin last accepted (applied again by FAIL_RELOAD).
    accepted: Vec<u8>,
    factory: Arc<Factory>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").field("root", &self.root).field("failed", &self.failed).finish()
    }
}

const ACTION_CONTINUE: i32 = 0;

/// The response header of `include_attempt_count_in_response`.
const ATTEMPT_COUNT: &str = "x-envoy-attempt-count";

impl Vm {
    /// Runs one callback into the guest with a fresh deadline; a trap marks the VM failed.
    fn guest<T>(&mut self, call: impl FnOnce(&mut Store<HostState>, &Exports) -> Result<T>) -> Result<T> {
        if self.failed {
            bail!("the VM failed earlier");
        }
        self.store.set_epoch_deadline(EPOCHS_PER_CALL);
        let result = call(&mut self.store, &self.exports);
        if let Err(e) = &result {
            self.failed = true;
            self.store.data().log(5, format!("host-test: guest trapped: {e:#}"));
        }
        result
    }

    fn initialize(&mut self) -> Result<()> {
        self.guest(|s, e| match &e.initialize {
            Some(init) => init.call(s, ()),
            None => Ok(()),
        })
    }

    pub fn set_failure_policy(&mut self, policy: FailurePolicy) {
        self.failure = policy;
    }

    /// How many times FAIL_RELOAD replaced this VM's instance.
    pub fn reloads(&self) -> u32 {
        self.reloads
    }

    /// FAIL_RELOAD: a new instance in place of the failed one, started and configured again
    /// with the last configuration it accepted. Streams of the old instance are gone.
    fn reload(&mut self) -> Result<bool> {
        let old = self.store.data();
        let (world, index, config) = (old.world.clone(), old.vm, std::mem::take(&mut self.accepted));
        let (store, instance, exports) = self.factory.instantiate(world, index)?;
        (self.store, self.instance, self.exports) = (store, instance, exports);
        self.failed = false;
        self.root = 0;
        self.reloads += 1;
        self.initialize()?;
        self.configure(&config)
    }

    fn new_context(&mut self) -> u32 {
        let id = self.next_context;
        self.next_context += 1;
        id
    }

    /// Starts the VM and configures the plugin, as Envoy does for a worker: a root context,
    /// `on_vm_start`, `on_configure`. Returns what `on_configure` answered.
    pub fn configure(&mut self, plugin_config: &[u8]) -> Result<bool> {
        let root = self.new_context();
        self.store.data_mut().plugin_config = plugin_config.to_vec();
        self.store.data_mut().effective_context = root;
        self.guest(|s, e| e.on_context_create.call(s, (root as i32, 0)))?;
        if self.root == 0 {
            let size = self.store.data().vm_config.len() as i32;
            if self.guest(|s, e| e.on_vm_start.call(s, (root as i32, size)))? == 0 {
                return Ok(false);
            }
        }
        let size = plugin_config.len() as i32;
        let ok = self.guest(|s, e| e.on_configure.call(s, (root as i32, size)))? != 0;
        if ok {
            // A reconfiguration gets a new root context; new streams use it (Envoy keeps the old
            // one for streams in flight).
            self.root = root;
            self.store.data_mut().root_context = root;
            self.accepted = plugin_config.to_vec();
        }
        Ok(ok)
    }

    pub fn tick(&mut self) -> Result<()> {
        let root = self.root as i32;
        self.store.data_mut().effective_context = self.root;
        self.guest(|s, e| e.on_tick.call(s, root))
    }

    /// Delivers what Envoy would post to this VM's thread by now (the world's clock):
    /// `proxy_on_queue_ready` for items enqueued (by any VM) on queues this VM's root context
    /// registered, and `proxy_on_http_call_response` for HTTP calls whose answer is due (calls
    /// of streams that have ended are dropped, as Envoy cancels them). Returns how many.
    pub fn deliver(&mut self) -> Result<usize> {
        let queued = self.deliver_queues()?;
        let now = self.store.data().world.clock_ns.get();
        let (due, later): (Vec<PendingCall>, Vec<PendingCall>) =
            std::mem::take(&mut self.store.data_mut().calls).into_iter().partition(|c| c.due_ns <= now);
        self.store.data_mut().calls = later;
        let world = self.store.data().world.clone();
        world.pending_calls.set(world.pending_calls.get().saturating_sub(due.len() as u32));
        let mut delivered = 0;
        for call in due {
            let d = self.store.data();
            let live = call.context == d.root_context || d.streams.contains_key(&call.context);
            if !live {
                continue;
            }
            let (headers, body) = match &call.reply {
                Some((h, b)) => (h.len() as i32, b.len() as i32),
                None => (0, 0),
            };
            let data = self.store.data_mut();
            data.call_response = call.reply;
            data.effective_context = call.context;
            let (ctx, token) = (call.context as i32, call.token as i32);
            let result = self.guest(|s, e| match &e.on_http_call_response {
                Some(f) => f.call(s, (ctx, token, headers, body, 0)),
                None => Ok(()),
            });
            self.store.data_mut().call_response = None;
            result?;
            delivered += 1;
        }
        Ok(queued + delivered)
    }

    fn deliver_queues(&mut self) -> Result<usize> {
        let index = self.store.data().vm;
        let mine: Vec<(u32, u32)> = {
            let mut queues = self.store.data().world.queues.borrow_mut();
            let (mine, others) = queues.ready.drain(..).partition(|(vm, _, _)| *vm == index);
            queues.ready = others;
            mine.into_iter().map(|(_, root, token)| (root, token)).collect()
        };
        for &(root, token) in &mine {
            self.store.data_mut().effective_context = root;
            self.guest(|s, e| match &e.on_queue_ready {
                Some(f) => f.call(s, (root as i32, token as i32)),
                None => Ok(()),
            })?;
        }
        Ok(mine.len())
    }

    /// How many metric ids this VM has handed out (`proxy_define_metric` calls since it started).
    pub fn metric_definitions(&self) -> usize {
        self.store.data().metric_ids.len()
    }

    /// The size of the guest's linear memory in bytes (it only grows, a 64 KiB page at a time).
    pub fn memory_bytes(&self) -> usize {
        self.store.data().guest.memory.map_or(0, |m| m.data_size(&self.store))
    }

    pub fn tick_period_ms(&self) -> u32 {
        self.store.data().tick_period_ms
    }

    pub fn failed(&self) -> bool {
        self.failed
    }

    /// One HTTP stream through the filter, start to end. `upstream` plays Envoy's router and the
    /// upstream for a forwarded request (it sees the request headers as the filter left them).
    pub fn request(
        &mut self,
        req: &Request,
        upstream: impl FnOnce(&HeaderMap) -> UpstreamAnswer,
    ) -> Result<ClientResponse> {
        match self.begin(req)? {
            Begun::Forwarded { stream } => {
                let headers = self.forwarded(stream).cloned().unwrap_or_default();
                let up = upstream(&headers);
                self.complete(stream, Some(up))
            }
            Begun::Answered { stream } => self.complete(stream, None),
            Begun::Failed(response) => Ok(response),
        }
    }

    /// The request headers of a forwarded stream as the router receives them (the filter's
    /// changes included).
    pub fn forwarded(&self, stream: u32) -> Option<&HeaderMap> {
        match self.bypassed.get(&stream) {
            Some(headers) => Some(headers),
            None => self.store.data().streams.get(&stream).map(|s| &s.request_headers),
        }
    }

    /// Whether [`ClientResponse::forwarded`] is filled (on by default; simulations turn it off to
    /// save a copy per request).
    pub fn set_keep_forwarded(&mut self, keep: bool) {
        self.keep_forwarded = keep;
    }

    /// Models the virtual host's `include_attempt_count_in_response`, on by default as in
    /// envoy/demo.yaml and `breakwater render envoy`: the router then sets `x-envoy-attempt-count`
    /// on every response it gives, its own replies included, replacing an upstream's value. Off,
    /// an upstream's own header passes through.
    pub fn set_attempt_count_in_response(&mut self, on: bool) {
        self.attempt_count_in_response = on;
    }

    /// Starts a stream: context creation and request headers. The stream stays open (holding
    /// whatever the filter acquired) until [`Vm::complete`] or [`Vm::abort`], so streams overlap.
    pub fn begin(&mut self, req: &Request) -> Result<Begun> {
        self.begin_owned(req.clone())
    }

    /// [`Vm::begin`] taking the request (no copies of its strings).
    pub fn begin_owned(&mut self, req: Request) -> Result<Begun> {
        let bypass = self.failed && self.failure == FailurePolicy::FailOpen;
        if self.failed && self.failure == FailurePolicy::FailReload {
            // A reload that fails (a trap again, or the configuration refused) leaves the VM failed.
            let _ = self.reload();
        }
        if self.failed && !bypass {
            return Ok(Begun::Failed(fail_closed()));
        }
        let id = self.new_context();
        let mut headers: HeaderMap = Vec::with_capacity(4 + req.headers.len() + ROOM_FOR_FILTER_HEADERS);
        headers.extend([
            (":authority".into(), req.authority.into_bytes()),
            (":path".into(), req.path.into_bytes()),
            (":method".into(), req.method.into_bytes()),
            (":scheme".into(), b"http".to_vec()),
        ]);
        headers.extend(req.headers);
        // The connection manager strips x-envoy-* headers sent by clients before filters run.
        headers.retain(|(k, _)| !k.starts_with("x-envoy-"));
        let n = headers.len() as i32;
        let stream = Stream {
            request_headers: headers,
            info: StreamInfo { source_address: req.source, ..StreamInfo::default() },
            ..Stream::default()
        };
        if bypass {
            self.bypassed.insert(id, stream.request_headers);
            return Ok(Begun::Forwarded { stream: id });
        }
        let state = self.store.data_mut();
        state.streams.insert(id, stream);
        state.effective_context = id;
        let (ctx, root) = (id as i32, self.root as i32);
        let begun = (|| -> Result<Begun> {
            self.guest(|s, e| e.on_context_create.call(s, (ctx, root)))?;
            self.store.data_mut().effective_context = id;
            let action = self.guest(|s, e| e.on_request_headers.call(s, (ctx, n, 1)))?;
            let st = self.stream_mut(id)?;
            match (st.local_reply.is_some(), action) {
                (true, _) => Ok(Begun::Answered { stream: id }),
                (false, ACTION_CONTINUE) => Ok(Begun::Forwarded { stream: id }),
                // Paused without a reply: Envoy would wait; nothing in breakwater resumes streams.
                (false, _) => bail!("the filter paused the request without replying"),
            }
        })();
        match begun {
            Ok(b) => Ok(b),
            Err(_) => {
                let stream = self.store.data_mut().streams.remove(&id);
                match (self.failure, stream) {
                    // Fail open: the request goes on as the filter left it, without the filter.
                    (FailurePolicy::FailOpen, Some(stream)) => {
                        self.bypassed.insert(id, stream.request_headers);
                        Ok(Begun::Forwarded { stream: id })
                    }
                    _ => Ok(Begun::Failed(fail_closed())),
                }
            }
        }
    }

    /// Ends a stream begun with [`Vm::begin`]: with the upstream's outcome for a forwarded
    /// request (None for a request the filter answered itself), then response headers (where a
    /// local reply replaces the upstream's), `on_log`, `on_done`, `on_delete`.
    pub fn complete(&mut self, id: u32, upstream: Option<UpstreamAnswer>) -> Result<ClientResponse> {
        if self.bypassed.remove(&id).is_some() {
            return match upstream {
                Some(up) => Ok(upstream_response(up)),
                None => bail!("stream {id} was forwarded but completed without an upstream outcome"),
            };
        }
        let (mut response, forwarded) = match self.response_for(id, upstream) {
            Ok(r) => r,
            Err(_) => {
                self.store.data_mut().streams.remove(&id);
                return Ok(fail_closed());
            }
        };
        let headers_sent = match self.response_headers(id, &mut response) {
            Ok(sent) => sent,
            Err(_) => {
                let stream = self.store.data_mut().streams.remove(&id);
                return Ok(match (self.failure, stream) {
                    // Fail open: the response goes on as the filter left it when it trapped.
                    (FailurePolicy::FailOpen, Some(stream)) => {
                        response.headers = stream.response_headers;
                        response
                    }
                    _ => fail_closed(),
                });
            }
        };
        response.forwarded = forwarded;
        // The client has its response; a trap from here on only fails the VM for later streams.
        let ctx = id as i32;
        self.store.data_mut().effective_context = id;
        let _ = self
            .guest(|s, e| e.on_log.call(s, ctx))
            .and_then(|()| self.guest(|s, e| e.on_done.call(s, ctx)))
            .and_then(|_| self.guest(|s, e| e.on_delete.call(s, ctx)));
        if let Some(stream) = self.store.data_mut().streams.remove(&id) {
            response.counted = stream.counted;
            if headers_sent {
                response.headers = stream.sent_headers.unwrap_or(stream.response_headers);
            }
        }
        Ok(response)
    }

    /// Ends a stream whose client went away before any response: `on_log`, `on_done`,
    /// `on_delete` with no response code (as Envoy does on a client abort).
    /// Returns the counter increments the filter made for the stream.
    pub fn abort(&mut self, id: u32) -> Result<Vec<(u32, u64)>> {
        if self.bypassed.remove(&id).is_some() {
            return Ok(Vec::new());
        }
        let ctx = id as i32;
        self.stream_mut(id)?.info.response_flags |= 0x4000; // DC: downstream connection termination
        self.store.data_mut().effective_context = id;
        let ended = self
            .guest(|s, e| e.on_log.call(s, ctx))
            .and_then(|()| self.guest(|s, e| e.on_done.call(s, ctx)))
            .and_then(|_| self.guest(|s, e| e.on_delete.call(s, ctx)));
        let stream = self.store.data_mut().streams.remove(&id);
        ended.map(|()| stream.map(|s| s.counted).unwrap_or_default())
    }

    /// The response as it reaches the filter: the filter's own reply from the request path, or
    /// the upstream side's outcome (recorded in the stream's info for `on_log`). Also returns the
    /// request headers as forwarded.
    fn response_for(
        &mut self,
        id: u32,
        upstream: Option<UpstreamAnswer>,
    ) -> Result<(ClientResponse, Option<HeaderMap>)> {
        let (keep, attempt_count) = (self.keep_forwarded, self.attempt_count_in_response);
        let st = self.stream_mut(id)?;
        match (st.local_reply.take(), upstream) {
            (Some(reply), _) => Ok((reply_response(&reply), None)),
            (None, Some(mut up)) => {
                let forwarded = keep.then(|| st.request_headers.clone());
                if attempt_count {
                    up.headers.retain(|(k, _)| k != ATTEMPT_COUNT);
                    up.headers.push((ATTEMPT_COUNT.into(), up.attempts.to_string().into_bytes()));
                }
                st.info.response_flags = up.flags;
                st.info.code_details = std::mem::take(&mut up.details);
                st.info.attempt_count = up.attempts;
                st.info.duration_ns = up.duration_ns;
                Ok((upstream_response(up), forwarded))
            }
            (None, None) => bail!("stream {id} was forwarded but completed without an upstream outcome"),
        }
    }

    /// The response headers pass through the filter (local replies from the request path
    /// included); a reply sent from there replaces the upstream's response entirely. Returns true
    /// when the client gets the stream's response headers as the filter left them: they stay in
    /// the stream (the filter may still read them in `on_log`) and [`Vm::complete`] takes them.
    fn response_headers(&mut self, id: u32, response: &mut ClientResponse) -> Result<bool> {
        let ctx = id as i32;
        let st = self.stream_mut(id)?;
        st.info.response_code = Some(response.status);
        st.response_headers = std::mem::take(&mut response.headers);
        let n = st.response_headers.len() as i32;
        self.store.data_mut().effective_context = id;
        self.guest(|s, e| e.on_response_headers.call(s, (ctx, n, 1)))?;
        let st = self.stream_mut(id)?;
        match st.local_reply.take() {
            Some(reply) if !response.local => {
                *response = reply_response(&reply);
                st.info.response_code = Some(reply.status);
                Ok(false)
            }
            _ => {
                st.response_sent = true;
                Ok(true)
            }
        }
    }

    fn stream_mut(&mut self, id: u32) -> Result<&mut Stream> {
        match self.store.data_mut().streams.get_mut(&id) {
            Some(s) => Ok(s),
            None => bail!("stream {id} vanished"),
        }
    }
}

/// A local reply as the client gets it. Like Envoy's `sendLocalReply`, a body without a
/// content-type is sent as `text/plain` (found by the fidelity suite).
fn reply_response(reply: &LocalReply) -> ClientResponse {
    let mut headers: HeaderMap = vec![(":status".into(), status_bytes(reply.status))];
    headers.extend(reply.headers.iter().cloned());
    if !reply.body.is_empty() && !reply.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        headers.push(("content-type".into(), b"text/plain".to_vec()));
    }
    ClientResponse {
        status: reply.status,
        headers,
        body: reply.body.clone(),
        local: true,
        forwarded: None,
        counted: Vec::new(),
    }
}

/// Header maps are made with room for this many headers more, so that the ones a filter adds
/// (router instructions, rate-limit headers) do not grow them: a reallocation and a copy per
/// request in the speed bench.
const ROOM_FOR_FILTER_HEADERS: usize = 4;

/// A status code as header bytes, without the formatting machinery (once per response).
fn status_bytes(status: u16) -> Vec<u8> {
    if (100..1000).contains(&status) {
        vec![b'0' + (status / 100) as u8, b'0' + (status / 10 % 10) as u8, b'0' + (status % 10) as u8]
    } else {
        status.to_string().into_bytes()
    }
}

fn upstream_response(up: UpstreamAnswer) -> ClientResponse {
    let mut headers: HeaderMap = Vec::with_capacity(1 + up.headers.len() + ROOM_FOR_FILTER_HEADERS);
    headers.push((":status".into(), status_bytes(up.status)));
    headers.extend(up.headers);
    ClientResponse {
        status: up.status,
        headers,
        body: up.body,
        local: false,
        forwarded: None,
        counted: Vec::new(),
    }
}

/// Envoy's answer once a FAIL_CLOSED plugin has failed on this worker.
fn fail_closed() -> ClientResponse {
    ClientResponse {
        status: 503,
        headers: vec![(":status".into(), b"503".to_vec())],
        body: Vec::new(),
        local: true,
        forwarded: None,
        counted: Vec::new(),
    }
}
