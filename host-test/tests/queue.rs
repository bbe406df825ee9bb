//! A concurrency limit's queue through the compiled filter: requests wait across workers, the
//! oldest waiter gets a slot freed on any worker, waiters time out with the block's response, and
//! a client that leaves frees its place.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use breakwater_host_test::{Begun, Request, UpstreamAnswer, Vm, World};
use common::envoy;

const POLICY: &str = "version: 1
policies:
  - name: q
    concurrency_limit:
      max_in_flight: 1
      queue: { max_waiting: 3, max_wait: 100ms }
";

fn metric(world: &World, name: &str) -> u64 {
    world.metric(name).unwrap_or(0)
}

fn counter(world: &World, decision: &str) -> u64 {
    metric(world, &format!("breakwater.requests.policy.q.decision.{decision}"))
}

fn paused(b: Begun) -> u32 {
    match b {
        Begun::Paused { stream } => stream,
        other => panic!("expected a waiting request, got {other:?}"),
    }
}

/// Moves the clock by `ms` and ticks every worker in `order`; what each woke.
fn tick(world: &World, vms: &mut [Vm], ms: u64, order: &[usize]) -> Vec<Vec<Begun>> {
    world.clock_ns.set(world.clock_ns.get() + ms * 1_000_000);
    order
        .iter()
        .map(|&i| {
            vms[i].tick().unwrap();
            vms[i].take_woken()
        })
        .collect()
}

#[test]
fn a_freed_slot_goes_to_the_oldest_waiter_on_any_worker() {
    let (world, mut vms) = envoy(2, POLICY);
    let get = Request::get("h", "/");
    let Begun::Forwarded { stream: first } = vms[0].begin(&get).unwrap() else { panic!() };
    // Waiters in arrival order: on worker 1, worker 0, worker 1.
    let oldest = paused(vms[1].begin(&get).unwrap());
    let middle = paused(vms[0].begin(&get).unwrap());
    let youngest = paused(vms[1].begin(&get).unwrap());
    // The line is full: the next is rejected at once.
    let Begun::Answered { stream } = vms[0].begin(&get).unwrap() else { panic!() };
    assert_eq!(vms[0].complete(stream, None).unwrap().status, 503);
    assert_eq!(metric(&world, "breakwater.queue_length.policy.q"), 3);
    assert_eq!((counter(&world, "queued"), counter(&world, "concurrency_limited")), (3, 1));
    assert_eq!(vms[0].tick_period_ms(), 1);

    assert_eq!(vms[0].complete(first, Some(UpstreamAnswer::status(200))).unwrap().status, 200);
    // Worker 0 looks first: its waiter is second in line and stays.
    let woken = tick(&world, &mut vms, 1, &[0, 1]);
    assert!(woken[0].is_empty(), "{:?}", woken[0]);
    let [Begun::Forwarded { stream }] = woken[1][..] else { panic!("{woken:?}") };
    assert_eq!(stream, oldest);
    assert_eq!(metric(&world, "breakwater.queue_length.policy.q"), 2);
    // Worker 1's younger waiter stays behind worker 0's.
    vms[1].complete(oldest, Some(UpstreamAnswer::status(200))).unwrap();
    let woken = tick(&world, &mut vms, 1, &[1, 0]);
    assert!(woken[0].is_empty());
    assert!(matches!(woken[1][..], [Begun::Forwarded { stream }] if stream == middle), "{woken:?}");
    vms[0].complete(middle, Some(UpstreamAnswer::status(200))).unwrap();
    let woken = tick(&world, &mut vms, 1, &[0, 1]);
    assert!(matches!(woken[1][..], [Begun::Forwarded { stream }] if stream == youngest), "{woken:?}");
    vms[1].complete(youngest, Some(UpstreamAnswer::status(200))).unwrap();

    assert_eq!((counter(&world, "queue_admitted"), counter(&world, "allowed")), (3, 4));
    assert_eq!(metric(&world, "breakwater.queue_length.policy.q"), 0);
    assert_eq!(metric(&world, "breakwater.in_flight.policy.q"), 0);
    assert_eq!(world.samples("breakwater.queue_wait_ms.policy.q"), vec![1, 2, 3]);
}

#[test]
fn a_waiter_times_out_with_the_blocks_response() {
    let (world, mut vms) = envoy(1, POLICY);
    let get = Request::get("h", "/");
    let Begun::Forwarded { stream: first } = vms[0].begin(&get).unwrap() else { panic!() };
    let waiter = paused(vms[0].begin(&get).unwrap());
    let mut woken = Vec::new();
    let mut waited = 0;
    while woken.is_empty() {
        woken = tick(&world, &mut vms, 1, &[0]).remove(0);
        waited += 1;
    }
    assert_eq!(waited, 100);
    let [Begun::Answered { stream }] = woken[..] else { panic!("{woken:?}") };
    assert_eq!(stream, waiter);
    let reply = vms[0].complete(waiter, None).unwrap();
    assert_eq!((reply.status, reply.body.as_slice()), (503, &b"too many requests in flight\n"[..]));
    assert_eq!((counter(&world, "queue_timeout"), counter(&world, "queue_admitted")), (1, 0));
    assert_eq!(metric(&world, "breakwater.queue_length.policy.q"), 0);
    assert_eq!(world.samples("breakwater.queue_wait_ms.policy.q"), vec![100]);
    vms[0].complete(first, Some(UpstreamAnswer::status(200))).unwrap();
    assert_eq!(metric(&world, "breakwater.in_flight.policy.q"), 0);
}

#[test]
fn a_client_that_leaves_the_line_holds_nothing() {
    let (world, mut vms) = envoy(2, POLICY);
    let get = Request::get("h", "/");
    let Begun::Forwarded { stream: first } = vms[0].begin(&get).unwrap() else { panic!() };
    let gone = paused(vms[1].begin(&get).unwrap());
    let next = paused(vms[0].begin(&get).unwrap());
    vms[1].abort(gone).unwrap();
    assert_eq!(counter(&world, "queue_abandoned"), 1);
    assert_eq!(metric(&world, "breakwater.queue_length.policy.q"), 1);
    vms[0].complete(first, Some(UpstreamAnswer::status(200))).unwrap();
    // The waiter that left is not ahead of the next one any more.
    let woken = tick(&world, &mut vms, 1, &[0, 1]);
    assert!(matches!(woken[0][..], [Begun::Forwarded { stream }] if stream == next), "{woken:?}");
    assert!(woken[1].is_empty());
    // A request that leaves while it waits has no decision.
    assert_eq!((counter(&world, "allowed"), counter(&world, "queue_timeout")), (2, 0));
    // The admitted waiter's upstream resets: its slot is given back.
    vms[0].abort(next).unwrap();
    assert_eq!(metric(&world, "breakwater.in_flight.policy.q"), 0);
    assert_eq!(metric(&world, "breakwater.queue_length.policy.q"), 0);
    assert!(matches!(vms[1].begin(&get).unwrap(), Begun::Forwarded { .. }));
}
