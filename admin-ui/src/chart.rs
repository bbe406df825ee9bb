//! The simulator's charts as plain SVG geometry (drawn by the app, no charting library): stacked
//! bars per second, and a state band per policy.

use serde_json::Value;

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

const PALETTE: &[(&str, &str)] = &[
    ("allowed", "#2e7d32"),
    ("rate_limited", "#f9a825"),
    ("concurrency_limited", "#ef6c00"),
    ("circuit_open", "#c62828"),
    ("fallback", "#6a1b9a"),
    ("budget_exhausted", "#4e342e"),
    ("state_unavailable", "#546e7a"),
    ("shadow", "#0277bd"),
];

/// A stable colour for a label.
pub fn color(label: &str) -> &'static str {
    if let Some((_, c)) = PALETTE.iter().find(|(l, _)| *l == label) {
        return c;
    }
    const OTHERS: &[&str] = &["#1565c0", "#00838f", "#ad1457", "#558b2f", "#5d4037", "#37474f"];
    let h = label.bytes().fold(7usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
    OTHERS[h % OTHERS.len()]
}

/// Series of one per-second map of the timeline (`by_decision`, `by_status`): one per key seen.
pub fn series_of(timeline: &Value, field: &str) -> Vec<Series> {
    let seconds = timeline.get("seconds").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut labels: Vec<String> = Vec::new();
    for s in &seconds {
        if let Some(m) = s.get(field).and_then(Value::as_object) {
            for k in m.keys() {
                if !labels.contains(k) {
                    labels.push(k.clone());
                }
            }
        }
    }
    labels.sort_by_key(|l| (PALETTE.iter().position(|(p, _)| p == l).unwrap_or(PALETTE.len()), l.clone()));
    labels
        .into_iter()
        .map(|label| Series {
            color: color(&label),
            values: seconds
                .iter()
                .map(|s| s.get(field).and_then(|m| m.get(&label)).and_then(Value::as_f64).unwrap_or(0.0))
                .collect(),
            label,
        })
        .collect()
}

/// Series of plain per-second numbers (`retries`, `budget_exhausted`).
pub fn series_of_numbers(timeline: &Value, fields: &[&str]) -> Vec<Series> {
    let seconds = timeline.get("seconds").and_then(Value::as_array).cloned().unwrap_or_default();
    fields
        .iter()
        .map(|f| Series {
            label: f.to_string(),
            color: color(f),
            values: seconds.iter().map(|s| s.get(*f).and_then(Value::as_f64).unwrap_or(0.0)).collect(),
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
    let n = series.iter().map(|s| s.values.len()).max().unwrap_or(0);
    let top = max_total(series);
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
pub fn breaker_bands(timeline: &Value) -> Vec<(String, Vec<(&'static str, String)>)> {
    let seconds = timeline.get("seconds").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut policies: Vec<String> = Vec::new();
    for s in &seconds {
        for k in s.get("breaker").and_then(Value::as_object).into_iter().flat_map(|m| m.keys()) {
            if !policies.contains(k) {
                policies.push(k.clone());
            }
        }
    }
    policies
        .into_iter()
        .map(|p| {
            let cells = seconds
                .iter()
                .map(|s| {
                    let state =
                        s.get("breaker").and_then(|b| b.get(&p)).and_then(Value::as_str).unwrap_or("closed");
                    let c = match state {
                        "open" => "#c62828",
                        "half_open" | "half-open" => "#f9a825",
                        _ => "#2e7d32",
                    };
                    (c, state.to_string())
                })
                .collect();
            (p, cells)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn timeline() -> Value {
        json!({ "seconds": [
            { "t": 0, "by_decision": { "allowed": 10, "rate_limited": 30 }, "retries": 2, "breaker": { "b": "closed" } },
            { "t": 1, "by_decision": { "allowed": 10 }, "retries": 0, "breaker": { "b": "open" } },
        ]})
    }

    #[test]
    fn stacks_decisions_per_second() {
        let series = series_of(&timeline(), "by_decision");
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
        assert_eq!(series_of_numbers(&timeline(), &["retries"])[0].values, [2.0, 0.0]);
    }
}
