//! What a run leaves for people: plots (SVG) and a JSON summary.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde::Serialize;

use crate::config::{Config, SslConfig};
use crate::data::Labelled;
use crate::metrics::Scores;
use crate::run::{EpochRecord, RunDir, RunState, best_evaluated};

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}

type EpochChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A captioned chart with epochs on x and `y` on y, its mesh and axis names drawn.
fn epoch_axes<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    caption: &str,
    epochs: usize,
    y: std::ops::Range<f64>,
    y_desc: &str,
) -> anyhow::Result<EpochChart<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.5f64..epochs as f64 + 0.5, y)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .x_labels(epochs.clamp(2, 12))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .draw()
        .map_err(plot_err)?;
    Ok(chart)
}

/// A y range that fits `values` with some room, never below 0.
fn fitted(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.15).max(0.01);
    (lo - pad).max(0.0)..hi + pad
}

/// The pictures a run's folder holds (drawn here, kept with an exported version by `export`).
pub const CURVES_SVG: &str = "curves.svg";
pub const CONFUSION_SVG: &str = "confusion.svg";
pub const THRESHOLDS_SVG: &str = "thresholds.svg";

/// Matplotlib's `tab10` colours: distinct, and readable on white.
const TAB10: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// A series drawn as a line through dots (a one-epoch run is a dot), with a legend entry.
fn draw_line(
    chart: &mut EpochChart,
    points: Vec<(f64, f64)>,
    colour: RGBColor,
    label: &str,
) -> anyhow::Result<()> {
    chart
        .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
        .map_err(plot_err)?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    chart
        .draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, colour.filled())),
        )
        .map_err(plot_err)?;
    Ok(())
}

/// The chart's legend, framed, on a translucent white box at `position`.
fn legend<'a, 'b: 'a>(
    chart: &mut EpochChart<'a, 'b>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .label_font(("sans-serif", 13))
        .position(position)
        .draw()
        .map_err(plot_err)
}

/// The corner of a chart (epochs 0..`epochs` across, `y` up) where the fewest points fall within
/// a legend's size (a third of the width, 45 % of the height), so that the legend hides the least.
fn emptiest_corner(
    points: &[(f64, f64)],
    epochs: f64,
    y: std::ops::Range<f64>,
) -> SeriesLabelPosition {
    let (w, h) = (epochs / 3.0, (y.end - y.start) * 0.45);
    let corners = [
        (
            SeriesLabelPosition::UpperRight,
            epochs - w..epochs,
            y.end - h..y.end,
        ),
        (
            SeriesLabelPosition::LowerRight,
            epochs - w..epochs,
            y.start..y.start + h,
        ),
        (SeriesLabelPosition::UpperLeft, 0.0..w, y.end - h..y.end),
        (SeriesLabelPosition::LowerLeft, 0.0..w, y.start..y.start + h),
    ];
    let inside = |(xs, ys): (&std::ops::Range<f64>, &std::ops::Range<f64>)| {
        points
            .iter()
            .filter(|(px, py)| xs.contains(px) && ys.contains(py))
            .count()
    };
    corners
        .into_iter()
        .min_by_key(|(_, xs, ys)| inside((xs, ys)))
        .map_or(SeriesLabelPosition::LowerRight, |(p, _, _)| p)
}

/// A dashed vertical line at the best epoch, named at its foot or top (on its left in the right
/// half of the chart, so the name stays inside).
fn mark_best(
    chart: &mut EpochChart,
    epoch: f64,
    epochs: usize,
    y: std::ops::Range<f64>,
    at_top: bool,
) -> anyhow::Result<()> {
    let grey = RGBColor(110, 110, 110);
    chart
        .draw_series(DashedLineSeries::new(
            vec![(epoch, y.start), (epoch, y.end)],
            6,
            4,
            grey.stroke_width(1),
        ))
        .map_err(plot_err)?;
    chart
        .draw_series(std::iter::once(Text::new(
            format!(" best epoch {epoch:.0} "),
            (
                if epoch > epochs as f64 * 0.6 {
                    epoch - (epochs as f64 * 0.22).max(0.5)
                } else {
                    epoch
                },
                if at_top {
                    y.end - (y.end - y.start) * 0.03
                } else {
                    y.start + (y.end - y.start) * 0.08
                },
            ),
            ("sans-serif", 13).into_font().color(&grey),
        )))
        .map_err(plot_err)?;
    Ok(())
}

