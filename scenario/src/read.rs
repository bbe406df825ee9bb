//! Reading a scenario with the policy language's toolkit ([`breakwater_policy::read`]), so every
//! error carries its path, line and column, as a document's do.

use breakwater_policy::diag::Diagnostic;
use breakwater_policy::model::{Document, Duration};
use breakwater_policy::read::{Fields, Path, Reader, join, suggest};
use breakwater_policy::source::{Node, Value, key_text};

use crate::model::*;

/// Reads a scenario from YAML or JSON text. `Err` holds every problem, in document order.
pub fn load(text: &str) -> Result<Scenario, Vec<Diagnostic>> {
    load_inner(text, None)
}

/// As [`load`], for a scenario run against a document chosen elsewhere (the admin's editor): the
/// scenario's own `policy` field may be left out, and is replaced by `document` when present.
/// The expectations are checked against `document` too.
pub fn load_with_policy(text: &str, document: &Document) -> Result<Scenario, Vec<Diagnostic>> {
    let scenario = load_inner(text, Some(document))?;
    let problems = check_against(&scenario, document);
    if problems.iter().any(Diagnostic::is_error) { Err(problems) } else { Ok(scenario) }
}

fn load_inner(text: &str, given: Option<&Document>) -> Result<Scenario, Vec<Diagnostic>> {
    let root = breakwater_policy::source::parse(text)?;
    let mut r = Reader::default();
    let scenario = scenario(&mut r, &root, given);
    let (mut diags, _) = r.finish();
    diags.sort_by_key(|d| d.span.map(|s| (s.line, s.col)));
    match scenario {
        Some(s) if !diags.iter().any(Diagnostic::is_error) => Ok(s),
        _ => Err(diags),
    }
}

/// Checks a scenario against the document it runs: the policies it names exist, and breakers
/// are asked about policies that have one.
pub fn check_against(s: &Scenario, doc: &Document) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let names: Vec<&str> = doc.policies.iter().map(|p| p.name.as_str()).collect();
    for e in &s.expect {
        let (policy, path, needs_breaker) = match &e.measure {
            Measure::Breaker { policy, .. } => (Some(policy), join(&e.path, "breaker"), true),
            Measure::Share { select, of } => {
                for (sel, field) in [(select, "share"), (of, "of")] {
                    if let Some(p) = &sel.policy {
                        unknown_policy(&mut out, &names, p, &format!("{}.{field}.policy", e.path));
                    }
                }
                (None, String::new(), false)
            }
            Measure::Requests(sel)
            | Measure::Retries(sel)
            | Measure::BudgetExhausted(sel)
            | Measure::UpstreamAttempts(sel)
            | Measure::MaxUpstreamConcurrency(sel)
            | Measure::MaxInFlight(sel) => {
                (sel.policy.as_ref(), format!("{}.{}.policy", e.path, measure_name(&e.measure)), false)
            }
            Measure::Metric(_) => (None, String::new(), false),
        };
        let Some(policy) = policy else { continue };
        if unknown_policy(&mut out, &names, policy, &path) {
            continue;
        }
        let has_breaker = doc.policies.iter().any(|p| &p.name == policy && p.circuit_breaker.is_some());
        if needs_breaker && !has_breaker {
            out.push(Diagnostic::error(path, format!("policy `{policy}` has no circuit_breaker")));
        }
    }
    out
}

fn unknown_policy(out: &mut Vec<Diagnostic>, names: &[&str], policy: &str, path: &str) -> bool {
    if names.contains(&policy) {
        return false;
    }
    let message = match suggest(policy, names) {
        Some(s) => format!("no policy named `{policy}`; did you mean `{s}`?"),
        None => format!("no policy named `{policy}`; the document has: {}", names.join(", ")),
    };
    out.push(Diagnostic::error(path, message));
    true
}

fn measure_name(m: &Measure) -> &'static str {
    match m {
        Measure::Requests(_) => "requests",
        Measure::Share { .. } => "share",
        Measure::Retries(_) => "retries",
        Measure::BudgetExhausted(_) => "budget_exhausted",
        Measure::UpstreamAttempts(_) => "upstream_attempts",
        Measure::MaxUpstreamConcurrency(_) => "max_upstream_concurrency",
        Measure::MaxInFlight(_) => "max_in_flight",
        Measure::Metric(_) => "metric",
        Measure::Breaker { .. } => "breaker",
    }
}

