//! An adaptive concurrency limit in real Envoy (2 workers): 40 clients back to back against an
//! upstream whose latency grows with its load. The limit measures the unloaded latency, settles
//! near the upstream's knee, falls when the upstream slows down, and climbs back when it recovers;
//! the clients over the limit wait in its queue, and nothing is left held at the end.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use breakwater_e2e::{Envoy, Upstream};
use breakwater_policy::metrics::Gauge;

const POLICY: &str = "version: 1
policies:
  - name: a
    concurrency_limit:
      adaptive: { min: 3, max: 200, initial: 10, interval: 100ms, probe_interval: 3s, probe_samples: 20 }
      queue: { max_waiting: 100, max_wait: 10s }
";

/// The limit, sampled every 50 ms for `for_`: (elapsed ms, limit, whether it measured the min
/// RTT then).
fn watch(envoy: &Envoy, for_: Duration) -> Vec<(u128, u64, bool)> {
    let start = Instant::now();
    let mut seen = Vec::new();
    while start.elapsed() < for_ {
        let probing = envoy.gauge("a", Gauge::MinRttCalculationActive) == 1;
        seen.push((start.elapsed().as_millis(), envoy.gauge("a", Gauge::ConcurrencyLimit), probing));
        std::thread::sleep(Duration::from_millis(50));
    }
    seen
}

#[test]
fn the_limit_settles_near_the_knee_falls_when_the_upstream_slows_and_recovers() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(POLICY, upstream.port());
    // Fast: 20 ms while at most 10 are in the upstream.
    upstream.set_load_latency(20, 10);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..40)
        .map(|_| {
            let (mut c, stop) = (envoy.client(), stop.clone());
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    statuses.push(c.get("/", &[]).status);
                }
                statuses
            })
        })
        .collect();
    let fast = watch(&envoy, Duration::from_secs(6));
    let min_rtt = envoy.gauge("a", Gauge::MinRttMs);
    // Between measurements of the min RTT (every 3 s, at the limit's min while they last).
    let settled: Vec<u64> =
        fast.iter().filter(|(t, _, probing)| *t >= 1000 && !probing).map(|s| s.1).collect();
    let upstream_most = upstream.max_in_flight();
    // Slow: 100 ms while at most 3 are in it.
    upstream.reset_counters();
    upstream.set_load_latency(100, 3);
    let slow = watch(&envoy, Duration::from_secs(6));
    // Fast again.
    upstream.set_load_latency(20, 10);
    let again = watch(&envoy, Duration::from_secs(8));
    stop.store(true, Ordering::SeqCst);
    let statuses: Vec<u16> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();

    let lowest_slow = slow.iter().map(|s| s.1).min().unwrap();
    let fell_by = slow.iter().find(|(_, l, probing)| *l <= 5 && !probing).map(|s| s.0);
    let back_by = again.iter().find(|(_, l, _)| *l >= 10).map(|s| s.0);
    println!(
        "min RTT {min_rtt} ms; settled at {}..{} (knee 10), upstream at most {upstream_most} at once; \
         slowed: down to {lowest_slow} (≤ 5 after {fell_by:?} ms); recovered to ≥ 10 after {back_by:?} ms; \
         {} requests",
        settled.iter().min().unwrap(),
        settled.iter().max().unwrap(),
        statuses.len()
    );
    assert!((20..=30).contains(&min_rtt), "the unloaded latency: {min_rtt} ms");
    // The knee is 10; the 25% tolerance and √ headroom over it, with 2 cores' timing noise.
    assert!(settled.len() > 20 && settled.iter().all(|l| (8..=24).contains(l)), "{fast:?}");
    // Within a few intervals of samples that took 100-400 ms, and a measurement of the min RTT
    // if one falls due (every 3 s here: 1-1.5 s at the limit's min, 20 samples of 100 ms).
    assert!(fell_by.is_some_and(|t| t < 3500), "the limit fell when the upstream slowed: {slow:?}");
    let late_slow: Vec<u64> = slow.iter().filter(|(t, _, p)| *t >= 3500 && !p).map(|s| s.1).collect();
    assert!(
        !late_slow.is_empty() && late_slow.iter().all(|l| *l <= 8),
        "near the slowed upstream's knee (3): {slow:?}"
    );
    assert!(back_by.is_some_and(|t| t < 4000), "and came back when it recovered: {again:?}");
    // Every client over the limit waited: none was refused.
    assert!(statuses.iter().all(|s| *s == 200), "{:?}", statuses.iter().filter(|s| **s != 200).count());
    assert!(envoy.decisions("a", "queue_admitted") > 0);
    assert_eq!(envoy.decisions("a", "concurrency_limited"), 0);
    envoy.wait_for("nothing held", Duration::from_secs(5), || {
        envoy.gauge("a", Gauge::InFlight) == 0 && envoy.gauge("a", Gauge::QueueLength) == 0
    });
}
