//! `breakwater render dashboard`: a Grafana dashboard (JSON model, schema version 41: Grafana 12)
//! with one row per policy: its decisions per second by kind, its breaker's state over time, its
//! retries and retry budget, its requests in flight against its concurrency limit (and the queue),
//! and its upstream latency (p50, p99).
//!
//! Every panel's query is PromQL over the series Envoy exports with breakwater's `stats_tags`
//! (docs/observability.md); `$__rate_interval` is Grafana's. `tests/tests/monitoring.rs` runs each
//! query against a real Prometheus scraping a real Envoy.

use breakwater_policy::metrics::{Counter, Decision, Gauge, Histogram, PREFIX};
use breakwater_policy::model::{Document, Policy};
use serde_json::{Value, json};

/// The dashboard's `uid` (stable, so that importing it again replaces it).
pub const UID: &str = "breakwater-policies";

/// One panel: its title and its queries (legend, PromQL).
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub kind: &'static str,
    pub queries: Vec<(String, String)>,
}

/// The panels of one policy's row, in order.
pub fn panels(p: &Policy) -> Vec<Panel> {
    let name = p.name.as_str();
    let sel = |extra: &str| format!("{{policy=\"{name}\"{extra}}}");
    let requests = format!("{PREFIX}_requests");
    let decisions = Decision::promql_any();
    let rate =
        |c: Counter| format!("sum(rate({requests}{}[$__rate_interval]))", sel(&format!(",decision=\"{c}\"")));
    let gauge = |g: Gauge| format!("{PREFIX}_{g}{}", sel(""));
    let mut out = vec![Panel {
        title: format!("{name}: decisions per second"),
        kind: "timeseries",
        queries: vec![(
            "{{decision}}".into(),
            format!(
                "sum by (decision) (rate({requests}{}[$__rate_interval]))",
                sel(&format!(",decision=~\"{decisions}\""))
            ),
        )],
    }];
    let buckets = format!("{PREFIX}_{}_bucket{}", Histogram::UpstreamLatencyMs, sel(""));
    out.push(Panel {
        title: format!("{name}: upstream latency (ms)"),
        kind: "timeseries",
        queries: ["0.5", "0.99"]
            .into_iter()
            .map(|q| {
                let label = if q == "0.5" { "p50" } else { "p99" };
                (
                    label.to_string(),
                    format!("histogram_quantile({q}, sum by (le) (rate({buckets}[$__rate_interval])))"),
                )
            })
            .collect(),
    });
    if p.circuit_breaker.is_some() {
        out.push(Panel {
            title: format!("{name}: breaker state"),
            kind: "state-timeline",
            queries: vec![(
                "{{instance}}".into(),
                format!("max by (instance) ({})", gauge(Gauge::BreakerState)),
            )],
        });
    }
    if p.retry.is_some() {
        out.push(Panel {
            title: format!("{name}: retries and retry budget"),
            kind: "timeseries",
            queries: vec![
                ("retried".into(), rate(Counter::Retried)),
                ("budget exhausted".into(), rate(Counter::BudgetExhausted)),
                ("fallback".into(), rate(Counter::Fallback)),
            ],
        });
    }
    if let Some(cl) = &p.concurrency_limit {
        let mut queries = vec![(
            "in flight {{instance}}".into(),
            format!("max by (instance) ({})", gauge(Gauge::InFlight)),
        )];
        queries.push(match cl.max_in_flight {
            Some(n) => ("limit".into(), format!("vector({n})")),
            None => (
                "limit {{instance}}".into(),
                format!("max by (instance) ({})", gauge(Gauge::ConcurrencyLimit)),
            ),
        });
        if cl.queue.is_some() {
            queries.push((
                "waiting {{instance}}".into(),
                format!("max by (instance) ({})", gauge(Gauge::QueueLength)),
            ));
        }
        out.push(Panel { title: format!("{name}: in flight vs limit"), kind: "timeseries", queries });
    }
    out
}

