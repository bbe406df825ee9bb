//! The soak test (`./dev soak`, not in CI): real Envoy (2 workers) with the filter, keyed traffic
//! over more keys than the tables hold, upstream failures, resets, slow requests and client
//! aborts, and a new policy version published every 10 s, for 30 minutes by default. Samples
//! Envoy's RSS, the filter's linear memory (`breakwater_vm_memory_bytes`) and the in-flight gauges;
//! at the end requires that in-flight is back at 0 and that memory stayed flat after the warm-up.
//! Prints a Markdown table for RELIABILITY.md.
//!
//! ```text
//! soak [--minutes 30] [--seconds S] [--clients 6]
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use breakwater_e2e::{Client, Envoy, Options, Upstream};
use breakwater_policy::metrics::Gauge;

const POLICY: &str = r#"
version: 1
policies:
  - name: keyed
    match: { path_prefix: /keyed }
    rate_limit: { rate: 20, per: 1s, burst: BURST, key: ["header:x-api-key"], max_keys: 500 }
    concurrency_limit: { max_in_flight: 2, key: ["header:x-api-key"], max_keys: 500 }
    timeout: 2s
  - name: backend
    match: { path_prefix: /backend }
    circuit_breaker: { window: 10s, minimum_calls: 20, failure_rate: 50, failure_on: [5xx, reset], open_for: 2s, half_open_calls: 3 }
    retry: { max_retries: 1, retry_on: [5xx, reset], budget: { percent: 20, min_per_second: 5 } }
    concurrency_limit: { max_in_flight: 50 }
    timeout: 2s
"#;

/// Publishing every this often.
const PUBLISH_EVERY: Duration = Duration::from_secs(10);
/// Distinct keys: ten times what the tables hold, so slots are taken over all the time; half the
/// keyed requests go to 10 hot keys, which exceed their limits.
const KEYS: u64 = 5000;

struct Args {
    duration: Duration,
    clients: usize,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args { duration: Duration::from_secs(30 * 60), clients: 6 };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let n: u64 = value.parse().map_err(|_| format!("{flag}: `{value}` is not a number"))?;
        match flag.as_str() {
            "--minutes" => a.duration = Duration::from_secs(n * 60),
            "--seconds" => a.duration = Duration::from_secs(n),
            "--clients" => a.clients = usize::try_from(n).map_err(|e| e.to_string())?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

/// A small deterministic generator (xorshift), one per client.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Sends a request and closes the connection before the (delayed) answer: a client abort.
fn abort(port: u16, path: &str, key: &str) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return };
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: soak\r\nx-api-key: {key}\r\nx-test-delay-ms: 300\r\n\r\n");
    let _ = s.write_all(request.as_bytes());
    std::thread::sleep(Duration::from_millis(20));
}

fn client(
    port: u16,
    seed: u64,
    stop: &AtomicBool,
    statuses: &Mutex<BTreeMap<String, u64>>,
    sent: &AtomicU64,
) {
    let mut rng = Rng(seed);
    let mut c = Client::new(port);
    let mut local: BTreeMap<String, u64> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let roll = rng.next() % 100;
        // Half the keyed traffic on 10 hot keys (over their limits), half spread over all keys.
        let key = if rng.next().is_multiple_of(2) {
            format!("k{}", rng.next() % 10)
        } else {
            format!("k{}", rng.next() % KEYS)
        };
        let outcome = match roll {
            0..=59 => {
                c.try_send("GET", "/keyed", &[("x-api-key", key.as_bytes())]).map(|r| r.status.to_string())
            }
            60..=69 => {
                c.try_send("GET", "/backend", &[("x-test-status", b"503")]).map(|r| r.status.to_string())
            }
            70..=74 => c.try_send("GET", "/backend", &[("x-test-reset", b"1")]).map(|r| r.status.to_string()),
            75..=84 => {
                c.try_send("GET", "/backend", &[("x-test-delay-ms", b"200")]).map(|r| r.status.to_string())
            }
            85..=94 => {
                abort(port, if roll.is_multiple_of(2) { "/keyed" } else { "/backend" }, &key);
                Ok("aborted".to_string())
            }
            _ => c.try_send("GET", "/backend", &[]).map(|r| r.status.to_string()),
        };
        let word = outcome.unwrap_or_else(|_| {
            c = Client::new(port);
            "connection error".to_string()
        });
        *local.entry(word).or_default() += 1;
        sent.fetch_add(1, Ordering::Relaxed);
    }
    if let Ok(mut all) = statuses.lock() {
        for (k, v) in local {
            *all.entry(k).or_default() += v;
        }
    }
}

