//! Global limits on hostile bytes: any gRPC answer (the rate-limit service, or whatever answers on
//! its cluster) is read or refused without a panic, and any bytes found in shared data where a
//! lease or the policy's record of the service should be are decoded as empty state. The filter
//! acts on both for every request of a global limit.
#![no_main]

use std::sync::OnceLock;

use breakwater_policy::engine::store::{MemoryStore, SharedStore};
use breakwater_policy::global::{self, Answer};
use breakwater_policy::plan::{Plan, SimpleRequest};
use libfuzzer_sys::fuzz_target;

const DOCUMENT: &str = r#"
version: 1
policies:
  - name: leased
    global_rate_limit: { rate: 5, per: 1s, burst: 4, mode: leased }
"#;

fn plan() -> &'static Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    PLAN.get_or_init(|| {
        let doc = match breakwater_policy::load(DOCUMENT) {
            Ok(l) => l.document,
            Err(e) => panic!("the fuzz document does not load: {e:?}"),
        };
        match Plan::new(doc) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let answer = Answer::read(0, Some(data));
    let Some(p) = plan().policies.first() else { return };
    let (Some(g), Some(gp)) = (&p.policy.global_rate_limit, &p.global) else { return };
    let store = MemoryStore::default();
    // The same bytes as the lease and as the record, then a request's whole path through them.
    let _ = store.set("bw/leased/gl", data, u32::MAX);
    let _ = store.set(&gp.record, data, u32::MAX);
    let req = SimpleRequest::new("GET", "example.com", "/");
    let now = 1_700_000_000_000_000_000u64;
    let _ = global::route(&store, gp, now);
    if let Ok((_, at)) = gp.lease_step(&store, g, &req, now) {
        gp.lease_answer(&store, &at, 4, 1, true, &answer, now);
    }
    let _ = global::record(&store, gp, &answer, now);
});
