//! What a run leaves for people: plots (SVG) and a JSON summary.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde::Serialize;

use crate::config::Config;
use crate::data::Labelled;
use crate::train::{EpochRecord, RunDir, RunState};

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}

type EpochChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A captioned chart with epochs on x (0 to `epochs`) and 0 to `y_max` on y, its mesh drawn.
fn epoch_axes<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    caption: &str,
    epochs: f64,
    y_max: f64,
) -> anyhow::Result<EpochChart<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(40)
        .build_cartesian_2d(0f64..epochs, 0f64..y_max)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .draw()
        .map_err(plot_err)?;
    Ok(chart)
}

/// `curves.svg` (train loss, validation accuracy and macro-F1 per epoch) and `confusion.svg`
/// (the last epoch's validation confusion matrix, rows normalised).
pub fn plots(dir: &Path, history: &[EpochRecord], classes: &[String]) -> anyhow::Result<()> {
    let Some(last) = history.last() else {
        return Ok(());
    };
    let path = dir.join("curves.svg");
    let root = SVGBackend::new(&path, (1000, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (left, right) = root.split_horizontally(500);
    let epochs = history.len() as f64 + 1.0;
    let max_loss = history.iter().map(|h| h.train_loss).fold(0.0, f64::max) * 1.1;
    let mut chart = epoch_axes(&left, "train loss", epochs, max_loss.max(1e-3))?;
    chart
        .draw_series(LineSeries::new(
            history.iter().map(|h| (h.epoch as f64, h.train_loss)),
            &RED,
        ))
        .map_err(plot_err)?;
    let mut chart = epoch_axes(&right, "validation", epochs, 1f64)?;
    chart
        .draw_series(LineSeries::new(
            history.iter().map(|h| (h.epoch as f64, h.val.accuracy)),
            &BLUE,
        ))
        .map_err(plot_err)?
        .label("accuracy")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(
            history.iter().map(|h| (h.epoch as f64, h.val.macro_f1)),
            &GREEN,
        ))
        .map_err(plot_err)?
        .label("macro-F1")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;

    let path = dir.join("confusion.svg");
    let n = classes.len();
    let cell = 60;
    let root = SVGBackend::new(&path, ((n * cell + 140) as u32, (n * cell + 60) as u32))
        .into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let matrix = &last.val.confusion.matrix;
    for (t, row) in matrix.iter().enumerate() {
        let total = row.iter().sum::<u64>().max(1) as f64;
        root.draw(&Text::new(
            classes[t].clone(),
            (5, (t * cell + 30 + cell / 2) as i32),
            ("sans-serif", 13),
        ))
        .map_err(plot_err)?;
        for (p, count) in row.iter().enumerate() {
            let share = *count as f64 / total;
            let x = (p * cell + 120) as i32;
            let y = (t * cell + 30) as i32;
            let shade = (255.0 * (1.0 - share)) as u8;
            root.draw(&Rectangle::new(
                [(x, y), (x + cell as i32, y + cell as i32)],
                RGBColor(shade, shade, 255).filled(),
            ))
            .map_err(plot_err)?;
            root.draw(&Text::new(
                format!("{:.2}", share),
                (x + 12, y + cell as i32 / 2),
                ("sans-serif", 13),
            ))
            .map_err(plot_err)?;
        }
        root.draw(&Text::new(
            classes[t].chars().take(7).collect::<String>(),
            ((t * cell + 125) as i32, 10),
            ("sans-serif", 12),
        ))
        .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    ssl_plot(dir, history, classes)
}

/// `thresholds.svg` for the semi-supervised modes: each class's threshold at the end of each
/// epoch, and the share of pseudo-labels accepted (mask rate).
fn ssl_plot(dir: &Path, history: &[EpochRecord], classes: &[String]) -> anyhow::Result<()> {
    let points: Vec<(f64, &crate::train::SslRecord)> = history
        .iter()
        .filter_map(|h| h.ssl.as_ref().map(|s| (h.epoch as f64, s)))
        .collect();
    if points.is_empty() {
        return Ok(());
    }
    let path = dir.join("thresholds.svg");
    let root = SVGBackend::new(&path, (1000, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (left, right) = root.split_horizontally(600);
    let epochs = history.len() as f64 + 1.0;
    let mut chart = epoch_axes(&left, "class thresholds", epochs, 1f64)?;
    for (c, name) in classes.iter().enumerate() {
        let colour = Palette99::pick(c).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points
                    .iter()
                    .map(|(e, s)| (*e, f64::from(s.thresholds.get(c).copied().unwrap_or(0.0)))),
                colour,
            ))
            .map_err(plot_err)?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(plot_err)?;
    let mut chart = epoch_axes(&right, "mask rate", epochs, 1f64)?;
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|(e, s)| (*e, s.mask_rate)),
            &RED,
        ))
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

#[derive(Serialize)]
struct Summary<'a> {
    data: &'a str,
    mode: String,
    train_images: usize,
    val_images: usize,
    unlabelled_images: usize,
    class_counts: &'a [usize],
    classes: &'a [String],
    epochs: usize,
    steps: usize,
    best_epoch: usize,
    best_val_macro_f1: f64,
    best_val_accuracy: f64,
    last: Option<&'a EpochRecord>,
    wall_seconds: f64,
    seed: u64,
}

pub fn summary(
    run: &RunDir,
    config: &Config,
    state: &RunState,
    labelled: &Labelled,
    unlabelled_images: usize,
    counts: &[usize],
) -> anyhow::Result<()> {
    let best = state.history.iter().find(|h| h.epoch == state.best_epoch);
    let saved: RunState = serde_json::from_slice(&std::fs::read(run.state())?)?;
    let summary = Summary {
        data: config.data.describe(),
        mode: config.mode.name().to_string(),
        train_images: labelled.train.len(),
        val_images: labelled.val.len(),
        unlabelled_images,
        class_counts: counts,
        classes: &labelled.classes,
        epochs: state.epoch,
        steps: state.step,
        best_epoch: state.best_epoch,
        best_val_macro_f1: state.best_macro_f1,
        best_val_accuracy: best.map(|b| b.val.accuracy).unwrap_or(0.0),
        last: state.history.last(),
        wall_seconds: saved.wall_seconds,
        seed: config.seed,
    };
    std::fs::write(run.summary(), serde_json::to_vec_pretty(&summary)?)?;
    Ok(())
}
