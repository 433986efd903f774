//! Aligned face crops: the face turned upright and scaled so that its five landmarks fall where
//! the training data's faces have theirs.
//!
//! The template is measured, not assumed: `fer-train framing` runs the detector over FER2013
//! training faces and takes the median position of each landmark as a share of the image's side
//! ([`TRAINING_LANDMARKS`]). A face is aligned by the similarity transform (scale, rotation,
//! translation) that maps the template onto its landmarks with the least squared error, and the
//! square the template spans is sampled from the image through it (bilinear, edges repeated).

use super::Landmarks;
use crate::Pixels;

/// Where FER2013's faces have their landmarks, as shares of the 48×48 image's side: eye on the
/// image's left, other eye, nose tip, mouth corner on the left, other mouth corner. Measured with
/// CenterFace over 597 training faces (`fer-train framing --detector .detectors/centerface.onnx`,
/// training/framing/centerface/framing.json: medians (0.311, 0.396) (0.696, 0.386) (0.507, 0.589)
/// (0.360, 0.753) (0.671, 0.743)), then made left-right symmetric (each point averaged with its
/// mirror partner's mirror image): a face and its mirror image show the same expression, and the
/// trainer flips faces at random, so the template should not lean either way.
pub const TRAINING_LANDMARKS: Landmarks = [
    [0.3071, 0.3907],
    [0.6929, 0.3907],
    [0.5000, 0.5892],
    [0.3447, 0.7480],
    [0.6553, 0.7480],
];

/// Largest side of an aligned crop, in pixels: enough for any model input, bounded for huge faces.
const MAX_CROP_SIDE: f32 = 512.0;

/// `p = a·u + b` with `a = s·e^{iθ}` read as a complex number: scale `s`, rotation `θ`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Similarity {
    a: [f32; 2],
    b: [f32; 2],
}

impl Similarity {
    /// The least-squares similarity mapping each `from` point onto its `to` point; `None` when the
    /// `from` points all coincide.
    pub fn fit(from: &[[f32; 2]], to: &[[f32; 2]]) -> Option<Similarity> {
        let n = from.len().min(to.len()) as f32;
        if n == 0.0 {
            return None;
        }
        let mean = |points: &[[f32; 2]]| {
            let (sx, sy) = points
                .iter()
                .fold((0.0, 0.0), |(sx, sy), [x, y]| (sx + x, sy + y));
            [sx / n, sy / n]
        };
        let (mu, mp) = (mean(from), mean(to));
        let (mut re, mut im, mut norm) = (0.0f32, 0.0f32, 0.0f32);
        for (u, p) in from.iter().zip(to) {
            let (ux, uy) = (u[0] - mu[0], u[1] - mu[1]);
            let (px, py) = (p[0] - mp[0], p[1] - mp[1]);
            re += ux * px + uy * py;
            im += ux * py - uy * px;
            norm += ux * ux + uy * uy;
        }
        if norm <= f32::EPSILON {
            return None;
        }
        let a = [re / norm, im / norm];
        let b = [
            mp[0] - (a[0] * mu[0] - a[1] * mu[1]),
            mp[1] - (a[1] * mu[0] + a[0] * mu[1]),
        ];
        Some(Similarity { a, b })
    }

    pub fn apply(&self, [x, y]: [f32; 2]) -> [f32; 2] {
        [
            self.a[0] * x - self.a[1] * y + self.b[0],
            self.a[1] * x + self.a[0] * y + self.b[1],
        ]
    }

    pub fn scale(&self) -> f32 {
        self.a[0].hypot(self.a[1])
    }

    /// Rotation in degrees (positive: clockwise on screen, as image y points down).
    pub fn rotation_degrees(&self) -> f32 {
        self.a[1].atan2(self.a[0]).to_degrees()
    }
}

/// The face with `landmarks` turned upright and framed as the training data is: the square that
/// `template` (landmarks as shares of the side) spans, grown by `margin` of its side on each side,
/// sampled at about the face's own resolution. `None` when the landmarks are degenerate.
pub fn aligned_crop(
    image: &Pixels,
    landmarks: &Landmarks,
    template: &Landmarks,
    margin: f32,
) -> Option<Pixels> {
    let transform = Similarity::fit(template, landmarks)?;
    let span = 1.0 + 2.0 * margin.max(super::MIN_FACE_MARGIN);
    let side = (transform.scale() * span).clamp(1.0, MAX_CROP_SIDE).round() as u32;
    if !(transform.scale().is_finite() && side > 0 && image.width > 0 && image.height > 0) {
        return None;
    }
    let channels = image.channels.count();
    let mut data = Vec::with_capacity((side * side) as usize * channels);
    let step = span / side as f32;
    for j in 0..side {
        for i in 0..side {
            let u = (i as f32 + 0.5) * step - (span - 1.0) / 2.0;
            let v = (j as f32 + 0.5) * step - (span - 1.0) / 2.0;
            let [x, y] = transform.apply([u, v]);
            sample_bilinear(image, x - 0.5, y - 0.5, &mut data);
        }
    }
    Some(Pixels::new(side, side, image.channels, data))
}