struct Sample {
    at: Duration,
    rps: f64,
    rss_mib: f64,
    vm_mib: f64,
    in_flight: u64,
    ecds_version: String,
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn in_flight(envoy: &Envoy) -> u64 {
    envoy.gauge("keyed", Gauge::InFlight) + envoy.gauge("backend", Gauge::InFlight)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    let policy = |burst: u64| POLICY.replace("BURST", &burst.to_string());
    let upstream = Upstream::start();
    // A copy of the filter: a rebuild during the soak must not reach this Envoy (each publish
    // names the file, and Envoy loads a changed file as new code).
    let wasm = breakwater_e2e::scratch_dir("bw-soak").join("breakwater_filter.wasm");
    if let Err(e) = std::fs::copy(breakwater_e2e::filter_wasm(), &wasm) {
        eprintln!("soak: cannot copy the filter: {e}");
        return ExitCode::FAILURE;
    }
    let envoy = Envoy::start_with(&policy(10), upstream.port(), Options { wasm, ..Options::default() });
    let pid = envoy.pid();
    println!("soak: {:?} of traffic from {} clients, Envoy pid {pid}", args.duration, args.clients);
    let stop = AtomicBool::new(false);
    let statuses = Mutex::new(BTreeMap::new());
    let sent = AtomicU64::new(0);
    let sample_every = (args.duration / 30).max(Duration::from_secs(1));
    let mut samples: Vec<Sample> = Vec::new();
    let mut publishes = 0u64;
    std::thread::scope(|s| {
        for i in 0..args.clients {
            let (stop, statuses, sent) = (&stop, &statuses, &sent);
            s.spawn(move || client(envoy.port, 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1), stop, statuses, sent));
        }
        let start = Instant::now();
        let (mut next_publish, mut next_sample) = (PUBLISH_EVERY, sample_every);
        let mut last = (Duration::ZERO, 0u64);
        while start.elapsed() < args.duration {
            std::thread::sleep(Duration::from_millis(100));
            let now = start.elapsed();
            if now >= next_publish {
                publishes += 1;
                if let Err(e) = envoy.publish(&policy(10 + publishes % 5)) {
                    eprintln!("soak: publish failed: {e}");
                }
                next_publish += PUBLISH_EVERY;
            }
            if now >= next_sample {
                let total = sent.load(Ordering::Relaxed);
                let rps = (total - last.1) as f64 / (now - last.0).as_secs_f64();
                last = (now, total);
                let version = envoy
                    .admin_get("/stats?filter=version_text")
                    .map(|r| r.body.rsplit(": ").next().unwrap_or("").trim().trim_matches('"').to_string())
                    .unwrap_or_default();
                let sample = Sample {
                    at: now,
                    rps,
                    rss_mib: rss_mib(pid),
                    vm_mib: envoy.vm_memory() as f64 / (1024.0 * 1024.0),
                    in_flight: in_flight(&envoy),
                    ecds_version: version,
                };
                println!(
                    "soak: {:>6.0} s  {:>6.0} req/s  RSS {:>7.1} MiB  guest {:>5.2} MiB  in flight {:>3}  ECDS v{}",
                    sample.at.as_secs_f64(),
                    sample.rps,
                    sample.rss_mib,
                    sample.vm_mib,
                    sample.in_flight,
                    sample.ecds_version
                );
                samples.push(sample);
                next_sample += sample_every;
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    // Aborted requests end when the upstream answers (300 ms); give Envoy a moment to log them.
    let drained = Instant::now();
    while in_flight(&envoy) != 0 && drained.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let end_in_flight = in_flight(&envoy);
    let statuses = statuses.into_inner().unwrap_or_default();
    let total: u64 = statuses.values().sum();
    println!("\nsoak: {total} requests, {publishes} publishes; outcomes: {statuses:?}");

    // Memory after the warm-up (the first tenth) against the end.
    let warm = samples.get(samples.len() / 10).or(samples.first());
    let (Some(warm), Some(end)) = (warm, samples.last()) else {
        eprintln!("soak: no samples");
        return ExitCode::FAILURE;
    };
    let rss_growth = end.rss_mib - warm.rss_mib;
    let vm_growth = end.vm_mib - warm.vm_mib;
    println!("\n| minute | requests/s | Envoy RSS MiB | guest memory MiB | in flight | ECDS version |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for s in samples.iter().step_by((samples.len() / 10).max(1)).chain(std::iter::once(end)) {
        println!(
            "| {:.1} | {:.0} | {:.1} | {:.2} | {} | {} |",
            s.at.as_secs_f64() / 60.0,
            s.rps,
            s.rss_mib,
            s.vm_mib,
            s.in_flight,
            s.ecds_version
        );
    }
    println!(
        "\nafter the warm-up ({:.1} min): RSS {rss_growth:+.1} MiB, guest memory {vm_growth:+.2} MiB; in flight at the end: {end_in_flight}",
        warm.at.as_secs_f64() / 60.0
    );
    let mut failed = Vec::new();
    if end_in_flight != 0 {
        failed.push(format!("{end_in_flight} requests still counted in flight"));
    }
    // Flat: RSS within 5% (Envoy's allocator and stats settle), guest memory not grown.
    if rss_growth > warm.rss_mib * 0.05 {
        failed.push(format!("Envoy's RSS grew by {rss_growth:.1} MiB"));
    }
    if vm_growth > 0.0 {
        failed.push(format!("the guest memory grew by {vm_growth:.2} MiB"));
    }
    if statuses.keys().any(|k| k.starts_with('5') && k != "503") {
        failed.push(format!("unexpected 5xx: {statuses:?}"));
    }
    if failed.is_empty() {
        println!("soak: ok");
        ExitCode::SUCCESS
    } else {
        eprintln!("soak: FAILED: {}", failed.join("; "));
        ExitCode::FAILURE
    }
}
