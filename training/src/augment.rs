//! Augmentations on `u8` images at the model's size, before normalisation.
//!
//! Weak: random horizontal flip, a small affine warp (rotation, scale, translation: a random crop
//! with padding). Strong: the weak warp, then two RandAugment-style photometric/geometric ops that
//! keep a face a face, then cutout (random erasing of a square).

use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Largest rotation, degrees.
    #[serde(default = "d_rotation")]
    pub max_rotation: f32,
    /// Largest relative change of scale.
    #[serde(default = "d_scale")]
    pub max_scale: f32,
    /// Largest shift, as a fraction of the side (4/48 ≈ random crop with 4 px of padding).
    #[serde(default = "d_shift")]
    pub max_shift: f32,
    /// Number of RandAugment ops in the strong view.
    #[serde(default = "d_ops")]
    pub strong_ops: usize,
    /// Side of the cutout square in the strong view, as a fraction of the image side.
    #[serde(default = "d_cutout")]
    pub cutout: f32,
}

fn d_rotation() -> f32 {
    10.0
}
fn d_scale() -> f32 {
    0.1
}
fn d_shift() -> f32 {
    0.1
}
fn d_ops() -> usize {
    2
}
fn d_cutout() -> f32 {
    0.4
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            max_rotation: d_rotation(),
            max_scale: d_scale(),
            max_shift: d_shift(),
            strong_ops: d_ops(),
            cutout: d_cutout(),
        }
    }
}

/// An image being augmented: interleaved `u8`, `channels` per pixel.
pub struct View<'a> {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: &'a mut [u8],
}

/// The random flip and affine parameters both views start from, drawn in one fixed order.
struct WarpDraw {
    flip: bool,
    angle: f32,
    scale: f32,
    dx: f32,
    dy: f32,
}

impl WarpDraw {
    fn new(cfg: &AugmentConfig, width: usize, height: usize, rng: &mut impl Rng) -> Self {
        Self {
            flip: rng.random_bool(0.5),
            angle: rng
                .random_range(-cfg.max_rotation..=cfg.max_rotation)
                .to_radians(),
            scale: 1.0 + rng.random_range(-cfg.max_scale..=cfg.max_scale),
            dx: rng.random_range(-cfg.max_shift..=cfg.max_shift) * width as f32,
            dy: rng.random_range(-cfg.max_shift..=cfg.max_shift) * height as f32,
        }
    }
}

/// Weak view: flip + small affine warp, written into `out` (same size as `src`).
pub fn weak(
    cfg: &AugmentConfig,
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    rng: &mut impl Rng,
    out: &mut [u8],
) {
    let w = WarpDraw::new(cfg, width, height, rng);
    let affine = Affine::new(w.angle, w.scale, 0.0, w.dx, w.dy, w.flip, width, height);
    warp(src, width, height, channels, affine, out);
}

/// Strong view: the weak warp, `strong_ops` RandAugment ops, then cutout.
pub fn strong(
    cfg: &AugmentConfig,
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    rng: &mut impl Rng,
    out: &mut [u8],
) {
    let WarpDraw {
        flip,
        mut angle,
        scale,
        mut dx,
        mut dy,
    } = WarpDraw::new(cfg, width, height, rng);
    let mut shear = 0.0;
    // Geometric RandAugment ops fold into the one warp.
    let mut photometric = Vec::new();
    for _ in 0..cfg.strong_ops {
        let magnitude: f32 = rng.random_range(0.1..1.0);
        match rng.random_range(0..10) {
            0 => angle += (rng.random_range(-1.0..1.0f32) * 20.0 * magnitude).to_radians(),
            1 => shear += rng.random_range(-1.0..1.0f32) * 0.3 * magnitude,
            2 => dx += rng.random_range(-1.0..1.0f32) * 0.15 * magnitude * width as f32,
            3 => dy += rng.random_range(-1.0..1.0f32) * 0.15 * magnitude * height as f32,
            op => photometric.push((op, magnitude, rng.random_bool(0.5))),
        }
    }
    warp(
        src,
        width,
        height,
        channels,
        Affine::new(angle, scale, shear, dx, dy, flip, width, height),
        out,
    );
    let mut view = View {
        width,
        height,
        channels,
        data: out,
    };
    for (op, magnitude, sign) in photometric {
        match op {
            4 => brightness(
                &mut view,
                if sign {
                    1.0 + 0.6 * magnitude
                } else {
                    1.0 - 0.6 * magnitude
                },
            ),
            5 => contrast(
                &mut view,
                if sign {
                    1.0 + 0.6 * magnitude
                } else {
                    1.0 - 0.6 * magnitude
                },
            ),
            6 => equalize(&mut view),
            7 => posterize(&mut view, 8 - (magnitude * 4.0) as u32),
            8 => sharpness(&mut view, if sign { 1.0 + magnitude } else { -magnitude }),
            _ => gamma(
                &mut view,
                if sign {
                    1.0 + magnitude
                } else {
                    1.0 / (1.0 + magnitude)
                },
            ),
        }
    }
    let side = ((width.min(height) as f32) * cfg.cutout * rng.random_range(0.5..1.0f32)) as usize;
    if side > 0 {
        let cx = rng.random_range(0..width);
        let cy = rng.random_range(0..height);
        cutout(&mut view, cx, cy, side, 127);
    }
}

