//! Plots of a report, as SVG (plotters): the propagation CDF, bytes per node, index memory
//! per node and the time each fault took to absorb; for a sweep, p99 propagation and
//! traffic per setting.

use crate::report::Report;
use crate::sweep::{label, SweepReport};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// Why a plot could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {reason}")]
pub struct PlotError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

const SIZE: (u32, u32) = (900, 540);

fn failed<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> PlotError + '_ {
    move |e| PlotError {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// Draws every plot of `report` into `dir`; returns the files written.
pub fn write_report_plots(report: &Report, dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let mut written = Vec::new();
    let path = dir.join("propagation-cdf.svg");
    propagation_cdf(report, &path)?;
    written.push(path);
    let path = dir.join("traffic-per-node.svg");
    per_node(
        &path,
        &format!("{}: bytes per node (sorted)", report.scenario),
        "bytes",
        &[
            (
                "received",
                report
                    .per_node
                    .iter()
                    .map(|n| n.received_bytes as f64)
                    .collect(),
            ),
            (
                "sent",
                report
                    .per_node
                    .iter()
                    .map(|n| n.sent_bytes as f64)
                    .collect(),
            ),
        ],
    )?;
    written.push(path);
    let path = dir.join("index-memory-per-node.svg");
    per_node(
        &path,
        &format!(
            "{}: locator index memory of the {} measured nodes (sorted; {:.0} B per entry)",
            report.scenario, report.measured_indexes, report.index_bytes_per_entry
        ),
        "bytes",
        &[(
            "index store",
            report
                .per_node
                .iter()
                .filter_map(|n| n.index_bytes)
                .map(|b| b as f64)
                .collect(),
        )],
    )?;
    written.push(path);
    if !report.faults.is_empty() {
        let path = dir.join("faults.svg");
        bars(
            &path,
            &format!("{}: seconds to absorb each fault", report.scenario),
            "seconds after the fault ended",
            &report
                .faults
                .iter()
                .map(|f| (f.fault.clone(), f.absorbed_after_s.unwrap_or(f64::NAN)))
                .collect::<Vec<_>>(),
        )?;
        written.push(path);
    }
    Ok(written)
}

/// Draws the sweep's plots into `dir`; returns the files written.
pub fn write_sweep_plots(sweep: &SweepReport, dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let mut written = Vec::new();
    let rows = |f: &dyn Fn(&Report) -> f64| -> Vec<(String, f64)> {
        sweep
            .rows
            .iter()
            .map(|r| (label(&r.setting), f(&r.report)))
            .collect()
    };
    let path = dir.join("sweep-p99.svg");
    bars(
        &path,
        &format!("{}: p99 propagation per setting", sweep.scenario),
        "ms",
        &rows(&|r| r.propagation.p99_ms as f64),
    )?;
    written.push(path);
    let path = dir.join("sweep-traffic.svg");
    bars(
        &path,
        &format!("{}: bytes received per useful locator byte", sweep.scenario),
        "bytes per useful byte",
        &rows(&|r| r.traffic.received_per_useful_byte),
    )?;
    written.push(path);
    Ok(written)
}

fn propagation_cdf(report: &Report, path: &Path) -> Result<(), PlotError> {
    let fail = failed(path);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(&fail)?;
    let cdf = &report.propagation.cdf_ms;
    let most = cdf.last().copied().unwrap_or(1).max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{}: time until an update is in an index (p50 {} ms, p95 {} ms, p99 {} ms)",
                report.scenario,
                report.propagation.p50_ms,
                report.propagation.p95_ms,
                report.propagation.p99_ms
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((1f64..most * 3.0).log_scale(), 0f64..100f64)
        .map_err(&fail)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds (log scale)")
        .y_desc("% of entries × nodes")
        .draw()
        .map_err(&fail)?;
    chart
        .draw_series(LineSeries::new(
            cdf.iter()
                .enumerate()
                .map(|(i, ms)| ((*ms as f64).max(1.0), i as f64 / 2.0)),
            BLUE.stroke_width(2),
        ))
        .map_err(&fail)?;
    for (share, ms) in [
        (50.0, report.propagation.p50_ms),
        (95.0, report.propagation.p95_ms),
        (99.0, report.propagation.p99_ms),
    ] {
        chart
            .draw_series(PointSeries::of_element(
                [((ms as f64).max(1.0), share)],
                4,
                RED.filled(),
                &|c, s, st| {
                    EmptyElement::at(c)
                        + Circle::new((0, 0), s, st)
                        + Text::new(format!("p{share:.0} {ms} ms"), (8, 4), ("sans-serif", 13))
                },
            ))
            .map_err(&fail)?;
    }
    root.present().map_err(&fail)?;
    Ok(())
}

fn per_node(
    path: &Path,
    title: &str,
    unit: &str,
    series: &[(&str, Vec<f64>)],
) -> Result<(), PlotError> {
    let fail = failed(path);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(&fail)?;
    let nodes = series.first().map_or(0, |(_, v)| v.len()).max(1);
    let top = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0usize..nodes, 0f64..top * 1.05)
        .map_err(&fail)?;
    chart
        .configure_mesh()
        .x_desc("nodes, sorted")
        .y_desc(unit)
        .draw()
        .map_err(&fail)?;
    for (i, (name, values)) in series.iter().enumerate() {
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let colour = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                sorted.into_iter().enumerate(),
                colour.stroke_width(2),
            ))
            .map_err(&fail)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(&fail)?;
    root.present().map_err(&fail)?;
    Ok(())
}

