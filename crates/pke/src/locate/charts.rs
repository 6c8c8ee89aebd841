//! Provides the charts written next to `hotspots.json` (SVG, no font files needed): the per-layer signal
//! profile with the chosen layers marked, and the neuron score distribution with the hotspot cut.

use std::path::Path;

use plotters::prelude::*;

use super::Hotspots;
use crate::{Error, Result};

fn chart_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Input(format!("cannot draw chart {}: {e}", path.display()))
}

fn scaled(v: &[f64]) -> Vec<f64> {
    let m = v.iter().cloned().fold(0.0f64, f64::max);
    if m > 0.0 {
        v.iter().map(|x| x / m).collect()
    } else {
        v.to_vec()
    }
}

/// Per-layer signals, each scaled to a maximum of 1, with the chosen layers marked.
pub fn layer_profile(h: &Hotspots, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_err(path, e))?;
    let n = h.layers.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Layer signals ({}; chosen: {:?})", h.architecture, h.chosen_layers), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..1.08)
        .map_err(|e| chart_err(path, e))?;
    chart.configure_mesh().x_desc("layer (0-based block)").y_desc("signal / max").draw().map_err(|e| chart_err(path, e))?;
    for &l in &h.chosen_layers {
        chart
            .draw_series(std::iter::once(Rectangle::new([(l as f64 - 0.4, 0.0), (l as f64 + 0.4, 1.08)], RGBColor(255, 230, 150).filled())))
            .map_err(|e| chart_err(path, e))?;
    }
    let mut series: Vec<(&str, Vec<f64>, RGBColor)> = vec![
        ("grad_norm (safe reply)", h.layers.iter().map(|l| l.grad_norm).collect(), RGBColor(31, 119, 180)),
        ("attribution (unsafe reply)", h.layers.iter().map(|l| l.attribution).collect(), RGBColor(214, 39, 40)),
        ("dinm_distance", h.layers.iter().map(|l| l.dinm_distance).collect(), RGBColor(44, 160, 44)),
        ("dinm_distance (other padding)", h.layers.iter().map(|l| l.dinm_distance_other_padding).collect(), RGBColor(150, 150, 150)),
    ];
    if h.layers.iter().all(|l| l.weight_drift.is_some()) {
        series.push(("weight_drift", h.layers.iter().map(|l| l.weight_drift.unwrap_or(0.0)).collect(), RGBColor(148, 103, 189)));
    }
    for (name, v, color) in series {
        let v = scaled(&v);
        chart
            .draw_series(LineSeries::new(v.iter().enumerate().map(|(i, y)| (i as f64, *y)), color.stroke_width(2)))
            .map_err(|e| chart_err(path, e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| chart_err(path, e))?;
    root.present().map_err(|e| chart_err(path, e))
}

/// Neuron signals of the first chosen layer (each scaled to a maximum of 1), neurons ordered by their
/// combined score, with the hotspot cut marked: a concentrated hotspot shows high values left of the cut.
pub fn neuron_distribution(h: &Hotspots, path: &Path) -> Result<()> {
    let Some(ln) = h.neurons.first() else { return Ok(()) };
    let order = super::score::top_k(&ln.all_scores, ln.width);
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Layer {} neurons by combined score (hotspot = top {} of {})", ln.layer, ln.k, ln.width), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..ln.width as f64, 0f64..1.02)
        .map_err(|e| chart_err(path, e))?;
    chart.configure_mesh().x_desc("neuron, ordered by combined score").y_desc("signal / max").draw().map_err(|e| chart_err(path, e))?;
    for (name, v, color) in [
        ("weight_change (safe reply)", &ln.all_weight_change, RGBColor(31, 119, 180)),
        ("attribution (unsafe reply)", &ln.all_attribution, RGBColor(214, 39, 40)),
    ] {
        let v = scaled(v);
        chart
            .draw_series(order.iter().enumerate().map(|(x, &i)| Circle::new((x as f64, v[i]), 2, color.mix(0.6).filled())))
            .map_err(|e| chart_err(path, e))?
            .label(name)
            .legend(move |(x, y)| Circle::new((x + 9, y), 3, color.filled()));
    }
    chart
        .draw_series(std::iter::once(PathElement::new(vec![(ln.k as f64, 0.0), (ln.k as f64, 1.02)], BLACK.stroke_width(2))))
        .map_err(|e| chart_err(path, e))?
        .label(format!("hotspot cut (k = {})", ln.k))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(2)));
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| chart_err(path, e))?;
    root.present().map_err(|e| chart_err(path, e))
}
