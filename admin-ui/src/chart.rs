//! The simulator's charts as plain SVG geometry (drawn by the app, no charting library): stacked
//! bars per second, and a state band per policy.

use std::collections::BTreeMap;

use breakwater_policy::metrics::Counter;
use breakwater_scenario::{BreakerState, Second, Timeline};

/// One series of a chart: a label, its colour and one value per second.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub color: &'static str,
    pub values: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
    pub color: &'static str,
    pub title: String,
}

/// The plot area (bars and lines are drawn in it), inside a chart of [`VIEW_WIDTH`] ×
/// [`VIEW_HEIGHT`] whose margins hold the axes: [`LEFT`] for the values, [`BOTTOM`] for the times.
pub const WIDTH: f64 = 880.0;
pub const HEIGHT: f64 = 180.0;
pub const LEFT: f64 = 64.0;
pub const TOP: f64 = 8.0;
pub const BOTTOM: f64 = 24.0;
pub const VIEW_WIDTH: f64 = LEFT + WIDTH + 16.0;
pub const VIEW_HEIGHT: f64 = TOP + HEIGHT + BOTTOM;

/// The colours of the counters, in the order series are stacked.
const PALETTE: &[(Counter, &str)] = &[
    (Counter::Allowed, "#2e7d32"),
    (Counter::RateLimited, "#f9a825"),
    (Counter::GlobalRateLimited, "#fdd835"),
    (Counter::ConcurrencyLimited, "#ef6c00"),
    (Counter::CircuitOpen, "#c62828"),
    (Counter::Fallback, "#6a1b9a"),
    (Counter::BudgetExhausted, "#4e342e"),
    (Counter::StateUnavailable, "#546e7a"),
    (Counter::GlobalUnavailable, "#90a4ae"),
];

/// Where a label stands in [`PALETTE`] (other labels after it).
fn rank(label: &str) -> usize {
    PALETTE.iter().position(|(c, _)| c.as_str() == label).unwrap_or(PALETTE.len())
}

/// A stable colour for a label.
pub fn color(label: &str) -> &'static str {
    if let Some((_, c)) = PALETTE.get(rank(label)) {
        return c;
    }
    const OTHERS: &[&str] = &["#1565c0", "#00838f", "#ad1457", "#558b2f", "#5d4037", "#37474f"];
    let h = label.bytes().fold(7usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
    OTHERS[h % OTHERS.len()]
}

/// Series of one per-second map of the timeline (`by_decision`, `by_status`): one per key seen.
pub fn series_of(timeline: &Timeline, field: impl Fn(&Second) -> &BTreeMap<String, u64>) -> Vec<Series> {
    let mut labels: Vec<&String> = Vec::new();
    for s in &timeline.seconds {
        for k in field(s).keys() {
            if !labels.contains(&k) {
                labels.push(k);
            }
        }
    }
    labels.sort_by_key(|l| (rank(l), l.to_string()));
    labels
        .into_iter()
        .map(|label| Series {
            color: color(label),
            values: timeline.seconds.iter().map(|s| field(s).get(label).map_or(0.0, |v| *v as f64)).collect(),
            label: label.clone(),
        })
        .collect()
}

