//! The SVG plot: p99 latency against load, one line per server, one panel
//! per workload and loop kind.

use std::path::Path;

use plotters::prelude::*;

use crate::model::{Load, Results};
use crate::variants::Family;

/// Distinct on white and for the common colour-blindnesses (Okabe–Ito plus
/// greys); cycled if there are more rows.
const COLORS: [RGBColor; 10] = [
    RGBColor(0, 0, 0),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 158, 115),
    RGBColor(213, 94, 0),
    RGBColor(0, 114, 178),
    RGBColor(204, 121, 167),
    RGBColor(140, 140, 140),
    RGBColor(240, 228, 66),
    RGBColor(90, 60, 20),
];

/// Draws the plot into `path`.
pub(crate) fn draw(r: &Results, path: &Path) -> Result<(), String> {
    draw_inner(r, path).map_err(|e| e.to_string())
}

fn draw_inner(r: &Results, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
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
        let (lo, hi) = if lo.is_finite() && hi > 0.0 {
            (lo / 1.5, hi * 1.5)
        } else {
            (0.01, 1.0)
        };
        let closed: Vec<f64> = r.closed_clients.iter().map(|&c| c as f64).collect();
        let open: Vec<f64> = r.open_percents.iter().map(|&p| f64::from(p)).collect();

        let area = &panels[2 * w];
        let x_max = closed.last().copied().unwrap_or(1.0).max(2.0);
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{}: closed loop", workload.key_title()),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (1.0..x_max).log_scale().with_key_points(closed.clone()),
                (lo..hi).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("client threads")
            .y_desc("p99 latency (ms)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y}"))
            .draw()?;
        series(r, &mut chart, |v| {
            r.closed_clients
                .iter()
                .filter_map(|&c| {
                    let cell = r.cell(w, Load::Closed(c), v)?;
                    (cell.report.answered() > 0)
                        .then(|| (c as f64, cell.report.p99_us() as f64 / 1000.0))
                })
                .collect()
        })?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .label_font(("sans-serif", 12))
            .draw()?;

        let area = &panels[2 * w + 1];
        let (x_lo, x_hi) = (
            open.first().copied().unwrap_or(50.0) - 10.0,
            open.last().copied().unwrap_or(90.0) + 10.0,
        );
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "{}: open loop, Poisson arrivals (100% = {:.0} req/s)",
                    workload.key_title(),
                    r.capacity.get(w).copied().unwrap_or(0.0)
                ),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x_lo..x_hi, (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .x_labels(((x_hi - x_lo) / 10.0) as usize + 1)
            .x_desc("offered load (% of capacity)")
            .y_desc("p99 latency (ms)")
            .x_label_formatter(&|x| format!("{x:.0}%"))
            .y_label_formatter(&|y| format!("{y}"))
            .draw()?;
        series(r, &mut chart, |v| {
            r.open_percents
                .iter()
                .filter_map(|&p| {
                    let cell = r.cell(w, Load::Open(p), v)?;
                    (cell.report.answered() > 0)
                        .then(|| (f64::from(p), cell.report.p99_us() as f64 / 1000.0))
                })
                .collect()
        })?;
    }
    root.present()?;
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
        drawn.label(name).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
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
