//! How a dataset frames its faces, measured with the face detector the server uses, and the
//! re-framing of unlabelled faces to the labelled data's framing.
//!
//! A framing is two numbers about the square image around a face, in units of the detector box's
//! larger side `s`: the **margin** `m`, so that the image's side is `s·(1 + 2m)` (the server's
//! `--face-margin` means the same), and the **shift** `h`, how far the image's centre lies below the
//! box's centre. A pseudo-label on a face framed unlike the labelled data is a label for another
//! task, so unlabelled faces are re-cropped to the labelled data's framing before training.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fer_contract::detect::{DetectOptions, Detection, FaceDetector, Landmarks};
use fer_contract::{Channels, Pixels};
use serde::{Deserialize, Serialize};

/// The detector's filtering while measuring and re-framing: the server's defaults for this
/// detector, with faces of any size (a 48×48 training face is small).
pub fn detect_options(detector: &FaceDetector) -> DetectOptions {
    DetectOptions {
        score_threshold: detector.kind().default_score_threshold(),
        nms_iou: fer_contract::detect::DEFAULT_NMS_IOU,
        min_face: 4.0,
    }
}

/// A framing: margin and shift, in units of the face box's larger side (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Framing {
    pub margin: f32,
    #[serde(default)]
    pub shift: f32,
}

/// Re-crop unlabelled faces to a framing before training on them (`[ssl.reframe]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReframeConfig {
    /// The UltraFace `.onnx` that measured the framing (relative to the working directory).
    pub detector: PathBuf,
    /// The labelled data's framing, as `fer-train framing` measured it with this detector.
    pub margin: f32,
    #[serde(default)]
    pub shift: f32,
}

impl ReframeConfig {
    pub fn framing(&self) -> Framing {
        Framing {
            margin: self.margin,
            shift: self.shift,
        }
    }
}

/// The faces the detector finds in `image`, in the image's pixels (boxes may reach outside it).
///
/// The image is first centred on a mid-grey 4:3 canvas twice its size: the detector expects
/// faces with some context around them and a 4:3 frame, and a tight crop (a 48×48 FER face
/// fills its image) is otherwise missed or cut at the border.
pub fn find_faces(
    detector: &mut FaceDetector,
    image: &Pixels,
) -> Result<Vec<Detection>, fer_contract::detect::DetectError> {
    let rgb = image.to_channels(Channels::Rgb);
    let side = rgb.width.max(rgb.height);
    let (cw, ch) = ((side * 8).div_ceil(3), side * 2);
    let (ox, oy) = ((cw - rgb.width) / 2, (ch - rgb.height) / 2);
    let mut canvas = vec![128u8; cw as usize * ch as usize * 3];
    let row = rgb.width as usize * 3;
    for y in 0..rgb.height as usize {
        let at = ((y + oy as usize) * cw as usize + ox as usize) * 3;
        canvas[at..at + row].copy_from_slice(&rgb.data[y * row..(y + 1) * row]);
    }
    let canvas = Pixels::new(cw, ch, Channels::Rgb, canvas);
    let options = detect_options(detector);
    let found = detector.detect(&canvas, options)?;
    Ok(found
        .into_iter()
        .map(|d| d.translated(-(ox as f32), -(oy as f32)))
        .collect())
}

/// The framing of one image around its one face.
pub fn framing_of(face: &Detection, width: u32, height: u32) -> Framing {
    let s = face.width().max(face.height()).max(1e-3);
    let side = width.max(height) as f32;
    Framing {
        margin: (side / s - 1.0) / 2.0,
        shift: (height as f32 / 2.0 - (face.y0 + face.y1) / 2.0) / s,
    }
}

