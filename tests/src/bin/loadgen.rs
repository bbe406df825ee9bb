//! A paced HTTP/1.1 load generator for the benchmarks (`bench/run.py`), where wrk cannot say
//! what it needs to: which requests were admitted per key, and when each key was first and last
//! offered.
//!
//! `connections` keep-alive connections share the requests; request i is due at i / `rate`
//! seconds (rate 0: as fast as the connections go), carries `x-api-key: k<offset + i mod keys>`
//! when `keys` > 0, and the run stops after `seconds` or `requests`, whichever comes first.
//! Prints one JSON object: the elapsed time, the requests sent, transport errors, and per key the
//! statuses counted and the times (seconds since the start) of its first and last request.
//!
//! ```text
//! loadgen --port P [--rate R] [--seconds S] [--requests N] [--connections C] [--keys K]
//!         [--key-offset O] [--path /] [--per-key]
//! ```
//! Without `--per-key` the keys are summed into one entry `all` (for runs over a million keys).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use breakwater_e2e::Client;

#[derive(Debug, Clone)]
struct Args {
    port: u16,
    rate: f64,
    seconds: f64,
    requests: u64,
    connections: u64,
    keys: u64,
    key_offset: u64,
    path: String,
    per_key: bool,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        port: 0,
        rate: 0.0,
        seconds: 10.0,
        requests: u64::MAX,
        connections: 4,
        keys: 0,
        key_offset: 0,
        path: "/".into(),
        per_key: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--per-key" {
            a.per_key = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("{flag}: not a number: {value}");
        match flag.as_str() {
            "--port" => a.port = value.parse().map_err(|_| bad())?,
            "--rate" => a.rate = value.parse().map_err(|_| bad())?,
            "--seconds" => a.seconds = value.parse().map_err(|_| bad())?,
            "--requests" => a.requests = value.parse().map_err(|_| bad())?,
            "--connections" => a.connections = value.parse::<u64>().map_err(|_| bad())?.max(1),
            "--keys" => a.keys = value.parse().map_err(|_| bad())?,
            "--key-offset" => a.key_offset = value.parse().map_err(|_| bad())?,
            "--path" => a.path = value.clone(),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.port == 0 {
        return Err("--port is required".into());
    }
    Ok(a)
}

#[derive(Debug, Default, Clone)]
struct Seen {
    statuses: BTreeMap<u16, u64>,
    first: Option<f64>,
    last: f64,
}

impl Seen {
    fn merge(&mut self, other: &Seen) {
        for (status, n) in &other.statuses {
            *self.statuses.entry(*status).or_default() += n;
        }
        self.first = match (self.first, other.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last = self.last.max(other.last);
    }
}

/// One connection's share: requests c, c + connections, c + 2·connections, ...
fn connection(a: &Args, c: u64, start: Instant, sent: &AtomicU64) -> (BTreeMap<u64, Seen>, u64) {
    let mut client = Client::new(a.port);
    let mut seen: BTreeMap<u64, Seen> = BTreeMap::new();
    let mut errors = 0u64;
    let run_for = Duration::from_secs_f64(a.seconds);
    let mut i = c;
    while i < a.requests {
        let due = if a.rate > 0.0 { Duration::from_secs_f64(i as f64 / a.rate) } else { start.elapsed() };
        if due >= run_for {
            break;
        }
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let key = if a.keys > 0 { a.key_offset + i % a.keys } else { 0 };
        let value = format!("k{key}");
        let headers: Vec<(&str, &[u8])> =
            if a.keys > 0 { vec![("x-api-key", value.as_bytes())] } else { Vec::new() };
        let at = start.elapsed().as_secs_f64();
        sent.fetch_add(1, Ordering::Relaxed);
        match client.try_send("GET", &a.path, &headers) {
            Ok(r) => {
                let s = seen.entry(if a.per_key { key } else { 0 }).or_default();
                *s.statuses.entry(r.status).or_default() += 1;
                s.first.get_or_insert(at);
                s.last = at;
            }
            Err(_) => {
                errors += 1;
                client = Client::new(a.port);
            }
        }
        i += a.connections;
    }
    (seen, errors)
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let a = match parse(&raw) {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "loadgen: {e}\nusage: loadgen --port P [--rate R] [--seconds S] [--requests N] [--connections C] [--keys K] [--key-offset O] [--path /] [--per-key]"
            );
            return ExitCode::from(2);
        }
    };
    let a = Arc::new(a);
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..a.connections)
        .map(|c| {
            let (a, sent) = (Arc::clone(&a), Arc::clone(&sent));
            std::thread::spawn(move || connection(&a, c, start, &sent))
        })
        .collect();
    let mut total: BTreeMap<u64, Seen> = BTreeMap::new();
    let mut errors = 0;
    for t in threads {
        let Ok((seen, e)) = t.join() else { return ExitCode::FAILURE };
        errors += e;
        for (key, s) in &seen {
            total.entry(*key).or_default().merge(s);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let keys_json: Vec<String> = total
        .iter()
        .map(|(key, s)| {
            let statuses: Vec<String> = s.statuses.iter().map(|(st, n)| format!("\"{st}\": {n}")).collect();
            let name = if a.per_key { format!("k{key}") } else { "all".into() };
            format!(
                "\"{name}\": {{\"statuses\": {{{}}}, \"first\": {:.6}, \"last\": {:.6}}}",
                statuses.join(", "),
                s.first.unwrap_or(0.0),
                s.last
            )
        })
        .collect();
    println!(
        "{{\"elapsed\": {elapsed:.6}, \"sent\": {}, \"errors\": {errors}, \"keys\": {{{}}}}}",
        sent.load(Ordering::Relaxed),
        keys_json.join(", ")
    );
    ExitCode::SUCCESS
}
