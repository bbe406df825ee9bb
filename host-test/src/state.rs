//! What the host keeps: per simulated Envoy (a [`World`], shared by its VMs like one vm_id's
//! shared data and stats) and per VM ([`HostState`], one wasmtime Store each).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use breakwater_policy::engine::store::MemoryStore;
use wasmtime::{Extern, Instance, Memory, Store, TypedFunc};

pub use crate::header_map::HeaderMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub vm: usize,
    /// proxy-wasm levels: 0 trace … 5 critical.
    pub level: u32,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Clone)]
pub struct Metric {
    pub name: String,
    pub kind: MetricKind,
    pub value: u64,
    /// Histogram samples.
    pub samples: Vec<u64>,
}

/// What all VMs of one simulated Envoy share: the clock, shared data (Envoy's semantics, from the
/// policy crate's MemoryStore), stats (one stat per name, shared by VMs, as in Envoy), and logs.
#[derive(Debug, Default)]
pub struct World {
    pub clock_ns: Cell<u64>,
    pub shared: MemoryStore,
    pub metrics: RefCell<Vec<Metric>>,
    pub logs: RefCell<Vec<LogLine>>,
    pub rng: Cell<u64>,
    pub queues: RefCell<Queues>,
    /// Clusters that `proxy_http_call` can reach, by name (Envoy: any other name is BadArgument).
    pub clusters: RefCell<Clusters>,
    /// HTTP calls dispatched and not yet answered, over all VMs.
    pub pending_calls: Cell<u32>,
    /// Clusters that `proxy_grpc_call` can reach, by name (Envoy: any other name is
    /// ParseFailure).
    pub grpc_clusters: RefCell<GrpcClusters>,
    /// When gRPC calls dispatched since the simulation last looked are due (it schedules their
    /// delivery then).
    pub grpc_due: RefCell<Vec<u64>>,
}

/// A gRPC call as the filter made it.
#[derive(Debug, Clone)]
pub struct GrpcCall {
    pub service: String,
    pub method: String,
    pub metadata: HeaderMap,
    pub message: Vec<u8>,
}

/// How a simulated gRPC service answers a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcReply {
    /// OK, with this message.
    Message(Vec<u8>),
    /// This gRPC status (14: UNAVAILABLE, as Envoy reports a refused connection).
    Status(u32),
    /// No answer: the call times out.
    Silence,
}

/// A simulated gRPC cluster: given the call and the time, the answer and its latency in ns.
pub type GrpcCluster = Rc<dyn Fn(&GrpcCall, u64) -> (GrpcReply, u64)>;

/// The world's gRPC clusters by name.
#[derive(Default)]
pub struct GrpcClusters(pub HashMap<String, GrpcCluster>);

impl std::fmt::Debug for GrpcClusters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// A gRPC call on its way: at `due_ns`, its message goes to `proxy_on_grpc_receive`, or its
/// status to `proxy_on_grpc_close` (Envoy reports a timeout as 14, UNAVAILABLE).
#[derive(Debug, Clone)]
pub struct PendingGrpc {
    pub token: u32,
    pub due_ns: u64,
    pub reply: Result<Vec<u8>, u32>,
}

/// A simulated cluster for `proxy_http_call`: given the call's headers and body, the answer
/// (headers with `:status`, body) and its latency in ns; None: the call fails (reset).
pub type Cluster = Rc<dyn Fn(&HeaderMap, &[u8]) -> (Option<(HeaderMap, Vec<u8>)>, u64)>;

/// The world's clusters by name.
#[derive(Default)]
pub struct Clusters(pub HashMap<String, Cluster>);

impl std::fmt::Debug for Clusters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// An HTTP call on its way: delivered to `context` as `proxy_on_http_call_response` at `due_ns`.
#[derive(Debug, Clone)]
pub struct PendingCall {
    pub token: u32,
    pub context: u32,
    pub due_ns: u64,
    /// None: failed (reset or timed out): the callback gets no headers and no body.
    pub reply: Option<(HeaderMap, Vec<u8>)>,
}