/// A per-second number of the timeline, with its label.
pub type Number = (&'static str, fn(&Second) -> u64);

/// Series of plain per-second numbers (`retries`, `budget_exhausted`).
pub fn series_of_numbers(timeline: &Timeline, fields: &[Number]) -> Vec<Series> {
    fields
        .iter()
        .map(|(label, value)| Series {
            label: label.to_string(),
            color: color(label),
            values: timeline.seconds.iter().map(|s| value(s) as f64).collect(),
        })
        .collect()
}

/// A gauge sampled at the end of each second (`queue_length`, ...): one series per policy that
/// has it, labelled with the policy's name.
pub fn gauge_series(timeline: &Timeline, gauge: &str) -> Vec<Series> {
    let mut policies: Vec<&String> = Vec::new();
    for s in &timeline.seconds {
        for (p, gauges) in &s.gauges {
            if gauges.contains_key(gauge) && !policies.contains(&p) {
                policies.push(p);
            }
        }
    }
    policies
        .into_iter()
        .map(|p| Series {
            label: p.clone(),
            color: color(p),
            values: timeline
                .seconds
                .iter()
                .map(|s| s.gauges.get(p).and_then(|g| g.get(gauge)).map_or(0.0, |v| *v as f64))
                .collect(),
        })
        .collect()
}

/// The tallest stack.
pub fn max_total(series: &[Series]) -> f64 {
    let n = series.iter().map(|s| s.values.len()).max().unwrap_or(0);
    (0..n)
        .map(|i| series.iter().map(|s| s.values.get(i).copied().unwrap_or(0.0)).sum::<f64>())
        .fold(0.0, f64::max)
}

/// Stacked bars, one column per second, scaled to WIDTH × HEIGHT.
pub fn stacked_bars(series: &[Series]) -> Vec<Bar> {
    stacked_bars_on(series, max_total(series))
}

/// Stacked bars on a scale whose top is `top` (at least the tallest stack).
pub fn stacked_bars_on(series: &[Series], top: f64) -> Vec<Bar> {
    let n = series.iter().map(|s| s.values.len()).max().unwrap_or(0);
    if n == 0 || top <= 0.0 {
        return Vec::new();
    }
    let column = WIDTH / n as f64;
    let mut bars = Vec::new();
    for i in 0..n {
        let mut y = HEIGHT;
        for s in series {
            let v = s.values.get(i).copied().unwrap_or(0.0);
            if v <= 0.0 {
                continue;
            }
            let h = v / top * HEIGHT;
            y -= h;
            bars.push(Bar {
                x: i as f64 * column + column * 0.1,
                y,
                width: column * 0.8,
                height: h,
                color: s.color,
                title: format!("t={i}s {}: {v}", s.label),
            });
        }
    }
    bars
}

/// Breaker bands: per policy, one coloured cell per second (green closed, red open, amber half-open).
pub fn breaker_bands(timeline: &Timeline) -> Vec<(String, Vec<(&'static str, String)>)> {
    let mut policies: Vec<&String> = Vec::new();
    for s in &timeline.seconds {
        for k in s.breaker.keys() {
            if !policies.contains(&k) {
                policies.push(k);
            }
        }
    }
    policies
        .into_iter()
        .map(|p| {
            let cells = timeline
                .seconds
                .iter()
                .map(|s| {
                    let state = s.breaker.get(p).copied().unwrap_or(BreakerState::Closed);
                    let c = match state {
                        BreakerState::Open => "#c62828",
                        BreakerState::HalfOpen => "#f9a825",
                        BreakerState::Closed => "#2e7d32",
                    };
                    (c, state.to_string())
                })
                .collect();
            (p.clone(), cells)
        })
        .collect()
}

/// The live page's decisions (requests per second per point; a missing point is 0), as series
/// ordered as the simulator's.
pub fn live_series(decisions: &BTreeMap<String, Vec<Option<f64>>>) -> Vec<Series> {
    let mut labels: Vec<&String> = decisions.keys().collect();
    labels.sort_by_key(|l| (rank(l), l.to_string()));
    labels
        .into_iter()
        .map(|label| Series {
            label: label.clone(),
            color: color(label),
            values: decisions[label].iter().map(|v| v.unwrap_or(0.0)).collect(),
        })
        .collect()
}

/// A breaker's state per point as band cells (grey where there is no data).
pub fn state_cells(values: &[Option<f64>]) -> Vec<(&'static str, String)> {
    values
        .iter()
        .map(|v| match v.and_then(|x| BreakerState::from_gauge(x as u64)) {
            Some(BreakerState::Open) => ("#c62828", "open".to_string()),
            Some(BreakerState::HalfOpen) => ("#f9a825", "half_open".to_string()),
            Some(BreakerState::Closed) => ("#2e7d32", "closed".to_string()),
            None => ("#cfd8dc", "no data".to_string()),
        })
        .collect()
}

/// A line over the chart (a limit): SVG polyline points on the scale whose top is `top`; points
/// without data are left out.
pub fn line_points(values: &[Option<f64>], top: f64) -> String {
    if values.is_empty() || top <= 0.0 {
        return String::new();
    }
    let column = WIDTH / values.len() as f64;
    values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let v = (*v)?;
            let y = HEIGHT - (v / top).min(1.0) * HEIGHT;
            Some(format!("{:.1},{:.1}", i as f64 * column + column / 2.0, y))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A value axis that reads well: its top (a round number at or above `max`) and its ticks (0 and
/// at most 5 steps of 1, 2 or 5 × a power of ten). Whole steps only (`whole`) for counts.
pub fn nice_scale(max: f64, whole: bool) -> (f64, Vec<f64>) {
    let max = if max.is_finite() && max > 0.0 { max } else { 1.0 };
    let raw = max / 4.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let mut step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(raw);
    if whole {
        step = step.max(1.0).round();
    }
    let top = (max / step).ceil() * step;
    let n = (top / step).round() as usize;
    (top, (0..=n).map(|i| i as f64 * step).collect())
}

/// A number as a chart label: whole numbers plain, others with one decimal (two below 1, three
/// below 0.01, so light traffic still reads), ten thousands and more as `k`.
pub fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 10_000.0 {
        format!("{}k", number(v / 1000.0))
    } else if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else if a >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// An axis tick: with as many decimals as its step needs (ticks 0.01 apart get two), so ticks
/// never read alike.
pub fn tick(v: f64, step: f64) -> String {
    if step >= 1.0 || v == 0.0 {
        return number(v);
    }
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
}

/// What the time axis counts: seconds from a simulation's start, or the clock (Unix seconds of
/// the first point, seconds between points).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimeAxis {
    Seconds,
    Clock { start: u64, step: u64 },
}

impl TimeAxis {
    /// The time of point `i`: `12s`, or the local clock time `14:05:30`.
    pub fn label(self, i: usize) -> String {
        match self {
            TimeAxis::Seconds => format!("{i}s"),
            TimeAxis::Clock { start, step } => clock(start + i as u64 * step),
        }
    }

    /// The points that get a label on an axis of `n` points: about 6, on round steps.
    pub fn ticks(self, n: usize) -> Vec<usize> {
        let per_point = match self {
            TimeAxis::Seconds => 1,
            TimeAxis::Clock { step, .. } => step.max(1),
        };
        // Round spans of time, in seconds.
        const SPANS: &[u64] =
            &[1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];
        let total = n as u64 * per_point;
        let span = SPANS.iter().copied().find(|s| total / s <= 6).unwrap_or(86400).max(per_point);
        let every = (span / per_point).max(1) as usize;
        (0..n)
            .filter(|i| match self {
                TimeAxis::Seconds => i % every == 0,
                // On the clock's round marks, wherever the window starts.
                TimeAxis::Clock { start, step } => (start + *i as u64 * step) % span < step.max(1),
            })
            .collect()
    }
}

/// `HH:MM:SS` in the browser's time zone (UTC outside a browser).
pub fn clock(unix_s: u64) -> String {
    #[cfg(target_arch = "wasm32")]
    {
        let d = web_sys::js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(unix_s as f64 * 1000.0));
        format!("{:02}:{:02}:{:02}", d.get_hours(), d.get_minutes(), d.get_seconds())
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let s = unix_s % 86_400;
        format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
    }
}

/// One line of a readout: label, value, the colour of its key.
pub type Reading = (String, String, &'static str);

/// An RFC 3339 time (`2026-12-03T18:59:07.171Z`) as the browser's clock time (`18:59:07`); as it
/// came where it cannot be read.
pub fn clock_of(rfc3339: &str) -> String {
    #[cfg(target_arch = "wasm32")]
    {
        let ms = web_sys::js_sys::Date::parse(rfc3339);
        if ms.is_finite() {
            return clock((ms / 1000.0) as u64);
        }
    }
    rfc3339.to_string()
}

/// What a chart shows at point `i`: each series' value (stacked series also as a total), and the
/// line's value.
pub fn readout(series: &[Series], line: Option<(&str, &[Option<f64>])>, i: usize) -> Vec<Reading> {
    let mut out: Vec<Reading> = series
        .iter()
        .map(|s| (s.label.clone(), number(s.values.get(i).copied().unwrap_or(0.0)), s.color))
        .collect();
    if series.len() > 1 {
        let total: f64 = series.iter().map(|s| s.values.get(i).copied().unwrap_or(0.0)).sum();
        out.push(("total".into(), number(total), "transparent"));
    }
    if let Some((label, values)) = line {
        let v = values.get(i).copied().flatten().map_or("–".to_string(), number);
        out.push((label.to_string(), v, "#37474f"));
    }
    out
}

/// A policy at a glance: requests per second let through, refused by a limit, and refused
/// because something fails (an open breaker, an injected abort).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Glance {
    pub allowed: f64,
    pub limited: f64,
    pub failing: f64,
}

/// Which of the three a decision counts in.
pub fn glance_group(decision: &str) -> usize {
    use breakwater_policy::metrics::Decision;
    match Decision::ALL.iter().find(|d| d.as_str() == decision) {
        Some(Decision::Allowed) => 0,
        Some(Decision::CircuitOpen | Decision::FaultAborted) => 2,
        _ => 1,
    }
}

/// The mean of the last `points` points that have data, per group; None when none has.
pub fn glance(decisions: &BTreeMap<String, Vec<Option<f64>>>, points: usize) -> Option<Glance> {
    let n = decisions.values().map(Vec::len).max().unwrap_or(0);
    let with_data: Vec<usize> = (0..n)
        .rev()
        .filter(|i| decisions.values().any(|v| v.get(*i).copied().flatten().is_some()))
        .take(points)
        .collect();
    if with_data.is_empty() {
        return None;
    }
    let mut sums = [0.0; 3];
    for (decision, values) in decisions {
        let g = glance_group(decision);
        for i in &with_data {
            if let Some(slot) = sums.get_mut(g) {
                *slot += values.get(*i).copied().flatten().unwrap_or(0.0);
            }
        }
    }
    let k = with_data.len() as f64;
    Some(Glance { allowed: sums[0] / k, limited: sums[1] / k, failing: sums[2] / k })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline() -> Timeline {
        let second = |t: u64, decisions: &[(&str, u64)], retries: u64, breaker: BreakerState| Second {
            t,
            by_decision: decisions.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            retries,
            breaker: [("b".to_string(), breaker)].into_iter().collect(),
            ..Second::default()
        };
        Timeline {
            policies: vec!["b".into()],
            seconds: vec![
                second(0, &[("allowed", 10), ("rate_limited", 30)], 2, BreakerState::Closed),
                second(1, &[("allowed", 10)], 0, BreakerState::Open),
            ],
        }
    }

    #[test]
    fn gauges_become_one_series_per_policy_that_has_them() {
        let second = |t: u64, gauges: &[(&str, &str, u64)]| {
            let mut s = Second { t, ..Second::default() };
            for (p, g, v) in gauges {
                s.gauges.entry(p.to_string()).or_default().insert(g.to_string(), *v);
            }
            s
        };
        let t = Timeline {
            policies: vec!["a".into(), "b".into()],
            seconds: vec![
                second(0, &[("a", "queue_length", 3), ("a", "in_flight", 9), ("b", "in_flight", 1)]),
                second(1, &[("a", "in_flight", 2)]),
                second(2, &[("a", "queue_length", 5)]),
            ],
        };
        let s = gauge_series(&t, "queue_length");
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].label.as_str(), s[0].values.clone()), ("a", vec![3.0, 0.0, 5.0]));
        assert!(gauge_series(&t, "fault_active").is_empty());
    }

    #[test]
    fn live_series_and_lines() {
        let d = BTreeMap::from([
            ("circuit_open".to_string(), vec![Some(1.0), None]),
            ("allowed".to_string(), vec![Some(5.0), Some(4.0)]),
        ]);
        let s = live_series(&d);
        assert_eq!((s[0].label.as_str(), s[0].values.clone()), ("allowed", vec![5.0, 4.0]));
        assert_eq!(s[1].values, vec![1.0, 0.0]);
        let cells = state_cells(&[Some(0.0), Some(1.0), None]);
        assert_eq!(cells.iter().map(|c| c.1.as_str()).collect::<Vec<_>>(), ["closed", "open", "no data"]);
        let column = WIDTH / 3.0;
        assert_eq!(
            line_points(&[Some(10.0), None, Some(5.0)], 10.0),
            format!("{:.1},0.0 {:.1},90.0", column / 2.0, column * 2.5)
        );
    }

    #[test]
    fn stacks_decisions_per_second() {
        let series = series_of(&timeline(), |s| &s.by_decision);
        assert_eq!(series.iter().map(|s| s.label.as_str()).collect::<Vec<_>>(), ["allowed", "rate_limited"]);
        assert_eq!(series[1].values, [30.0, 0.0]);
        assert_eq!(max_total(&series), 40.0);
        let bars = stacked_bars(&series);
        assert_eq!(bars.len(), 3);
        // Second 0: allowed at the bottom (a quarter of the height), rate_limited on top of it.
        assert_eq!((bars[0].y, bars[0].height), (HEIGHT * 0.75, HEIGHT * 0.25));
        assert_eq!((bars[1].y, bars[1].height), (0.0, HEIGHT * 0.75));
        assert_eq!(bars[2].x, WIDTH / 2.0 + WIDTH / 2.0 * 0.1);
        assert!(stacked_bars(&[]).is_empty());
    }

    #[test]
    fn bands_show_breaker_states() {
        let bands = breaker_bands(&timeline());
        assert_eq!(bands.len(), 1);
        assert_eq!(bands[0].1.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>(), ["closed", "open"]);
        assert_eq!(series_of_numbers(&timeline(), &[("retries", |s| s.retries)])[0].values, [2.0, 0.0]);
    }

    #[test]
    fn value_axes_are_round() {
        assert_eq!(nice_scale(17.0, true), (20.0, vec![0.0, 5.0, 10.0, 15.0, 20.0]));
        assert_eq!(nice_scale(40.0, false), (40.0, vec![0.0, 10.0, 20.0, 30.0, 40.0]));
        assert_eq!(nice_scale(0.0, true), (1.0, vec![0.0, 1.0]));
        assert_eq!(nice_scale(3.0, true), (3.0, vec![0.0, 1.0, 2.0, 3.0]));
        assert!((nice_scale(0.3, false).0 - 0.3).abs() < 1e-9);
        assert_eq!(nice_scale(1234.0, false), (1500.0, vec![0.0, 500.0, 1000.0, 1500.0]));
        assert_eq!((number(12.0), number(2.25), number(25_000.0)), ("12".into(), "2.2".into(), "25k".into()));
        assert_eq!(
            (number(0.04), number(0.004), number(0.3)),
            ("0.04".into(), "0.004".into(), "0.30".into())
        );
        // Light traffic: every tick reads apart.
        for max in [0.04, 0.12, 0.6, 3.3] {
            let (_, ticks) = nice_scale(max, false);
            let step = ticks[1] - ticks[0];
            let labels: Vec<String> = ticks.iter().map(|t| tick(*t, step)).collect();
            let mut unique = labels.clone();
            unique.dedup();
            assert_eq!(unique, labels, "{max}");
        }
        assert_eq!(tick(0.2, 0.1), "0.2");
    }

    #[test]
    fn time_axes_label_round_times() {
        assert_eq!(TimeAxis::Seconds.ticks(60), [0, 10, 20, 30, 40, 50]);
        assert_eq!(TimeAxis::Seconds.ticks(5), [0, 1, 2, 3, 4]);
        assert_eq!(TimeAxis::Seconds.label(12), "12s");
        // 15 minutes of 5 s points from 10:02:35 UTC: a label every 5 minutes, on the minute.
        let clock = TimeAxis::Clock { start: 36_155, step: 5 };
        let ticks = clock.ticks(180);
        assert_eq!(
            ticks.iter().map(|i| clock.label(*i)).collect::<Vec<_>>(),
            ["10:05:00", "10:10:00", "10:15:00"]
        );
    }

    #[test]
    fn a_readout_has_every_series_and_the_total() {
        let series = series_of(&timeline(), |s| &s.by_decision);
        let r = readout(&series, Some(("limit", &[Some(50.0)])), 0);
        assert_eq!(
            r.iter().map(|(l, v, _)| format!("{l} {v}")).collect::<Vec<_>>(),
            ["allowed 10", "rate_limited 30", "total 40", "limit 50"]
        );
        assert_eq!(r[0].2, color("allowed"));
        assert_eq!(readout(&series, None, 9)[0].1, "0");
    }

    #[test]
    fn a_policy_at_a_glance() {
        let d = BTreeMap::from([
            ("allowed".to_string(), vec![Some(100.0), Some(10.0), Some(20.0), None]),
            ("rate_limited".to_string(), vec![None, Some(4.0), Some(2.0), None]),
            ("queue_timeout".to_string(), vec![None, Some(1.0), None, None]),
            ("circuit_open".to_string(), vec![None, None, Some(6.0), None]),
        ]);
        // The last two points with data (the last one has none).
        assert_eq!(glance(&d, 2), Some(Glance { allowed: 15.0, limited: 3.5, failing: 3.0 }));
        assert_eq!(glance(&BTreeMap::new(), 2), None);
        assert_eq!(
            (glance_group("allowed"), glance_group("fault_aborted"), glance_group("concurrency_limited")),
            (0, 2, 1)
        );
    }
}
