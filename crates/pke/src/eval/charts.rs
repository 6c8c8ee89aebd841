//! Provides the chart written next to `report.json`: every rate in the report (0..1) as a bar, so a
//! before/after pair of reports can be compared at a glance.

use std::path::Path;

use plotters::prelude::*;

use super::report::ModelReport;
use crate::{Error, Result};

fn chart_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Input(format!("cannot draw chart {}: {e}", path.display()))
}

/// The rates of a report: ASR per set and overall, non-refusal, over-refusal, factual accuracy, ROUGE-L and
/// SafeEdit DS/DG-Avg when present.
pub fn rates(r: &ModelReport) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = r.asr.per_set.iter().map(|p| (format!("ASR {}", p.set), p.value)).collect();
    v.push(("ASR overall".into(), r.asr.overall));
    v.push(("non-refusal".into(), r.asr.non_refusal));
    if let Some(x) = r.over_refusal.measured() {
        v.push(("over-refusal".into(), x));
    }
    if let Some(l) = &r.lookalike {
        v.push(("look-alike over-refusal".into(), l.over_refusal));
        v.push(("look-alike twins refused".into(), l.twin_refusal));
    }
    if let Some(x) = r.factual_accuracy.measured() {
        v.push(("factual accuracy".into(), x));
    }
    if let Some(x) = &r.rouge_l_to_base {
        v.push(("ROUGE-L to base".into(), x.value));
    }
    if let Some(e) = &r.safeedit {
        v.push(("SafeEdit DS".into(), e.ds));
        v.push(("SafeEdit DG-Avg".into(), e.dg_avg));
    }
    v
}

/// The label of the horizontal bar at axis value `y`, bars drawn top to bottom in `labels` order (bar i
/// spans `[n - i - 1, n - i]`).
pub(crate) fn bar_label(labels: &[String], y: f64) -> String {
    let n = labels.len();
    let i = y.floor() as usize;
    if (y - i as f64 - 0.5).abs() < 0.26 || y.fract() == 0.0 {
        labels.get(n.saturating_sub(i + 1)).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

/// Horizontal bars of `rates(r)`.
pub fn report_chart(r: &ModelReport, path: &Path) -> Result<()> {
    let v = rates(r);
    let n = v.len();
    let root = SVGBackend::new(path, (900, 60 + 34 * n as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("pke eval: {}", r.model.rsplit('/').next().unwrap_or(&r.model)), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(300)
        .build_cartesian_2d(0f64..1.0, 0f64..n as f64)
        .map_err(|e| chart_err(path, e))?;
    let labels: Vec<String> = v.iter().map(|x| x.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|y| bar_label(&labels, *y))
        .x_desc("rate")
        .draw()
        .map_err(|e| chart_err(path, e))?;
    chart
        .draw_series(v.iter().enumerate().map(|(i, (name, val))| {
            let y = (n - i - 1) as f64;
            let color = if name.starts_with("ASR") || name == "non-refusal" || name == "over-refusal" {
                RGBColor(214, 39, 40)
            } else {
                RGBColor(31, 119, 180)
            };
            Rectangle::new([(0.0, y + 0.15), (*val, y + 0.85)], color.filled())
        }))
        .map_err(|e| chart_err(path, e))?;
    root.present().map_err(|e| chart_err(path, e))
}