/// Output pixel → source pixel map. Forward: rotate, scale and shear about the centre, shift, then
/// mirror; [`Affine::source`] applies the inverse.
#[derive(Debug, Clone, Copy)]
pub struct Affine {
    inverse: [f32; 4],
    centre: [f32; 2],
    shift: [f32; 2],
    flip: bool,
    width: f32,
}

impl Affine {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        angle: f32,
        scale: f32,
        shear: f32,
        dx: f32,
        dy: f32,
        flip: bool,
        width: usize,
        height: usize,
    ) -> Self {
        let (s, c) = angle.sin_cos();
        let a = [
            c * scale,
            (c * shear - s) * scale,
            s * scale,
            (s * shear + c) * scale,
        ];
        let det = a[0] * a[3] - a[1] * a[2];
        Self {
            inverse: [a[3] / det, -a[1] / det, -a[2] / det, a[0] / det],
            centre: [(width as f32 - 1.0) / 2.0, (height as f32 - 1.0) / 2.0],
            shift: [dx, dy],
            flip,
            width: width as f32,
        }
    }

    fn source(&self, x: f32, y: f32) -> (f32, f32) {
        let x = if self.flip { self.width - 1.0 - x } else { x };
        let px = x - self.centre[0] - self.shift[0];
        let py = y - self.centre[1] - self.shift[1];
        let m = &self.inverse;
        (
            m[0] * px + m[1] * py + self.centre[0],
            m[2] * px + m[3] * py + self.centre[1],
        )
    }
}

