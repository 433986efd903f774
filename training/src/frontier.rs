//! The accuracy-for-cost frontier: exported models side by side, each scored again on its
//! validation set by ONNX Runtime and timed on the same faces in the same run, against their
//! multiply-accumulates, with published points from elsewhere beside them.
//!
//! What is measured: validation accuracy and macro-F1 (the model's argmax against the majority
//! label, as everywhere in the trainer) and faces per second of `session.run` on preprocessed
//! faces at batch 1 and at the server's largest batch, with the machine's physical cores as
//! intra-op threads (the server's default). Decoding is left out: it costs the same for every
//! model. MACs come from the network's config ([`forward_macs`]), so the INT8 variant of a network
//! has its FP32 source's count, times the passes a graph makes (test-time flip: 2; an ensemble: one
//! per member, its members of the config's network).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use fer_contract::{MANIFEST_FILE, MODEL_FILE, Manifest, Precision, Preprocessor};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde::Deserialize;

use crate::config::Config;
use crate::data::{self, Dataset, Source};
use crate::eval::{onnx_logits, score_logits};
use crate::export::FORWARD_PASSES;
use crate::model::forward_macs;

/// Passes of the network per face that a version's graph makes (2 with test-time flip folded in,
/// times the members of an ensemble).
fn passes(manifest: &Manifest) -> u64 {
    manifest
        .provenance
        .metrics
        .get(FORWARD_PASSES)
        .map_or(1, |&n| n.max(1.0) as u64)
}

/// The points of a frontier (`training/frontier/frontier.toml`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Points {
    #[serde(default)]
    pub model: Vec<ModelPoint>,
    #[serde(default)]
    pub published: Vec<PublishedPoint>,
}

/// An exported model, measured here. Paths are relative to the points file's folder.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPoint {
    /// A model version folder (manifest.json + model.onnx).
    pub dir: PathBuf,
    /// The training config of its network, for its multiply-accumulates.
    pub config: PathBuf,
}

/// A figure from a paper or another project, drawn as given, not measured here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedPoint {
    pub label: String,
    /// `fer2013` or `ferplus`: the dataset its accuracy is on.
    pub data: String,
    pub macs_millions: f64,
    pub accuracy: f64,
    /// Where the figures come from and how they differ from ours.
    pub source: String,
}

/// One measured model.
#[derive(Debug, Clone)]
pub struct Measured {
    pub label: String,
    pub data: Source,
    pub precision: Precision,
    pub macs: u64,
    pub accuracy: f64,
    pub macro_f1: f64,
    /// The accuracy its manifest records (what it was published with).
    pub recorded_accuracy: Option<f64>,
    pub batch1_per_s: f64,
    pub batch_per_s: f64,
}

pub struct FrontierRequest<'a> {
    pub points: &'a Path,
    pub data_dir: &'a Path,
    pub ort_dylib: Option<&'a Path>,
    /// The large batch faces are timed at (the server's `--max-batch-size`).
    pub batch: usize,
    pub out_dir: &'a Path,
}

