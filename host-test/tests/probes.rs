//! Small probe guests (WebAssembly text) for host behaviour the real filter never shows.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use breakwater_host_test::{FailurePolicy, Host, Request, UpstreamAnswer, Vm, World};

fn probe(name: &str) -> Host {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probes").join(name);
    Host::new(&wat::parse_file(&path).unwrap()).unwrap()
}

#[test]
fn a_runaway_guest_is_stopped_and_its_vm_fails_closed() {
    let host = probe("spin.wat");
    let world = World::new(0, 1);
    let mut vm = host.vm(world.clone(), 0).unwrap();
    assert!(vm.configure(b"").unwrap());
    let started = Instant::now();
    let response = vm.request(&Request::get("a", "/"), |_| UpstreamAnswer::status(200)).unwrap();
    // The deadline is about 2 s of wall time; allow for a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    assert_eq!((response.status, response.local), (503, true));
    assert!(vm.failed());
    assert!(world.logs.borrow().iter().any(|l| l.level == 5 && l.message.contains("guest trapped")));
    // Later requests on this VM get 503 at once, as on an Envoy worker with FAIL_CLOSED.
    let started = Instant::now();
    assert_eq!(vm.request(&Request::get("a", "/"), |_| UpstreamAnswer::status(200)).unwrap().status, 503);
    assert!(started.elapsed() < Duration::from_millis(500));
}

/// Three requests through the crash probe (it traps on its second call) under `policy`: for each,
/// the status and the `x-calls` header the upstream received (None: not forwarded, or forwarded
/// without the filter having added it).
fn through_crash_probe(policy: FailurePolicy) -> (Vec<(u16, Option<String>)>, Vm) {
    let host = probe("crash.wat");
    let mut vm = host.vm(World::new(0, 1), 0).unwrap();
    vm.set_failure_policy(policy);
    assert!(vm.configure(b"").unwrap());
    let seen = (0..3)
        .map(|_| {
            let mut calls = None;
            let r = vm
                .request(&Request::get("a", "/"), |headers| {
                    calls = headers
                        .iter()
                        .find(|(k, _)| k == "x-calls")
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
                    UpstreamAnswer::status(200)
                })
                .unwrap();
            (r.status, calls)
        })
        .collect();
    (seen, vm)
}

#[test]
fn fail_closed_answers_503_from_the_trap_on() {
    let (seen, vm) = through_crash_probe(FailurePolicy::FailClosed);
    assert_eq!(seen, [(200, Some("1".into())), (503, None), (503, None)]);
    assert!(vm.failed());
}

#[test]
fn fail_open_lets_the_trapped_and_later_requests_through_without_the_filter() {
    let (seen, vm) = through_crash_probe(FailurePolicy::FailOpen);
    // The third request would carry x-calls: 3 had the filter run.
    assert_eq!(seen, [(200, Some("1".into())), (200, None), (200, None)]);
    assert!(vm.failed());
}

#[test]
fn fail_reload_answers_503_then_starts_a_new_vm_with_fresh_statics() {
    let (seen, vm) = through_crash_probe(FailurePolicy::FailReload);
    assert_eq!(seen, [(200, Some("1".into())), (503, None), (200, Some("1".into()))]);
    assert!(!vm.failed());
    assert_eq!(vm.reloads(), 1);
}

#[test]
fn shared_queues_reach_the_registering_vm_from_any_vm() {
    let host = probe("queue.wat");
    let world = World::new(0, 1);
    let mut owner = host.vm(world.clone(), 0).unwrap();
    let mut other = host.vm(world.clone(), 1).unwrap();
    assert!(owner.configure(b"owner").unwrap());
    assert!(other.configure(b"").unwrap());
    // A request on the other VM resolves the queue by vm_id and enqueues an item.
    assert_eq!(other.request(&Request::get("a", "/"), |_| UpstreamAnswer::status(200)).unwrap().status, 200);
    assert_eq!(other.deliver().unwrap(), 0, "the other VM does not own the queue");
    assert_eq!(owner.deliver().unwrap(), 1);
    assert!(!owner.failed(), "{:?}", world.logs.borrow());
    let logs = world.logs.borrow();
    assert!(logs.iter().any(|l| l.message == "hello" && l.level == 2), "{logs:?}");
    // Unknown tokens and names: NotFound, as in Envoy.
    let mut queues = world.queues.borrow_mut();
    assert_eq!(queues.enqueue(99, b"x".to_vec()), None);
    assert_eq!(queues.dequeue(0), None);
    assert_eq!(queues.resolve("breakwater", "nope"), None);
}

