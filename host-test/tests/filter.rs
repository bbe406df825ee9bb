//! The compiled filter in our host: the same behaviours the Envoy end-to-end tests check.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::rc::Rc;

use breakwater_host_test::{Host, Request, UpstreamAnswer, Vm, World};

fn host() -> Host {
    Host::from_workspace().unwrap_or_else(|e| panic!("{e:#}"))
}

fn compiled(policy: &str) -> Vec<u8> {
    breakwater_policy::compile(&breakwater_policy::load(policy).unwrap().document).into_bytes()
}

/// An Envoy with `workers` VMs configured with `policy`.
fn envoy(host: &Host, workers: usize, policy: &str) -> (Rc<World>, Vec<Vm>) {
    let world = World::new(1_700_000_000_000_000_000, 42);
    let vms = (0..workers)
        .map(|i| {
            let mut vm = host.vm(world.clone(), i).unwrap();
            assert!(vm.configure(&compiled(policy)).unwrap(), "{:?}", world.logs.borrow());
            vm
        })
        .collect();
    (world, vms)
}

fn ok(_: &breakwater_host_test::state::HeaderMap) -> UpstreamAnswer {
    UpstreamAnswer::status(200)
}

#[test]
fn invalid_configuration_is_rejected_with_the_cli_messages() {
    let host = host();
    let world = World::new(0, 1);
    let mut vm = host.vm(world.clone(), 0).unwrap();
    assert!(!vm.configure(br#"{"version":1,"policies":[{"name":"Bad"}]}"#).unwrap());
    let logs = world.logs.borrow();
    assert!(
        logs.iter()
            .any(|l| l.level == 4
                && l.message.contains("configuration rejected: error: policies[0].name: `Bad`")),
        "{logs:?}"
    );
}

#[test]
fn rate_limit_is_shared_by_workers_and_refills_with_the_clock() {
    let host = host();
    let (world, mut vms) = envoy(
        &host,
        2,
        "version: 1\npolicies:\n  - name: api\n    rate_limit: { rate: 10, per: 1s, burst: 5 }\n",
    );
    let req = Request::get("shop.example.com", "/");
    let statuses: Vec<u16> = (0..8).map(|i| vms[i % 2].request(&req, ok).unwrap().status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    let limited = vms[0].request(&req, ok).unwrap();
    assert!(limited.local);
    assert_eq!(limited.header("retry-after").as_deref(), Some("1"));
    assert_eq!(limited.header("ratelimit-policy").as_deref(), Some("\"api\";q=5;w=1"));
    assert_eq!(String::from_utf8_lossy(&limited.body), "rate limited\n");
    // One token per 100 ms of virtual time.
    world.clock_ns.set(world.clock_ns.get() + 100_000_000);
    assert_eq!(vms[1].request(&req, ok).unwrap().status, 200);
    assert_eq!(vms[0].request(&req, ok).unwrap().status, 429);
    assert_eq!(world.metric("breakwater.requests.policy.api.decision.allowed"), Some(6));
    assert_eq!(world.metric("breakwater.requests.policy.api.decision.rate_limited"), Some(5));
}

#[test]
fn retry_and_timeout_headers_reach_the_router() {
    let host = host();
    let (_, mut vms) = envoy(
        &host,
        1,
        "version: 1\npolicies:\n  - name: r\n    retry: { max_retries: 2, retry_on: [5xx], per_try_timeout: 300ms }\n    timeout: 1s\n",
    );
    let req = Request::get("a", "/").header("x-envoy-max-retries", "9");
    let r = vms[0].request(&req, ok).unwrap();
    let forwarded = r.forwarded.unwrap();
    let get = |n: &str| {
        forwarded.iter().find(|(k, _)| k == n).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    // The client's own x-envoy header was stripped; the filter's are there.
    assert_eq!(get("x-envoy-max-retries").as_deref(), Some("2"));
    assert_eq!(get("x-envoy-retry-on").as_deref(), Some("5xx"));
    assert_eq!(get("x-envoy-upstream-rq-per-try-timeout-ms").as_deref(), Some("300"));
    assert_eq!(get("x-envoy-upstream-rq-timeout-ms").as_deref(), Some("1000"));
}

#[test]
fn fallback_replaces_the_upstream_failure_and_the_breaker_learns_from_it() {
    let host = host();
    let (world, mut vms) = envoy(
        &host,
        1,
        r#"
version: 1
policies:
  - name: recs
    circuit_breaker: { window: 10, minimum_calls: 3, failure_rate: 50, open_for: 10s }
    fallback: { on: [5xx], response: { status: 200, body: '{"items":[]}' } }
"#,
    );
    let req = Request::get("a", "/recs");
    for _ in 0..3 {
        let r = vms[0].request(&req, |_| UpstreamAnswer::status(503)).unwrap();
        assert_eq!(
            (r.status, r.local, String::from_utf8_lossy(&r.body).as_ref()),
            (200, true, "{\"items\":[]}")
        );
        // As Envoy's local replies: a body without a content-type is text/plain.
        assert_eq!(r.header("content-type").as_deref(), Some("text/plain"));
    }
    // Three failures recorded (from the upstream's 503, not the fallback's 200): open.
    assert_eq!(world.metric("breakwater.breaker_state.policy.recs"), Some(1));
    let open = vms[0].request(&req, |_| panic!("an open breaker must not call the upstream")).unwrap();
    assert_eq!((open.status, String::from_utf8_lossy(&open.body).as_ref()), (503, "circuit open\n"));
    assert_eq!(world.metric("breakwater.requests.policy.recs.decision.fallback"), Some(3));
    // The transition is in Envoy's log, at warn (an opening), with the window that opened it.
    let logs = world.logs.borrow();
    let opened: Vec<(u32, &str)> = logs
        .iter()
        .filter(|l| l.message.contains("breaker transition"))
        .map(|l| (l.level, l.message.as_str()))
        .collect();
    assert_eq!(
        opened,
        [(
            3,
            "breakwater: breaker transition policy=recs from=closed to=open calls=3 failed=3 slow=0 \
             (failure rate 100%, slow-call rate 0% of the window)"
        )]
    );
}

#[test]
fn hostile_header_values_do_not_trap() {
    let host = host();
    let (_, mut vms) = envoy(
        &host,
        1,
        "version: 1\npolicies:\n  - name: k\n    rate_limit: { rate: 100, burst: 100, key: [\"header:x-api-key\", client_ip] }\n",
    );
    for value in [vec![0xff, 0xfe, 0x80], vec![b'k'; 60_000], Vec::new()] {
        let r = vms[0].request(&Request::get("a", "/").header("x-api-key", value), ok).unwrap();
        assert_eq!(r.status, 200);
    }
    assert!(!vms[0].failed());
}

#[test]
fn the_guest_heap_stops_growing_once_traffic_is_steady() {
    // Every engine, a keyed limit, key lengths from 1 byte to past the allocator's pooled sizes,
    // failures and fallbacks: whatever a request allocates in the guest must come back.
    let host = host();
    let (world, mut vms) = envoy(
        &host,
        1,
        r#"
version: 1
policies:
  - name: all
    rate_limit: { rate: 100000, per: 1s, burst: 1000, key: ["header:x-api-key"], max_keys: 1000 }
    concurrency_limit: { max_in_flight: 100 }
    circuit_breaker: { window: 10s, minimum_calls: 100000, failure_rate: 50 }
    retry: { max_retries: 2, retry_on: [5xx] }
    fallback: { on: [5xx], response: { status: 200, body: "cached" } }
"#,
    );
    let send = |vm: &mut Vm, i: usize| {
        let key = "k".repeat(1 + (i * 37) % 5_000);
        let status = if i.is_multiple_of(5) { 503 } else { 200 };
        world.clock_ns.set(world.clock_ns.get() + 1_000_000);
        let r = vm
            .request(&Request::get("a", "/").header("x-api-key", key), |_| UpstreamAnswer::status(status))
            .unwrap();
        assert_eq!((r.status, r.local), (200, status == 503), "request {i}");
    };
    for i in 0..2_000 {
        send(&mut vms[0], i);
    }
    let warmed = vms[0].memory_bytes();
    assert!(warmed > 0);
    for i in 2_000..30_000 {
        send(&mut vms[0], i);
    }
    assert_eq!(vms[0].memory_bytes(), warmed, "the guest's memory grew under steady traffic");
}

#[test]
fn concurrency_slots_come_back_at_stream_end() {
    let host = host();
    let (world, mut vms) =
        envoy(&host, 2, "version: 1\npolicies:\n  - name: c\n    concurrency_limit: { max_in_flight: 1 }\n");
    for i in 0..6 {
        assert_eq!(vms[i % 2].request(&Request::get("a", "/"), ok).unwrap().status, 200);
    }
    assert_eq!(world.metric("breakwater.in_flight.policy.c"), Some(0));
}

#[test]
fn retries_through_the_router_are_counted_and_budgeted() {
    use breakwater_host_test::router::{Attempt, via_router};
    let host = host();
    let (world, mut vms) = envoy(
        &host,
        1,
        "version: 1\npolicies:\n  - name: r\n    retry: { max_retries: 2, retry_on: [5xx], budget: { percent: 0, min_per_second: 3 } }\n",
    );
    let req = Request::get("a", "/");
    let script = [503, 503, 200];
    let r = vms[0]
        .request(&req, via_router(&world, |k, _, _| Attempt::status(script[k as usize - 1], 1_000_000)))
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(world.metric("breakwater.requests.policy.r.decision.retried"), Some(2));
    // The budget allows 3 per second: 2 were used, so the next request gets 1 retry.
    let mut attempts = 0;
    let r = vms[0]
        .request(
            &req,
            via_router(&world, |_, _, _| {
                attempts += 1;
                Attempt::status(503, 1_000_000)
            }),
        )
        .unwrap();
    assert_eq!((r.status, attempts), (503, 2));
    assert_eq!(world.metric("breakwater.requests.policy.r.decision.budget_exhausted"), Some(1));
}

#[test]
fn a_trusted_attempt_count_header_settles_the_retry_budget() {
    use breakwater_host_test::router::{Attempt, via_router};
    let host = host();
    // One request answered at its first attempt by an upstream that sends its own
    // `x-envoy-attempt-count: claimed`; the retries the next request gets tell how many the filter
    // charged to the budget (2 per second, 2 reserved by the first request).
    let next_grant = |trust: bool, vhost_option: bool, claimed: &str| {
        let policy = format!(
            "version: 1\ntrust_attempt_count_header: {trust}\npolicies:\n  - name: r\n    retry: {{ max_retries: 2, retry_on: [5xx], budget: {{ percent: 0, min_per_second: 2 }} }}\n"
        );
        let (world, mut vms) = envoy(&host, 1, &policy);
        vms[0].set_attempt_count_in_response(vhost_option);
        let answer = Attempt::Response {
            status: 200,
            headers: vec![("x-envoy-attempt-count".into(), claimed.as_bytes().to_vec())],
            body: Vec::new(),
            latency_ns: 1_000_000,
        };
        let first =
            vms[0].request(&Request::get("a", "/"), via_router(&world, |_, _, _| answer.clone())).unwrap();
        let seen = first.header("x-envoy-attempt-count");
        let next = vms[0].request(&Request::get("a", "/"), ok).unwrap().forwarded.unwrap();
        let grant = next.iter().find(|(k, _)| k == "x-envoy-max-retries").map(|(_, v)| v.clone());
        (seen, grant.map(|v| String::from_utf8(v).unwrap()))
    };
    let two = Some("2".to_string());
    // With the virtual host option, Envoy's router writes the header over the upstream's.
    assert_eq!(next_grant(true, true, "3"), (Some("1".into()), two.clone()));
    // Without it, a trusted header is believed when the router could have written it (the hazard
    // docs/policy.md describes) ...
    assert_eq!(next_grant(true, false, "3"), (Some("3".into()), Some("0".into())));
    // ... and ignored for the property when it could not (at most 2 retries were granted).
    assert_eq!(next_grant(true, false, "4"), (Some("4".into()), two.clone()));
    // Not trusted: the property decides.
    assert_eq!(next_grant(false, false, "3"), (Some("3".into()), two));
}

#[test]
fn overlapping_streams_hold_concurrency_slots_across_workers() {
    use breakwater_host_test::Begun;
    let host = host();
    let (world, mut vms) =
        envoy(&host, 2, "version: 1\npolicies:\n  - name: c\n    concurrency_limit: { max_in_flight: 2 }\n");
    let req = Request::get("a", "/");
    let forwarded = |b: Begun| match b {
        Begun::Forwarded { stream, .. } => stream,
        other => panic!("expected forwarding, got {other:?}"),
    };
    let a = forwarded(vms[0].begin(&req).unwrap());
    let b = forwarded(vms[1].begin(&req).unwrap());
    // A third stream, on either worker, is over the limit.
    let Begun::Answered { stream: c } = vms[0].begin(&req).unwrap() else { panic!("expected a rejection") };
    assert_eq!(vms[0].complete(c, None).unwrap().status, 503);
    assert_eq!(world.metric("breakwater.in_flight.policy.c"), Some(2));
    // The upstream answers one; a client aborts the other: both slots come back.
    assert_eq!(vms[0].complete(a, Some(UpstreamAnswer::status(200))).unwrap().status, 200);
    vms[1].abort(b).unwrap();
    assert_eq!(world.metric("breakwater.in_flight.policy.c"), Some(0));
    let d = forwarded(vms[1].begin(&req).unwrap());
    let e = forwarded(vms[0].begin(&req).unwrap());
    vms[1].complete(d, Some(UpstreamAnswer::status(200))).unwrap();
    vms[0].complete(e, Some(UpstreamAnswer::status(200))).unwrap();
    assert_eq!(world.metric("breakwater.requests.policy.c.decision.concurrency_limited"), Some(1));
}

/// Envoy hands out a new metric id on every define: a reconfiguration asks only for the metrics of
/// policies it does not hold yet, and the ids it kept still count (in this VM, and the new
/// policy's in its own).
#[test]
fn reconfiguration_defines_only_new_metrics_and_keeps_counting() {
    let host = host();
    let first = "version: 1\npolicies:\n  - name: a\n    match: { path_prefix: /a }\n    rate_limit: { rate: 100, per: 1s }\n  - name: b\n    concurrency_limit: { max_in_flight: 5 }\n";
    let second = "version: 1\npolicies:\n  - name: a\n    match: { path_prefix: /a }\n    rate_limit: { rate: 100, per: 1s }\n  - name: c\n    concurrency_limit: { max_in_flight: 5 }\n    circuit_breaker: {}\n";
    let (world, mut vms) = envoy(&host, 1, first);
    let vm = &mut vms[0];
    // 8 counters and a latency histogram per policy, b's in-flight gauge, and the VM's memory
    // gauge (once per VM).
    assert_eq!(vm.metric_definitions(), 20);
    assert_eq!(vm.request(&Request::get("h", "/a"), ok).unwrap().status, 200);

    assert!(vm.configure(&compiled(second)).unwrap());
    // Only c's: 8 counters, its histogram, its in-flight and breaker gauges.
    assert_eq!(vm.metric_definitions(), 20 + 11);
    assert!(vm.configure(&compiled(second)).unwrap());
    assert_eq!(vm.metric_definitions(), 31, "the same configuration again defines nothing");

    assert_eq!(vm.request(&Request::get("h", "/a"), ok).unwrap().status, 200);
    assert_eq!(vm.request(&Request::get("h", "/c"), ok).unwrap().status, 200);
    assert_eq!(world.metric("breakwater.requests.policy.a.decision.allowed"), Some(2));
    assert_eq!(world.metric("breakwater.requests.policy.c.decision.allowed"), Some(1));
    assert_eq!(world.metric("breakwater.in_flight.policy.c"), Some(0));

    // A policy dropped and brought back is defined again (its old ids were forgotten).
    assert!(vm.configure(&compiled(first)).unwrap());
    assert_eq!(vm.metric_definitions(), 31 + 10);
    assert_eq!(vm.request(&Request::get("h", "/b"), ok).unwrap().status, 200);
    assert_eq!(world.metric("breakwater.requests.policy.b.decision.allowed"), Some(1));
}

/// Issue 20, defect 5: a VM that goes away with streams in flight (it trapped, or Envoy replaced
/// it) never runs their on_log, so never releases their concurrency slots. Holds are leases: the
/// key admits again once the lease is over (the policy's `timeout` plus a minute), and the
/// in-flight gauge returns to 0, for a keyed limit and for one without a key.
#[test]
fn concurrency_slots_of_a_vanished_vm_expire_with_their_lease() {
    use breakwater_host_test::Begun;
    use breakwater_policy::metrics::{Gauge, gauge_name};
    let host = host();
    let policy = "version: 1\npolicies:\n  - name: keyed\n    match: { path_prefix: /k }\n    timeout: 5s\n    \
        concurrency_limit: { max_in_flight: 2, key: [\"header:x-user\"] }\n  - name: whole\n    timeout: 5s\n    \
        concurrency_limit: { max_in_flight: 2 }\n";
    let (world, mut vms) = envoy(&host, 2, policy);
    let start = world.clock_ns.get();
    let keyed = Request::get("a", "/k").header("x-user", "alice");
    let whole = Request::get("a", "/w");
    // Worker 0 takes every slot, then vanishes with the streams in flight.
    for req in [&keyed, &keyed, &whole, &whole] {
        assert!(matches!(vms[0].begin(req).unwrap(), Begun::Forwarded { .. }));
    }
    drop(vms.remove(0));
    let worker = &mut vms[0];
    assert_eq!(worker.request(&keyed, ok).unwrap().status, 503, "the keyed limit is full");
    assert_eq!(worker.request(&whole, ok).unwrap().status, 503, "the limit is full");
    // Within the lease (timeout + 60 s = 65 s) the holds stand...
    world.clock_ns.set(start + 64 * 1_000_000_000);
    assert_eq!(worker.request(&keyed, ok).unwrap().status, 503);
    // ...and once it is over (at most 4/3 of it) they are gone.
    world.clock_ns.set(start + 87 * 1_000_000_000);
    assert_eq!(worker.request(&keyed, ok).unwrap().status, 200);
    assert_eq!(worker.request(&whole, ok).unwrap().status, 200);
    for p in ["keyed", "whole"] {
        assert_eq!(world.metric(&gauge_name(p, Gauge::InFlight)), Some(0), "{p}");
    }
}