/// The dashboard for `doc`.
pub fn dashboard(doc: &Document) -> Value {
    let mut all = Vec::new();
    let mut id = 1;
    let mut y = 0;
    for p in &doc.policies {
        all.push(json!({
            "type": "row", "id": id, "title": format!("policy {}", p.name), "collapsed": false,
            "gridPos": { "h": 1, "w": 24, "x": 0, "y": y }, "panels": [],
        }));
        id += 1;
        y += 1;
        let panels = panels(p);
        let width = 24 / panels.len().clamp(1, 4) as u32;
        for (i, panel) in panels.into_iter().enumerate() {
            let x = (i as u32 % 4) * width;
            if i > 0 && i % 4 == 0 {
                y += 8;
            }
            all.push(panel_json(&panel, id, (x, y, width)));
            id += 1;
        }
        y += 8;
    }
    json!({
        "uid": UID,
        "title": "breakwater: policies",
        "tags": ["breakwater", "envoy"],
        "timezone": "browser",
        "schemaVersion": 41,
        "version": 1,
        "editable": true,
        "refresh": "10s",
        "time": { "from": "now-15m", "to": "now" },
        "templating": { "list": [{
            "name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0,
        }] },
        "annotations": { "list": [] },
        "panels": all,
    })
}

fn panel_json(panel: &Panel, id: u32, (x, y, w): (u32, u32, u32)) -> Value {
    let datasource = json!({ "type": "prometheus", "uid": "${datasource}" });
    let targets: Vec<Value> = panel
        .queries
        .iter()
        .zip('A'..)
        .map(|((legend, expr), ref_id)| {
            json!({ "refId": ref_id.to_string(), "datasource": datasource, "expr": expr, "legendFormat": legend })
        })
        .collect();
    let mut v = json!({
        "type": panel.kind, "id": id, "title": panel.title, "datasource": datasource,
        "gridPos": { "h": 8, "w": w, "x": x, "y": y }, "targets": targets,
        "options": { "legend": { "displayMode": "list", "placement": "bottom", "showLegend": true } },
        "fieldConfig": { "defaults": {}, "overrides": [] },
    });
    if panel.kind == "state-timeline" {
        v["fieldConfig"]["defaults"]["mappings"] = json!([{ "type": "value", "options": {
            "0": { "text": "closed", "color": "green", "index": 0 },
            "1": { "text": "open", "color": "red", "index": 1 },
            "2": { "text": "half-open", "color": "yellow", "index": 2 },
        } }]);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_per_policy_with_the_panels_of_its_blocks() {
        let doc = breakwater_policy::load(
            "version: 1
policies:
  - name: api
    match: { path_prefix: /api }
    rate_limit: { rate: 10, per: 1s }
  - name: reco
    match: { path_prefix: /reco }
    circuit_breaker: { window: 10, minimum_calls: 5, failure_rate: 50 }
    retry: { max_retries: 2 }
    concurrency_limit: { adaptive: {}, queue: { max_waiting: 5 } }
",
        )
        .unwrap()
        .document;
        let d = dashboard(&doc);
        let panels = d["panels"].as_array().unwrap();
        let titles: Vec<&str> = panels.iter().map(|p| p["title"].as_str().unwrap()).collect();
        assert_eq!(
            titles,
            [
                "policy api",
                "api: decisions per second",
                "api: upstream latency (ms)",
                "policy reco",
                "reco: decisions per second",
                "reco: upstream latency (ms)",
                "reco: breaker state",
                "reco: retries and retry budget",
                "reco: in flight vs limit",
            ]
        );
        let ids: std::collections::BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
        assert_eq!(ids.len(), panels.len(), "unique ids");
        let limit = &panels[8]["targets"];
        assert_eq!(limit[1]["expr"], "max by (instance) (breakwater_concurrency_limit{policy=\"reco\"})");
        assert_eq!(limit[2]["legendFormat"], "waiting {{instance}}");
        assert_eq!(panels[6]["fieldConfig"]["defaults"]["mappings"][0]["options"]["1"]["text"], "open");
        assert_eq!(
            panels[2]["targets"][1]["expr"],
            "histogram_quantile(0.99, sum by (le) (rate(breakwater_upstream_latency_ms_bucket{policy=\"api\"}[$__rate_interval])))"
        );
    }
}
