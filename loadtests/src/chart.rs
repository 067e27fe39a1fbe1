//! The latency chart: one percentile curve per series (log-scaled milliseconds against
//! percentile), drawn with plotters into a PNG. Text uses DejaVu Sans from the system.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;

use crate::report::Series;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const QUANTILES: [f64; 9] = [0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999, 1.0];

fn register_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if REGISTERED.get().is_some() {
        return Ok(());
    }
    let bytes = std::fs::read(FONT)
        .with_context(|| format!("read {FONT} (Debian: apt-get install fonts-dejavu-core)"))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font_bytes(bytes)?;
    let _ = REGISTERED.set(true);
    Ok(())
}

fn register_font_bytes(bytes: &'static [u8]) -> anyhow::Result<()> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))
}

/// Writes the percentile chart of `series` to `path`.
pub fn latency_png(path: &Path, title: &str, series: &[Series]) -> anyhow::Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_ms = series
        .iter()
        .map(|s| s.histogram.max() as f64 / 1000.0)
        .fold(1.0_f64, f64::max);
    let min_ms = series
        .iter()
        .filter(|s| !s.histogram.is_empty())
        .map(|s| s.histogram.min() as f64 / 1000.0)
        .fold(max_ms, f64::min)
        .max(0.001);
    let x_of = |q: f64| -(1.0 - q).max(1e-5).log10();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{title}: latency by percentile"),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..5.0_f64, (min_ms * 0.8..max_ms * 1.2).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("ms")
        .x_label_formatter(&|x| format!("{:.4}", 100.0 * (1.0 - 10f64.powf(-x))))
        .draw()?;
    for (i, s) in series
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.histogram.is_empty())
    {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = QUANTILES
            .iter()
            .map(|q| (x_of(*q), s.histogram.value_at_quantile(*q) as f64 / 1000.0))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

/// One panel of the resource chart: where, what, and the value of a sample it shows.
type Panel<'a, 'b> = (
    &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    &'static str,
    fn(&crate::resources::Sample) -> f64,
);

/// Writes the soak's resource chart to `path`: CPU % of one core (top) and resident memory
/// (bottom) of each stack process over the run.
pub fn resources_png(
    path: &Path,
    title: &str,
    samples: &[crate::resources::Sample],
) -> anyhow::Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (960, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(360);
    let mut processes: Vec<(String, u32)> =
        samples.iter().map(|s| (s.name.clone(), s.pid)).collect();
    processes.sort();
    processes.dedup();
    let t_max = samples.iter().map(|s| s.t).fold(1.0, f64::max);
    let top_panel: Panel<'_, '_> = (&top, "CPU, % of one core", |s| s.cpu_percent);
    let bottom_panel: Panel<'_, '_> = (&bottom, "resident memory, MiB", |s| s.rss_mib);
    for (area, what, value) in [top_panel, bottom_panel] {
        let y_max = samples.iter().map(value).fold(1.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{title}: {what}"), ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(what)
            .draw()?;
        for (i, (name, pid)) in processes.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, f64)> = samples
                .iter()
                .filter(|s| &s.name == name && s.pid == *pid)
                .map(|s| (s.t, value(s)))
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(format!("{name} ({pid})"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
