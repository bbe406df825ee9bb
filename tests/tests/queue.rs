//! A concurrency limit's queue in real Envoy (2 workers): waiters get slots in arrival order, also
//! a slot freed on the other worker; a full line rejects at once and waiters time out with the
//! block's response; no slot and no place is left behind by clients that leave and upstreams that
//! reset.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::net::TcpStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use breakwater_e2e::{Envoy, Upstream};
use breakwater_policy::metrics::Gauge;

fn policy(max_waiting: u32, max_wait: &str) -> String {
    format!(
        "version: 1\npolicies:\n  - name: q\n    concurrency_limit:\n      max_in_flight: 1\n      queue: {{ max_waiting: {max_waiting}, max_wait: {max_wait} }}\n      response: {{ status: 503, body: \"busy\\n\" }}\n"
    )
}

/// Envoy with connections given to the worker that has fewest (`exact_balance`): connections opened
/// one after another alternate between the two workers.
fn balanced(policy: &str, upstream: &Upstream) -> Envoy {
    Envoy::start_edited(policy, upstream.port(), |b| {
        b.replacen(
            "      filter_chains:\n",
            "      connection_balance_config: { exact_balance: {} }\n      filter_chains:\n",
            1,
        )
    })
}

/// Open downstream connections on each worker.
fn connections(envoy: &Envoy) -> [u64; 2] {
    [0, 1].map(|w| envoy.stat(&format!("listener.127.0.0.1_{}.worker_{w}.downstream_cx_active", envoy.port)))
}

fn waiting(envoy: &Envoy) -> u64 {
    envoy.gauge("q", Gauge::QueueLength)
}

fn in_flight(envoy: &Envoy) -> u64 {
    envoy.gauge("q", Gauge::InFlight)
}

/// A request on its own connection, in a thread: its status and body, and when it ended.
fn send(envoy: &Envoy, headers: &[(&'static str, &'static str)]) -> JoinHandle<(u16, String, Instant)> {
    let mut c = envoy.client();
    let headers = headers.to_vec();
    std::thread::spawn(move || {
        let r = c.get("/", &headers);
        (r.status, r.body, Instant::now())
    })
}

#[test]
fn waiters_get_their_slots_in_arrival_order_across_workers() {
    let upstream = Upstream::start();
    let envoy = balanced(&policy(10, "5s"), &upstream);
    let holder = send(&envoy, &[("x-test-delay-ms", "300")]);
    envoy.wait_for("the slot to be taken", Duration::from_secs(5), || in_flight(&envoy) == 1);
    let first = connections(&envoy);
    assert_eq!(first.iter().sum::<u64>(), 1, "{first:?}");
    let mut waiters = Vec::new();
    for i in 0..4u64 {
        waiters.push(send(&envoy, &[("x-test-delay-ms", "100")]));
        envoy.wait_for("the request to wait", Duration::from_secs(5), || waiting(&envoy) == i + 1);
        if i == 0 {
            // The first waiter is on the other worker than the slot's holder.
            assert_eq!(connections(&envoy), [1, 1]);
        }
    }
    let (status, _, held_until) = holder.join().unwrap();
    assert_eq!(status, 200);
    let ends: Vec<Instant> = waiters
        .into_iter()
        .map(|w| {
            let (status, _, end) = w.join().unwrap();
            assert_eq!(status, 200);
            end
        })
        .collect();
    // Each waiter got the slot when the one before it gave it back: they end in arrival order,
    // each at least its 100 ms upstream time after the previous one.
    let mut previous = held_until;
    let mut late = Vec::new();
    for end in &ends {
        let gap = end.duration_since(previous);
        assert!(gap >= Duration::from_millis(100), "{gap:?}");
        late.push(gap.as_millis() - 100);
        previous = *end;
    }
    println!(
        "4 waiters on alternating workers: each admitted {late:?} ms after the slot came back \
         (the first from the other worker; client-side, including the upstream's answer)"
    );
    assert!(late.iter().all(|ms| *ms < 1000), "{late:?}");
    assert_eq!((envoy.decisions("q", "queued"), envoy.decisions("q", "queue_admitted")), (4, 4));
    assert_eq!(envoy.decisions("q", "allowed"), 5);
    envoy
        .wait_for("an empty line", Duration::from_secs(5), || waiting(&envoy) == 0 && in_flight(&envoy) == 0);
    // The wait-time histogram has the four waits (Envoy merges histograms at its stats flush).
    envoy.wait_for("the wait histogram", Duration::from_secs(15), || {
        let text = envoy.admin_get("/stats/prometheus").map(|r| r.body).unwrap_or_default();
        text.lines().any(|l| l == "breakwater_queue_wait_ms_count{policy=\"q\"} 4")
    });
}