/// Horizontal bars, one per labelled value (a value that is not a number is drawn as
/// missing).
fn bars(path: &Path, title: &str, unit: &str, values: &[(String, f64)]) -> Result<(), PlotError> {
    let fail = failed(path);
    let height = (120 + 28 * values.len() as u32).max(SIZE.1 / 2);
    let root = SVGBackend::new(path, (SIZE.0, height)).into_drawing_area();
    root.fill(&WHITE).map_err(&fail)?;
    let top = values
        .iter()
        .map(|(_, v)| *v)
        .filter(|v| v.is_finite())
        .fold(0.001, f64::max);
    let longest = values.iter().map(|(l, _)| l.len()).max().unwrap_or(4) as u32;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size((longest * 7).clamp(60, 420))
        .build_cartesian_2d(0f64..top * 1.15, (0usize..values.len()).into_segmented())
        .map_err(&fail)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(values.len().max(1))
        .y_label_formatter(&|segment| match segment {
            SegmentValue::CenterOf(i) => values.get(*i).map_or(String::new(), |(l, _)| l.clone()),
            _ => String::new(),
        })
        .x_desc(unit)
        .draw()
        .map_err(&fail)?;
    chart
        .draw_series(
            values
                .iter()
                .enumerate()
                .filter(|(_, (_, v))| v.is_finite())
                .map(|(i, (_, v))| {
                    let mut bar = Rectangle::new(
                        [
                            (0.0, SegmentValue::Exact(i)),
                            (*v, SegmentValue::Exact(i + 1)),
                        ],
                        BLUE.mix(0.6).filled(),
                    );
                    bar.set_margin(4, 4, 0, 0);
                    bar
                }),
        )
        .map_err(&fail)?;
    chart
        .draw_series(values.iter().enumerate().map(|(i, (_, v))| {
            let text = if v.is_finite() {
                format!(" {v:.3}")
            } else {
                " not reached".into()
            };
            Text::new(
                text,
                (
                    if v.is_finite() { *v } else { 0.0 },
                    SegmentValue::CenterOf(i),
                ),
                ("sans-serif", 13),
            )
        }))
        .map_err(&fail)?;
    root.present().map_err(&fail)?;
    Ok(())
}
