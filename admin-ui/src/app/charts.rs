//! The charts the simulate and live pages draw: stacked bars per point, with an optional line
//! (a limit) over them.

use leptos::prelude::*;

use crate::chart;

#[component]
pub(super) fn Chart(
    title: &'static str,
    #[prop(into)] id: String,
    series: Vec<chart::Series>,
    /// After the scale's number: `/s` for rates, nothing for gauges.
    #[prop(default = "/s")]
    unit: &'static str,
    /// A line over the bars (a limit), on the same scale.
    #[prop(optional)]
    line: Option<(String, Vec<Option<f64>>)>,
) -> impl IntoView {
    let bars = chart::stacked_bars(&series);
    let line_top = line.as_ref().map_or(0.0, |(_, v)| v.iter().flatten().copied().fold(0.0, f64::max));
    let top = chart::max_total(&series).max(line_top);
    let bars = if top > chart::max_total(&series) { chart::stacked_bars_on(&series, top) } else { bars };
    let viewbox = format!("0 0 {} {}", chart::WIDTH, chart::HEIGHT);
    let (line_label, points) = match &line {
        Some((label, values)) => (Some(label.clone()), chart::line_points(values, top)),
        None => (None, String::new()),
    };
    view! {
        <figure class="chart" data-testid=id>
            <figcaption>{title} <span class="scale">{format!("max {top:.0}{unit}")}</span></figcaption>
            <svg viewBox=viewbox preserveAspectRatio="none" role="img" aria-label=title>
                {bars.into_iter().map(|b| view! {
                    <rect x=b.x.to_string() y=b.y.to_string() width=b.width.to_string() height=b.height.to_string() fill=b.color/>
                }).collect_view()}
                {(!points.is_empty()).then(|| view! {
                    <polyline class="limit" points=points fill="none" stroke="#37474f" stroke-width="2" stroke-dasharray="6 4"/>
                })}
            </svg>
            <div class="legend">{series.into_iter().map(|s| view! {
                <span><i style=format!("background:{}", s.color)></i>{s.label}</span>
            }).collect_view()}
            {line_label.map(|l| view! { <span><i class="dashed"></i>{l}</span> })}</div>
        </figure>
    }
}
