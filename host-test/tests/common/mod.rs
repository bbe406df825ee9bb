//! What the compiled-filter tests share.

use std::rc::Rc;

use breakwater_host_test::{Host, Vm, World};

/// One simulated Envoy: `workers` VMs of the compiled filter, configured with `policy` (YAML),
/// sharing one world (clock, shared data, stats).
pub fn envoy(workers: usize, policy: &str) -> (Rc<World>, Vec<Vm>) {
    let host = Host::from_workspace().unwrap_or_else(|e| panic!("{e:#}"));
    let compiled =
        breakwater_policy::compile(&breakwater_policy::load(policy).unwrap().document).into_bytes();
    let world = World::new(1_700_000_000_000_000_000, 42);
    let vms = (0..workers)
        .map(|i| {
            let mut vm = host.vm(world.clone(), i).unwrap();
            assert!(vm.configure(&compiled).unwrap(), "{:?}", world.logs.borrow());
            vm
        })
        .collect();
    (world, vms)
}
