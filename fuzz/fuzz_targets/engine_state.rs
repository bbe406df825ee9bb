//! Every engine's state decoder on hostile shared data: rate-limit buckets, count and time-window
//! breakers, retry budgets, concurrency leases, their waiting lines and adaptive limits' controllers, and the keyed tables'
//! slots, read through the request lifecycle (`enforce::admit` / `poll` / `finish`). Shared data is written by every plugin of the
//! same vm_id, by older filter builds, and outlives configurations: any bytes may be found there.
//! The store hands out fuzzer-chosen values; the filter's code must never panic on them.
#![no_main]

use std::cell::RefCell;
use std::sync::OnceLock;

use breakwater_policy::enforce::{self, Exchange, flags};
use breakwater_policy::engine::store::{MemoryStore, SharedStore, StoreError};
use breakwater_policy::plan::{Plan, SimpleRequest};
use libfuzzer_sys::fuzz_target;

const DOCUMENT: &str = r#"
version: 1
policies:
  - name: counted
    match: { path_prefix: /a }
    rate_limit: { rate: 5, per: 1s, burst: 3, key: ["header:x-key"], max_keys: 16 }
    concurrency_limit: { max_in_flight: 2, key: ["header:x-key"] }
    circuit_breaker: { window: 10, minimum_calls: 2, failure_rate: 50, open_for: 1s, half_open_calls: 1 }
    retry: { max_retries: 2, budget: { percent: 20, min_per_second: 1 } }
    timeout: 2s
  - name: timed
    match: { path_prefix: /b }
    rate_limit: { rate: 5, per: 1s }
    concurrency_limit: { max_in_flight: 2 }
    circuit_breaker: { window: 10s, minimum_calls: 2, failure_rate: 50, slow_call: { duration: 100ms, rate: 50 }, open_for: 1s }
  - name: lined
    match: { path_prefix: /c }
    concurrency_limit: { max_in_flight: 1, key: ["header:x-key"], max_keys: 4, queue: { max_waiting: 3, max_wait: 2s } }
  - name: queued
    match: { path_prefix: /d }
    concurrency_limit: { max_in_flight: 1, queue: { max_waiting: 3, max_wait: 1s } }
    circuit_breaker: { window: 4, minimum_calls: 2, failure_rate: 50, open_for: 1s }
  - name: adaptive
    match: { path_prefix: /e }
    concurrency_limit:
      adaptive: { min: 1, max: 4, initial: 2, interval: 10ms, probe_samples: 2 }
      key: ["header:x-key"]
      queue: { max_waiting: 3, max_wait: 1s }
"#;

fn plan() -> &'static Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    PLAN.get_or_init(|| {
        let doc = match breakwater_policy::load(DOCUMENT) {
            Ok(l) => l.document,
            Err(e) => panic!("the fuzz document does not load: {e:?}"),
        };
        match Plan::new(doc) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    })
}

/// The fuzzer's bytes as a stream.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        taken
    }
}

/// A real store, except that a read may find bytes the fuzzer chose instead.
struct Hostile<'a> {
    inner: MemoryStore,
    input: RefCell<Input<'a>>,
}

impl SharedStore for Hostile<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let mut input = self.input.borrow_mut();
        match input.byte() {
            // Foreign bytes, with a token the real store does not hold (the write will be refused
            // and retried, as after another worker's write).
            Some(len @ 0..=159) => {
                let bytes = input.bytes(usize::from(len)).to_vec();
                Ok(Some((bytes, 0xdead_beef)))
            }
            Some(160..=191) => Ok(None),
            Some(192..=199) => Err(StoreError::Unavailable("fuzzed".into())),
            _ => {
                drop(input);
                self.inner.get(key)
            }
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        self.inner.set(key, value, cas)
    }
}

fuzz_target!(|data: &[u8]| {
    let plan = plan();
    let store = Hostile { inner: MemoryStore::default(), input: RefCell::new(Input(data)) };
    let mut now: u64 = 1_000_000_000_000;
    let mut held = Vec::new();
    let mut waiting = Vec::new();
    for _ in 0..64 {
        let Some(op) = store.input.borrow_mut().byte() else { break };
        now = now.saturating_add(u64::from(op & 0x0f) * 50_000_000);
        let path = ["/a", "/b", "/c", "/d", "/e"][usize::from((op >> 4) % 5)];
        let key = format!("k{}", op >> 6);
        let req = SimpleRequest::new("GET", "example.com", path).header("x-key", &key).from_ip("10.0.0.1");
        if let Some(a) = enforce::admit(plan, &store, &req, now).and_then(enforce::Step::decided) {
            if a.waits_until().is_some() { waiting.push((a, req.clone())) } else { held.push(a) }
        }
        // Every waiter looks at its line; the decided ones go on.
        let mut still = Vec::new();
        for (mut a, req) in waiting.drain(..) {
            if enforce::poll(plan, plan, &store, &mut a, now, || req.clone()) {
                held.push(a);
            } else {
                still.push((a, req));
            }
        }
        waiting = still;
        // A client that leaves while it waits.
        if op & 2 == 2 && !waiting.is_empty() {
            let (mut a, _) = waiting.remove(0);
            enforce::finish(plan, &store, &mut a, &Exchange::default(), None, now);
        }
        // Finish the oldest request every other step, with an outcome chosen by the input.
        if op & 1 == 1 && !held.is_empty() {
            let mut a = held.remove(0);
            let outcome = store.input.borrow_mut().byte().unwrap_or(0);
            let exchange = match outcome % 4 {
                0 => Exchange { status: Some(200), ..Exchange::default() },
                1 => Exchange { status: Some(503), ..Exchange::default() },
                2 => {
                    Exchange { status: Some(503), flags: flags::UPSTREAM_REMOTE_RESET, ..Exchange::default() }
                }
                _ => Exchange {
                    status: None,
                    flags: flags::DOWNSTREAM_CONNECTION_TERMINATION,
                    ..Exchange::default()
                },
            };
            if exchange.status.is_some() && a.times_answer() {
                a.answered(now);
            }
            let _ = enforce::fallback(plan, &mut a, &exchange);
            enforce::finish(plan, &store, &mut a, &exchange, Some(u32::from(outcome >> 6)), now);
        }
    }
    for mut a in held.into_iter().chain(waiting.into_iter().map(|(a, _)| a)) {
        enforce::finish(plan, &store, &mut a, &Exchange::default(), None, now);
    }
});