pub fn load_points(path: &Path) -> anyhow::Result<Points> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Measures every model of the points file, then writes `frontier.svg` and `frontier.md` into
/// `out_dir`.
pub fn frontier(req: &FrontierRequest) -> anyhow::Result<Vec<Measured>> {
    let points = load_points(req.points)?;
    let base = req.points.parent().unwrap_or(Path::new("."));
    let (_, environment) = fer_contract::onnx::runtime(req.ort_dylib)?;
    let threads = num_cpus::get_physical().max(1);
    let mut validation: Vec<(Source, Dataset)> = Vec::new();
    let mut measured = Vec::new();
    for point in &points.model {
        let dir = base.join(&point.dir);
        let manifest = Manifest::load(&dir.join(MANIFEST_FILE))?;
        let source = Source::of_labels(&manifest.labels).with_context(|| {
            format!(
                "{}: its labels are neither FER2013's nor FER+'s",
                dir.display()
            )
        })?;
        let config = Config::load(&base.join(&point.config))?;
        let preprocessor = Preprocessor::new(&manifest, fer_contract::DecodeLimits::default());
        if !validation.iter().any(|(s, _)| *s == source) {
            let side = (
                manifest.input.width,
                manifest.input.height,
                manifest.input.channels,
            );
            let labelled = data::load_labelled(source, req.data_dir, &preprocessor, side)?;
            validation.push((source, labelled.val));
        }
        let val = validation
            .iter()
            .find_map(|(s, d)| (*s == source).then_some(d))
            .context("validation set")?;
        let failed = |e: ort::Error| anyhow::anyhow!("{}: {e}", dir.display());
        let mut session = Session::builder(environment)
            .map_err(failed)?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| failed(e.into()))?
            .with_intra_threads(threads)
            .map_err(|e| failed(e.into()))?
            .commit_from_file(dir.join(MODEL_FILE))
            .map_err(failed)?;
        let classes = manifest.labels.len();
        // The first pass warms the session up and gives the scores; the next ones are timed.
        let logits = onnx_logits(&mut session, val, &preprocessor, req.batch)?;
        let (scores, _) = score_logits(&logits, val, classes)?;
        let per_s = |session: &mut Session, batch: usize| -> anyhow::Result<f64> {
            let started = Instant::now();
            onnx_logits(session, val, &preprocessor, batch)?;
            Ok(val.len() as f64 / started.elapsed().as_secs_f64())
        };
        let batch_per_s = per_s(&mut session, req.batch)?;
        let batch1_per_s = per_s(&mut session, 1)?;
        let one = Measured {
            label: format!("{}/{}", manifest.name, manifest.version),
            data: source,
            precision: manifest.precision,
            macs: forward_macs(
                &config.model,
                manifest.input.channels.count(),
                manifest.input.height as usize,
                classes,
            ) * passes(&manifest),
            accuracy: scores.accuracy,
            macro_f1: scores.macro_f1,
            recorded_accuracy: manifest.provenance.metrics.get("val_accuracy").copied(),
            batch1_per_s,
            batch_per_s,
        };
        eprintln!(
            "{}: {:.1} M MACs, accuracy {:.4} (recorded {}), macro-F1 {:.4}, {:.0} faces/s at batch {}, {:.0} at batch 1",
            one.label,
            one.macs as f64 / 1e6,
            one.accuracy,
            one.recorded_accuracy
                .map_or("–".to_string(), |a| format!("{a:.4}")),
            one.macro_f1,
            one.batch_per_s,
            req.batch,
            one.batch1_per_s
        );
        measured.push(one);
    }
    std::fs::create_dir_all(req.out_dir)?;
    plot(
        &req.out_dir.join("frontier.svg"),
        &measured,
        &points.published,
        req.batch,
    )?;
    std::fs::write(
        req.out_dir.join("frontier.md"),
        table(&measured, &points.published, req.batch),
    )?;
    Ok(measured)
}

fn data_name(source: Source) -> &'static str {
    match source {
        Source::Fer2013 => "FER2013 val",
        Source::Ferplus => "FER+ valid",
    }
}

/// The measured models and the published points as a markdown table.
pub fn table(measured: &[Measured], published: &[PublishedPoint], batch: usize) -> String {
    let mut out = format!(
        "| model | precision | validation set | M MACs a face | accuracy | macro-F1 | faces/s, batch {batch} | faces/s, batch 1 |\n|---|---|---|---|---|---|---|---|\n"
    );
    for m in measured {
        out.push_str(&format!(
            "| `{}` | {} | {} | {:.1} | {:.2} % | {:.3} | {:.0} | {:.0} |\n",
            m.label,
            m.precision.as_str(),
            data_name(m.data),
            m.macs as f64 / 1e6,
            m.accuracy * 100.0,
            m.macro_f1,
            m.batch_per_s,
            m.batch1_per_s
        ));
    }
    for p in published {
        out.push_str(&format!(
            "| {} (published) | – | {} | {:.1} | {:.1} % | – | – | – |\n",
            p.label,
            p.data,
            p.macs_millions,
            p.accuracy * 100.0
        ));
    }
    out
}

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}

