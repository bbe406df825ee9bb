//! An adaptive concurrency limit through the compiled filter: two workers admit under one limit
//! while it measures the upstream's unloaded latency, the samples of both workers end the
//! measurement, and the gauges show the limit, the min RTT and the measurement.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use breakwater_host_test::{Begun, Request, UpstreamAnswer, World};
use common::envoy;

const POLICY: &str = "version: 1
policies:
  - name: a
    concurrency_limit:
      adaptive: { min: 2, max: 50, initial: 10, interval: 100ms, probe_samples: 4 }
";

fn gauge(world: &World, name: &str) -> u64 {
    world.metric(&format!("breakwater.{name}.policy.a")).unwrap_or_else(|| panic!("no gauge {name}"))
}

fn advance_ms(world: &World, ms: u64) {
    world.clock_ns.set(world.clock_ns.get() + ms * 1_000_000);
}

#[test]
fn workers_share_one_adaptive_limit_and_its_measurement() {
    let (world, mut vms) = envoy(2, POLICY);
    let get = Request::get("h", "/");
    let forwarded = |b: Begun| match b {
        Begun::Forwarded { stream } => stream,
        other => panic!("expected forwarding, got {other:?}"),
    };
    // Measuring the min RTT: the limit is pinned at min (2), across both workers.
    let a = forwarded(vms[0].begin(&get).unwrap());
    assert_eq!((gauge(&world, "concurrency_limit"), gauge(&world, "min_rtt_calculation_active")), (2, 1));
    let b = forwarded(vms[1].begin(&get).unwrap());
    let Begun::Answered { stream } = vms[0].begin(&get).unwrap() else { panic!("a third is over the limit") };
    assert_eq!(vms[0].complete(stream, None).unwrap().status, 503);
    // A client that goes away gives no sample; answered ones on either worker do.
    advance_ms(&world, 30);
    vms[0].abort(a).unwrap();
    vms[1].complete(b, Some(UpstreamAnswer::status(200))).unwrap();
    assert_eq!(gauge(&world, "min_rtt_calculation_active"), 1);
    for (i, ms) in [(0, 40), (1, 20), (0, 40)] {
        let s = forwarded(vms[i].begin(&get).unwrap());
        advance_ms(&world, ms);
        vms[i].complete(s, Some(UpstreamAnswer::status(200))).unwrap();
    }
    // Four samples: 30, 40, 20, 40 ms. The limit is the initial one now.
    assert_eq!(gauge(&world, "min_rtt_calculation_active"), 0);
    assert_eq!(gauge(&world, "min_rtt_ms"), 32);
    assert_eq!(gauge(&world, "concurrency_limit"), 10);
    // Ten in flight across the workers, the eleventh refused.
    let held: Vec<(usize, u32)> =
        (0..10).map(|i| (i % 2, forwarded(vms[i % 2].begin(&get).unwrap()))).collect();
    assert!(matches!(vms[1].begin(&get).unwrap(), Begun::Answered { .. }));
    // They come back slowly: 110 ms against a min RTT of 32.5 ms is far over the 25% tolerance,
    // and the limit halves (the most one interval takes off). The first five are the interval's
    // samples (half as many as it had in flight at most); the other five were admitted before the
    // change it made, and are not.
    advance_ms(&world, 110);
    for (i, s) in held {
        vms[i].complete(s, Some(UpstreamAnswer::status(200))).unwrap();
    }
    assert_eq!((gauge(&world, "sample_rtt_ms"), gauge(&world, "concurrency_limit")), (110, 5));
    // Fast again, using the limit: 30 ms five times and 80 ms once, a mean of 38 ms, within the
    // tolerance (40.6 ms): the limit grows by the gradient (1.06) and √5.
    let five: Vec<(usize, u32)> =
        (0..5).map(|i| (i % 2, forwarded(vms[i % 2].begin(&get).unwrap()))).collect();
    advance_ms(&world, 30);
    for (i, s) in five {
        vms[i].complete(s, Some(UpstreamAnswer::status(200))).unwrap();
    }
    assert_eq!(gauge(&world, "concurrency_limit"), 5, "the interval is not over");
    let last = forwarded(vms[1].begin(&get).unwrap());
    advance_ms(&world, 80);
    vms[1].complete(last, Some(UpstreamAnswer::status(200))).unwrap();
    assert_eq!((gauge(&world, "sample_rtt_ms"), gauge(&world, "concurrency_limit")), (38, 7));
    assert_eq!(gauge(&world, "in_flight"), 0);
    // Every answered request is in the policy's latency histogram too (not the one whose client
    // left, nor the refused ones).
    let mut latencies = world.samples("breakwater.upstream_latency_ms.policy.a");
    latencies.sort();
    let mut expected = vec![20, 30, 30, 30, 30, 30, 30, 40, 40, 80];
    expected.extend([110; 10]);
    assert_eq!(latencies, expected);
}