/// `curves.svg` (train and validation loss; validation accuracy and macro-F1, the best epoch by
/// macro-F1 marked) and `confusion.svg` (the best epoch's validation confusion matrix).
pub fn plots(dir: &Path, history: &[EpochRecord], classes: &[String]) -> anyhow::Result<()> {
    let Some((best, best_val)) = best_evaluated(history) else {
        return Ok(());
    };
    let evaluated: Vec<(f64, &Scores)> = history
        .iter()
        .filter_map(|h| Some((h.epoch as f64, h.val.as_ref()?)))
        .collect();
    let run = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = dir.join(CURVES_SVG);
    let root = SVGBackend::new(&path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root
        .titled(
            &format!(
                "{run}: training curves (validation: the evaluated model, EMA weights when kept)"
            ),
            ("sans-serif", 20),
        )
        .map_err(plot_err)?;
    let (left, right) = root.split_horizontally(550);
    let epochs = history.len().max(history.last().map_or(1, |h| h.epoch));
    let epoch = |h: &EpochRecord| h.epoch as f64;
    let losses = history
        .iter()
        .flat_map(|h| std::iter::once(h.train_loss).chain(h.val_loss));
    let y = fitted(losses);
    let mut chart = epoch_axes(&left, "loss", epochs, y.clone(), "cross-entropy")?;
    draw_line(
        &mut chart,
        history.iter().map(|h| (epoch(h), h.train_loss)).collect(),
        RGBColor(214, 39, 40),
        "train (augmented, smoothed)",
    )?;
    let val: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|h| Some((epoch(h), h.val_loss?)))
        .collect();
    if !val.is_empty() {
        draw_line(&mut chart, val, RGBColor(31, 119, 180), "validation")?;
    }
    mark_best(&mut chart, epoch(best), epochs, y, false)?;
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    let y = fitted(evaluated.iter().flat_map(|(_, v)| [v.accuracy, v.macro_f1]));
    let mut chart = epoch_axes(&right, "validation scores", epochs, y.clone(), "score")?;
    draw_line(
        &mut chart,
        evaluated.iter().map(|(e, v)| (*e, v.accuracy)).collect(),
        RGBColor(31, 119, 180),
        &format!("accuracy (best epoch: {:.4})", best_val.accuracy),
    )?;
    draw_line(
        &mut chart,
        evaluated.iter().map(|(e, v)| (*e, v.macro_f1)).collect(),
        RGBColor(44, 160, 44),
        &format!("macro-F1 (best epoch: {:.4})", best_val.macro_f1),
    )?;
    mark_best(&mut chart, epoch(best), epochs, y, true)?;
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present().map_err(plot_err)?;
    confusion_plot(
        &dir.join(CONFUSION_SVG),
        &format!("{run}: validation confusion matrix, epoch {}", best.epoch),
        best_val,
        classes,
    )?;
    ssl_plot(dir, history, classes)
}

/// White for 0 to dark blue for 1.
fn shade(share: f64) -> RGBColor {
    let t = share.clamp(0.0, 1.0);
    let mix = |from: f64, to: f64| (from + (to - from) * t).round() as u8;
    RGBColor(mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0))
}