fn colour(data: &str) -> RGBColor {
    if data.eq_ignore_ascii_case("fer2013") || data.starts_with("FER2013") {
        RGBColor(255, 127, 14)
    } else {
        RGBColor(31, 119, 180)
    }
}

/// Two panels: accuracy against MACs a face (published points too), and against measured faces
/// per second at the large batch; filled dots FP32, rings INT8, grey triangles published.
fn plot(
    path: &Path,
    measured: &[Measured],
    published: &[PublishedPoint],
    batch: usize,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1200, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (title, body) = root.split_vertically(70);
    title
        .titled(
            "Accuracy for cost: every model measured in one run on this machine",
            ("sans-serif", 20),
        )
        .map_err(plot_err)?;
    legend(&title)?;
    let (left, right) = body.split_horizontally(600);
    let accuracies = measured
        .iter()
        .map(|m| m.accuracy)
        .chain(published.iter().map(|p| p.accuracy));
    let (lo, hi) = span(accuracies);
    let y = ((lo - 0.02).max(0.0) * 100.0)..((hi + 0.02).min(1.0) * 100.0);

    let macs = measured
        .iter()
        .map(|m| m.macs as f64 / 1e6)
        .chain(published.iter().map(|p| p.macs_millions));
    let (mlo, mhi) = span(macs);
    // An INT8 variant has its source's network: on this panel it would sit on its source's dot.
    let points: Vec<Point> = measured
        .iter()
        .filter(|m| m.precision == Precision::Fp32)
        .map(|m| {
            (
                m.macs as f64 / 1e6,
                m.accuracy * 100.0,
                m.label.clone(),
                colour(data_name(m.data)),
                Shape::of(m.precision),
            )
        })
        .chain(published.iter().map(|p| {
            (
                p.macs_millions,
                p.accuracy * 100.0,
                format!("{} (published)", p.label),
                RGBColor(110, 110, 110),
                Shape::Published,
            )
        }))
        .collect();
    panel(
        &left,
        "Validation accuracy against multiply-accumulates",
        "M multiply-accumulates a face (log scale)",
        (mlo / 1.5)..(mhi * 1.5),
        y.clone(),
        &points,
    )?;

    let speeds: Vec<Point> = measured
        .iter()
        .map(|m| {
            (
                m.batch_per_s,
                m.accuracy * 100.0,
                m.label.clone(),
                colour(data_name(m.data)),
                Shape::of(m.precision),
            )
        })
        .collect();
    // Log scale, as the other panel: the speeds span more than tenfold, and on a linear axis the slow,
    // accurate models crowd into its first fifth with their labels over each other.
    let (slowest, fastest) = span(speeds.iter().map(|p| p.0));
    panel(
        &right,
        &format!("Validation accuracy against measured speed (batch {batch})"),
        "faces per second, ONNX Runtime on this CPU (log scale)",
        (slowest / 1.5)..(fastest * 1.6),
        y,
        &speeds,
    )?;
    root.present().map_err(plot_err)?;
    Ok(())
}

#[derive(Clone, Copy)]
enum Shape {
    Fp32,
    Int8,
    Published,
}

impl Shape {
    fn of(precision: Precision) -> Self {
        match precision {
            Precision::Fp32 => Shape::Fp32,
            Precision::Int8 => Shape::Int8,
        }
    }
}

/// The legend, once for both panels, in a row under the title: what colours and shapes mean.
fn legend(area: &DrawingArea<SVGBackend, plotters::coord::Shift>) -> anyhow::Result<()> {
    let entries = [
        (
            "FER+ model (FER+ valid, majority label)",
            RGBColor(31, 119, 180),
            Shape::Fp32,
        ),
        (
            "FER2013 model (FER2013 val)",
            RGBColor(255, 127, 14),
            Shape::Fp32,
        ),
        ("INT8 variant", RGBColor(60, 60, 60), Shape::Int8),
        (
            "published, not measured here",
            RGBColor(110, 110, 110),
            Shape::Published,
        ),
    ];
    let mut x = 170;
    for (text, colour, shape) in entries {
        let at = (x, 52);
        match shape {
            Shape::Fp32 => area.draw(&Circle::new(at, 5, colour.filled())),
            Shape::Int8 => area.draw(&Circle::new(at, 5, colour.stroke_width(2))),
            Shape::Published => area.draw(&TriangleMarker::new(at, 6, colour.filled())),
        }
        .map_err(plot_err)?;
        area.draw(&Text::new(
            text,
            (x + 10, 45),
            ("sans-serif", 13).into_font(),
        ))
        .map_err(plot_err)?;
        x += 30 + 7 * text.len() as i32;
    }
    Ok(())
}