/// Shared queues, as Envoy keeps them: named per vm_id, owned by the root context that
/// registered the name last (it gets `proxy_on_queue_ready`), readable and writable by any VM.
#[derive(Debug, Default)]
pub struct Queues {
    by_name: HashMap<(String, String), u32>,
    /// Token - 1 → the queue.
    queues: Vec<Queue>,
    /// Notifications not yet delivered: (VM index, root context, token).
    pub ready: Vec<(usize, u32, u32)>,
}

#[derive(Debug, Default)]
struct Queue {
    owner: (usize, u32),
    items: std::collections::VecDeque<Vec<u8>>,
}

impl Queues {
    /// Registers (or takes over) `name` for `vm_id`; returns its token.
    pub fn register(&mut self, vm_id: &str, name: &str, owner: (usize, u32)) -> u32 {
        let key = (vm_id.to_string(), name.to_string());
        if let Some(&token) = self.by_name.get(&key)
            && let Some(q) = self.queues.get_mut(token as usize - 1)
        {
            q.owner = owner;
            return token;
        }
        self.queues.push(Queue { owner, items: Default::default() });
        let token = self.queues.len() as u32;
        self.by_name.insert(key, token);
        token
    }

    pub fn resolve(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.by_name.get(&(vm_id.to_string(), name.to_string())).copied()
    }

    /// Appends `item`; the owner is notified. None: no such queue.
    pub fn enqueue(&mut self, token: u32, item: Vec<u8>) -> Option<()> {
        let q = self.queues.get_mut((token as usize).checked_sub(1)?)?;
        q.items.push_back(item);
        self.ready.push((q.owner.0, q.owner.1, token));
        Some(())
    }

    /// The oldest item: Some(None) when the queue is empty, None when there is no such queue.
    pub fn dequeue(&mut self, token: u32) -> Option<Option<Vec<u8>>> {
        let q = self.queues.get_mut((token as usize).checked_sub(1)?)?;
        Some(q.items.pop_front())
    }
}

impl World {
    pub fn new(start_ns: u64, seed: u64) -> Rc<World> {
        let w = World::default();
        w.clock_ns.set(start_ns);
        w.rng.set(seed | 1);
        Rc::new(w)
    }

    /// A counter or gauge by name (Envoy's `/stats` shows it as `wasmcustom.<name>`).
    /// Makes `name` reachable by `proxy_grpc_call`.
    pub fn add_grpc_cluster(&self, name: &str, cluster: GrpcCluster) {
        self.grpc_clusters.borrow_mut().0.insert(name.to_string(), cluster);
    }

    /// Makes `name` reachable by `proxy_http_call`.
    pub fn add_cluster(&self, name: &str, cluster: Cluster) {
        self.clusters.borrow_mut().0.insert(name.to_string(), cluster);
    }

    pub fn metric(&self, name: &str) -> Option<u64> {
        self.metrics.borrow().iter().find(|m| m.name == name).map(|m| m.value)
    }

    /// The values recorded into a histogram, oldest first (empty when it is not defined).
    pub fn samples(&self, name: &str) -> Vec<u64> {
        self.metrics.borrow().iter().find(|m| m.name == name).map(|m| m.samples.clone()).unwrap_or_default()
    }

    /// xorshift64*: deterministic for a seed.
    pub fn next_random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A local reply the filter asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub details: String,
}

/// What Envoy knows about a stream and shows as properties.
#[derive(Debug, Clone, Default)]
pub struct StreamInfo {
    pub source_address: String,
    pub response_code: Option<u16>,
    pub response_flags: u64,
    pub code_details: String,
    pub attempt_count: u64,
    pub duration_ns: u64,
    pub upstream_address: Option<String>,
}