/// The square of `image` that frames `face` as `framing` says, resampled to `out × out`
/// (bilinear; outside the image, its border pixels are repeated).
pub fn reframe(image: &Pixels, face: &Detection, framing: Framing, out: u32) -> Pixels {
    let s = face.width().max(face.height());
    let side = s * (1.0 + 2.0 * framing.margin);
    let cx = (face.x0 + face.x1) / 2.0;
    let cy = (face.y0 + face.y1) / 2.0 + framing.shift * s;
    let (x0, y0) = (cx - side / 2.0, cy - side / 2.0);
    let c = image.channels.count();
    let (w, h) = (image.width as i64, image.height as i64);
    let at = |x: i64, y: i64, k: usize| -> f32 {
        let (x, y) = (x.clamp(0, w - 1), y.clamp(0, h - 1));
        f32::from(image.data[(y * w + x) as usize * c + k])
    };
    let scale = side / out as f32;
    let mut data = Vec::with_capacity(out as usize * out as usize * c);
    for oy in 0..out {
        let fy = y0 + (oy as f32 + 0.5) * scale - 0.5;
        let (y, ty) = (fy.floor() as i64, fy - fy.floor());
        for ox in 0..out {
            let fx = x0 + (ox as f32 + 0.5) * scale - 0.5;
            let (x, tx) = (fx.floor() as i64, fx - fx.floor());
            for k in 0..c {
                let top = at(x, y, k) * (1.0 - tx) + at(x + 1, y, k) * tx;
                let bottom = at(x, y + 1, k) * (1.0 - tx) + at(x + 1, y + 1, k) * tx;
                data.push((top * (1.0 - ty) + bottom * ty).round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    Pixels::new(out, out, image.channels, data)
}

/// Re-frames unlabelled faces while they load: one detector session shared by the loading
/// threads (detection is the short part; decoding and resampling run in parallel).
pub struct Reframer {
    detector: Mutex<FaceDetector>,
    framing: Framing,
}

impl Reframer {
    pub fn load(config: &ReframeConfig) -> anyhow::Result<Self> {
        Ok(Reframer {
            detector: Mutex::new(load_detector(&config.detector)?),
            framing: config.framing(),
        })
    }

    /// The image's one face, framed as the labelled data is, at the crop's own resolution;
    /// `None` when the detector finds no face or several.
    pub fn reframe(&self, image: &Pixels) -> anyhow::Result<Option<Pixels>> {
        let faces = {
            let mut detector = self
                .detector
                .lock()
                .map_err(|_| anyhow::anyhow!("a face detector thread panicked"))?;
            find_faces(&mut detector, image)?
        };
        Ok(match Found::of(&faces) {
            Found::One(face) => {
                let side = face.width().max(face.height()) * (1.0 + 2.0 * self.framing.margin);
                Some(reframe(
                    image,
                    &face,
                    self.framing,
                    side.round().max(1.0) as u32,
                ))
            }
            _ => None,
        })
    }
}

/// An UltraFace session on one thread, from the repository's ONNX Runtime.
pub fn load_detector(path: &Path) -> anyhow::Result<FaceDetector> {
    let (_, environment) = fer_contract::onnx::runtime(None)?;
    Ok(FaceDetector::load(environment, path, 1)?)
}

/// What the detector made of one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Found {
    None,
    One(Detection),
    Several(usize),
}

impl Found {
    pub fn of(faces: &[Detection]) -> Found {
        match faces {
            [] => Found::None,
            [one] => Found::One(*one),
            more => Found::Several(more.len()),
        }
    }
}

/// Quartiles of a sample.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Quartiles {
    pub q1: f32,
    pub median: f32,
    pub q3: f32,
}

impl Quartiles {
    pub fn of(values: &mut [f32]) -> Option<Quartiles> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f32::total_cmp);
        let at = |q: f32| values[((values.len() - 1) as f32 * q).round() as usize];
        Some(Quartiles {
            q1: at(0.25),
            median: at(0.5),
            q3: at(0.75),
        })
    }
}

/// One dataset's measured framing.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub dataset: String,
    pub images: usize,
    pub no_face: usize,
    pub several_faces: usize,
    pub margin: Option<Quartiles>,
    pub shift: Option<Quartiles>,
    /// Median position of each of the five landmarks, as a share of the image's width and
    /// height (detectors that find landmarks only).
    pub landmarks: Option<Landmarks>,
}

impl Measurement {
    pub fn of(dataset: &str, found: &[(Found, u32, u32)]) -> Measurement {
        let (mut margins, mut shifts) = (Vec::new(), Vec::new());
        let mut points: Vec<Vec<f32>> = vec![Vec::new(); 10];
        let (mut none, mut several) = (0, 0);
        for (f, w, h) in found {
            match f {
                Found::None => none += 1,
                Found::Several(_) => several += 1,
                Found::One(d) => {
                    let framing = framing_of(d, *w, *h);
                    margins.push(framing.margin);
                    shifts.push(framing.shift);
                    for (k, [x, y]) in d.landmarks.iter().flatten().enumerate() {
                        points[2 * k].push(x / *w as f32);
                        points[2 * k + 1].push(y / *h as f32);
                    }
                }
            }
        }
        Measurement {
            dataset: dataset.to_string(),
            images: found.len(),
            no_face: none,
            several_faces: several,
            margin: Quartiles::of(&mut margins),
            shift: Quartiles::of(&mut shifts),
            landmarks: median_landmarks(&mut points),
        }
    }

    /// The median framing, when any image had one face.
    pub fn framing(&self) -> Option<Framing> {
        Some(Framing {
            margin: self.margin?.median,
            shift: self.shift?.median,
        })
    }
}