type Point = (f64, f64, String, RGBColor, Shape);

fn panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    caption: &str,
    x_desc: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    points: &[Point],
) -> anyhow::Result<()> {
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, ("sans-serif", 16))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(56);
    let (bold, light) = log_ticks(&x);
    let x = x.log_scale().with_key_points(bold).with_light_points(light);
    let mut chart = builder.build_cartesian_2d(x, y).map_err(plot_err)?;
    mesh(&mut chart, x_desc)?;
    draw_points(&mut chart, points)
}

/// The smallest and largest of non-negative values (`(∞, 0)` for none).
fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, 0.0), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// Tick marks for a log axis: labelled at 1, 2 and 5 times each power of ten inside `range`, light
/// grid lines at every integer multiple (plotters' own log axis labels only the powers of ten, which
/// left the speed panel with one number under it).
fn log_ticks(range: &std::ops::Range<f64>) -> (Vec<f64>, Vec<f64>) {
    let (mut bold, mut light) = (Vec::new(), Vec::new());
    let mut decade = 10f64.powi(range.start.log10().floor() as i32);
    while decade <= range.end {
        for m in 1..10 {
            let v = decade * f64::from(m);
            if range.contains(&v) {
                light.push(v);
                if matches!(m, 1 | 2 | 5) {
                    bold.push(v);
                }
            }
        }
        decade *= 10.0;
    }
    (bold, light)
}

fn mesh<'a, X>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, RangedCoordf64>>,
    x_desc: &str,
) -> anyhow::Result<()>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("validation accuracy, %")
        .x_labels(8)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(RGBColor(240, 240, 240))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .draw()
        .map_err(plot_err)
}

fn draw_points<'a, X>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, RangedCoordf64>>,
    points: &[Point],
) -> anyhow::Result<()>
where
    X: Ranged<ValueType = f64>,
{
    for (i, (px, py, label, colour, shape)) in points.iter().enumerate() {
        let at = (*px, *py);
        match shape {
            Shape::Fp32 => chart.draw_series(std::iter::once(Circle::new(at, 6, colour.filled()))),
            Shape::Int8 => {
                chart.draw_series(std::iter::once(Circle::new(at, 6, colour.stroke_width(2))))
            }
            Shape::Published => {
                chart.draw_series(std::iter::once(TriangleMarker::new(at, 8, colour.filled())))
            }
        }
        .map_err(plot_err)?;
        chart
            .draw_series(std::iter::once(
                EmptyElement::at(at)
                    + Text::new(
                        label.clone(),
                        (9, if label_below(points, i) { 6 } else { -16 }),
                        ("sans-serif", 12).into_font().color(colour),
                    ),
            ))
            .map_err(plot_err)?;
    }
    Ok(())
}

