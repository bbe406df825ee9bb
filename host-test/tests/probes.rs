//! Small probe guests (WebAssembly text) for host behaviour the real filter never shows.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use breakwater_host_test::{Host, Request, Upstream, World};

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
    let response = vm.request(&Request::get("a", "/"), |_| Upstream::status(200)).unwrap();
    // The deadline is about 2 s of wall time; allow for a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    assert_eq!((response.status, response.local), (503, true));
    assert!(vm.failed());
    assert!(world.logs.borrow().iter().any(|l| l.level == 5 && l.message.contains("guest trapped")));
    // Later requests on this VM get 503 at once, as on an Envoy worker with FAIL_CLOSED.
    let started = Instant::now();
    assert_eq!(vm.request(&Request::get("a", "/"), |_| Upstream::status(200)).unwrap().status, 503);
    assert!(started.elapsed() < Duration::from_millis(500));
}