/// The per-coordinate median of landmark samples (`points[2k]`: x of landmark k, `[2k+1]`: y).
fn median_landmarks(points: &mut [Vec<f32>]) -> Option<Landmarks> {
    let mut out: Landmarks = [[0.0; 2]; 5];
    for (k, point) in out.iter_mut().enumerate() {
        for (axis, value) in point.iter_mut().enumerate() {
            *value = Quartiles::of(&mut points[2 * k + axis])?.median;
        }
    }
    Some(out)
}

/// The datasets `fer-train framing` measures: (name, archive, path prefix, labelled).
pub const DATASETS: [(&str, &str, &str, bool); 3] = [
    ("FER2013 train", "fer2013.tar.gz", "fer2013/train/", true),
    (
        "UTKFace",
        "unlabeled-faces.tar.gz",
        "unlabeled-faces/utkface/",
        false,
    ),
    (
        "LFW subset",
        "unlabeled-faces.tar.gz",
        "unlabeled-faces/lfw/",
        false,
    ),
];

/// What `fer-train framing` found.
#[derive(Debug, Clone, Serialize)]
pub struct FramingReport {
    pub detector: String,
    /// The labelled data's median framing: what `[ssl.reframe]` and the server's
    /// `--face-margin` should use.
    pub labelled: Framing,
    /// Where the labelled faces' landmarks lie, as shares of the image's side: the template the
    /// server aligns faces to (detectors with landmarks only).
    pub template: Option<Landmarks>,
    /// Each dataset as it is, then each unlabelled one re-framed (which should match `labelled`).
    pub measured: Vec<Measurement>,
}

