//! A finished [`Run`] judged against a scenario's expectations.

use serde::{Deserialize, Serialize};

use crate::model::*;
use crate::run::{Record, Run};
use crate::timeline::{Timeline, max_overlap, timeline};

/// The results of a scenario: one line per expectation, and the timeline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub name: String,
    pub seed: u64,
    pub workers: u32,
    pub duration_s: f64,
    pub requests: u64,
    pub passed: bool,
    pub expectations: Vec<ExpectationResult>,
    pub timeline: Timeline,
}

/// One expectation's result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExpectationResult {
    pub path: String,
    pub name: Option<String>,
    /// What was measured: `requests{decision=rate_limited}`.
    pub measured: String,
    /// The comparison: `= 1200 ± 2%`.
    pub expected: String,
    /// The value found, as text (`1,187`, `42.10%`, `open`).
    pub actual: String,
    /// The value found, as a number (a breaker state is its gauge value).
    pub value: f64,
    pub passed: bool,
}

impl Select {
    fn matches(&self, r: &Record, run: &Run) -> bool {
        let status_ok = match self.status {
            None => true,
            Some(StatusSelect::Exact(s)) => r.status == s,
            Some(StatusSelect::Class(c)) => r.status / 100 == c,
            Some(StatusSelect::Aborted) => r.status == 0,
        };
        status_ok
            && self.decision.is_none_or(|d| d == r.decision)
            && self.policy.as_ref().is_none_or(|p| {
                r.policy.and_then(|i| run.policies.get(i as usize)).is_some_and(|name| name == p)
            })
            && self
                .traffic
                .as_ref()
                .is_none_or(|t| run.traffic.get(r.traffic as usize).is_some_and(|n| n == t))
            && self.from.is_none_or(|f| r.start_ns >= f.as_nanos())
            && self.to.is_none_or(|t| r.start_ns < t.as_nanos())
            && self.fallback.is_none_or(|f| f == r.fallback)
    }

    fn label(&self) -> String {
        let mut parts = Vec::new();
        match self.status {
            Some(StatusSelect::Exact(s)) => parts.push(format!("status={s}")),
            Some(StatusSelect::Class(c)) => parts.push(format!("status={c}xx")),
            Some(StatusSelect::Aborted) => parts.push("status=aborted".into()),
            None => {}
        }
        if let Some(d) = self.decision {
            parts.push(format!("decision={}", d.as_str()));
        }
        if let Some(p) = &self.policy {
            parts.push(format!("policy={p}"));
        }
        if let Some(t) = &self.traffic {
            parts.push(format!("traffic={t}"));
        }
        if let Some(f) = self.fallback {
            parts.push(format!("fallback={f}"));
        }
        match (self.from, self.to) {
            (None, None) => {}
            (f, t) => parts.push(format!(
                "{}..{}",
                f.map_or("0s".to_string(), |f| f.to_string()),
                t.map_or("end".to_string(), |t| t.to_string())
            )),
        }
        if parts.is_empty() { String::new() } else { format!("{{{}}}", parts.join(", ")) }
    }
}

fn breaker_at(run: &Run, policy: &str, at_ns: u64) -> Option<BreakerState> {
    let index = run.policies.iter().position(|p| p == policy)?;
    let (_, states) = run.breaker_samples.iter().find(|(t, _)| *t == at_ns)?;
    states.get(index).copied().flatten()
}

/// Formats a measured number: whole numbers with thousands separators, others with 4 decimals.
pub fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        let digits = format!("{}", v.abs() as u64);
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 { format!("-{out}") } else { out }
    } else {
        format!("{v:.4}")
    }
}

impl Check {
    fn passes(&self, v: f64) -> bool {
        match *self {
            Check::Equals { value, tolerance } => {
                let allowed = match tolerance {
                    Tolerance::Absolute(a) => a,
                    Tolerance::Relative(r) => r * value.abs(),
                };
                (v - value).abs() <= allowed + 1e-9
            }
            Check::AtLeast(min) => v >= min - 1e-9,
            Check::AtMost(max) => v <= max + 1e-9,
            Check::Between(lo, hi) => v >= lo - 1e-9 && v <= hi + 1e-9,
            Check::Is(state) => BreakerState::from_gauge(v as u64) == Some(state),
        }
    }