/// One HTTP stream (an HTTP context of the filter).
#[derive(Debug, Clone, Default)]
pub struct Stream {
    pub request_headers: HeaderMap,
    pub request_trailers: HeaderMap,
    pub response_headers: HeaderMap,
    pub response_trailers: HeaderMap,
    pub local_reply: Option<LocalReply>,
    pub info: StreamInfo,
    /// Counter increments made while this stream was the effective context: (metric id, by).
    /// Simulations attribute decisions to requests with them, as a stats diff would.
    pub counted: Vec<(u32, u64)>,
    /// The response headers have gone to the client (after `proxy_on_response_headers`): the
    /// client keeps them as they were then, whatever the filter changes later.
    pub response_sent: bool,
    /// The response headers as sent, copied only if the filter changes them after that.
    pub sent_headers: Option<HeaderMap>,
    /// Paused in request headers (waiting for a call), and whether the filter has resumed it.
    pub paused: bool,
    pub resumed: bool,
    /// The filter reset the stream (`proxy_close_stream` on the request): the client gets no
    /// response.
    pub reset: bool,
}

/// One VM's host state (a wasmtime Store's data).
#[derive(Debug)]
pub struct HostState {
    pub world: Rc<World>,
    pub vm: usize,
    pub effective_context: u32,
    /// The VM's current root context (0 before the first configuration).
    pub root_context: u32,
    /// HTTP calls this VM dispatched, not yet delivered; tokens count from 1.
    pub calls: Vec<PendingCall>,
    pub next_call_token: u32,
    /// The answer being delivered (`proxy_on_http_call_response` reads it as header map 6 and
    /// buffer 4).
    pub call_response: Option<(HeaderMap, Vec<u8>)>,
    /// gRPC calls this VM dispatched, not yet delivered; tokens count from 1.
    pub grpc_calls: Vec<PendingGrpc>,
    pub next_grpc_token: u32,
    /// The message being delivered (`proxy_on_grpc_receive` reads it as buffer 5).
    pub grpc_response: Option<Vec<u8>>,
    pub plugin_config: Vec<u8>,
    pub vm_config: Vec<u8>,
    /// By context id (FNV: SipHash was a visible share of every host call).
    pub streams: HashMap<u32, Stream, breakwater_policy::fnv::BuildFnv>,
    pub tick_period_ms: u32,
    pub log_level: u32,
    pub plugin_name: String,
    pub vm_id: String,
    /// The guest's memory and allocator, set once the module is instantiated.
    pub guest: GuestExports,
    /// This VM's metric ids: the index of each id's stat in [`World::metrics`].
    pub metric_ids: Vec<usize>,
    /// Reused for what a host call returns (the `memory` module's `answer`).
    pub scratch: Vec<u8>,
    /// The VM's memory cap ([`crate::host::DEFAULT_MEMORY_LIMIT`]).
    pub limits: wasmtime::StoreLimits,
}

impl HostState {
    /// The stat (an index in [`World::metrics`]) a metric id of this VM names.
    pub fn stat(&self, id: i32) -> Option<usize> {
        self.metric_ids.get(id as u32 as usize).copied()
    }

    pub fn stream(&mut self) -> Option<&mut Stream> {
        self.streams.get_mut(&self.effective_context)
    }

    pub fn log(&self, level: u32, message: String) {
        self.world.logs.borrow_mut().push(LogLine { vm: self.vm, level, message });
    }
}

/// The guest's memory and allocator, looked up once per VM (a lookup by name costs more than the
/// rest of a small host call).
#[derive(Clone, Default)]
pub struct GuestExports {
    pub memory: Option<Memory>,
    pub allocate: Option<TypedFunc<i32, i32>>,
}

impl std::fmt::Debug for GuestExports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestExports").field("allocate", &self.allocate.is_some()).finish()
    }
}

impl GuestExports {
    pub fn new(instance: &Instance, store: &mut Store<HostState>) -> GuestExports {
        let memory = match instance.get_export(&mut *store, "memory") {
            Some(Extern::Memory(m)) => Some(m),
            _ => None,
        };
        let allocate = instance.get_typed_func(&mut *store, "proxy_on_memory_allocate").ok();
        GuestExports { memory, allocate }
    }
}