/// Measures the framing of [`DATASETS`] on about `sample` images each, re-frames the unlabelled
/// samples to the labelled framing and measures them again, and writes `framing.json` and a
/// contact sheet (`contact-sheet.png`: per dataset a row as it is, and a row re-framed, as the
/// model sees them) into `out`.
pub fn measure(
    detector_path: &Path,
    data_dir: &Path,
    sample: usize,
    out: &Path,
) -> anyhow::Result<FramingReport> {
    let mut detector = load_detector(detector_path)?;
    let limits = fer_contract::DecodeLimits::default();
    let mut measured = Vec::new();
    let mut samples = Vec::new();
    for (name, archive, prefix, _) in DATASETS {
        let images = crate::data::sample_images(&data_dir.join(archive), prefix, sample, &limits)?;
        let mut found = Vec::with_capacity(images.len());
        for (_, image) in &images {
            let faces = find_faces(&mut detector, image)?;
            found.push((Found::of(&faces), image.width, image.height));
        }
        measured.push(Measurement::of(name, &found));
        samples.push((images, found));
    }
    let labelled = measured[0].framing().ok_or_else(|| {
        anyhow::anyhow!("the detector found no single face in the labelled sample")
    })?;
    let tile = 48;
    let mut rows: Vec<(String, Vec<Pixels>)> = Vec::new();
    for (i, (images, found)) in samples.iter().enumerate() {
        let (name, _, _, is_labelled) = DATASETS[i];
        let shown: Vec<usize> = (0..images.len())
            .filter(|&j| matches!(found[j].0, Found::One(_)))
            .take(10)
            .collect();
        let as_is = if is_labelled {
            name.to_string()
        } else {
            format!("{name} as is")
        };
        rows.push((
            as_is,
            shown.iter().map(|&j| gray(&images[j].1, tile)).collect(),
        ));
        if is_labelled {
            continue;
        }
        let mut again = Vec::new();
        let mut row = Vec::new();
        for (j, (image, (f, _, _))) in images.iter().map(|(_, p)| p).zip(found).enumerate() {
            let Found::One(face) = f else { continue };
            let side = face.width().max(face.height()) * (1.0 + 2.0 * labelled.margin);
            let crop = reframe(image, face, labelled, side.round().max(1.0) as u32);
            let faces = find_faces(&mut detector, &crop)?;
            again.push((Found::of(&faces), crop.width, crop.height));
            if shown.contains(&j) {
                row.push(gray(&crop, tile));
            }
        }
        measured.push(Measurement::of(&format!("{name}, re-framed"), &again));
        rows.push((format!("{name} re-framed"), row));
    }
    std::fs::create_dir_all(out)?;
    let title = format!(
        "Framing: labelled faces and unlabelled faces as is and re-framed (margin {:.3}, shift {:.3})",
        labelled.margin, labelled.shift
    );
    contact_sheet(&title, &rows, 96, &out.join("contact-sheet.png"))?;
    let report = FramingReport {
        detector: detector_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        labelled,
        template: measured[0].landmarks,
        measured,
    };
    std::fs::write(
        out.join("framing.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    Ok(report)
}

/// An image as the model sees it: gray, `side × side`.
fn gray(image: &Pixels, side: u32) -> Pixels {
    let g = image.to_channels(Channels::Gray);
    let face = Detection {
        x0: 0.0,
        y0: 0.0,
        x1: g.width as f32,
        y1: g.height as f32,
        score: 1.0,
        landmarks: None,
    };
    reframe(&g, &face, framing_of(&face, g.width, g.height), side)
}

/// A contact sheet: a title, then rows of equally sized tiles (gray or RGB), each with its name on
/// the left; written as PNG.
pub fn contact_sheet(
    title: &str,
    rows: &[(String, Vec<Pixels>)],
    tile: u32,
    path: &Path,
) -> anyhow::Result<()> {
    use crate::glyphs::{draw_text, text_width};
    let (gap, scale) = (4u32, 2u32);
    let label = rows
        .iter()
        .map(|(name, _)| text_width(name, scale))
        .max()
        .unwrap_or(0)
        + 3 * gap;
    let top = 7 * scale + 4 * gap;
    let columns = rows.iter().map(|(_, r)| r.len()).max().unwrap_or(0) as u32;
    let w = (label + columns * (tile + gap) + gap).max(text_width(title, scale) + 2 * gap);
    let h = top + rows.len() as u32 * (tile + gap) + gap;
    let mut sheet = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    let ink = image::Rgb([20, 20, 20]);
    draw_text(&mut sheet, title, gap, 2 * gap, scale, ink);
    for (r, (name, row)) in rows.iter().enumerate() {
        let y = top + r as u32 * (tile + gap);
        draw_text(
            &mut sheet,
            name,
            gap,
            y + (tile - 7 * scale) / 2,
            scale,
            ink,
        );
        for (c, pixels) in row.iter().enumerate() {
            let rgb = pixels.to_channels(Channels::Rgb);
            let img = image::RgbImage::from_raw(rgb.width, rgb.height, rgb.data)
                .ok_or_else(|| anyhow::anyhow!("tile of the wrong size"))?;
            let img =
                image::imageops::resize(&img, tile, tile, image::imageops::FilterType::Triangle);
            image::imageops::replace(
                &mut sheet,
                &img,
                i64::from(label + c as u32 * (tile + gap)),
                i64::from(y),
            );
        }
    }
    sheet.save(path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x0: f32, y0: f32, x1: f32, y1: f32) -> Detection {
        Detection {
            x0,
            y0,
            x1,
            y1,
            score: 0.9,
            landmarks: None,
        }
    }

    #[test]
    fn framing_is_measured_in_box_sides() {
        // a 20-px box centred in a 40-px image: margin 0.5, no shift
        let f = framing_of(&face(10.0, 10.0, 30.0, 30.0), 40, 40);
        assert!(
            (f.margin - 0.5).abs() < 1e-6 && f.shift.abs() < 1e-6,
            "{f:?}"
        );
        // the box 4 px above the centre: the image centre is 0.2 box sides below the box's
        let f = framing_of(&face(10.0, 6.0, 30.0, 26.0), 40, 40);
        assert!((f.shift - 0.2).abs() < 1e-6, "{f:?}");
    }

    #[test]
    fn reframing_to_an_images_own_framing_gives_the_image_back() {
        let (w, h) = (40u32, 40u32);
        let data: Vec<u8> = (0..w * h).map(|i| ((i * 7) % 251) as u8).collect();
        let image = Pixels::new(w, h, Channels::Gray, data.clone());
        let d = face(10.0, 6.0, 30.0, 26.0);
        let same = reframe(&image, &d, framing_of(&d, w, h), w);
        assert_eq!(same.data, data);
        // a wider margin shows more: the corners come from the repeated border
        let wide = reframe(
            &image,
            &d,
            Framing {
                margin: 1.5,
                shift: 0.0,
            },
            8,
        );
        assert_eq!((wide.width, wide.height), (8, 8));
        assert_eq!(
            wide.data[0], image.data[0],
            "top-left is the image's corner"
        );
    }

    #[test]
    fn measurement_counts_images_without_one_face() {
        let one = Found::One(face(10.0, 10.0, 30.0, 30.0));
        let m = Measurement::of(
            "x",
            &[
                (one, 40, 40),
                (Found::None, 40, 40),
                (Found::Several(2), 40, 40),
                (one, 40, 40),
            ],
        );
        assert_eq!((m.images, m.no_face, m.several_faces), (4, 1, 1));
        assert!((m.framing().unwrap().margin - 0.5).abs() < 1e-6);
        assert!(Measurement::of("empty", &[]).framing().is_none());
    }
}