/// The one field of `f` among `names` that is present; an error unless exactly one is.
fn one_of<'n, 'f>(
    r: &mut Reader,
    f: &'f Fields<'n, '_>,
    node: &Node,
    names: &[&'static str],
) -> Option<(&'static str, &'n Node, Path<'f>)> {
    let present: Vec<(&'static str, &'n Node, Path<'_>)> =
        names.iter().filter_map(|n| f.get(n).map(|(node, path)| (*n, node, path))).collect();
    match present.len() {
        1 => present.into_iter().next(),
        0 => {
            r.error(&f.path, node, format!("expected one of: {}", names.join(", ")));
            None
        }
        _ => {
            let listed: Vec<&str> = present.iter().map(|(n, _, _)| *n).collect();
            r.error(&f.path, node, format!("write only one of {}", listed.join(", ")));
            None
        }
    }
}

fn scenario(r: &mut Reader, node: &Node, given: Option<&Document>) -> Option<Scenario> {
    let f = r.fields(node, &Path::ROOT, SCENARIO_FIELDS)?;
    let name = match f.get("name") {
        Some((n, p)) => r.string(n, &p).unwrap_or_default(),
        None => {
            r.error(&Path::ROOT, node, "missing field `name` (a title for the scenario)");
            String::new()
        }
    };
    let description = f.get("description").and_then(|(n, p)| r.string(n, &p)).unwrap_or_default();
    let policy = match (f.get("policy"), given) {
        (_, Some(doc)) => Some(PolicyRef::Inline(doc.clone())),
        (Some((n, p)), None) => policy_ref(r, n, &p),
        (None, None) => {
            r.error(&Path::ROOT, node, "missing field `policy` (a file name or an inline document)");
            None
        }
    };
    let seed = f.get("seed").and_then(|(n, p)| r.int(n, &p, 0, u64::MAX)).unwrap_or(1);
    let workers = f.get("workers").and_then(|(n, p)| r.int_as(n, &p, 1, MAX_WORKERS)).unwrap_or(2);
    let duration = match f.get("duration") {
        Some((n, p)) => bounded_duration(r, n, &p, 1, MAX_DURATION_MS),
        None => {
            r.error(&Path::ROOT, node, "missing field `duration` (how long to simulate, e.g. 10s)");
            None
        }
    };
    let end = duration.unwrap_or(Duration::from_millis(MAX_DURATION_MS));
    let upstream = match f.get("upstream") {
        Some((n, p)) => upstream(r, n, &p, end),
        None => Some(SimulatedUpstream { base: Behaviour::default(), phases: Vec::new() }),
    };
    let ratelimit_service = match f.get("ratelimit_service") {
        Some((n, p)) => service(r, n, &p, end),
        None => Some(SimulatedService::default()),
    };
    let traffic = match f.get("traffic") {
        Some((n, p)) => traffic_list(r, n, &p, end),
        None => {
            r.error(&Path::ROOT, node, "missing field `traffic` (at least one generator)");
            None
        }
    };
    let names = f.get("traffic").map(|(n, _)| traffic_names(n)).unwrap_or_default();
    let expect = match f.get("expect") {
        Some((n, p)) => r.list(n, &p, |d, n, p| expectation(d, n, p, &names, end)),
        None => Some(Vec::new()),
    };
    Some(Scenario {
        name,
        description,
        policy: policy?,
        seed,
        workers,
        duration: duration?,
        traffic: traffic?,
        upstream: upstream?,
        ratelimit_service: ratelimit_service?,
        expect: expect?,
    })
}

fn policy_ref(r: &mut Reader, node: &Node, path: &Path<'_>) -> Option<PolicyRef> {
    match &node.value {
        Value::Str(_) => r.string(node, path).map(PolicyRef::File),
        Value::Map(_) => {
            let (doc, diags, spans) = breakwater_policy::decode::decode(node);
            let checks = breakwater_policy::check::check(&doc, &spans);
            let before = r.diagnostics().len();
            for mut d in diags.into_iter().chain(checks) {
                d.path = join(&path.to_string(), &d.path);
                r.push(d);
            }
            let failed = r.diagnostics().get(before..).unwrap_or_default().iter().any(Diagnostic::is_error);
            (!failed).then_some(PolicyRef::Inline(doc))
        }
        _ => {
            r.expected(path, node, "a file name or an inline policy document");
            None
        }
    }
}

fn bounded_duration(
    r: &mut Reader,
    node: &Node,
    path: &Path<'_>,
    min_ms: u64,
    max_ms: u64,
) -> Option<Duration> {
    let d = r.duration(node, path)?;
    if (min_ms..=max_ms).contains(&d.as_millis()) {
        return Some(d);
    }
    r.error(
        path,
        node,
        format!("must be between {} and {}", Duration::from_millis(min_ms), Duration::from_millis(max_ms)),
    );
    None
}

/// A number: an integer, a decimal, or a percentage (`40%` is 0.4).
fn number(r: &mut Reader, node: &Node, path: &Path<'_>) -> Option<f64> {
    r.visit(path, node);
    match &node.value {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) if f.is_finite() => Some(*f),
        Value::Str(s) if s.trim().ends_with('%') => percent(r, node, path),
        _ => {
            r.expected(path, node, "a number");
            None
        }
    }
}

/// A percentage written `2%` or `0.5%`, as a fraction.
fn percent(r: &mut Reader, node: &Node, path: &Path<'_>) -> Option<f64> {
    r.parsed(node, path, |s| {
        s.trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok())
            .filter(|v| (0.0..=100.0).contains(v))
            .map(|v| v / 100.0)
            .ok_or_else(|| format!("`{s}` is not a percentage; write one between 0% and 100%, e.g. 2%"))
    })
}

