//! One simulated Envoy VM running the filter: the lifecycle calls in Envoy's order, and HTTP
//! streams from request headers to `on_delete`, any number of them open at once (a stream is
//! begun, left waiting on its upstream, and completed later, as Envoy interleaves them).

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use wasmtime::{Result, Store, bail};

use crate::exchange::{
    Begun, ClientResponse, ROOM_FOR_FILTER_HEADERS, Request, UpstreamAnswer, fail_closed, reply_response,
    upstream_response,
};
use crate::host::{EPOCHS_PER_CALL, Exports, Factory, Host};
use crate::state::{HeaderMap, HostState, PendingCall, PendingGrpc, Stream, StreamInfo, World};

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

/// One VM: a wasmtime store with the filter instantiated, its root context and its streams.
pub struct Vm {
    /// The filter's instance lives in the store; its callbacks are in `exports`.
    store: Store<HostState>,
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
    /// Paused streams the filter has since resumed or answered ([`Vm::take_woken`]).
    woken: Vec<Begun>,
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
        (self.store, self.exports) = self.factory.instantiate(world, index)?;
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

    /// The root context's timer (`proxy_on_tick`); streams it resumes or answers are woken.
    pub fn tick(&mut self) -> Result<()> {
        let root = self.root as i32;
        self.store.data_mut().effective_context = self.root;
        let result = self.guest(|s, e| e.on_tick.call(s, root));
        self.collect_woken();
        result
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
        Ok(queued + delivered + self.deliver_grpc(now)?)
    }

    /// Delivers the gRPC answers due by `now` to the root context, as Envoy does (the SDK passes
    /// each to the context that made the call; answers for streams that have ended are dropped
    /// there: Envoy does not cancel them). Then notes the paused streams the filter woke.
    fn deliver_grpc(&mut self, now: u64) -> Result<usize> {
        let (mut due, later): (Vec<PendingGrpc>, Vec<PendingGrpc>) =
            std::mem::take(&mut self.store.data_mut().grpc_calls).into_iter().partition(|c| c.due_ns <= now);
        if due.is_empty() {
            self.store.data_mut().grpc_calls = later;
            return Ok(0);
        }
        self.store.data_mut().grpc_calls = later;
        due.sort_by_key(|c| (c.due_ns, c.token));
        let world = self.store.data().world.clone();
        world.pending_calls.set(world.pending_calls.get().saturating_sub(due.len() as u32));
        let root = self.root as i32;
        for call in &due {
            let token = call.token as i32;
            self.store.data_mut().effective_context = self.root;
            let result = match &call.reply {
                Ok(message) => {
                    let size = message.len() as i32;
                    self.store.data_mut().grpc_response = Some(message.clone());
                    self.guest(|s, e| match &e.on_grpc_receive {
                        Some(f) => f.call(s, (root, token, size)),
                        None => Ok(()),
                    })
                }
                Err(status) => {
                    let status = *status as i32;
                    self.guest(|s, e| match &e.on_grpc_close {
                        Some(f) => f.call(s, (root, token, status)),
                        None => Ok(()),
                    })
                }
            };
            self.store.data_mut().grpc_response = None;
            result?;
        }
        self.collect_woken();
        Ok(due.len())
    }

    /// Paused streams the filter has resumed or answered since they paused, into [`Vm::take_woken`].
    fn collect_woken(&mut self) {
        let streams = &mut self.store.data_mut().streams;
        for (id, st) in streams.iter_mut() {
            if !st.paused {
                continue;
            }
            if st.local_reply.is_some() || st.reset {
                st.paused = false;
                self.woken.push(Begun::Answered { stream: *id });
            } else if st.resumed {
                st.paused = false;
                self.woken.push(Begun::Forwarded { stream: *id });
            }
        }
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
        let mut begun = self.begin(req)?;
        if let Begun::Paused { stream } = begun {
            begun = self.wait(stream)?;
        }
        match begun {
            Begun::Forwarded { stream } => {
                let headers = self.forwarded(stream).cloned().unwrap_or_default();
                let up = upstream(&headers);
                self.complete(stream, Some(up))
            }
            Begun::Answered { stream } => self.complete(stream, None),
            Begun::Failed(response) => Ok(response),
            Begun::Paused { stream } => bail!("stream {stream} is still paused"),
        }
    }

    /// Waits for a paused stream: moves the world's clock to each of this VM's gRPC answers and
    /// timer ticks in turn (the filter's tick period, from now), until the filter resumes or
    /// answers the stream; at most a simulated day.
    fn wait(&mut self, stream: u32) -> Result<Begun> {
        let world = self.store.data().world.clone();
        let give_up = world.clock_ns.get().saturating_add(86_400 * 1_000_000_000);
        let period = u64::from(self.tick_period_ms()) * 1_000_000;
        let mut next_tick = world.clock_ns.get().saturating_add(period);
        loop {
            if let Some(i) = self.woken.iter().position(|b| b.stream() == Some(stream)) {
                return Ok(self.woken.remove(i));
            }
            let call = self.store.data().grpc_calls.iter().map(|c| c.due_ns).min();
            let tick = (period > 0).then_some(next_tick);
            let Some(due) = call.into_iter().chain(tick).min() else {
                bail!("stream {stream} is paused and nothing of this VM is pending (no call, no timer)");
            };
            if due > give_up {
                bail!("stream {stream} was still paused after a simulated day");
            }
            world.clock_ns.set(world.clock_ns.get().max(due));
            if tick == Some(due) && call.is_none_or(|c| c > due) {
                self.tick()?;
                next_tick = next_tick.saturating_add(period);
            } else {
                self.deliver()?;
            }
        }
    }

    /// Streams that were paused and that the filter has resumed (forwarded) or answered since
    /// the last call.
    pub fn take_woken(&mut self) -> Vec<Begun> {
        std::mem::take(&mut self.woken)
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
            match (st.local_reply.is_some() || st.reset, action) {
                (true, _) => Ok(Begun::Answered { stream: id }),
                (false, ACTION_CONTINUE) => Ok(Begun::Forwarded { stream: id }),
                // Paused without a reply: the filter waits for a call's answer (a global limit).
                (false, _) => {
                    st.paused = true;
                    Ok(Begun::Paused { stream: id })
                }
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
        if self.store.data().streams.get(&id).is_some_and(|s| s.reset) {
            // The filter reset the stream: no response; the stream ends as Envoy ends a reset one.
            let counted = self.end(id)?;
            return Ok(ClientResponse {
                status: 0,
                headers: Vec::new(),
                body: Vec::new(),
                local: true,
                forwarded: None,
                counted,
            });
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
        self.stream_mut(id)?.info.response_flags |= 0x4000; // DC: downstream connection termination
        self.end(id)
    }

    /// `on_log`, `on_done`, `on_delete` for a stream without a response; the counter increments
    /// the filter made for it.
    fn end(&mut self, id: u32) -> Result<Vec<(u32, u64)>> {
        let ctx = id as i32;
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

impl Host {
    /// A new VM of an Envoy (`world`), not yet started; FAIL_CLOSED unless
    /// [`Vm::set_failure_policy`] says otherwise.
    pub fn vm(&self, world: Rc<World>, index: usize) -> Result<Vm> {
        let (store, exports) = self.factory.instantiate(world, index)?;
        let mut vm = Vm {
            store,
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
            woken: Vec::new(),
        };
        vm.initialize()?;
        Ok(vm)
    }
}
