//! `GET /api/live`: the live page's dashboard. Per policy, the last 15 minutes of decisions per
//! second, breaker state and requests in flight against the limit: from Prometheus' query API when
//! the server has `--prometheus`, else from the server's own sampling of Envoy's stats (every
//! [`STEP`], kept for [`WINDOW`]). The breaker transitions come from Envoy's log (the filter logs
//! each one), the firing alerts from Alertmanager (`--alertmanager`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use breakwater_api::{BreakerTransition, FiringAlert, Live, LivePolicy, PolicyStats};
use breakwater_policy::metrics::{Decision, PREFIX};
use serde_json::Value;

use super::envoy::{self, Admin};

/// Between two points.
pub const STEP: Duration = Duration::from_secs(5);
/// How far back the charts go.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Transitions shown (the newest).
const TRANSITIONS: usize = 20;
/// How much of the end of Envoy's log is searched for transitions.
const LOG_TAIL: u64 = 4 << 20;

fn points() -> usize {
    (WINDOW.as_secs() / STEP.as_secs()) as usize
}

fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The server's own samples of Envoy's stats: (unix milliseconds, per policy), oldest first.
#[derive(Debug, Default)]
pub struct Samples(Mutex<VecDeque<(u64, BTreeMap<String, PolicyStats>)>>);

impl Samples {
    fn push(&self, at_ms: u64, stats: BTreeMap<String, PolicyStats>) {
        let at = at_ms;
        let mut q = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        q.push_back((at, stats));
        while q.len() > points().saturating_add(1) {
            q.pop_front();
        }
    }

    /// Series on the grid of `points` steps ending at `end`: rates from consecutive counters,
    /// gauges as sampled.
    pub fn series(&self, start: u64, limits: &BTreeMap<String, Option<u32>>) -> BTreeMap<String, LivePolicy> {
        let q = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = points();
        let mut out: BTreeMap<String, LivePolicy> = BTreeMap::new();
        // The nearest point of the grid (a sample's time wanders with the admin request's).
        let step_ms = STEP.as_millis() as u64;
        let slot = |t_ms: u64| -> Option<usize> {
            let from = t_ms.checked_add(step_ms / 2)?.checked_sub(start.saturating_mul(1000))?;
            let i = usize::try_from(from / step_ms).ok()?;
            (i < n).then_some(i)
        };
        let mut previous: Option<&(u64, BTreeMap<String, PolicyStats>)> = None;
        for sample in q.iter() {
            let (at, stats) = sample;
            if let Some(i) = slot(*at) {
                for (policy, s) in stats {
                    let p = out.entry(policy.clone()).or_default();
                    if let Some(b) = s.breaker {
                        p.breaker.get_or_insert_with(|| vec![None; n])[i] = Some(b.gauge() as f64);
                    }
                    if let Some(v) = s.in_flight {
                        p.in_flight.get_or_insert_with(|| vec![None; n])[i] = Some(v as f64);
                        let limit = s
                            .adaptive
                            .map(|a| a.limit)
                            .or_else(|| limits.get(policy).copied().flatten().map(u64::from));
                        if let Some(l) = limit {
                            p.limit.get_or_insert_with(|| vec![None; n])[i] = Some(l as f64);
                        }
                    }
                    if let Some((before, old)) = previous {
                        let dt = at.saturating_sub(*before).max(1) as f64 / 1000.0;
                        for d in Decision::ALL {
                            let now = s.requests.get(&d.counter()).copied().unwrap_or(0);
                            let then = old
                                .get(policy)
                                .and_then(|o| o.requests.get(&d.counter()))
                                .copied()
                                .unwrap_or(0);
                            // A counter that went down: Envoy restarted; no rate for this step.
                            let rate = now.checked_sub(then).map(|x| x as f64 / dt);
                            if rate.is_some_and(|r| r > 0.0) || p.decisions.contains_key(d.as_str()) {
                                p.decisions.entry(d.as_str().to_string()).or_insert_with(|| vec![None; n])
                                    [i] = rate;
                            }
                        }
                    }
                }
            }
            previous = Some(sample);
        }
        out
    }
}

/// Samples Envoy's stats every [`STEP`] while the server runs (it stops when `samples` is dropped).
pub fn sample_envoy(admin: Admin, samples: Weak<Samples>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(STEP);
        loop {
            tick.tick().await;
            let Some(samples) = samples.upgrade() else { return };
            // Stamped when asked, not when answered (a slow answer would move it off the grid).
            let at = unix_now_ms();
            if let Ok((200, body)) = admin.get("/stats/prometheus").await {
                samples.push(at, envoy::policy_stats(&body));
            }
        }
    });
}