fn traffic_list(r: &mut Reader, node: &Node, path: &Path<'_>, end: Duration) -> Option<Vec<Traffic>> {
    if matches!(&node.value, Value::Seq(items) if items.is_empty()) {
        r.error(path, node, "a scenario needs at least one traffic generator");
        return None;
    }
    let items = r.seq(node, path)?;
    let mut out = Vec::new();
    let mut ok = true;
    for (i, n) in items.iter().enumerate() {
        let p = path.index(i);
        match traffic(r, n, &p, i, end) {
            Some(t) if out.iter().any(|o: &Traffic| o.name == t.name) => {
                let at = p.field("name");
                r.error(&at, n, format!("two traffic generators are named `{}`", t.name));
                ok = false;
            }
            Some(t) => out.push(t),
            None => ok = false,
        }
    }
    let requests: f64 = out
        .iter()
        .filter_map(|t| match t.load {
            Load::Rate(r) => {
                let active = t.duration.unwrap_or(end).as_millis().min(end.as_millis()) as f64 / 1000.0;
                Some(r * active)
            }
            Load::Concurrency { .. } => None,
        })
        .sum();
    if requests > MAX_REQUESTS as f64 {
        r.error(
            path,
            node,
            format!("these generators send about {requests:.0} requests; the limit is {MAX_REQUESTS}"),
        );
        ok = false;
    }
    ok.then_some(out)
}

