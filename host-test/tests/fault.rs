//! Injected faults through the compiled filter: exact shares, delays held on the root's timer
//! and let go on the world's clock, `max_active`, and the breaker left out of injected aborts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use breakwater_host_test::{Begun, Request, UpstreamAnswer, World};
use common::envoy;

fn ok(_: &breakwater_host_test::state::HeaderMap) -> UpstreamAnswer {
    UpstreamAnswer::status(200)
}

fn metric(world: &World, name: &str) -> u64 {
    world.metric(name).unwrap_or(0)
}

#[test]
fn five_percent_of_a_thousand_requests_are_aborted_across_two_workers() {
    let (world, mut vms) = envoy(
        2,
        "version: 1\npolicies:\n  - name: f\n    fault: { abort: { percent: 5, response: { status: 503, body: \"chaos\\n\" } } }\n",
    );
    let mut aborted = 0;
    for i in 0..1000 {
        let r = vms[i % 2].request(&Request::get("h", "/"), ok).unwrap();
        if r.status == 503 {
            assert!(r.local);
            assert_eq!(r.body, b"chaos\n");
            aborted += 1;
        }
    }
    assert_eq!(aborted, 50);
    assert_eq!(metric(&world, "breakwater.requests.policy.f.decision.fault_aborted"), 50);
    assert_eq!(metric(&world, "breakwater.requests.policy.f.decision.allowed"), 950);
}

#[test]
fn a_delayed_request_goes_on_when_its_delay_is_over() {
    let (world, mut vms) = envoy(
        1,
        "version: 1\npolicies:\n  - name: f\n    fault: { delay: { percent: 100, duration: 100ms } }\n",
    );
    let start = world.clock_ns.get();
    let r = vms[0].request(&Request::get("h", "/"), ok).unwrap();
    assert_eq!(r.status, 200);
    let waited_ms = (world.clock_ns.get() - start) / 1_000_000;
    // The root's 1 ms tick lets it go at the first tick at or after 100 ms.
    assert!((100..=101).contains(&waited_ms), "{waited_ms} ms");
    assert_eq!(metric(&world, "breakwater.requests.policy.f.decision.fault_delayed"), 1);
    assert_eq!(metric(&world, "breakwater.fault_active.policy.f"), 0);
}

#[test]
fn at_most_max_active_requests_are_held_and_an_abort_comes_after_its_delay() {
    let (world, mut vms) = envoy(
        1,
        "version: 1\npolicies:\n  - name: f\n    fault:\n      delay: { percent: 100, duration: 50ms }\n      abort: { percent: 100, response: { status: 502 } }\n      max_active: 2\n",
    );
    let begun: Vec<Begun> = (0..3).map(|_| vms[0].begin(&Request::get("h", "/")).unwrap()).collect();
    assert!(matches!(begun[0], Begun::Paused { .. }) && matches!(begun[1], Begun::Paused { .. }));
    // The third is over max_active: not delayed, aborted at once.
    assert!(matches!(begun[2], Begun::Answered { .. }), "{:?}", begun[2]);
    assert_eq!(metric(&world, "breakwater.fault_active.policy.f"), 2);
    assert_eq!(metric(&world, "breakwater.requests.policy.f.decision.fault_delay_skipped"), 1);
    // 50 ms later the tick answers both with the abort.
    for _ in 0..50 {
        world.clock_ns.set(world.clock_ns.get() + 1_000_000);
        vms[0].tick().unwrap();
    }
    let woken = vms[0].take_woken();
    assert_eq!(woken.len(), 2, "{woken:?}");
    for b in woken {
        let Begun::Answered { stream } = b else { panic!("{b:?}") };
        assert_eq!(vms[0].complete(stream, None).unwrap().status, 502);
    }
    assert_eq!(metric(&world, "breakwater.fault_active.policy.f"), 0);
    assert_eq!(metric(&world, "breakwater.requests.policy.f.decision.fault_aborted"), 3);
}

#[test]
fn a_client_that_leaves_during_its_delay_frees_its_place() {
    let (world, mut vms) = envoy(
        1,
        "version: 1\npolicies:\n  - name: f\n    fault: { delay: { percent: 100, duration: 1s }, max_active: 1 }\n",
    );
    let Begun::Paused { stream } = vms[0].begin(&Request::get("h", "/")).unwrap() else { panic!() };
    assert_eq!(metric(&world, "breakwater.fault_active.policy.f"), 1);
    vms[0].abort(stream).unwrap();
    assert_eq!(metric(&world, "breakwater.fault_active.policy.f"), 0);
    // Its place is free for the next request, and the tick finds nothing left to resume.
    assert!(matches!(vms[0].begin(&Request::get("h", "/")).unwrap(), Begun::Paused { .. }));
    world.clock_ns.set(world.clock_ns.get() + 2_000_000_000);
    vms[0].tick().unwrap();
    assert_eq!(vms[0].take_woken().len(), 1);
}

#[test]
fn injected_aborts_leave_the_breaker_closed_unless_counted() {
    let policy = |count: bool| {
        format!(
            "version: 1\npolicies:\n  - name: f\n    circuit_breaker: {{ window: 10, minimum_calls: 5, failure_rate: 50 }}\n    fault: {{ abort: {{ percent: 100, count_in_breaker: {count} }} }}\n"
        )
    };
    for (count, opened) in [(false, 0), (true, 1)] {
        let (world, mut vms) = envoy(1, &policy(count));
        for _ in 0..10 {
            // The upstream would answer 200: every failure the breaker sees is injected.
            assert_eq!(vms[0].request(&Request::get("h", "/"), ok).unwrap().status, 503);
        }
        assert_eq!(metric(&world, "breakwater.breaker_state.policy.f"), opened, "count_in_breaker: {count}");
    }
}

/// `abort.reset`: the stream is reset instead of answered; the client gets nothing, the abort is
/// counted, and a breaker that counts injected aborts records a reset.
#[test]
fn an_abort_can_reset_the_stream() {
    let (world, mut vms) = envoy(
        1,
        "version: 1\npolicies:\n  - name: f\n    circuit_breaker: { window: 4, minimum_calls: 2, failure_rate: 50, failure_on: [reset] }\n    fault: { abort: { percent: 100, reset: true, count_in_breaker: true } }\n",
    );
    for _ in 0..2 {
        let Begun::Answered { stream } = vms[0].begin(&Request::get("h", "/")).unwrap() else { panic!() };
        let r = vms[0].complete(stream, None).unwrap();
        assert_eq!((r.status, r.body.len(), r.local), (0, 0, true));
    }
    assert_eq!(metric(&world, "breakwater.requests.policy.f.decision.fault_aborted"), 2);
    // Two resets of two calls: the breaker opened.
    assert_eq!(metric(&world, "breakwater.breaker_state.policy.f"), 1);
}
