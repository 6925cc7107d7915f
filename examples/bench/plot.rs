//! The SVG plot: p99 latency against load, one line per server, one panel
//! per workload and loop kind.

use std::error::Error;
use std::ops::Range;
use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use crate::model::{Load, Results};
use crate::variants::Family;

/// Distinct on white and for the common colour-blindnesses (Okabe–Ito, its
/// yellow darkened for contrast on white, plus greys and browns): one for
/// each of the benchmark's 11 rows and one to spare, so no two rows share a
/// colour (with 10, the 11th row was black like the first); cycled only if
/// there are more rows.
const COLORS: [RGBColor; 12] = [
    RGBColor(0, 0, 0),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 158, 115),
    RGBColor(213, 94, 0),
    RGBColor(0, 114, 178),
    RGBColor(204, 121, 167),
    RGBColor(140, 140, 140),
    RGBColor(180, 160, 0),
    RGBColor(120, 70, 20),
    RGBColor(100, 60, 160),
    RGBColor(170, 30, 60),
];

/// Draws the plot into `path`.
pub(crate) fn draw(r: &Results, path: &Path) -> Result<(), String> {
    draw_inner(r, path).map_err(|e| e.to_string())
}

fn draw_inner(r: &Results, path: &Path) -> Result<(), Box<dyn Error>> {
    let rows = r.workloads.len();
    let root = SVGBackend::new(path, (1200, 460 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "p99 latency against load ({} cores, {} run; dashed: peers)",
            r.machine.cores,
            if r.full { "full" } else { "quick" }
        ),
        ("sans-serif", 22),
    )?;
    let panels = root.split_evenly((rows, 2));
    for (w, workload) in r.workloads.iter().enumerate() {
        // One y range per workload, so its two panels compare at a glance.
        let p99s: Vec<f64> = r
            .cells
            .iter()
            .filter(|c| c.workload == w && c.report.answered() > 0)
            .map(|c| c.report.p99_us() as f64 / 1000.0)
            .collect();
        let lo = p99s.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = p99s.iter().copied().fold(0.0, f64::max);
        let y = if lo.is_finite() && hi > 0.0 {
            lo / 1.5..hi * 1.5
        } else {
            0.01..1.0
        };
        let closed: Vec<f64> = r.closed_clients.iter().map(|&c| c as f64).collect();
        let open: Vec<f64> = r.open_percents.iter().map(|&p| f64::from(p)).collect();

        let x_max = closed.last().copied().unwrap_or(1.0).max(2.0);
        panel(
            r,
            w,
            &panels[2 * w],
            y.clone(),
            Panel {
                caption: format!("{}: closed loop", workload.key_title()),
                x: (1.0..x_max).log_scale().with_key_points(closed),
                // plotters' default.
                x_labels: 11,
                x_desc: "client threads",
                x_format: |x| format!("{x:.0}"),
                loads: r
                    .closed_clients
                    .iter()
                    .map(|&c| (c as f64, Load::Closed(c)))
                    .collect(),
                legend: true,
            },
        )?;

        let (x_lo, x_hi) = (
            open.first().copied().unwrap_or(50.0) - 10.0,
            open.last().copied().unwrap_or(90.0) + 10.0,
        );
        panel(
            r,
            w,
            &panels[2 * w + 1],
            y,
            Panel {
                caption: format!(
                    "{}: open loop, Poisson arrivals (100% = {:.0} req/s)",
                    workload.key_title(),
                    r.capacity.get(w).copied().unwrap_or(0.0)
                ),
                x: x_lo..x_hi,
                x_labels: ((x_hi - x_lo) / 10.0) as usize + 1,
                x_desc: "offered load (% of capacity)",
                x_format: |x| format!("{x:.0}%"),
                loads: r
                    .open_percents
                    .iter()
                    .map(|&p| (f64::from(p), Load::Open(p)))
                    .collect(),
                legend: false,
            },
        )?;
    }
    root.present()?;
    Ok(())
}

/// What sets one panel apart from the others.
struct Panel<X> {
    /// The title above the chart.
    caption: String,
    /// The x axis: its range and scale.
    x: X,
    /// How many labels the x axis gets.
    x_labels: usize,
    /// The x axis's name.
    x_desc: &'static str,
    /// Writes an x label.
    x_format: fn(&f64) -> String,
    /// The loads of the panel, each at its x.
    loads: Vec<(f64, Load)>,
    /// Whether the panel shows the legend (the first of a row does).
    legend: bool,
}

/// Draws one panel of workload `w` into `area`: the p99 latency of every
/// server (the y axis, logarithmic over `y`, in ms) at each of the panel's
/// loads.
fn panel<X>(
    r: &Results,
    w: usize,
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    y: Range<f64>,
    panel: Panel<X>,
) -> Result<(), Box<dyn Error>>
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(panel.caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(panel.x, y.log_scale())?;
    chart
        .configure_mesh()
        .x_labels(panel.x_labels)
        .x_desc(panel.x_desc)
        .y_desc("p99 latency (ms)")
        .x_label_formatter(&panel.x_format)
        .y_label_formatter(&|y| format!("{y}"))
        .draw()?;
    series(r, &mut chart, |v| {
        panel
            .loads
            .iter()
            .filter_map(|&(x, load)| {
                let cell = r.cell(w, load, v)?;
                (cell.report.answered() > 0).then(|| (x, cell.report.p99_us() as f64 / 1000.0))
            })
            .collect()
    })?;
    if panel.legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .label_font(("sans-serif", 12))
            .draw()?;
    }
    Ok(())
}

/// One line per server, with a legend entry; peers dashed.
fn series<'a, X, Y>(
    r: &Results,
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    points: impl Fn(usize) -> Vec<(f64, f64)>,
) -> Result<(), String>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (v, &(name, family)) in r.variants.iter().enumerate() {
        let color = COLORS[v % COLORS.len()];
        let points = points(v);
        let style = color.stroke_width(2);
        let drawn = if family == Family::Peer {
            chart.draw_series(DashedLineSeries::new(points.clone(), 8, 5, style))
        } else {
            chart.draw_series(LineSeries::new(points.clone(), style))
        }
        .map_err(|e| e.to_string())?;
        // The legend draws a row's line as the plot does: dashed for peers.
        let gap = if family == Family::Peer {
            (8, 13)
        } else {
            (20, 20)
        };
        drawn.label(name).legend(move |(x, y)| {
            EmptyElement::at((x, y))
                + PathElement::new(vec![(0, 0), (gap.0, 0)], color.stroke_width(2))
                + PathElement::new(vec![(gap.1, 0), (20, 0)], color.stroke_width(2))
        });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
