//! The charts the simulate and live pages draw: stacked bars per point, with an optional line
//! (a limit) over them, on a value axis with its unit and a time axis; a legend; and a readout of
//! every series at the point under the pointer (or chosen with the arrow keys).

use leptos::prelude::*;

use crate::chart::{self, BOTTOM, HEIGHT, LEFT, TOP, TimeAxis, VIEW_HEIGHT, VIEW_WIDTH, WIDTH};

#[component]
pub(super) fn Chart(
    title: &'static str,
    #[prop(into)] id: String,
    series: Vec<chart::Series>,
    /// After the values: `/s` for rates, nothing for gauges.
    #[prop(default = "/s")]
    unit: &'static str,
    /// A line over the bars (a limit), on the same scale.
    #[prop(optional)]
    line: Option<(String, Vec<Option<f64>>)>,
    /// What the points are: seconds of a simulation (the default), or clock times.
    #[prop(default = TimeAxis::Seconds)]
    time: TimeAxis,
) -> impl IntoView {
    let n = series
        .iter()
        .map(|s| s.values.len())
        .max()
        .unwrap_or(0)
        .max(line.as_ref().map_or(0, |(_, v)| v.len()));
    let peak = chart::max_total(&series);
    let line_top = line.as_ref().map_or(0.0, |(_, v)| v.iter().flatten().copied().fold(0.0, f64::max));
    let whole = unit.is_empty();
    let (top, ticks) = chart::nice_scale(peak.max(line_top), whole);
    let bars = chart::stacked_bars_on(&series, top);
    let (line_label, points) = match &line {
        Some((label, values)) => (Some(label.clone()), chart::line_points(values, top)),
        None => (None, String::new()),
    };
    let column = if n == 0 { WIDTH } else { WIDTH / n as f64 };
    let hover = RwSignal::new(None::<usize>);
    let readout_series = series.clone();
    let readout_line = line.clone();
    let readout = move |i: usize| {
        chart::readout(&readout_series, readout_line.as_ref().map(|(l, v)| (l.as_str(), v.as_slice())), i)
    };
    // The point under the pointer, from its position over the chart.
    let pick = move |ev: leptos::ev::MouseEvent| {
        let Some(el) =
            ev.current_target().and_then(|t| wasm_bindgen::JsCast::dyn_into::<web_sys::Element>(t).ok())
        else {
            return;
        };
        let rect = el.get_bounding_client_rect();
        if rect.width() <= 0.0 || n == 0 {
            return;
        }
        let x = (f64::from(ev.client_x()) - rect.left()) / rect.width() * VIEW_WIDTH - LEFT;
        hover.set((0.0..WIDTH).contains(&x).then(|| ((x / column) as usize).min(n - 1)));
    };
    let keys = move |ev: leptos::ev::KeyboardEvent| {
        if n == 0 {
            return;
        }
        let next = match (ev.key().as_str(), hover.get_untracked()) {
            ("ArrowRight", None) | ("Home", _) => 0,
            ("ArrowLeft", None) | ("End", _) => n - 1,
            ("ArrowRight", Some(i)) => (i + 1).min(n - 1),
            ("ArrowLeft", Some(i)) => i.saturating_sub(1),
            ("Escape", _) => {
                hover.set(None);
                return;
            }
            _ => return,
        };
        ev.prevent_default();
        hover.set(Some(next));
    };
    let viewbox = format!("0 0 {VIEW_WIDTH} {VIEW_HEIGHT}");
    let y = move |v: f64| TOP + HEIGHT - v / top * HEIGHT;
    let scale = format!("max {}{unit}", chart::number(peak));
    let label = format!("{title}: {scale}; use the arrow keys to read the values at each point");
    let time_ticks = time.ticks(n);
    let step = ticks.get(1).copied().unwrap_or(1.0);
    let tooltip_id = format!("{id}-tooltip");
    view! {
        <figure class="chart" data-testid=id.clone()>
            <figcaption>{title} <span class="scale">{scale}</span></figcaption>
            <div class="plot">
                <svg viewBox=viewbox role="img" aria-label=label tabindex="0"
                    on:mousemove=pick on:mouseleave=move |_| hover.set(None) on:keydown=keys on:blur=move |_| hover.set(None)>
                    // The value axis: gridlines and their values, with the unit.
                    {ticks.into_iter().map(|t| {
                        let ty = y(t);
                        view! {
                            <line class="grid" x1=LEFT.to_string() x2=(LEFT + WIDTH).to_string() y1=ty.to_string() y2=ty.to_string()/>
                            <text class="tick" x=(LEFT - 6.0).to_string() y=(ty + 4.0).to_string() text-anchor="end">
                                {format!("{}{unit}", chart::tick(t, step))}
                            </text>
                        }
                    }).collect_view()}
                    // The time axis.
                    {time_ticks.into_iter().map(|i| {
                        let tx = LEFT + (i as f64 + 0.5) * column;
                        view! {
                            <line class="axis" x1=tx.to_string() x2=tx.to_string() y1=(TOP + HEIGHT).to_string() y2=(TOP + HEIGHT + 4.0).to_string()/>
                            <text class="tick" x=tx.to_string() y=(TOP + HEIGHT + BOTTOM - 6.0).to_string() text-anchor="middle">{time.label(i)}</text>
                        }
                    }).collect_view()}
                    <line class="axis" x1=LEFT.to_string() x2=(LEFT + WIDTH).to_string()
                        y1=(TOP + HEIGHT).to_string() y2=(TOP + HEIGHT).to_string()/>
                    <g transform=format!("translate({LEFT} {TOP})")>
                        {move || hover.get().map(|i| view! {
                            <rect class="cursor" x=(i as f64 * column).to_string() y="0" width=column.to_string() height=HEIGHT.to_string()/>
                        })}
                        {bars.into_iter().map(|b| view! {
                            <rect x=b.x.to_string() y=b.y.to_string() width=b.width.to_string() height=b.height.to_string() fill=b.color/>
                        }).collect_view()}
                        {(!points.is_empty()).then(|| view! {
                            <polyline class="limit" points=points fill="none" stroke="#37474f" stroke-width="2" stroke-dasharray="6 4"/>
                        })}
                    </g>
                </svg>
                {move || hover.get().map(|i| {
                    // Beside the point, on the side with more room.
                    let at = (LEFT + (i as f64 + 0.5) * column) / VIEW_WIDTH * 100.0;
                    let style = if at < 60.0 { format!("left: calc({at:.2}% + 12px)") } else { format!("right: calc({:.2}% + 12px)", 100.0 - at) };
                    view! {
                        <div class="tooltip" role="status" data-testid=tooltip_id.clone() style=style>
                            <div class="when">{time.label(i)}</div>
                            {readout(i).into_iter().map(|(label, value, color)| view! {
                                <div class="row"><i style=format!("background:{color}")></i>
                                    <span>{label}</span><b>{format!("{value}{unit}")}</b></div>
                            }).collect_view()}
                        </div>
                    }
                })}
            </div>
            <div class="legend">{series.into_iter().map(|s| view! {
                <span><i style=format!("background:{}", s.color)></i>{s.label}</span>
            }).collect_view()}
            {line_label.map(|l| view! { <span><i class="dashed"></i>{l}</span> })}</div>
        </figure>
    }
}

/// A breaker's state per point as a band under the charts, on their time axis; each cell says
/// its state and time on hover.
#[component]
pub(super) fn StateBand(
    #[prop(into)] label: String,
    #[prop(into)] testid: String,
    cells: Vec<(&'static str, String)>,
    #[prop(default = TimeAxis::Seconds)] time: TimeAxis,
) -> impl IntoView {
    let n = cells.len().max(1) as f64;
    let column = WIDTH / n;
    view! {
        <div class="band" data-testid=testid>
            <svg viewBox=format!("0 0 {VIEW_WIDTH} 18") role="img" aria-label=format!("{label} state over time")>
                <text class="tick" x=(LEFT - 6.0).to_string() y="13" text-anchor="end">{label.clone()}</text>
                {cells.into_iter().enumerate().map(|(i, (c, state))| view! {
                    <rect x=(LEFT + i as f64 * column).to_string() y="1" width=column.to_string() height="16" fill=c>
                        <title>{format!("{}: {state}", time.label(i))}</title>
                    </rect>
                }).collect_view()}
            </svg>
        </div>
    }
}
