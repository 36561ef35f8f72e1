//! `--plot curves.png`: loss and the first metric per epoch, training and validation, drawn with
//! plotters into memory and written as a PNG whole or not at all. Text uses DejaVu Sans from the
//! `dejavu` crate (embedded, so no system fonts are needed).

use std::path::Path;

use plotters::prelude::*;

use super::fit::History;
use crate::error::{Error, Result};

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 420;

/// Draws `history` to `path` (PNG).
pub fn plot_history(history: &History, path: &Path) -> Result<()> {
    static FONT: std::sync::Once = std::sync::Once::new();
    FONT.call_once(|| {
        // DejaVu Sans is a valid TrueType font; a failure would only lose the labels.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
    if history.epochs.is_empty() {
        return Err(Error::Usage("--plot: no epoch to plot".into()));
    }
    let mut pixels = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    draw(history, &mut pixels).map_err(|e| Error::format(path, format!("plot: {e}")))?;
    let image = image::RgbImage::from_raw(WIDTH, HEIGHT, pixels)
        .ok_or_else(|| Error::Internal("plot buffer size".into()))?;
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| Error::format(path, format!("PNG encoding: {e}")))?;
    crate::npy::write_atomically(path, &png)
}

type Curve = (String, Vec<(f64, f64)>);

fn draw(history: &History, pixels: &mut [u8]) -> std::result::Result<(), String> {
    let root = BitMapBackend::with_buffer(pixels, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root.split_evenly((1, 2));
    let epoch = |e: &super::fit::EpochLog| (e.epoch + 1) as f64;
    let mut loss: Vec<Curve> = vec![(
        "loss".into(),
        history.epochs.iter().map(|e| (epoch(e), e.loss)).collect(),
    )];
    let val: Vec<(f64, f64)> = history
        .epochs
        .iter()
        .filter_map(|e| e.val_loss.map(|v| (epoch(e), v)))
        .collect();
    if !val.is_empty() {
        loss.push(("val_loss".into(), val));
    }
    draw_panel(&panels[0], "loss", &loss)?;
    let metric = history.epochs[0].metrics.first().map(|(n, _)| n.clone());
    match metric {
        Some(name) => {
            let k = 0;
            let mut curves: Vec<Curve> = vec![(
                name.clone(),
                history
                    .epochs
                    .iter()
                    .map(|e| (epoch(e), e.metrics[k].1))
                    .collect(),
            )];
            let val: Vec<(f64, f64)> = history
                .epochs
                .iter()
                .filter_map(|e| e.val_metrics.get(k).map(|m| (epoch(e), m.1)))
                .collect();
            if !val.is_empty() {
                curves.push((format!("val_{name}"), val));
            }
            draw_panel(&panels[1], &name, &curves)?;
        }
        None => {
            panels[1]
                .draw(&Text::new(
                    "no metrics (compile with metrics=[\"accuracy\"] or pass --metrics)",
                    (20, 200),
                    ("sans-serif", 16),
                ))
                .map_err(|e| e.to_string())?;
        }
    }
    root.present().map_err(|e| e.to_string())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    curves: &[Curve],
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    let points = curves.iter().flat_map(|(_, c)| c.iter());
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut last = 1.0f64;
    for &(x, y) in points {
        lo = lo.min(y);
        hi = hi.max(y);
        last = last.max(x);
    }
    let pad = ((hi - lo) * 0.1).max(1e-3);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(1.0..last.max(2.0), (lo - pad)..(hi + pad))
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| e.to_string())?;
    let colors = [BLUE, RED, GREEN, MAGENTA];
    for (i, (name, c)) in curves.iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(c.iter().copied(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        chart
            .draw_series(c.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}