/// A validation confusion matrix (a run's epoch, or an exported graph): rows are the true class,
/// normalised to shares, with the count under each share, a colour bar, and the axes named. The
/// title is `title` followed by the accuracy and macro-F1.
pub(crate) fn confusion_plot(
    path: &Path,
    title: &str,
    val: &Scores,
    classes: &[String],
) -> anyhow::Result<()> {
    let n = classes.len();
    let cell = 72i32;
    let (left, top) = (130i32, 96i32);
    let grid = n as i32 * cell;
    let (width, height) = (left + grid + 120, top + grid + 50);
    let root = SVGBackend::new(path, (width as u32, height as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let text = |s: String, at: (i32, i32), size: i32, colour: RGBColor| {
        Text::new(s, at, ("sans-serif", size).into_font().color(&colour))
    };
    let ink = RGBColor(20, 20, 20);
    root.draw(&text(
        format!(
            "{title} (accuracy {:.4}, macro-F1 {:.4})",
            val.accuracy, val.macro_f1
        ),
        (10, 10),
        17,
        ink,
    ))
    .map_err(plot_err)?;
    root.draw(&text(
        "predicted class".into(),
        (left + grid / 2 - 50, 44),
        15,
        ink,
    ))
    .map_err(plot_err)?;
    root.draw(&Text::new(
        "true class (each row sums to 1)",
        (12, top + grid / 2 + 100),
        ("sans-serif", 15)
            .into_font()
            .transform(FontTransform::Rotate270)
            .color(&ink),
    ))
    .map_err(plot_err)?;
    let matrix = &val.confusion.matrix;
    for (i, name) in classes.iter().enumerate() {
        let i32_ = i as i32;
        root.draw(&text(
            name.clone(),
            (left + i32_ * cell + 6, top - 20),
            13,
            ink,
        ))
        .map_err(plot_err)?;
        root.draw(&text(
            name.clone(),
            (36, top + i32_ * cell + cell / 2 - 7),
            13,
            ink,
        ))
        .map_err(plot_err)?;
    }
    for (t, row) in matrix.iter().enumerate() {
        let total = row.iter().sum::<u64>().max(1) as f64;
        for (p, count) in row.iter().enumerate() {
            let share = *count as f64 / total;
            let (x, y) = (left + p as i32 * cell, top + t as i32 * cell);
            root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                shade(share).filled(),
            ))
            .map_err(plot_err)?;
            root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                RGBColor(200, 200, 200).stroke_width(1),
            ))
            .map_err(plot_err)?;
            let colour = if share > 0.5 { WHITE } else { ink };
            root.draw(&text(format!("{share:.2}"), (x + 20, y + 20), 15, colour))
                .map_err(plot_err)?;
            root.draw(&text(format!("({count})"), (x + 18, y + 42), 12, colour))
                .map_err(plot_err)?;
        }
    }
    // The colour bar: 0 at the bottom, 1 at the top.
    let (bx, steps) = (left + grid + 30, 50);
    for k in 0..steps {
        let y0 = top + grid - (k + 1) * grid / steps;
        let y1 = top + grid - k * grid / steps;
        root.draw(&Rectangle::new(
            [(bx, y0), (bx + 20, y1)],
            shade((f64::from(k) + 0.5) / f64::from(steps)).filled(),
        ))
        .map_err(plot_err)?;
    }
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let y = top + grid - (tick * f64::from(grid)) as i32;
        root.draw(&text(format!("{tick:.2}"), (bx + 26, y - 7), 12, ink))
            .map_err(plot_err)?;
    }
    root.draw(&text("share".into(), (bx - 4, top - 20), 13, ink))
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// `thresholds.svg` for the semi-supervised modes: each class's threshold at the end of each
/// epoch, and the share of pseudo-labels accepted (mask rate).
fn ssl_plot(dir: &Path, history: &[EpochRecord], classes: &[String]) -> anyhow::Result<()> {
    let points: Vec<(f64, &crate::run::SslRecord)> = history
        .iter()
        .filter_map(|h| h.ssl.as_ref().map(|s| (h.epoch as f64, s)))
        .collect();
    if points.is_empty() {
        return Ok(());
    }
    let path = dir.join(THRESHOLDS_SVG);
    let root = SVGBackend::new(&path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let run = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let root = root
        .titled(
            &format!(
                "{run}: pseudo-label threshold of each class, and the share accepted (epoch ends)"
            ),
            ("sans-serif", 20),
        )
        .map_err(plot_err)?;
    let (left, right) = root.split_horizontally(650);
    let epochs = history.len().max(history.last().map_or(1, |h| h.epoch));
    let mut chart = epoch_axes(&left, "class thresholds", epochs, 0.0..1.0, "threshold")?;
    let mut drawn = Vec::new();
    for (c, name) in classes.iter().enumerate() {
        let line: Vec<(f64, f64)> = points
            .iter()
            .map(|(e, s)| (*e, f64::from(s.thresholds.get(c).copied().unwrap_or(0.0))))
            .collect();
        drawn.extend_from_slice(&line);
        draw_line(&mut chart, line, TAB10[c % TAB10.len()], name)?;
    }
    legend(&mut chart, emptiest_corner(&drawn, epochs as f64, 0.0..1.0))?;
    let mut chart = epoch_axes(
        &right,
        "mask rate",
        epochs,
        0.0..1.0,
        "share of pseudo-labels accepted",
    )?;
    draw_line(
        &mut chart,
        points.iter().map(|(e, s)| (*e, s.mask_rate)).collect(),
        RGBColor(214, 39, 40),
        "mask rate",
    )?;
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
    /// The semi-supervised policy in full (thresholds, μ, DTM's anchor…); `null` when supervised.
    /// Two DTM variants share the mode `dtm`, so the table of an ablation reads the anchor here.
    ssl: Option<&'a SslConfig>,
}

pub fn summary(
    run: &RunDir,
    config: &Config,
    state: &RunState,
    labelled: &Labelled,
    unlabelled_images: usize,
    counts: &[usize],
) -> anyhow::Result<()> {
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
        best_val_accuracy: state.best_scores().map_or(0.0, |v| v.accuracy),
        last: state.history.last(),
        wall_seconds: saved.wall_seconds,
        seed: config.seed,
        ssl: config.mode.is_semi_supervised().then_some(&config.ssl),
    };
    std::fs::write(run.summary(), serde_json::to_vec_pretty(&summary)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_legend_goes_where_the_lines_are_not() {
        // FreeMatch-like thresholds: low everywhere, one rising into the upper right.
        let mut points: Vec<(f64, f64)> = (1..=100)
            .flat_map(|e| [(e as f64, 0.2), (e as f64, 0.1 + 0.007 * e as f64)])
            .collect();
        assert!(matches!(
            emptiest_corner(&points, 100.0, 0.0..1.0),
            SeriesLabelPosition::UpperLeft
        ));
        // DTM-like: everything between the floor of 0.5 and 0.7, nothing low.
        points = (1..=100)
            .flat_map(|e| {
                [
                    (e as f64, 0.7),
                    (e as f64, (0.7 - 0.01 * e as f64).max(0.5)),
                ]
            })
            .collect();
        assert!(matches!(
            emptiest_corner(&points, 100.0, 0.0..1.0),
            SeriesLabelPosition::LowerRight
        ));
    }
}
