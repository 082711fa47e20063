//! Latency-by-percentile plot (SVG, with plotters), in the style of HdrHistogram's plots: the
//! x axis is `-log10(1 - p)`, so 90%, 99%, 99.9% ... are evenly spaced and the tail is visible.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::report::Report;

/// x position of percentile `p` (0..=100): `-log10(1 - p/100)`, capped at 5 (99.999%).
pub fn percentile_x(p: f64) -> f64 {
    let tail = (1.0 - p / 100.0).max(1e-5);
    -tail.log10()
}

fn tick_label(x: &f64) -> String {
    // 0 -> 0%, 1 -> 90%, 2 -> 99%, 3 -> 99.9% ...
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    if *x < 0.5 {
        "0%".to_string()
    } else {
        format!("{}%", (p * 1000.0).round() / 1000.0)
    }
}

/// Draws one line per report (latency in milliseconds against percentile) into `path`.
///
/// # Errors
/// The file cannot be written.
pub fn write_svg(path: &Path, reports: &[&Report]) -> anyhow::Result<()> {
    let max_ms = reports
        .iter()
        .flat_map(|r| r.percentile_curve.iter().map(|&(_, us)| us as f64 / 1000.0))
        .fold(0.0f64, f64::max)
        .max(0.001);
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).context("drawing the plot")?;
    let mut chart = ChartBuilder::on(&root)
        .caption("latency by percentile", ("sans-serif", 22))
        .margin(16)
        // Room for the last x label ("99.999%"), which is centred on the right edge.
        .margin_right(48)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..5.0f64, 0.0..max_ms * 1.05)
        .context("drawing the plot")?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(6)
        .x_label_formatter(&tick_label)
        .draw()
        .context("drawing the plot")?;
    for (i, r) in reports.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                r.percentile_curve
                    .iter()
                    .map(|&(p, us)| (percentile_x(p), us as f64 / 1000.0)),
                color.stroke_width(2),
            ))
            .context("drawing the plot")?
            .label(r.scenario.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .context("drawing the plot")?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_spaced_by_nines() {
        assert_eq!(percentile_x(0.0), 0.0);
        assert!((percentile_x(90.0) - 1.0).abs() < 1e-9);
        assert!((percentile_x(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(percentile_x(100.0), 5.0);
        assert_eq!(tick_label(&2.0), "99%");
    }
}