    fn text(&self) -> String {
        match *self {
            Check::Equals { value, tolerance: Tolerance::Absolute(0.0) } => {
                format!("= {}", format_number(value))
            }
            Check::Equals { value, tolerance: Tolerance::Absolute(a) } => {
                format!("= {} ± {}", format_number(value), format_number(a))
            }
            Check::Equals { value, tolerance: Tolerance::Relative(r) } => {
                format!("= {} ± {}%", format_number(value), format_number(r * 100.0))
            }
            Check::AtLeast(v) => format!("≥ {}", format_number(v)),
            Check::AtMost(v) => format!("≤ {}", format_number(v)),
            Check::Between(lo, hi) => format!("between {} and {}", format_number(lo), format_number(hi)),
            Check::Is(s) => format!("is {}", s.as_str()),
        }
    }
}

/// Evaluates every expectation of `s` on a finished run, and builds its timeline.
pub fn evaluate(s: &Scenario, run: &Run) -> Report {
    let expectations: Vec<ExpectationResult> = s.expect.iter().map(|e| outcome(e, run)).collect();
    Report {
        name: s.name.clone(),
        seed: run.seed,
        workers: run.workers,
        duration_s: run.duration_ns as f64 / NS_PER_S as f64,
        requests: run.records.len() as u64,
        passed: expectations.iter().all(|o| o.passed),
        expectations,
        timeline: timeline(run),
    }
}

fn selected<'a>(run: &'a Run, sel: &'a Select) -> impl Iterator<Item = &'a Record> + 'a {
    run.records.iter().filter(move |r| sel.matches(r, run))
}

fn outcome(e: &Expectation, run: &Run) -> ExpectationResult {
    let selected = |sel| selected(run, sel);
    let tries_of = |r: &Record| {
        run.tries.get(r.tries.0 as usize..r.tries.1 as usize).unwrap_or_default().iter().copied()
    };
    let (measured, value, actual) = match &e.measure {
        Measure::Requests(sel) => {
            let n = selected(sel).count() as f64;
            (format!("requests{}", sel.label()), n, format_number(n))
        }
        Measure::Share { select, of } => {
            let whole = selected(of).count();
            let part = selected(of).filter(|r| select.matches(r, run)).count();
            let share = if whole == 0 { 0.0 } else { part as f64 / whole as f64 };
            let label = format!("share{} of requests{}", select.label(), of.label());
            (label, share, format!("{:.4} ({part} of {whole})", share))
        }
        Measure::Retries(sel) => {
            let n = selected(sel).map(|r| f64::from(r.retried)).sum::<f64>();
            (format!("retries{}", sel.label()), n, format_number(n))
        }
        Measure::BudgetExhausted(sel) => {
            let n = selected(sel).filter(|r| r.budget_exhausted).count() as f64;
            (format!("budget_exhausted{}", sel.label()), n, format_number(n))
        }
        Measure::UpstreamAttempts(sel) => {
            let n = selected(sel).map(|r| f64::from(r.tries.1 - r.tries.0)).sum::<f64>();
            (format!("upstream_attempts{}", sel.label()), n, format_number(n))
        }
        Measure::MaxUpstreamConcurrency(sel) => {
            let n = max_overlap(selected(sel).flat_map(tries_of)) as f64;
            (format!("max_upstream_concurrency{}", sel.label()), n, format_number(n))
        }
        Measure::MaxInFlight(sel) => {
            let n = max_overlap(selected(sel).map(|r| (r.start_ns, r.end_ns))) as f64;
            (format!("max_in_flight{}", sel.label()), n, format_number(n))
        }
        Measure::Metric(name) => match run.metrics.get(name) {
            Some(v) => (format!("metric {name}"), *v as f64, format_number(*v as f64)),
            None => (format!("metric {name}"), f64::NAN, "not defined by the filter".into()),
        },
        Measure::Breaker { policy, at } => {
            let state = breaker_at(run, policy, at.as_nanos());
            let value = state.map_or(f64::NAN, |s| s.gauge() as f64);
            (
                format!("breaker {policy} at {at}"),
                value,
                state.map_or("unknown".into(), |s| s.as_str().into()),
            )
        }
    };
    ExpectationResult {
        path: e.path.clone(),
        name: e.name.clone(),
        measured,
        expected: e.check.text(),
        actual,
        value,
        passed: !value.is_nan() && e.check.passes(value),
    }
}
