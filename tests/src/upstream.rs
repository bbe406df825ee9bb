//! A scripted HTTP/1.1 upstream for end-to-end tests.
//!
//! Behaviour per request comes from request headers, which Envoy passes through unchanged:
//! - `x-test-status: 503`: answer with that status (default 200);
//! - `x-test-script: 503,503,200`: the k-th attempt of a request (by `x-request-id`, which Envoy
//!   keeps across retries) gets the k-th entry; `reset` closes the connection without answering;
//! - `x-test-delay-ms: 300`: wait before answering;
//! - `x-test-capacity: 10` (with a delay): a service with that many workers: a request that finds
//!   k > 10 requests in it (itself included) waits `delay · k / 10` instead (the scenario
//!   language's `upstream.capacity`);
//! - `x-test-reset: 1`: close the connection without answering.
//! - `x-test-response-header: name: value`: add that header to the response.
//!
//! [`Upstream::set_outage`] makes every request fail with 503 until switched off;
//! [`Upstream::set_load_latency`] gives requests without `x-test-delay-ms` a load-dependent
//! latency (as `x-test-capacity`), changed for every request that arrives from then on. Counters (total,
//! in flight, the highest in-flight count seen, per path) let tests check what reached it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, Default)]
struct State {
    total: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    outage: AtomicBool,
    /// (delay ms, capacity) for requests without their own delay; capacity 0: none.
    load_latency: AtomicU64,
    stop: AtomicBool,
    by_path: Mutex<HashMap<String, u64>>,
    attempts: Mutex<HashMap<String, usize>>,
}

#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl Upstream {
    /// On a free port.
    pub fn start() -> Upstream {
        Self::start_on(0).expect("bind the test upstream")
    }

    pub fn start_on(port: u16) -> std::io::Result<Upstream> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let s = state.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        Ok(Upstream { addr, state, accept: Some(accept) })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    pub fn total(&self) -> u64 {
        self.state.total.load(Ordering::SeqCst)
    }
    pub fn max_in_flight(&self) -> u64 {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
    pub fn in_flight(&self) -> u64 {
        self.state.in_flight.load(Ordering::SeqCst)
    }
    pub fn count(&self, path: &str) -> u64 {
        self.state.by_path.lock().map(|m| m.get(path).copied().unwrap_or(0)).unwrap_or(0)
    }
    /// Requests without `x-test-delay-ms` take `delay_ms`, or `delay_ms · k / capacity` when they
    /// find k > `capacity` requests in the upstream (themselves included).
    pub fn set_load_latency(&self, delay_ms: u32, capacity: u32) {
        self.state.load_latency.store(u64::from(delay_ms) << 32 | u64::from(capacity), Ordering::SeqCst);
    }

    pub fn set_outage(&self, on: bool) {
        self.state.outage.store(on, Ordering::SeqCst);
    }
    pub fn reset_counters(&self) {
        self.state.total.store(0, Ordering::SeqCst);
        self.state.max_in_flight.store(self.in_flight(), Ordering::SeqCst);
        if let Ok(mut m) = self.state.by_path.lock() {
            m.clear();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

struct Request {
    path: String,
    headers: HashMap<String, String>,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = Vec::new();
        reader.read_until(b'\n', &mut h).ok()?;
        let h = String::from_utf8_lossy(&h).trim_end().to_string();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request { path, headers })
}

fn serve(conn: TcpStream, s: &State) {
    let Ok(read_half) = conn.try_clone() else { return };
    let mut reader = BufReader::new(read_half);
    let mut conn = conn;
    while let Some(req) = read_request(&mut reader) {
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        s.total.fetch_add(1, Ordering::SeqCst);
        let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_in_flight.fetch_max(now, Ordering::SeqCst);
        if let Ok(mut m) = s.by_path.lock() {
            *m.entry(req.path.split('?').next().unwrap_or_default().to_string()).or_default() += 1;
        }
        let attempt = req
            .headers
            .get("x-request-id")
            .and_then(|id| {
                let mut m = s.attempts.lock().ok()?;
                let n = m.entry(id.clone()).or_default();
                *n += 1;
                Some(*n)
            })
            .unwrap_or(1);
        let mut status = req.headers.get("x-test-status").cloned().unwrap_or_else(|| "200".into());
        if let Some(script) = req.headers.get("x-test-script") {
            let steps: Vec<&str> = script.split(',').map(str::trim).collect();
            status = steps.get(attempt - 1).or(steps.last()).unwrap_or(&"200").to_string();
        }
        if s.outage.load(Ordering::SeqCst) {
            status = "503".into();
        }
        let load = s.load_latency.load(Ordering::SeqCst);
        let delay = match req.headers.get("x-test-delay-ms").and_then(|v| v.parse::<u64>().ok()) {
            Some(ms) => {
                Some((ms, req.headers.get("x-test-capacity").and_then(|v| v.parse().ok()).unwrap_or(0)))
            }
            None => (load & 0xffff_ffff > 0).then_some((load >> 32, load & 0xffff_ffff)),
        };
        if let Some((ms, capacity)) = delay {
            let ms = (ms * now.max(capacity)).checked_div(capacity).unwrap_or(ms);
            std::thread::sleep(Duration::from_millis(ms));
        }
        let reset = status == "reset" || req.headers.get("x-test-reset").is_some_and(|v| v == "1");
        s.in_flight.fetch_sub(1, Ordering::SeqCst);
        if reset {
            let _ = conn.shutdown(Shutdown::Both);
            return;
        }
        let body = format!("upstream {} attempt {attempt}\n", req.path);
        let extra = req.headers.get("x-test-response-header").map(|h| format!("{h}\r\n")).unwrap_or_default();
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-upstream-attempt: {attempt}\r\n{extra}\r\n{body}",
            body.len()
        );
        if conn.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}