#[test]
fn http_calls_are_answered_on_the_virtual_clock_and_time_out() {
    use std::rc::Rc;
    let host = probe("http_call.wat");
    let world = World::new(0, 1);
    let ms = 1_000_000;
    world.add_cluster(
        "auth",
        Rc::new(move |headers, _| {
            assert!(headers.iter().any(|(k, v)| k == ":path" && v == b"/check"), "{headers:?}");
            (Some((vec![(":status".into(), b"200".to_vec())], b"allowed".to_vec())), 5 * ms)
        }),
    );
    world.add_cluster("slow", Rc::new(move |_, _| (Some((Vec::new(), Vec::new())), 2_000 * ms)));
    let mut vm = host.vm(world.clone(), 0).unwrap();
    assert!(vm.configure(b"").unwrap());
    vm.tick().unwrap();
    let logged = |world: &World| world.logs.borrow().iter().map(|l| l.message.clone()).collect::<Vec<_>>();
    assert_eq!(vm.deliver().unwrap(), 0, "nothing is due before the latency");
    world.clock_ns.set(5 * ms);
    assert_eq!(vm.deliver().unwrap(), 1);
    assert_eq!(logged(&world), ["200", "allowed"]);
    // The slow cluster answers after the call's 1 s timeout: the call fails then.
    world.clock_ns.set(1_000 * ms);
    assert_eq!(vm.deliver().unwrap(), 1);
    assert_eq!(logged(&world), ["200", "allowed", "failed"]);
    assert!(!vm.failed());
    assert_eq!(world.pending_calls.get(), 0);
}

#[test]
fn the_rest_of_the_abi_answers_as_envoy_does() {
    let host = probe("abi.wat");
    let world = World::new(1_234_567_890, 1);
    let mut vm = host.vm(world.clone(), 0).unwrap();
    assert!(vm.configure(b"").unwrap());
    let mut forwarded = Vec::new();
    let r = vm
        .request(&Request::get("a", "/").header("x-gone", "1"), |h| {
            forwarded = h.clone();
            UpstreamAnswer::status(200)
        })
        .unwrap();
    let logs = world.logs.borrow();
    assert!(!vm.failed(), "{logs:?}");
    assert_eq!(r.status, 200);
    // set_header_map_pairs replaced the whole map; the probe then removed its only header.
    assert!(forwarded.is_empty(), "{forwarded:?}");
    // The client got both x-a headers the probe added; their removal in on_log came too late.
    let sent: Vec<&[u8]> = r.headers.iter().filter(|(k, _)| k == "x-a").map(|(_, v)| v.as_slice()).collect();
    assert_eq!(sent, [b"b", b"b"], "{:?}", r.headers);
    assert!(logs.iter().any(|l| l.level == 2 && l.message == "stdout line"), "{logs:?}");
}

/// Issue 20, defect 12: a VM's linear memory is capped (as V8 caps it in Envoy): a guest that
/// keeps growing is refused more memory, traps, and its VM fails closed, instead of taking the
/// machine's memory. `Host::with_memory_limit` sets the cap; the default is `DEFAULT_MEMORY_LIMIT`.
#[test]
fn a_guest_that_grows_past_the_memory_limit_traps() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probes/grow.wat");
    let host = Host::with_memory_limit(&wat::parse_file(&path).unwrap(), 64 << 20).unwrap();
    let world = World::new(0, 1);
    let mut vm = host.vm(world.clone(), 0).unwrap();
    assert!(vm.configure(b"").unwrap());
    let response = vm.request(&Request::get("a", "/"), |_| UpstreamAnswer::status(200)).unwrap();
    assert_eq!((response.status, response.local), (503, true));
    assert!(vm.failed());
    assert!(vm.memory_bytes() <= 64 << 20, "{}", vm.memory_bytes());
}
