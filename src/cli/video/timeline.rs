//! The per-frame timeline of a video and its files: JSON, CSV, and an SVG plot (the main face's
//! label probabilities over time, every track's labels, the cuts between shots).

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
    /// Times (s) of the frames that start a new shot; tracks end there.
    pub cuts: Vec<f64>,
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

    /// The plot: the main face's label probabilities over time, then every track as a strip
    /// coloured by its label frame by frame (darker: surer), cuts between shots as dashed lines.
    pub fn write_svg(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.svg())?;
        Ok(())
    }

    fn svg(&self) -> String {
        const W: f64 = 960.0;
        const LEFT: f64 = 110.0;
        const RIGHT: f64 = 140.0;
        const TOP: f64 = 48.0;
        const PLOT_H: f64 = 220.0;
        const ROW: f64 = 16.0;
        const MAX_ROWS: usize = 30;
        const COLORS: [&str; 10] = [
            "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf",
        ];
        let main = self.main_track();
        let frame_len = if self.fps > 0.0 { 1.0 / self.fps } else { 0.0 };
        let end = (self.frames.last().map_or(0.0, |f| f.time) + frame_len).max(1e-3);
        let x = |t: f64| LEFT + t / end * (W - LEFT - RIGHT);
        let y = |p: f64| TOP + (1.0 - p) * PLOT_H;
        // Every track: frames seen and first time; the longest MAX_ROWS, in order of appearance.
        let mut tracks: std::collections::BTreeMap<usize, (usize, f64)> = Default::default();
        for frame in &self.frames {
            for face in &frame.faces {
                let entry = tracks.entry(face.track).or_insert((0, frame.time));
                entry.0 += 1;
            }
        }
        let mut rows: Vec<(usize, usize, f64)> = tracks
            .iter()
            .map(|(id, (n, first))| (*id, *n, *first))
            .collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let hidden = rows.len().saturating_sub(MAX_ROWS);
        rows.truncate(MAX_ROWS);
        rows.sort_by(|a, b| a.2.total_cmp(&b.2).then(a.0.cmp(&b.0)));
        let strips_top = TOP + PLOT_H + 58.0;
        let height =
            strips_top + ROW * rows.len().max(1) as f64 + if hidden > 0 { 40.0 } else { 24.0 };

        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        );
        let title = match main {
            Some(id) => format!(
                "{}: expressions over time ({} {}, smoothing: {}); curves: main face (track {id})",
                self.video, self.model, self.version, self.smoothing
            ),
            None => format!("{}: no face found", self.video),
        };
        let _ = writeln!(
            svg,
            "<text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">{}</text>",
            escape(&title)
        );
        // y axis of the curves
        for tick in 0..=4 {
            let p = f64::from(tick) / 4.0;
            let _ = writeln!(
                svg,
                "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#ddd\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{p:.2}</text>",
                W - RIGHT,
                LEFT - 6.0,
                y(p) + 4.0,
                y0 = y(p)
            );
        }
        let _ = writeln!(
            svg,
            "<text transform=\"translate(24 {:.1}) rotate(-90)\" text-anchor=\"middle\">probability</text>",
            TOP + PLOT_H / 2.0
        );
        // time axis: ticks at a round step, under the curves and under the strips
        let step = nice_step(end / 8.0);
        let mut t = 0.0;
        while t <= end + 1e-9 {
            for axis_y in [TOP + PLOT_H, strips_top + ROW * rows.len().max(1) as f64] {
                let _ = writeln!(
                    svg,
                    "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{axis_y:.1}\" y2=\"{1:.1}\" stroke=\"#444\"/><text x=\"{0:.1}\" y=\"{2:.1}\" text-anchor=\"middle\">{3}</text>",
                    x(t),
                    axis_y + 5.0,
                    axis_y + 18.0,
                    format_seconds(t)
                );
            }
            t += step;
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">time (s)</text>",
            (LEFT + W - RIGHT) / 2.0,
            TOP + PLOT_H + 34.0
        );
        // the main face's curves
        for (k, _) in self.labels.iter().enumerate() {
            let points: Vec<String> = self
                .frames
                .iter()
                .filter_map(|fr| {
                    let face = fr.faces.iter().find(|f| Some(f.track) == main)?;
                    let p = face.probabilities.get(k).copied().unwrap_or(0.0);
                    Some(format!("{:.1},{:.1}", x(fr.time), y(f64::from(p))))
                })
                .collect();
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>",
                COLORS[k % COLORS.len()],
                points.join(" ")
            );
        }
        // every track, one strip each
        let _ = writeln!(
            svg,
            "<text x=\"10\" y=\"{:.1}\" font-weight=\"bold\">Every face track (colour: its label, darker: surer)</text>",
            strips_top - 8.0
        );
        for (row, (id, frames, _)) in rows.iter().enumerate() {
            let top = strips_top + ROW * row as f64;
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">track {id} ({frames})</text><rect x=\"{LEFT}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#f4f4f4\"/>",
                LEFT - 6.0,
                top + ROW - 4.0,
                W - LEFT - RIGHT,
                ROW - 2.0
            );
            for frame in &self.frames {
                let Some(face) = frame.faces.iter().find(|f| f.track == *id) else {
                    continue;
                };
                let k = self
                    .labels
                    .iter()
                    .position(|l| *l == face.label)
                    .unwrap_or(0);
                let sure = face.probabilities.iter().copied().fold(0.0f32, f32::max);
                let _ = writeln!(
                    svg,
                    "<rect x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.2}\" height=\"{:.1}\" fill=\"{}\" fill-opacity=\"{:.2}\"/>",
                    x(frame.time),
                    (x(frame.time + frame_len) - x(frame.time)).max(0.5),
                    ROW - 2.0,
                    COLORS[k % COLORS.len()],
                    0.3 + 0.7 * sure
                );
            }
        }
        if rows.is_empty() {
            let _ = writeln!(
                svg,
                "<text x=\"{LEFT}\" y=\"{:.1}\" fill=\"#666\">no face in any frame</text>",
                strips_top + 12.0
            );
        }
        if hidden > 0 {
            let _ = writeln!(
                svg,
                "<text x=\"{LEFT}\" y=\"{:.1}\" fill=\"#666\">{hidden} shorter tracks not drawn (all are in timeline.json)</text>",
                height - 8.0
            );
        }
        // cuts between shots, across both panels
        for cut in &self.cuts {
            let _ = writeln!(
                svg,
                "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1:.1}\" y2=\"{2:.1}\" stroke=\"#000\" stroke-dasharray=\"4 3\"/><text x=\"{0:.1}\" y=\"{3:.1}\" text-anchor=\"middle\" fill=\"#333\">cut</text>",
                x(*cut),
                TOP,
                strips_top + ROW * rows.len().max(1) as f64,
                TOP - 6.0
            );
        }
        // legend
        for (k, label) in self.labels.iter().enumerate() {
            let ly = TOP + 16.0 * k as f64;
            let _ = writeln!(
                svg,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"18\" height=\"10\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                W - RIGHT + 12.0,
                ly - 5.0,
                COLORS[k % COLORS.len()],
                W - RIGHT + 36.0,
                ly + 4.0,
                escape(label)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// A round step (1, 2 or 5 × a power of ten) of at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * power)
}

fn format_seconds(t: f64) -> String {
    if (t - t.round()).abs() < 1e-6 {
        format!("{t:.0}")
    } else {
        format!("{t:.1}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_ticks_fall_on_round_steps() {
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(1.2), 2.0);
        assert_eq!(nice_step(4.0), 5.0);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(0.0), 1.0);
        assert_eq!(format_seconds(2.0), "2");
        assert_eq!(format_seconds(0.5), "0.5");
    }
}