/// Series from Prometheus' query API (`address`: HOST:PORT), on the same grid.
async fn from_prometheus(
    address: &str,
    start: u64,
    end: u64,
    limits: &BTreeMap<String, Option<u32>>,
) -> Result<BTreeMap<String, LivePolicy>, String> {
    let n = points();
    let decisions = Decision::promql_any();
    let queries = [
        (
            "decisions",
            format!("sum by (policy, decision) (rate({PREFIX}_requests{{decision=~\"{decisions}\"}}[1m]))"),
        ),
        ("breaker", format!("max by (policy) ({PREFIX}_breaker_state)")),
        // Per Envoy (each has its own limit): the busiest one, against its limit.
        ("in_flight", format!("max by (policy) ({PREFIX}_in_flight)")),
        ("limit", format!("max by (policy) ({PREFIX}_concurrency_limit)")),
    ];
    let admin = Admin { address: address.to_string() };
    let mut out: BTreeMap<String, LivePolicy> = BTreeMap::new();
    for (what, q) in queries {
        let path = format!(
            "/api/v1/query_range?query={}&start={start}&end={end}&step={}",
            encode(&q),
            STEP.as_secs()
        );
        let (status, body) = admin.get(&path).await.map_err(|e| e.replace("Envoy's admin", "Prometheus"))?;
        if status != 200 {
            return Err(format!("Prometheus answered {status} to {q}: {body}"));
        }
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("Prometheus: {e}"))?;
        for series in v["data"]["result"].as_array().into_iter().flatten() {
            let Some(policy) = series["metric"]["policy"].as_str() else { continue };
            let mut values = vec![None; n];
            for pair in series["values"].as_array().into_iter().flatten() {
                let t = pair[0].as_f64().unwrap_or(0.0) as u64;
                let x = pair[1].as_str().and_then(|s| s.parse::<f64>().ok()).filter(|x| x.is_finite());
                if let Some(i) =
                    t.checked_sub(start).map(|d| (d / STEP.as_secs()) as usize).filter(|i| *i < n)
                {
                    values[i] = x;
                }
            }
            let p = out.entry(policy.to_string()).or_default();
            match what {
                "decisions" => {
                    let d = series["metric"]["decision"].as_str().unwrap_or_default().to_string();
                    p.decisions.insert(d, values);
                }
                "breaker" => p.breaker = Some(values),
                "in_flight" => p.in_flight = Some(values),
                _ => p.limit = Some(values),
            }
        }
    }
    // A fixed limit is the policy's number.
    for (policy, limit) in limits {
        if let (Some(l), Some(p)) = (limit, out.get_mut(policy))
            && p.in_flight.is_some()
        {
            p.limit = Some(vec![Some(f64::from(*l)); n]);
        }
    }
    Ok(out)
}

/// The breakwater alerts firing in Alertmanager (`address`: HOST:PORT).
async fn alerts(address: &str) -> Result<Vec<FiringAlert>, String> {
    let admin = Admin { address: address.to_string() };
    let (status, body) = admin
        .get("/api/v2/alerts?active=true&silenced=false&inhibited=false")
        .await
        .map_err(|e| e.replace("Envoy's admin", "Alertmanager"))?;
    if status != 200 {
        return Err(format!("Alertmanager answered {status}"));
    }
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("Alertmanager: {e}"))?;
    let text = |x: &Value| x.as_str().map(str::to_string);
    let mut out: Vec<FiringAlert> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["labels"]["alertname"].as_str().is_some_and(|n| n.starts_with("Breakwater")))
        .map(|a| FiringAlert {
            name: text(&a["labels"]["alertname"]).unwrap_or_default(),
            policy: text(&a["labels"]["policy"]),
            severity: text(&a["labels"]["severity"]),
            summary: text(&a["annotations"]["summary"]),
            since: text(&a["startsAt"]).unwrap_or_default(),
        })
        .collect();
    out.sort_by(|a, b| (&a.severity, &a.since).cmp(&(&b.severity, &b.since)));
    Ok(out)
}

/// The breaker transitions in the end of Envoy's log, oldest first (at most [`TRANSITIONS`]).
pub fn transitions(log: &std::path::Path) -> Vec<BreakerTransition> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(log) else { return Vec::new() };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL)));
    let mut bytes = Vec::new();
    let _ = f.take(LOG_TAIL).read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let mut out: Vec<BreakerTransition> = text.lines().filter_map(transition).collect();
    let skip = out.len().saturating_sub(TRANSITIONS);
    out.drain(..skip);
    out
}

/// One log line of a transition (`[2026-12-03 15:19:41.102][10848][info][wasm] ... breakwater:
/// breaker transition policy=p from=closed to=open calls=20 ...`).
fn transition(line: &str) -> Option<BreakerTransition> {
    // Only the filter's own lines (a wasm log line of Envoy's), not text some other line quotes.
    let (head, rest) = line.split_once("wasm log ")?;
    if !head.contains("][wasm]") {
        return None;
    }
    let (_, rest) = rest.split_once(": breakwater: breaker transition ")?;
    let at = line
        .strip_prefix('[')
        .and_then(|l| l.split_once(']'))
        .map(|(t, _)| t.to_string())
        .unwrap_or_default();
    let mut words = rest.splitn(4, ' ');
    let mut field = |key: &str| words.next()?.strip_prefix(key).map(str::to_string);
    let policy = field("policy=")?;
    let from = field("from=")?;
    let to = field("to=")?;
    let detail = words.next().unwrap_or_default().to_string();
    Some(BreakerTransition { at, policy, from, to, detail })
}

