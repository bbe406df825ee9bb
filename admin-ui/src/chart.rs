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

pub const WIDTH: f64 = 720.0;
pub const HEIGHT: f64 = 180.0;

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
        assert_eq!(line_points(&[Some(10.0), None, Some(5.0)], 10.0), "120.0,0.0 600.0,90.0");
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
}