fn traffic(r: &mut Reader, node: &Node, path: &Path<'_>, i: usize, end: Duration) -> Option<Traffic> {
    let f = r.fields(node, path, TRAFFIC_FIELDS)?;
    let name = f.get("name").and_then(|(n, p)| r.string(n, &p)).unwrap_or_else(|| format!("traffic[{i}]"));
    let load = match (f.get("rate"), f.get("concurrency")) {
        (Some((n, p)), None) => rate(r, n, &p).map(Load::Rate),
        (None, Some((n, p))) => {
            let clients = r.int_as(n, &p, 1, MAX_CLIENTS);
            let think = match f.get("think") {
                Some((n, p)) => bounded_duration(r, n, &p, 1, MAX_DURATION_MS),
                None => Some(Duration::from_millis(1)),
            };
            Some(Load::Concurrency { clients: clients?, think: think? })
        }
        (Some(_), Some(_)) => {
            r.error(path, node, "write either `rate` (open loop) or `concurrency` (closed loop), not both");
            None
        }
        (None, None) => {
            r.error(path, node, "missing `rate` (requests per second) or `concurrency` (clients)");
            None
        }
    };
    if let (Some((n, p)), Some(Load::Rate(_))) = (f.get("think"), &load) {
        r.error(&p, n, "`think` applies to `concurrency` traffic only");
    }
    let arrivals = match f.get("arrivals") {
        Some((n, p)) => r.word(n, &p, &[("uniform", Arrivals::Uniform), ("poisson", Arrivals::Poisson)]),
        None => Some(Arrivals::Uniform),
    };
    let start = match f.get("start") {
        Some((n, p)) => {
            let d = r.duration(n, &p);
            if d.is_some_and(|d| d >= end) {
                r.error(&p, n, format!("starts after the scenario ends ({end})"));
            }
            d
        }
        None => Some(Duration::from_millis(0)),
    };
    let duration = match f.get("duration") {
        Some((n, p)) => bounded_duration(r, n, &p, 1, MAX_DURATION_MS).map(Some),
        None => Some(None),
    };
    let connections = match f.get("connections") {
        Some((n, p)) => r.int_as(n, &p, 1, 100_000).map(Some),
        None => Some(None),
    };
    let timeout = match f.get("timeout") {
        Some((n, p)) => bounded_duration(r, n, &p, 1, MAX_DURATION_MS).map(Some),
        None => Some(None),
    };
    let method = match f.get("method") {
        Some((n, p)) => r.method(n, &p),
        None => Some("GET".into()),
    };
    let host = f.get("host").map_or(Some("example.com".into()), |(n, p)| r.string(n, &p));
    let path_value = match f.get("path") {
        Some((n, p)) => r.parsed(n, &p, |s| {
            if s.starts_with('/') { Ok(s.to_string()) } else { Err(format!("`{s}` must start with /")) }
        }),
        None => Some("/".into()),
    };
    let headers = match f.get("headers") {
        Some((n, p)) => header_values(r, n, &p),
        None => Some(Vec::new()),
    };
    let client_ip = match f.get("client_ip") {
        Some((n, p)) => values(r, n, &p),
        None => Some(Values::Fixed("10.0.0.1".into())),
    };
    let upstream = match f.get("upstream") {
        Some((n, p)) => upstream(r, n, &p, end).map(Some),
        None => Some(None),
    };
    Some(Traffic {
        name,
        load: load?,
        arrivals: arrivals?,
        start: start?,
        duration: duration?,
        connections: connections?,
        timeout: timeout?,
        method: method?.into_owned(),
        host: host?,
        path: path_value?,
        headers: headers?,
        client_ip: client_ip?,
        upstream: upstream?,
    })
}

/// `200`, `200/s`, `6000/m`, `10/h`: requests per second.
fn rate(r: &mut Reader, node: &Node, path: &Path<'_>) -> Option<f64> {
    let hint = "write requests per second: 200, 200/s, 6000/m";
    let per_second = match &node.value {
        Value::Int(_) | Value::Float(_) => number(r, node, path)?,
        _ => r.parsed(node, path, |s| {
            let (n, unit) = s.split_once('/').unwrap_or((s, "s"));
            let factor = match unit.trim() {
                "s" => 1.0,
                "m" => 1.0 / 60.0,
                "h" => 1.0 / 3600.0,
                _ => return Err(format!("`{s}` is not a rate; {hint}")),
            };
            n.trim().parse::<f64>().map(|n| n * factor).map_err(|_| format!("`{s}` is not a rate; {hint}"))
        })?,
    };
    if per_second > 0.0 && per_second <= MAX_RATE {
        return Some(per_second);
    }
    r.error(path, node, format!("must be above 0 and at most {MAX_RATE} per second"));
    None
}