/// Bilinear warp with replicated borders.
pub fn warp(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    affine: Affine,
    out: &mut [u8],
) {
    let at = |x: isize, y: isize, ch: usize| -> f32 {
        let x = x.clamp(0, width as isize - 1) as usize;
        let y = y.clamp(0, height as isize - 1) as usize;
        f32::from(src[(y * width + x) * channels + ch])
    };
    for y in 0..height {
        for x in 0..width {
            let (sx, sy) = affine.source(x as f32, y as f32);
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as isize, y0 as isize);
            for ch in 0..channels {
                let top = at(x0, y0, ch) * (1.0 - fx) + at(x0 + 1, y0, ch) * fx;
                let bottom = at(x0, y0 + 1, ch) * (1.0 - fx) + at(x0 + 1, y0 + 1, ch) * fx;
                out[(y * width + x) * channels + ch] =
                    (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

fn map(view: &mut View, f: impl Fn(f32) -> f32) {
    let lut: Vec<u8> = (0..256)
        .map(|v| f(v as f32).round().clamp(0.0, 255.0) as u8)
        .collect();
    for v in view.data.iter_mut() {
        *v = lut[*v as usize];
    }
}

fn mean(view: &View) -> f32 {
    view.data.iter().map(|v| f32::from(*v)).sum::<f32>() / view.data.len().max(1) as f32
}

pub fn brightness(view: &mut View, factor: f32) {
    map(view, |v| v * factor);
}

pub fn contrast(view: &mut View, factor: f32) {
    let m = mean(view);
    map(view, |v| m + (v - m) * factor);
}

pub fn gamma(view: &mut View, g: f32) {
    map(view, |v| 255.0 * (v / 255.0).powf(g));
}

pub fn posterize(view: &mut View, bits: u32) {
    let mask = !((1u16 << (8 - bits.clamp(1, 8))) - 1) as u8;
    for v in view.data.iter_mut() {
        *v &= mask;
    }
}

/// Histogram equalisation per channel.
pub fn equalize(view: &mut View) {
    let c = view.channels;
    for ch in 0..c {
        let mut hist = [0usize; 256];
        for v in view.data.iter().skip(ch).step_by(c) {
            hist[*v as usize] += 1;
        }
        let total: usize = hist.iter().sum();
        let first = hist.iter().copied().find(|h| *h > 0).unwrap_or(0);
        if total <= first {
            continue;
        }
        let mut lut = [0u8; 256];
        let mut acc = 0;
        for (i, h) in hist.iter().enumerate() {
            acc += h;
            lut[i] = (((acc.saturating_sub(first)) as f32 / (total - first) as f32) * 255.0).round()
                as u8;
        }
        for v in view.data.iter_mut().skip(ch).step_by(c) {
            *v = lut[*v as usize];
        }
    }
}

/// Blend with a 3×3 box blur: `amount` > 0 sharpens, < 0 blurs.
pub fn sharpness(view: &mut View, amount: f32) {
    let (w, h, c) = (view.width, view.height, view.channels);
    let src = view.data.to_vec();
    for y in 1..h.saturating_sub(1) {
        for x in 1..w.saturating_sub(1) {
            for ch in 0..c {
                let mut sum = 0.0;
                for ky in 0..3 {
                    for kx in 0..3 {
                        sum += f32::from(src[((y + ky - 1) * w + x + kx - 1) * c + ch]);
                    }
                }
                let blurred = sum / 9.0;
                let v = f32::from(src[(y * w + x) * c + ch]);
                view.data[(y * w + x) * c + ch] =
                    (v + amount * (v - blurred)).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// Fills a `side × side` square centred at (cx, cy), clipped to the image, with `value`.
pub fn cutout(view: &mut View, cx: usize, cy: usize, side: usize, value: u8) {
    let half = side / 2;
    let (x0, y0) = (cx.saturating_sub(half), cy.saturating_sub(half));
    let (x1, y1) = (
        (cx + side - half).min(view.width),
        (cy + side - half).min(view.height),
    );
    for y in y0..y1 {
        for x in x0..x1 {
            for ch in 0..view.channels {
                view.data[(y * view.width + x) * view.channels + ch] = value;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn ramp(w: usize, h: usize) -> Vec<u8> {
        (0..w * h)
            .map(|i| ((i % w) * 255 / (w - 1)) as u8)
            .collect()
    }

    #[test]
    fn identity_warp_is_exact_and_flip_mirrors() {
        let src = ramp(8, 4);
        let mut out = vec![0; 32];
        warp(
            &src,
            8,
            4,
            1,
            Affine::new(0.0, 1.0, 0.0, 0.0, 0.0, false, 8, 4),
            &mut out,
        );
        assert_eq!(out, src);
        warp(
            &src,
            8,
            4,
            1,
            Affine::new(0.0, 1.0, 0.0, 0.0, 0.0, true, 8, 4),
            &mut out,
        );
        for y in 0..4 {
            for x in 0..8 {
                assert_eq!(out[y * 8 + x], src[y * 8 + 7 - x]);
            }
        }
    }

    #[test]
    fn shift_moves_content_by_whole_pixels() {
        let src = ramp(8, 8);
        let mut out = vec![0; 64];
        warp(
            &src,
            8,
            8,
            1,
            Affine::new(0.0, 1.0, 0.0, 2.0, 0.0, false, 8, 8),
            &mut out,
        );
        // output x samples source x - 2: content moved right by two pixels
        assert_eq!(out[8 + 5], src[8 + 3]);
        assert_eq!(out[8], src[8], "border replicated");
    }

    #[test]
    fn quarter_turn_rotates() {
        let mut src = vec![0u8; 9];
        src[1] = 255; // top middle
        let mut out = vec![0; 9];
        warp(
            &src,
            3,
            3,
            1,
            Affine::new(std::f32::consts::FRAC_PI_2, 1.0, 0.0, 0.0, 0.0, false, 3, 3),
            &mut out,
        );
        assert_eq!(out.iter().filter(|v| **v == 255).count(), 1, "{out:?}");
        assert_ne!(out[1], 255, "moved: {out:?}");
        assert_eq!(out[4], 0);
    }

    #[test]
    fn views_are_deterministic_per_seed_and_differ_from_the_source() {
        let cfg = AugmentConfig::default();
        let src: Vec<u8> = (0..48 * 48).map(|i| (i * 7 % 251) as u8).collect();
        let run = |seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let (mut a, mut b) = (vec![0; src.len()], vec![0; src.len()]);
            weak(&cfg, &src, 48, 48, 1, &mut rng, &mut a);
            strong(&cfg, &src, 48, 48, 1, &mut rng, &mut b);
            (a, b)
        };
        let (a, b) = run(1);
        assert_eq!(run(1), (a.clone(), b.clone()));
        assert_ne!(a, src);
        assert_ne!(a, b);
    }

    #[test]
    fn photometric_ops_do_what_they_say() {
        let mut data: Vec<u8> = (0..=255).collect();
        let mut v = View {
            width: 16,
            height: 16,
            channels: 1,
            data: &mut data,
        };
        contrast(&mut v, 0.0);
        assert!(
            v.data.iter().all(|x| (126..=129).contains(x)),
            "zero contrast is flat grey"
        );
        let mut data = vec![10u8, 10, 20, 200];
        let mut v = View {
            width: 2,
            height: 2,
            channels: 1,
            data: &mut data,
        };
        equalize(&mut v);
        assert_eq!(*v.data, [0, 0, 128, 255]);
        posterize(&mut v, 1);
        assert_eq!(*v.data, [0, 0, 128, 128]);
        let mut data = vec![50u8; 16];
        cutout(
            &mut View {
                width: 4,
                height: 4,
                channels: 1,
                data: &mut data,
            },
            0,
            0,
            2,
            0,
        );
        assert_eq!(
            data.iter().filter(|v| **v == 0).count(),
            1,
            "clipped at the corner"
        );
    }
}