/// Whether point `i`'s label goes below it rather than above: when another point sits close by
/// (within a point of accuracy and 25 % along x) and higher, so each label stays beside its own
/// marker (an FP32 model and its INT8 variant are such pairs, either one the more accurate).
fn label_below(points: &[Point], i: usize) -> bool {
    let (x, y, ..) = points[i];
    points.iter().enumerate().any(|(j, &(qx, qy, ..))| {
        let near = (qy - y).abs() < 1.0 && qx / x < 1.25 && x / qx < 1.25;
        j != i && near && (qy > y || (qy == y && j < i))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_is_the_least_and_greatest_value() {
        assert_eq!(span([3.0, 0.5, 7.25, 2.0].into_iter()), (0.5, 7.25));
        assert_eq!(span(std::iter::empty()), (f64::INFINITY, 0.0));
    }

    #[test]
    fn log_ticks_label_one_two_five_of_each_decade_inside_the_range() {
        let (bold, light) = log_ticks(&(139.0..5042.0));
        assert_eq!(bold, vec![200.0, 500.0, 1000.0, 2000.0, 5000.0]);
        assert_eq!(light.first(), Some(&200.0));
        assert_eq!(light.last(), Some(&5000.0));
        assert_eq!(light.len(), 8 + 5, "200..900, then 1000..5000");
        let (bold, _) = log_ticks(&(6.8..791.0));
        assert_eq!(bold, vec![10.0, 20.0, 50.0, 100.0, 200.0, 500.0]);
    }

    #[test]
    fn of_two_close_points_the_lower_ones_label_goes_below() {
        let p = |x: f64, y: f64| (x, y, String::new(), BLACK, Shape::Fp32);
        let points = [
            p(320.0, 66.9),
            p(318.0, 67.15),
            p(1200.0, 66.9),
            p(600.0, 83.0),
        ];
        assert!(label_below(&points, 0), "lower of the close pair");
        assert!(!label_below(&points, 1), "higher of the close pair");
        assert!(!label_below(&points, 2), "alone at its x");
        assert!(!label_below(&points, 3), "alone at its y");
    }

    #[test]
    fn the_points_file_of_the_repository_parses_and_names_existing_configs() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("frontier/frontier.toml");
        let points = load_points(&file).unwrap();
        assert!(points.model.len() >= 2);
        for p in &points.model {
            let config = file.parent().unwrap().join(&p.config);
            Config::load(&config).unwrap_or_else(|e| panic!("{}: {e}", config.display()));
        }
        assert!(points.published.iter().all(|p| p.accuracy < 1.0));
    }

    fn measured(
        label: &str,
        data: Source,
        precision: Precision,
        macs: f64,
        acc: f64,
        speed: f64,
    ) -> Measured {
        Measured {
            label: label.into(),
            data,
            precision,
            macs: (macs * 1e6) as u64,
            accuracy: acc,
            macro_f1: acc - 0.2,
            recorded_accuracy: Some(acc),
            batch1_per_s: speed * 0.8,
            batch_per_s: speed,
        }
    }

    /// Every point is named on the picture; an INT8 variant only on the speed panel; the table
    /// has a row per model and per published point.
    #[test]
    fn the_picture_and_the_table_name_every_point() {
        let models = [
            measured(
                "ferplus/2",
                Source::Ferplus,
                Precision::Fp32,
                117.5,
                0.841,
                240.0,
            ),
            measured(
                "ferplus-int8/2",
                Source::Ferplus,
                Precision::Int8,
                117.5,
                0.840,
                266.0,
            ),
            measured(
                "ferplus-small/1",
                Source::Ferplus,
                Precision::Fp32,
                29.5,
                0.825,
                820.0,
            ),
            measured(
                "fer2013/1",
                Source::Fer2013,
                Precision::Fp32,
                117.5,
                0.669,
                265.0,
            ),
        ];
        let published = [PublishedPoint {
            label: "fer mini-Xception".into(),
            data: "fer2013".into(),
            macs_millions: 10.2,
            accuracy: 0.66,
            source: "a paper".into(),
        }];
        let dir = std::env::var_os("FER_TRAIN_FRONTIER_TEST_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let path = dir.join(format!("frontier-test-{}.svg", std::process::id()));
        plot(&path, &models, &published, 32).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        for m in &models {
            let times = svg.lines().filter(|l| l.trim() == m.label).count();
            let expected = if m.precision == Precision::Int8 { 1 } else { 2 };
            assert_eq!(times, expected, "{}", m.label);
        }
        assert!(svg.contains("fer mini-Xception (published)"));
        assert!(svg.contains("Accuracy for cost"));
        let table = table(&models, &published, 32);
        assert_eq!(table.lines().count(), 2 + models.len() + published.len());
        if std::env::var_os("FER_TRAIN_FRONTIER_TEST_OUT").is_none() {
            std::fs::remove_file(&path).unwrap();
        }
    }
}