/// Percent-encodes a query parameter.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What `/api/live` answers.
pub async fn live(
    samples: Option<&Arc<Samples>>,
    prometheus: Option<&str>,
    alertmanager: Option<&str>,
    log: Option<&std::path::Path>,
    limits: &BTreeMap<String, Option<u32>>,
) -> Live {
    let end = unix_now();
    let start = end.saturating_sub(WINDOW.as_secs()).saturating_add(STEP.as_secs());
    let start = start - start % STEP.as_secs();
    let mut live = Live { step_s: STEP.as_secs(), start, points: points(), ..Live::default() };
    let mut errors = Vec::new();
    match (prometheus, samples) {
        (Some(address), _) => {
            live.source = "prometheus".into();
            match from_prometheus(address, start, end, limits).await {
                Ok(p) => live.policies = p,
                Err(e) => errors.push(e),
            }
        }
        (None, Some(s)) => {
            live.source = "envoy".into();
            live.policies = s.series(start, limits);
        }
        (None, None) => live.source = "none".into(),
    }
    if let Some(address) = alertmanager {
        match alerts(address).await {
            Ok(a) => live.alerts = Some(a),
            Err(e) => live.alerts_error = Some(e),
        }
    }
    if let Some(log) = log {
        let log = log.to_path_buf();
        live.transitions = tokio::task::spawn_blocking(move || transitions(&log)).await.unwrap_or_default();
    }
    live.error = (!errors.is_empty()).then(|| errors.join("; "));
    live
}

#[cfg(test)]
mod tests {
    use super::*;
    use breakwater_policy::metrics::{BreakerState, Counter};

    #[test]
    fn transitions_are_read_from_envoy_log_lines() {
        let line = "[2026-12-03 15:19:41.102][10848][info][wasm] [source/extensions/common/wasm/context.cc:1151] \
                    wasm log breakwater: breakwater: breaker transition policy=recs from=closed to=open calls=3 \
                    failed=3 slow=0 (failure rate 100%, slow-call rate 0% of the window)";
        let t = transition(line).unwrap();
        assert_eq!(
            (t.at.as_str(), t.policy.as_str(), t.from.as_str(), t.to.as_str()),
            ("2026-12-03 15:19:41.102", "recs", "closed", "open")
        );
        assert!(t.detail.starts_with("calls=3 failed=3"), "{}", t.detail);
        assert_eq!(transition("[x] breakwater: loaded 3 policies"), None);
        // Text that only quotes the marker (an access log line, a request's header) is not one.
        assert_eq!(
            transition(
                "[t][1][info][http] GET /x ua=\"wasm log x: breakwater: breaker transition policy=a from=closed to=open\""
            ),
            None
        );
        let dir = std::env::temp_dir().join(format!("bw-live-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("envoy.log");
        let lines: Vec<String> = (0..30)
            .map(|i| format!("[t{i}][1][info][wasm] [c.cc:1] wasm log breakwater: breakwater: breaker transition policy=p{i} from=open to=half_open (x)"))
            .collect();
        std::fs::write(&log, lines.join("\n")).unwrap();
        let ts = transitions(&log);
        assert_eq!((ts.len(), ts[0].policy.as_str(), ts[19].policy.as_str()), (20, "p10", "p29"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn samples_become_rates_and_gauges_on_the_grid() {
        let s = Samples::default();
        let stats = |allowed: u64, open: u64, in_flight: u64| {
            let mut p = PolicyStats {
                breaker: Some(BreakerState::Open),
                in_flight: Some(in_flight),
                ..PolicyStats::default()
            };
            p.requests.insert(Counter::Allowed, allowed);
            p.requests.insert(Counter::CircuitOpen, open);
            BTreeMap::from([("a".to_string(), p)])
        };
        let start = 1_000_000;
        // Sampled 2.4 s late, 2.4 s early, on time: still one point each.
        s.push(start * 1000 + 2_400, stats(100, 0, 3));
        s.push(start * 1000 + 2_600, stats(150, 10, 4));
        s.push(start * 1000 + 10_000, stats(20, 10, 5)); // Envoy restarted: no rate
        let limits = BTreeMap::from([("a".to_string(), Some(10))]);
        let out = s.series(start, &limits);
        let a = &out["a"];
        assert_eq!(a.decisions["allowed"][..3], [None, Some(250.0), None], "50 in 0.2 s");
        assert_eq!(a.decisions["circuit_open"][..3], [None, Some(50.0), Some(0.0)]);
        assert_eq!(a.in_flight.as_ref().unwrap()[..3], [Some(3.0), Some(4.0), Some(5.0)]);
        assert_eq!(a.limit.as_ref().unwrap()[0], Some(10.0));
        assert_eq!(a.breaker.as_ref().unwrap()[1], Some(1.0));
    }
}