/// Appends the image's value at `(x, y)` (pixel centres at integers), edges repeated outside it.
fn sample_bilinear(image: &Pixels, x: f32, y: f32, out: &mut Vec<u8>) {
    let channels = image.channels.count();
    let (w, h) = (image.width as i64, image.height as i64);
    let (fx, fy) = (x.floor(), y.floor());
    let (tx, ty) = (x - fx, y - fy);
    let clamp = |v: i64, max: i64| v.clamp(0, max - 1) as usize;
    let (x0, x1) = (clamp(fx as i64, w), clamp(fx as i64 + 1, w));
    let (y0, y1) = (clamp(fy as i64, h), clamp(fy as i64 + 1, h));
    let at = |x: usize, y: usize, c: usize| {
        f32::from(image.data[(y * image.width as usize + x) * channels + c])
    };
    for c in 0..channels {
        let top = at(x0, y0, c) * (1.0 - tx) + at(x1, y0, c) * tx;
        let bottom = at(x0, y1, c) * (1.0 - tx) + at(x1, y1, c) * tx;
        out.push((top * (1.0 - ty) + bottom * ty).round().clamp(0.0, 255.0) as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Channels;

    fn close(a: [f32; 2], b: [f32; 2]) -> bool {
        (a[0] - b[0]).abs() < 1e-3 && (a[1] - b[1]).abs() < 1e-3
    }

    #[test]
    fn a_fitted_similarity_recovers_scale_rotation_and_translation() {
        let (s, theta, t) = (80.0f32, 25f32.to_radians(), [200.0, 120.0]);
        let truth = Similarity {
            a: [s * theta.cos(), s * theta.sin()],
            b: t,
        };
        let moved: Vec<[f32; 2]> = TRAINING_LANDMARKS.iter().map(|p| truth.apply(*p)).collect();
        let fitted = Similarity::fit(&TRAINING_LANDMARKS, &moved).unwrap();
        assert!((fitted.scale() - s).abs() < 1e-2);
        assert!((fitted.rotation_degrees() - 25.0).abs() < 1e-3);
        assert!(close(fitted.apply([0.0, 0.0]), t));
        assert!(Similarity::fit(&[[1.0, 1.0]; 5], &moved).is_none());
    }

    /// A picture whose pixel value encodes its position, rotated 90°, comes back upright.
    #[test]
    fn a_rotated_face_is_sampled_upright_at_its_own_scale() {
        let n = 40u32;
        let mut data = Vec::new();
        for y in 0..n {
            for x in 0..n {
                data.push((x * 5) as u8);
                data.push((y * 5) as u8);
                data.push(0);
            }
        }
        let image = Pixels::new(n, n, Channels::Rgb, data);
        // The template scaled to 20 px at (10, 10), then turned 90° about the image centre.
        let upright: Vec<[f32; 2]> = TRAINING_LANDMARKS
            .iter()
            .map(|[u, v]| [10.0 + 20.0 * u, 10.0 + 20.0 * v])
            .collect();
        let turned: Landmarks = std::array::from_fn(|k| {
            let [x, y] = upright[k];
            [n as f32 - y, x] // (x, y) → (n − y, x): 90° clockwise on screen
        });
        let crop = aligned_crop(&image, &turned, &TRAINING_LANDMARKS, 0.0).unwrap();
        assert_eq!((crop.width, crop.height), (20, 20));
        // In the crop, moving right must move down the source image (its y grows), moving down
        // must move left (its x shrinks): the red channel holds x·5, green y·5.
        let px = |i: usize, j: usize| &crop.data[(j * 20 + i) * 3..(j * 20 + i) * 3 + 3];
        assert!(
            px(19, 10)[1] > px(0, 10)[1] + 80,
            "{:?} {:?}",
            px(19, 10),
            px(0, 10)
        );
        assert!(
            px(10, 19)[0] + 80 < px(10, 0)[0],
            "{:?} {:?}",
            px(10, 19),
            px(10, 0)
        );
        // A margin grows the crop around the same centre.
        let wide = aligned_crop(&image, &turned, &TRAINING_LANDMARKS, 0.25).unwrap();
        assert_eq!(wide.width, 30);
    }
}
