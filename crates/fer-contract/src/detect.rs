//! Face detection with the Ultra-Light-Fast face detector (UltraFace, ONNX): RGB input
//! `[1, 3, H, W]` normalised as `(x − 127) / 128`, outputs `scores [1, N, 2]` (background, face)
//! and `boxes [1, N, 4]` (corners, relative to the image; the graph already decodes its priors).
//! Post-processing here: score threshold, greedy non-maximum suppression, minimum face size.
//!
//! It lives in the contract because both halves use it: the server finds faces in photos with it,
//! and the trainer measures how its datasets frame faces with it and re-frames unlabelled faces
//! the same way (`fer-train framing`), so the crops the server classifies look like the training data.

use std::path::Path;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use crate::preprocess::resize;
use crate::{Channels, Pixels, ResizeMethod};

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("{path}: cannot load the face detector: {message}")]
    Load { path: String, message: String },
    #[error("{path}: not a face detector this server reads: {message}")]
    Mismatch { path: String, message: String },
    #[error("face detection failed: {0}")]
    Run(String),
}

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
}

impl Detection {
    pub fn width(&self) -> f32 {
        self.x1 - self.x0
    }

    pub fn height(&self) -> f32 {
        self.y1 - self.y0
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
        }
        .area();
        let union = self.area() + other.area() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }
}

/// One detector session; owned by one caller at a time.
pub struct FaceDetector {
    session: Session,
    width: u32,
    height: u32,
    input: Vec<f32>,
}

impl FaceDetector {
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
        let session = Session::builder(environment)
            .map_err(|e| load_error(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| load_error(e.to_string()))?
            .with_intra_threads(intra_op_threads.max(1))
            .map_err(|e| load_error(e.to_string()))?
            .commit_from_file(path)
            .map_err(|e| load_error(e.to_string()))?;
        let mismatch = |message: String| DetectError::Mismatch {
            path: display.clone(),
            message,
        };
        let input = session
            .inputs()
            .first()
            .ok_or_else(|| mismatch("the graph has no input".into()))?;
        let dims: Vec<i64> = match input.dtype() {
            ort::value::ValueType::Tensor { shape, .. } => shape.to_vec(),
            _ => Vec::new(),
        };
        let [_, 3, h, w] = dims[..] else {
            return Err(mismatch(format!(
                "input {:?} has shape {dims:?}; a face detector takes [1, 3, H, W]",
                input.name()
            )));
        };
        let names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        if !(names.contains(&"scores") && names.contains(&"boxes")) {
            return Err(mismatch(format!(
                "outputs {names:?}; an UltraFace detector has `scores` and `boxes`"
            )));
        }
        let (width, height) = (w.max(1) as u32, h.max(1) as u32);
        Ok(Self {
            session,
            width,
            height,
            input: vec![0.0; 3 * width as usize * height as usize],
        })
    }

    /// The detector's input size, `(width, height)`.
    pub fn input_size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Faces in an RGB image, best first.
    pub fn detect(
        &mut self,
        image: &Pixels,
        options: DetectOptions,
    ) -> Result<Vec<Detection>, DetectError> {
        let run = |e: String| DetectError::Run(e);
        let rgb = image.to_channels(Channels::Rgb);
        let small = resize(&rgb, self.width, self.height, ResizeMethod::Bilinear)
            .map_err(|e| run(e.to_string()))?;
        let plane = (self.width * self.height) as usize;
        for (i, px) in small.data.chunks_exact(3).enumerate() {
            for (c, value) in px.iter().enumerate() {
                self.input[c * plane + i] = (f32::from(*value) - 127.0) / 128.0;
            }
        }
        let shape = [1usize, 3, self.height as usize, self.width as usize];
        let tensor = TensorRef::from_array_view((shape, self.input.as_slice()))
            .map_err(|e| run(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![tensor])
            .map_err(|e| run(e.to_string()))?;
        let (_, scores) = outputs["scores"]
            .try_extract_tensor::<f32>()
            .map_err(|e| run(e.to_string()))?;
        let (_, boxes) = outputs["boxes"]
            .try_extract_tensor::<f32>()
            .map_err(|e| run(e.to_string()))?;
        let (w, h) = (image.width as f32, image.height as f32);
        let candidates = scores
            .chunks_exact(2)
            .zip(boxes.chunks_exact(4))
            .filter(|(s, _)| s[1] >= options.score_threshold)
            .map(|(s, b)| Detection {
                x0: (b[0] * w).clamp(0.0, w),
                y0: (b[1] * h).clamp(0.0, h),
                x1: (b[2] * w).clamp(0.0, w),
                y1: (b[3] * h).clamp(0.0, h),
                score: s[1],
            })
            .filter(|d| d.x1 - d.x0 >= options.min_face && d.y1 - d.y0 >= options.min_face)
            .collect();
        Ok(non_maximum_suppression(candidates, options.nms_iou))
    }
}

/// The margin around an UltraFace box that frames a face as the training data does: FER2013 and
/// FER+ faces fill their 48×48 image, whose side is the detector box's larger side (median margin
/// −0.006 with RFB-320, −0.026 with RFB-640, over 611 FER2013 train faces; `fer-train framing`,
/// training/README.md "Framing"). The server's default `--face-margin`.
pub const TRAINING_FACE_MARGIN: f32 = 0.0;

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