#[test]
fn a_full_line_rejects_at_once_and_waiters_time_out() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(&policy(2, "200ms"), upstream.port());
    let holder = send(&envoy, &[("x-test-delay-ms", "1500")]);
    envoy.wait_for("the slot to be taken", Duration::from_secs(5), || in_flight(&envoy) == 1);
    let mut waiters = Vec::new();
    for i in 0..2u64 {
        let start = Instant::now();
        waiters.push((start, send(&envoy, &[])));
        envoy.wait_for("the request to wait", Duration::from_secs(5), || waiting(&envoy) > i);
    }
    let start = Instant::now();
    let r = envoy.client().get("/", &[]);
    let rejected_in = start.elapsed();
    assert_eq!((r.status, r.body.as_str()), (503, "busy\n"));
    let mut waited = Vec::new();
    for (start, w) in waiters {
        let (status, body, end) = w.join().unwrap();
        assert_eq!((status, body.as_str()), (503, "busy\n"));
        waited.push(end.duration_since(start).as_millis());
    }
    println!(
        "a full line rejected in {rejected_in:?}; waiters timed out after {waited:?} ms (max_wait 200ms)"
    );
    assert!(rejected_in < Duration::from_millis(150), "{rejected_in:?}");
    assert!(waited.iter().all(|ms| (200..1000).contains(ms)), "{waited:?}");
    assert_eq!(envoy.decisions("q", "queue_timeout"), 2);
    assert_eq!(envoy.decisions("q", "concurrency_limited"), 1);
    assert_eq!(envoy.decisions("q", "queue_admitted"), 0);
    assert_eq!(waiting(&envoy), 0);
    assert_eq!(holder.join().unwrap().0, 200);
    envoy.wait_for("the slot back", Duration::from_secs(5), || in_flight(&envoy) == 0);
}

#[test]
fn clients_that_leave_and_upstreams_that_reset_leave_nothing_behind() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(&policy(5, "5s"), upstream.port());
    let holder = send(&envoy, &[("x-test-delay-ms", "600")]);
    envoy.wait_for("the slot to be taken", Duration::from_secs(5), || in_flight(&envoy) == 1);
    // Two clients hang up while they wait.
    for i in 0..2u64 {
        let mut s = TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").unwrap();
        envoy.wait_for("the request to wait", Duration::from_secs(5), || waiting(&envoy) == 1);
        drop(s);
        envoy.wait_for("its place to be free", Duration::from_secs(5), || {
            waiting(&envoy) == 0 && envoy.decisions("q", "queue_abandoned") == i + 1
        });
    }
    // A waiter whose upstream resets once it has the slot; a client that hangs up once its
    // request has the slot.
    let reset = send(&envoy, &[("x-test-reset", "1")]);
    envoy.wait_for("the request to wait", Duration::from_secs(5), || waiting(&envoy) == 1);
    let mut leaver = TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
    leaver.write_all(b"GET / HTTP/1.1\r\nhost: t\r\nx-test-delay-ms: 2000\r\n\r\n").unwrap();
    envoy.wait_for("both to wait", Duration::from_secs(5), || waiting(&envoy) == 2);
    assert_eq!(holder.join().unwrap().0, 200);
    assert_eq!(reset.join().unwrap().0, 503);
    envoy.wait_for("the last waiter to get the slot", Duration::from_secs(5), || {
        envoy.decisions("q", "queue_admitted") == 2 && upstream.in_flight() == 1
    });
    drop(leaver);
    envoy.wait_for("nothing held", Duration::from_secs(5), || {
        waiting(&envoy) == 0 && in_flight(&envoy) == 0 && upstream.in_flight() == 0
    });
    // The slot and the line are whole: one goes straight in, the next waits for it.
    let a = send(&envoy, &[("x-test-delay-ms", "200")]);
    envoy.wait_for("the slot to be taken", Duration::from_secs(5), || in_flight(&envoy) == 1);
    let b = send(&envoy, &[]);
    envoy.wait_for("one waiter", Duration::from_secs(5), || waiting(&envoy) == 1);
    assert_eq!((a.join().unwrap().0, b.join().unwrap().0), (200, 200));
    assert_eq!(envoy.decisions("q", "queue_timeout"), 0);
    assert!(!envoy.log().contains("panic"));
}

/// A publish while requests wait: the waiters (of the old configuration) follow the new limit,
/// and nothing is left behind. Found by review.
#[test]
fn a_reload_while_requests_wait_serves_them_under_the_new_limit() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(&policy(5, "10s"), upstream.port());
    let holder = send(&envoy, &[("x-test-delay-ms", "3000")]);
    envoy.wait_for("the slot to be taken", Duration::from_secs(5), || in_flight(&envoy) == 1);
    let waiters: Vec<_> = (0..2u64)
        .map(|i| {
            let start = Instant::now();
            let w = send(&envoy, &[]);
            envoy.wait_for("the request to wait", Duration::from_secs(5), || waiting(&envoy) > i);
            (start, w)
        })
        .collect();
    // Three slots now: the two waiters need not wait for the holder's three seconds.
    envoy.publish(&policy(5, "10s").replace("max_in_flight: 1", "max_in_flight: 3")).unwrap();
    let waited: Vec<u128> = waiters
        .into_iter()
        .map(|(start, w)| {
            let (status, _, end) = w.join().unwrap();
            assert_eq!(status, 200);
            end.duration_since(start).as_millis()
        })
        .collect();
    println!(
        "after a publish that raised the limit from 1 to 3, the waiters were served after {waited:?} ms"
    );
    assert!(waited.iter().all(|ms| *ms < 2500), "{waited:?}");
    assert_eq!(holder.join().unwrap().0, 200);
    envoy.wait_for("nothing held", Duration::from_secs(5), || waiting(&envoy) == 0 && in_flight(&envoy) == 0);
}
