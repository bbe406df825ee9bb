//! Global limits through the compiled filter: its gRPC calls go to host-test's simulated
//! rate-limit service, answers and timeouts come on the world's clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::Cell;
use std::rc::Rc;

use breakwater_host_test::ratelimit::{Behaviour, Buckets, Service};
use breakwater_host_test::{Host, Request, UpstreamAnswer, Vm, World};

fn host() -> Host {
    Host::from_workspace().unwrap_or_else(|e| panic!("{e:#}"))
}

fn ok(_: &breakwater_host_test::state::HeaderMap) -> UpstreamAnswer {
    UpstreamAnswer::status(200)
}

/// An Envoy of `workers` with `policy` and the simulated service on `breakwater-ratelimit`;
/// `behaviour` says how the service answers at each moment.
fn envoy(
    workers: usize,
    policy: &str,
    behaviour: impl Fn(u64) -> Behaviour + 'static,
) -> (Rc<World>, Vec<Vm>, Rc<Service>) {
    envoy_with_cluster(workers, policy, "breakwater-ratelimit", behaviour)
}

fn envoy_with_cluster(
    workers: usize,
    policy: &str,
    cluster: &str,
    behaviour: impl Fn(u64) -> Behaviour + 'static,
) -> (Rc<World>, Vec<Vm>, Rc<Service>) {
    let doc = breakwater_policy::load(policy).unwrap().document;
    let world = World::new(1_700_000_000_000_000_000, 42);
    let service =
        Rc::new(Service { buckets: Buckets::new(&doc).into(), envoys: 1, behaviour: Box::new(behaviour) });
    world.add_grpc_cluster(cluster, service.cluster());
    let compiled = breakwater_policy::compile(&doc).into_bytes();
    let vms = (0..workers)
        .map(|i| {
            let mut vm = host().vm(world.clone(), i).unwrap();
            assert!(vm.configure(&compiled).unwrap(), "{:?}", world.logs.borrow());
            vm
        })
        .collect();
    (world, vms, service)
}

fn get(key: &str) -> Request {
    Request::get("h", "/").header("x-api-key", key)
}

const EXACT: &str = "version: 1
policies:
  - name: api
    global_rate_limit: { rate: 3, per: 1s, key: [\"header:x-api-key\"], timeout: 20ms }
";

#[test]
fn exact_mode_asks_for_every_request_and_waits_for_the_answer() {
    let (world, mut vms, service) = envoy(2, EXACT, |_| Behaviour::Answers(2_000_000));
    let start = world.clock_ns.get();
    let statuses: Vec<u16> = (0..5).map(|i| vms[i % 2].request(&get("k"), ok).unwrap().status).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // Each request waited for its call: 2 ms each.
    assert_eq!(world.clock_ns.get() - start, 5 * 2_000_000);
    assert_eq!(service.buckets.borrow().ok, 3);
    assert_eq!(world.metric("breakwater.requests.policy.api.decision.global_calls"), Some(5));
    assert_eq!(world.metric("breakwater.requests.policy.api.decision.global_rate_limited"), Some(2));
    // Another key, its own bucket.
    assert_eq!(vms[0].request(&get("other"), ok).unwrap().status, 200);
}

/// An Istio cluster name (`outbound|PORT||HOST`) travels as a serialized GrpcService, which the
/// host reads as Envoy does: the call reaches the cluster it names.
#[test]
fn an_istio_cluster_name_reaches_its_cluster() {
    let istio = "outbound|8081||breakwater-ratelimit.shop.svc.cluster.local";
    let policy =
        EXACT.replace("timeout: 20ms", &format!("timeout: 20ms, service: \"{istio}\", failure_mode: deny"));
    let (world, mut vms, service) = envoy_with_cluster(1, &policy, istio, |_| Behaviour::Answers(1_000_000));
    let statuses: Vec<u16> = (0..4).map(|_| vms[0].request(&get("k"), ok).unwrap().status).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(service.buckets.borrow().ok, 3);
    assert_eq!(world.metric("breakwater.requests.policy.api.decision.global_unavailable"), Some(0));
}

#[test]
fn a_service_that_hangs_costs_each_request_the_timeout_then_degraded_mode_decides_alone() {
    let (world, mut vms, _) = envoy(1, EXACT, |_| Behaviour::Hangs);
    let vm = &mut vms[0];
    let mut seen = Vec::new();
    for _ in 0..5 {
        let before = world.clock_ns.get();
        let status = vm.request(&get("k"), ok).unwrap().status;
        seen.push((status, (world.clock_ns.get() - before) / 1_000_000));
    }
    // Three calls time out (20 ms each) and are decided on the local share (one Envoy: the whole
    // limit, 3 at once); then the Envoy is degraded and decides without calling.
    assert_eq!(seen, [(200, 20), (200, 20), (200, 20), (429, 0), (429, 0)]);
    assert_eq!(world.metric("breakwater.global_degraded.policy.api"), Some(1));
    assert_eq!(world.metric("breakwater.requests.policy.api.decision.global_unavailable"), Some(5));
}

#[test]
fn a_service_that_is_down_fails_fast_and_recovers_on_a_probe() {
    let down = Rc::new(Cell::new(true));
    let flag = down.clone();
    let policy = EXACT.replace("timeout: 20ms", "timeout: 20ms, failure_mode: deny");
    let (world, mut vms, _) =
        envoy(1, &policy, move |_| if flag.get() { Behaviour::Down } else { Behaviour::Answers(1_000_000) });
    let vm = &mut vms[0];
    let statuses: Vec<u16> = (0..4).map(|_| vm.request(&get("k"), ok).unwrap().status).collect();
    assert_eq!(statuses, [429; 4]);
    assert_eq!(world.metric("breakwater.global_degraded.policy.api"), Some(1));
    down.set(false);
    // The next probe is due 200 ms after degraded mode began; its answer ends it.
    world.clock_ns.set(world.clock_ns.get() + 200_000_000);
    assert_eq!(vm.request(&get("k"), ok).unwrap().status, 200);
    assert_eq!(world.metric("breakwater.global_degraded.policy.api"), Some(0));
}

#[test]
fn leased_mode_spends_a_lease_without_calls_and_renews_it_from_the_root_context() {
    let policy = "version: 1
policies:
  - name: api
    global_rate_limit: { rate: 100, per: 1s, burst: 100, mode: leased }
";
    let (world, mut vms, service) = envoy(1, policy, |_| Behaviour::Answers(1_000_000));
    let vm = &mut vms[0];
    let mut admitted = 0;
    // 100 requests a second for two seconds; the root context ticks before each.
    for _ in 0..200 {
        world.clock_ns.set(world.clock_ns.get() + 10_000_000);
        vm.tick().unwrap();
        vm.deliver().unwrap();
        if vm.request(&Request::get("h", "/"), ok).unwrap().status == 200 {
            admitted += 1;
        }
    }
    let calls = world.metric("breakwater.requests.policy.api.decision.global_calls").unwrap();
    let granted = service.buckets.borrow().ok;
    assert_eq!(admitted, 200, "at the limit's rate, every request is admitted");
    assert!(calls <= 20, "{calls} calls for 200 requests");
    assert!(granted <= calls, "{granted}");
}
