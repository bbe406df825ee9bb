//! What loading a large configuration costs natively, phase by phase: the part of `on_configure`
//! that is ours (`./dev bench --only scale` measures it in Envoy's V8, where a VM's first load
//! also pays for the fresh wasm memory it touches, hence the peak heap printed here).
//!
//! `cargo bench -p breakwater-policy --bench load [-- --quick]`: the compact JSON of 1,000
//! policies, as `breakwater publish` sends it (the shape of bench/run.py's scale section), read
//! into the tree, decoded, checked and planned. Prints the median of each phase over the runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The counting allocator below is the only unsafe code of the workspace: GlobalAlloc is an unsafe
// trait. It forwards to the system allocator unchanged.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counts allocations and the bytes live at the peak: measures of loading that, unlike time, do
/// not move with the machine's noise. In Envoy, a VM's first configuration also pays for every
/// page of wasm memory it touches for the first time (memory.grow and page faults: about 0.6 ms
/// per MiB, more than parsing itself), so the peak is what sets the cost of a first load.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes as u64, Ordering::Relaxed) + bytes as u64;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is passed to System unchanged (only counted).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        grew(layout.size());
        // SAFETY: the caller keeps GlobalAlloc::alloc's contract, which System's call needs.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller keeps GlobalAlloc::dealloc's contract, which System's call needs.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // A moving realloc holds both blocks for a moment; count the new one first.
        grew(new_size);
        LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller keeps GlobalAlloc::realloc's contract, which System's call needs.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

use breakwater_policy::enforce::{self, Exchange};
use breakwater_policy::engine::store::MemoryStore;
use breakwater_policy::plan::{Plan, SimpleRequest};
use breakwater_policy::{check, decode, source};

/// Every engine of policy (d) in bench/run.py, on each of `n` policies.
fn document(n: usize) -> String {
    let mut yaml = String::from("version: 1\npolicies:\n");
    for i in 0..n {
        let (name, prefix) = if i + 1 == n {
            ("bench".to_string(), "/last/".to_string())
        } else {
            (format!("svc-{i}"), format!("/svc-{i}/"))
        };
        yaml.push_str(&format!(
            "  - name: {name}\n    match: {{ path_prefix: {prefix} }}\n    rate_limit: {{ rate: 1000000000, per: 1s, burst: 1000000000 }}\n    concurrency_limit: {{ max_in_flight: 100000 }}\n    circuit_breaker: {{ window: 100, minimum_calls: 20, failure_rate: 50 }}\n    retry: {{ max_retries: 2, retry_on: [5xx], budget: {{ percent: 20, min_per_second: 10 }} }}\n    timeout: 5s\n"
        ));
    }
    breakwater_policy::compile_compact(&breakwater_policy::load(&yaml).unwrap().document)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (n, runs) = if quick { (100, 5) } else { (1_000, 51) };
    let json = document(n);
    let mut phases: [Vec<Duration>; 5] = Default::default();
    let mut counts = [0u64; 4];
    let (mut peak, mut sizes) = (0u64, [0u64; 2]);
    for _ in 0..runs {
        PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
        let base = LIVE.load(Ordering::Relaxed);
        let a0 = allocations();
        let t0 = Instant::now();
        let root = source::parse_bytes_without_spans(json.as_bytes()).unwrap();
        let t1 = Instant::now();
        let a1 = allocations();
        sizes[0] = LIVE.load(Ordering::Relaxed) - base;
        let (doc, diags) = decode::decode_without_spans(&root);
        assert!(diags.is_empty(), "{diags:?}");
        drop(root);
        let t2 = Instant::now();
        let a2 = allocations();
        assert!(check::check_errors(&doc).is_empty());
        let t3 = Instant::now();
        let a3 = allocations();
        let plan = Plan::new(doc).unwrap();
        let t4 = Instant::now();
        counts = [a1 - a0, a2 - a1, a3 - a2, allocations() - a3];
        assert_eq!(plan.policies.len(), n);
        peak = PEAK.load(Ordering::Relaxed) - base;
        sizes[1] = LIVE.load(Ordering::Relaxed) - base;
        drop(plan);
        let t5 = Instant::now();
        for (p, d) in phases.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4]) {
            p.push(d);
        }
    }
    let [tree, decode, check, plan, drop] = phases.map(median);
    println!(
        "{n} policies, {} bytes of compact JSON, median of {runs}: tree {tree:.3} ms, decode (and dropping the tree) \
         {decode:.3} ms, check {check:.3} ms, plan {plan:.3} ms (total {:.3} ms); dropping the plan {drop:.3} ms",
        json.len(),
        tree + decode + check + plan
    );
    let per = |c: u64| c as f64 / n as f64;
    let [tree, decode, check, plan] = counts;
    println!(
        "allocations per policy: tree {:.1}, decode {:.1}, check {:.1}, plan {:.1} (total {:.1})",
        per(tree),
        per(decode),
        per(check),
        per(plan),
        per(tree + decode + check + plan)
    );
    println!(
        "heap while loading (the JSON itself not counted): peak {:.2} MiB; the tree {:.2} MiB; the plan {:.2} MiB",
        mib(peak),
        mib(sizes[0]),
        mib(sizes[1])
    );
    request_cost(quick);
}

/// The decision of one request of policy (d) through `enforce` (what the filter calls at request
/// headers, response headers and stream end), without the host: time and allocations.
fn request_cost(quick: bool) {
    let plan = Plan::new(breakwater_policy::load_config(document(1).as_bytes()).unwrap()).unwrap();
    let store = MemoryStore::default();
    let req = SimpleRequest::new("GET", "shop.example.com", "/last/items");
    let exchange = Exchange { status: Some(200), ..Exchange::default() };
    let n: u64 = if quick { 1_000 } else { 200_000 };
    let mut now = 1_000_000_000_000u64;
    let a0 = allocations();
    let t0 = Instant::now();
    for _ in 0..n {
        now += 1_000_000;
        let mut a = enforce::admit(&plan, &store, &req, now).and_then(enforce::Step::decided).unwrap();
        a.events.clear();
        assert!(enforce::fallback(&plan, &mut a, &exchange).is_none());
        enforce::finish(&plan, &store, &mut a, &exchange, Some(1), now + 500_000);
    }
    let elapsed = t0.elapsed();
    println!(
        "one request of policy (d) through enforce: {:.0} ns, {:.1} allocations",
        elapsed.as_secs_f64() * 1e9 / n as f64,
        (allocations() - a0) as f64 / n as f64
    );
}
