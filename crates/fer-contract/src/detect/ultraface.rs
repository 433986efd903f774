//! UltraFace: RGB input `[1, 3, H, W]` of a fixed size, normalised as `(x − 127) / 128`; outputs
//! `scores [1, N, 2]` (background, face) and `boxes [1, N, 4]` (corners relative to the image;
//! the graph already decodes its priors).

use ort::session::Session;

use super::{DetectError, Detection, fill_planar, run_planar};
use crate::Pixels;

/// Candidate faces scoring at least `threshold`, in pixels of `image` (RGB).
pub(super) fn detect(
    session: &mut Session,
    input: &mut Vec<f32>,
    (width, height): (u32, u32),
    image: &Pixels,
    threshold: f32,
) -> Result<Vec<Detection>, DetectError> {
    let run = |e: String| DetectError::Run(e);
    fill_planar(image, width, height, input, |v| {
        (f32::from(v) - 127.0) / 128.0
    })?;
    let shape = [1usize, 3, height as usize, width as usize];
    let outputs = run_planar(session, input, shape)?;
    let (_, scores) = outputs["scores"]
        .try_extract_tensor::<f32>()
        .map_err(|e| run(e.to_string()))?;
    let (_, boxes) = outputs["boxes"]
        .try_extract_tensor::<f32>()
        .map_err(|e| run(e.to_string()))?;
    let (w, h) = (image.width as f32, image.height as f32);
    Ok(scores
        .chunks_exact(2)
        .zip(boxes.chunks_exact(4))
        .filter(|(s, _)| s[1] >= threshold)
        .map(|(s, b)| Detection {
            x0: (b[0] * w).clamp(0.0, w),
            y0: (b[1] * h).clamp(0.0, h),
            x1: (b[2] * w).clamp(0.0, w),
            y1: (b[3] * h).clamp(0.0, h),
            score: s[1],
            landmarks: None,
        })
        .collect())
}
