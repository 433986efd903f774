//! The per-frame timeline of a video and its files: JSON, CSV, and an SVG plot of the label
//! probabilities over time.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::track::Rect;

#[derive(Debug, Clone, Serialize)]
pub struct FaceRecord {
    pub track: usize,
    pub x: f32,
    pub y: f32,
    pub width: f32,
    pub height: f32,
    /// Detection score (1 for a frame that is itself the face).
    pub score: f32,
    /// The most likely label after smoothing.
    pub label: String,
    /// Probability per label (in `Timeline::labels` order), after smoothing.
    pub probabilities: Vec<f32>,
}

impl FaceRecord {
    pub fn rect(&self) -> Rect {
        Rect {
            x: self.x,
            y: self.y,
            width: self.width,
            height: self.height,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FrameRecord {
    pub index: u64,
    /// Seconds from the start.
    pub time: f64,
    pub faces: Vec<FaceRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    pub video: String,
    pub model: String,
    pub version: u64,
    pub labels: Vec<String>,
    pub fps: f64,
    pub smoothing: String,
    pub detect: bool,
    pub frames: Vec<FrameRecord>,
}

impl Timeline {
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    pub fn write_csv(&self, path: &Path) -> anyhow::Result<()> {
        let mut out = String::from("frame,time,track,x,y,width,height,score,label");
        for label in &self.labels {
            let _ = write!(out, ",p_{label}");
        }
        out.push('\n');
        for frame in &self.frames {
            for f in &frame.faces {
                let _ = write!(
                    out,
                    "{},{:.3},{},{:.1},{:.1},{:.1},{:.1},{:.4},{}",
                    frame.index, frame.time, f.track, f.x, f.y, f.width, f.height, f.score, f.label
                );
                for p in &f.probabilities {
                    let _ = write!(out, ",{p:.5}");
                }
                out.push('\n');
            }
        }
        std::fs::write(path, out)?;
        Ok(())
    }

    /// The track seen in the most frames (the video's main face).
    pub fn main_track(&self) -> Option<usize> {
        let mut counts = std::collections::BTreeMap::new();
        for f in self.frames.iter().flat_map(|f| &f.faces) {
            *counts.entry(f.track).or_insert(0) += 1;
        }
        counts
            .into_iter()
            .max_by_key(|(id, n)| (*n, std::cmp::Reverse(*id)))
            .map(|(id, _)| id)
    }

    /// Label probabilities of the main track over time.
    pub fn write_svg(&self, path: &Path) -> anyhow::Result<()> {
        const W: f64 = 960.0;
        const H: f64 = 420.0;
        const LEFT: f64 = 50.0;
        const RIGHT: f64 = 150.0;
        const TOP: f64 = 30.0;
        const BOTTOM: f64 = 40.0;
        const COLORS: [&str; 10] = [
            "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf",
        ];
        let track = self.main_track();
        let points: Vec<(f64, &FaceRecord)> = self
            .frames
            .iter()
            .filter_map(|fr| {
                let face = fr.faces.iter().find(|f| Some(f.track) == track)?;
                Some((fr.time, face))
            })
            .collect();
        let end = self.frames.last().map_or(1.0, |f| f.time).max(1e-3);
        let x = |t: f64| LEFT + t / end * (W - LEFT - RIGHT);
        let y = |p: f64| TOP + (1.0 - p) * (H - TOP - BOTTOM);
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        );
        let title = match track {
            Some(id) => format!(
                "{} — face track {id}, {} smoothing",
                self.video, self.smoothing
            ),
            None => format!("{} — no face found", self.video),
        };
        let _ = writeln!(svg, "<text x=\"{LEFT}\" y=\"18\">{}</text>", escape(&title));
        for tick in 0..=4 {
            let p = f64::from(tick) / 4.0;
            let _ = writeln!(
                svg,
                "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#ddd\"/><text x=\"10\" y=\"{label_y:.1}\">{p:.2}</text>",
                W - RIGHT,
                y0 = y(p),
                label_y = y(p) + 4.0
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\">time (s), 0 – {end:.1}</text>",
            (W - RIGHT) / 2.0,
            H - 10.0
        );
        for (k, label) in self.labels.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            let line: Vec<String> = points
                .iter()
                .map(|(t, f)| {
                    let p = f.probabilities.get(k).copied().unwrap_or(0.0);
                    format!("{:.1},{:.1}", x(*t), y(f64::from(p)))
                })
                .collect();
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
                line.join(" ")
            );
            let ly = TOP + 16.0 * k as f64;
            let _ = writeln!(
                svg,
                "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\" stroke=\"{color}\" stroke-width=\"3\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                W - RIGHT + 10.0,
                W - RIGHT + 30.0,
                W - RIGHT + 35.0,
                ly + 4.0,
                escape(label)
            );
        }
        svg.push_str("</svg>\n");
        std::fs::write(path, svg)?;
        Ok(())
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