fn header_values(r: &mut Reader, node: &Node, path: &Path<'_>) -> Option<Vec<(String, Values)>> {
    r.visit(path, node);
    let Value::Map(entries) = &node.value else {
        r.expected(path, node, "a mapping of header names to values");
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (k, v) in entries {
        let name = key_text(k).to_ascii_lowercase();
        let p = path.field(&name);
        if name.starts_with(':') || name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            r.error(&p, k, format!("`{name}` is not a header name a client can send"));
            ok = false;
            continue;
        }
        match values(r, v, &p) {
            Some(values) => out.push((name, values)),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn values(r: &mut Reader, node: &Node, path: &Path<'_>) -> Option<Values> {
    match &node.value {
        Value::Str(s) => {
            r.visit(path, node);
            Some(Values::Fixed(s.to_string()))
        }
        Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
            r.visit(path, node);
            Some(Values::Fixed(key_text(node)))
        }
        _ => {
            let f = r.fields(node, path, VALUES_FIELDS)?;
            let kinds = ["one_of", "uniform", "zipf", "cycle"];
            let (kind, n, p) = one_of(r, &f, node, &kinds)?;
            let prefix = f.get("prefix").and_then(|(n, p)| r.string(n, &p)).unwrap_or_default();
            let exponent = f.get("exponent").and_then(|(n, p)| number(r, n, &p));
            if kind != "zipf"
                && let Some((n, p)) = f.get("exponent")
            {
                r.error(&p, n, "`exponent` applies to `zipf` only");
            }
            if kind == "one_of" {
                if let Some((n, p)) = f.get("prefix") {
                    r.error(&p, n, "`prefix` applies to numbered values (uniform, zipf, cycle)");
                }
                let items = r.non_empty_list(n, &p, "list at least one value", |d, n, p| {
                    values(d, n, p).and_then(|v| match v {
                        Values::Fixed(s) => Some(s),
                        _ => {
                            d.expected(p, n, "a string");
                            None
                        }
                    })
                })?;
                return Some(Values::OneOf(items));
            }
            let count = r.int_as(n, &p, 1, MAX_VALUES)?;
            let pick = match kind {
                "uniform" => Pick::Uniform,
                "cycle" => Pick::Cycle,
                _ => {
                    let s = exponent.unwrap_or(1.0);
                    if !(0.0..=10.0).contains(&s) {
                        let (n, p) = f.get("exponent")?;
                        r.error(&p, n, "must be between 0 and 10");
                        return None;
                    }
                    Pick::Zipf(s)
                }
            };
            Some(Values::Numbered { n: count, prefix, pick })
        }
    }
}

fn upstream(r: &mut Reader, node: &Node, path: &Path<'_>, end: Duration) -> Option<SimulatedUpstream> {
    let f = r.fields(node, path, UPSTREAM_FIELDS)?;
    let mut base = Behaviour::default();
    let mut ok = true;
    if let Some((n, p)) = f.get("latency") {
        latency(r, n, &p).map(|l| base.latency = l).unwrap_or_else(|| ok = false);
    }
    if let Some((n, p)) = f.get("capacity") {
        capacity(r, n, &p).map(|c| base.capacity = Some(c)).unwrap_or_else(|| ok = false);
    }
    if let Some((n, p)) = f.get("status") {
        status_mix(r, n, &p).map(|s| base.status = s).unwrap_or_else(|| ok = false);
    }
    if let Some((n, p)) = f.get("reset") {
        percent(r, n, &p).map(|v| base.reset = v).unwrap_or_else(|| ok = false);
    }
    if let Some((n, p)) = f.get("connect_failure") {
        percent(r, n, &p).map(|v| base.connect_failure = v).unwrap_or_else(|| ok = false);
    }
    let phases = match f.get("phases") {
        Some((n, p)) => r.list_of(n, &p, |d, n, p| phase(d, n, p, end)),
        None => Some((Vec::new(), true)),
    };
    let (phases, complete) = phases?;
    (ok && complete).then_some(SimulatedUpstream { base, phases })
}

/// A phase's `from` and `to` (0 and the scenario's end when left out), `from` before `to`.
fn window(
    r: &mut Reader,
    f: &Fields<'_, '_>,
    node: &Node,
    path: &Path<'_>,
    end: Duration,
) -> Option<(Duration, Duration)> {
    let from = match f.get("from") {
        Some((n, p)) => r.duration(n, &p),
        None => Some(Duration::from_millis(0)),
    };
    let to = match f.get("to") {
        Some((n, p)) => r.duration(n, &p),
        None => Some(end),
    };
    let (from, to) = (from?, to?);
    if from >= to {
        r.error(path, node, format!("`from` ({from}) must come before `to` ({to})"));
        return None;
    }
    Some((from, to))
}

fn service(r: &mut Reader, node: &Node, path: &Path<'_>, end: Duration) -> Option<SimulatedService> {
    let f = r.fields(node, path, SERVICE_FIELDS)?;
    let mut service = SimulatedService::default();
    let mut ok = true;
    if let Some((n, p)) = f.get("latency") {
        latency(r, n, &p).map(|l| service.latency = l).unwrap_or_else(|| ok = false);
    }
    if let Some((n, p)) = f.get("envoys") {
        r.int_as(n, &p, 1, 100_000).map(|e| service.envoys = e).unwrap_or_else(|| ok = false);
    }
    if let Some((n, p)) = f.get("phases") {
        match r.list_of(n, &p, |d, n, p| service_phase(d, n, p, end)) {
            Some((phases, true)) => service.phases = phases,
            _ => ok = false,
        }
    }
    ok.then_some(service)
}

fn service_phase(r: &mut Reader, node: &Node, path: &Path<'_>, end: Duration) -> Option<ServicePhase> {
    let f = r.fields(node, path, SERVICE_PHASE_FIELDS)?;
    let (from, to) = window(r, &f, node, path, end)?;
    let latency = match f.get("latency") {
        Some((n, p)) => Some(latency(r, n, &p)?),
        None => None,
    };
    let flag = |r: &mut Reader, name: &str| f.get(name).map(|(n, p)| r.bool(n, &p));
    let (down, hang) = (flag(r, "down"), flag(r, "hang"));
    let (down, hang) =
        (down.map(|d| d.ok_or(())).transpose().ok()?, hang.map(|h| h.ok_or(())).transpose().ok()?);
    let (down, hang) = (down.unwrap_or(false), hang.unwrap_or(false));
    if [down, hang, latency.is_some()].iter().filter(|x| **x).count() > 1 {
        r.error(path, node, "a phase is one of: `down`, `hang`, or a `latency`");
        return None;
    }
    Some(ServicePhase { from, to, latency, down, hang })
}

fn phase(r: &mut Reader, node: &Node, path: &Path<'_>, end: Duration) -> Option<UpstreamPhase> {
    let f = r.fields(node, path, PHASE_FIELDS)?;
    let (from, to) = window(r, &f, node, path, end)?;
    let latency = f.get("latency").map(|(n, p)| latency(r, n, &p));
    let capacity = f.get("capacity").map(|(n, p)| capacity(r, n, &p));
    let status = f.get("status").map(|(n, p)| status_mix(r, n, &p));
    let reset = f.get("reset").map(|(n, p)| percent(r, n, &p));
    let mut connect_failure = f.get("connect_failure").map(|(n, p)| percent(r, n, &p));
    if let Some((n, p)) = f.get("down") {
        match (r.bool(n, &p), &connect_failure) {
            (Some(_), Some(_)) => {
                r.error(&p, n, "write either `down` or `connect_failure`, not both");
                return None;
            }
            (Some(true), None) => connect_failure = Some(Some(1.0)),
            (Some(false), None) => {}
            (None, _) => return None,
        }
    }
    Some(UpstreamPhase {
        from,
        to,
        latency: latency.map(|l| l.ok_or(())).transpose().ok()?,
        capacity: capacity.map(|c| c.ok_or(())).transpose().ok()?,
        status: status.map(|s| s.ok_or(())).transpose().ok()?,
        reset: reset.map(|r| r.ok_or(())).transpose().ok()?,
        connect_failure: connect_failure.map(|c| c.ok_or(())).transpose().ok()?,
    })
}

/// Attempts served at once: 1 to a million.
fn capacity(r: &mut Reader, node: &Node, path: &Path<'_>) -> Option<u32> {
    r.int(node, path, 1, 1_000_000).and_then(|n| u32::try_from(n).ok())
}

fn latency(r: &mut Reader, node: &Node, path: &Path<'_>) -> Option<Latency> {
    if !matches!(node.value, Value::Map(_)) {
        return bounded_duration(r, node, path, 0, MAX_DURATION_MS).map(Latency::Fixed);
    }
    let f = r.fields(node, path, LATENCY_FIELDS)?;
    let (kind, n, p) = one_of(r, &f, node, LATENCY_FIELDS)?;
    if kind == "exponential" {
        return bounded_duration(r, n, &p, 1, MAX_DURATION_MS).map(Latency::Exponential);
    }
    let items = r.seq(n, &p)?;
    let [lo, hi] = items else {
        r.error(&p, n, "write the bounds as a pair: [10ms, 50ms]");
        return None;
    };
    let lo = bounded_duration(r, lo, &p.index(0), 0, MAX_DURATION_MS);
    let hi = bounded_duration(r, hi, &p.index(1), 0, MAX_DURATION_MS);
    let (lo, hi) = (lo?, hi?);
    if lo > hi {
        r.error(&p, n, format!("the lower bound ({lo}) is above the upper one ({hi})"));
        return None;
    }
    Some(Latency::Uniform(lo, hi))
}

/// `200`, or weights: `{ 200: 95, 503: 5 }`.
fn status_mix(r: &mut Reader, node: &Node, path: &Path<'_>) -> Option<Vec<(u16, f64)>> {
    r.visit(path, node);
    if let Value::Int(_) = node.value {
        return r.int_as(node, path, 100, 599).map(|s| vec![(s, 1.0)]);
    }
    let Value::Map(entries) = &node.value else {
        r.expected(path, node, "a status code or a mapping of status codes to weights");
        return None;
    };
    let mut out = Vec::new();
    for (k, v) in entries {
        let code = key_text(k);
        let p = path.field(&code);
        let status = code.parse::<u16>().ok().filter(|c| (100..=599).contains(c));
        let weight = number(r, v, &p);
        match (status, weight) {
            (None, _) => r.error(&p, k, format!("`{code}` is not an HTTP status code (100-599)")),
            (Some(_), Some(w)) if w < 0.0 => r.error(&p, v, "a weight cannot be negative"),
            (Some(s), Some(w)) => out.push((s, w)),
            (Some(_), None) => {}
        }
    }
    if out.len() == entries.len() && out.iter().map(|(_, w)| w).sum::<f64>() <= 0.0 {
        r.error(path, node, "the weights add up to 0");
        return None;
    }
    (out.len() == entries.len()).then_some(out)
}

fn expectation(
    r: &mut Reader,
    node: &Node,
    path: &Path<'_>,
    traffic: &[String],
    end: Duration,
) -> Option<Expectation> {
    let mut known: Vec<&str> = vec!["name", "of", "tolerance", "at"];
    known.extend(MEASURES);
    known.extend(CHECKS);
    let f = r.fields(node, path, &known)?;
    let name = f.get("name").and_then(|(n, p)| r.string(n, &p));
    let (measure_name, mn, mp) = one_of(r, &f, node, MEASURES)?;
    let measure = match measure_name {
        "metric" => r.string(mn, &mp).map(Measure::Metric),
        "breaker" => {
            let policy = r.string(mn, &mp);
            let at = match f.get("at") {
                Some((n, p)) => bounded_duration(r, n, &p, 0, end.as_millis()),
                None => {
                    r.error(path, node, "a breaker expectation needs `at` (a time in the scenario)");
                    None
                }
            };
            match (policy, at) {
                (Some(policy), Some(at)) => Some(Measure::Breaker { policy, at }),
                _ => None,
            }
        }
        _ => {
            let select = selection(r, mn, &mp, traffic);
            match measure_name {
                "share" => {
                    let of = match f.get("of") {
                        Some((n, p)) => selection(r, n, &p, traffic),
                        None => Some(Select::default()),
                    };
                    match (select, of) {
                        (Some(select), Some(of)) => Some(Measure::Share { select, of }),
                        _ => None,
                    }
                }
                "requests" => select.map(Measure::Requests),
                "retries" => select.map(Measure::Retries),
                "budget_exhausted" => select.map(Measure::BudgetExhausted),
                "upstream_attempts" => select.map(Measure::UpstreamAttempts),
                "max_upstream_concurrency" => select.map(Measure::MaxUpstreamConcurrency),
                _ => select.map(Measure::MaxInFlight),
            }
        }
    };
    if measure_name != "share"
        && let Some((n, p)) = f.get("of")
    {
        r.error(&p, n, "`of` applies to `share` only");
    }
    if measure_name != "breaker"
        && let Some((n, p)) = f.get("at")
    {
        r.error(&p, n, "`at` applies to `breaker` only; select a time window with `from` and `to`");
    }
    let (check_name, cn, cp) = one_of(r, &f, node, CHECKS)?;
    let check = match check_name {
        "is" if measure_name != "breaker" => {
            r.error(&cp, cn, "`is` compares breaker states; use equals, at_least, at_most or between");
            None
        }
        "is" => r.word(cn, &cp, &BreakerState::ALL.map(|s| (s.as_str(), s))).map(Check::Is),
        _ if measure_name == "breaker" => {
            r.error(&cp, cn, "a breaker state is checked with `is: open` (closed, open, half_open)");
            None
        }
        "equals" => {
            let value = number(r, cn, &cp);
            let tolerance = match f.get("tolerance") {
                Some((n, p)) => tolerance(r, n, &p),
                None => Some(Tolerance::Absolute(0.0)),
            };
            Some(Check::Equals { value: value?, tolerance: tolerance? })
        }
        "at_least" => number(r, cn, &cp).map(Check::AtLeast),
        "at_most" => number(r, cn, &cp).map(Check::AtMost),
        _ => {
            let items = r.seq(cn, &cp)?;
            let [lo, hi] = items else {
                r.error(&cp, cn, "write the bounds as a pair: [0.4, 0.6]");
                return None;
            };
            let lo = number(r, lo, &cp.index(0));
            let hi = number(r, hi, &cp.index(1));
            let (lo, hi) = (lo?, hi?);
            if lo > hi {
                r.error(&cp, cn, format!("the lower bound ({lo}) is above the upper one ({hi})"));
                return None;
            }
            Some(Check::Between(lo, hi))
        }
    };
    if check_name != "equals"
        && let Some((n, p)) = f.get("tolerance")
    {
        r.error(&p, n, "`tolerance` applies to `equals` only");
    }
    Some(Expectation { path: path.to_string(), name, measure: measure?, check: check? })
}

/// `5%` (of the expected value) or an absolute number.
fn tolerance(r: &mut Reader, node: &Node, path: &Path<'_>) -> Option<Tolerance> {
    match &node.value {
        Value::Str(_) => percent(r, node, path).map(Tolerance::Relative),
        _ => number(r, node, path).filter(|v| *v >= 0.0).map(Tolerance::Absolute).or_else(|| {
            r.error(path, node, "write a percentage (2%) or a non-negative number");
            None
        }),
    }
}

fn selection(r: &mut Reader, node: &Node, path: &Path<'_>, traffic: &[String]) -> Option<Select> {
    if let Value::Null = node.value {
        r.visit(path, node);
        return Some(Select::default());
    }
    let f = r.fields(node, path, SELECT_FIELDS)?;
    let mut s = Select::default();
    let mut ok = true;
    if let Some((n, p)) = f.get("status") {
        s.status = status_select(r, n, &p);
        ok &= s.status.is_some();
    }
    if let Some((n, p)) = f.get("decision") {
        let words: Vec<(&str, RequestDecision)> = RequestDecision::all().map(|d| (d.as_str(), d)).collect();
        s.decision = r.word(n, &p, &words);
        ok &= s.decision.is_some();
    }
    if let Some((n, p)) = f.get("policy") {
        s.policy = r.string(n, &p);
        ok &= s.policy.is_some();
    }
    if let Some((n, p)) = f.get("traffic") {
        let names: Vec<&str> = traffic.iter().map(String::as_str).collect();
        s.traffic = r.string(n, &p);
        if let Some(t) = &s.traffic
            && !names.contains(&t.as_str())
        {
            let message = match suggest(t, &names) {
                Some(near) => format!("no traffic named `{t}`; did you mean `{near}`?"),
                None => format!("no traffic named `{t}`; the scenario has: {}", names.join(", ")),
            };
            r.error(&p, n, message);
            ok = false;
        }
    }
    if let Some((n, p)) = f.get("from") {
        s.from = r.duration(n, &p);
        ok &= s.from.is_some();
    }
    if let Some((n, p)) = f.get("to") {
        s.to = r.duration(n, &p);
        ok &= s.to.is_some();
    }
    if let (Some(from), Some(to)) = (s.from, s.to)
        && from >= to
    {
        r.error(path, node, format!("`from` ({from}) must come before `to` ({to})"));
        ok = false;
    }
    if let Some((n, p)) = f.get("fallback") {
        s.fallback = r.bool(n, &p);
        ok &= s.fallback.is_some();
    }
    ok.then_some(s)
}

fn status_select(r: &mut Reader, node: &Node, path: &Path<'_>) -> Option<StatusSelect> {
    if let Value::Int(_) = node.value {
        return r.int_as(node, path, 100, 599).map(StatusSelect::Exact);
    }
    r.parsed(node, path, |s| {
        if s == "aborted" {
            return Ok(StatusSelect::Aborted);
        }
        match s.as_bytes() {
            [c @ b'1'..=b'5', b'x', b'x'] => Ok(StatusSelect::Class(u16::from(c - b'0'))),
            _ => Err(format!("`{s}` is not a status; write a code (429), a class (5xx) or `aborted`")),
        }
    })
}

/// The names of the traffic generators as written (also of those with errors), so expectations
/// naming them are checked even when a generator did not decode.
fn traffic_names(node: &Node) -> Vec<String> {
    let Value::Seq(items) = &node.value else { return Vec::new() };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let name = match &item.value {
                Value::Map(entries) => {
                    entries.iter().find(|(k, _)| key_text(k) == "name").and_then(|(_, v)| match &v.value {
                        Value::Str(s) => Some(s.to_string()),
                        _ => None,
                    })
                }
                _ => None,
            };
            name.unwrap_or_else(|| format!("traffic[{i}]"))
        })
        .fold(Vec::new(), |mut names, n| {
            if !names.contains(&n) {
                names.push(n);
            }
            names
        })
}
