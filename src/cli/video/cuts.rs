//! Hard cuts between shots: a face in the next shot is another person even where its box overlaps
//! a face of the last shot, so tracks end at a cut.
//!
//! Each sampled frame is reduced to a 16×16 grey thumbnail (means over cells); a cut is a frame
//! whose thumbnail differs from the previous one by more than [`CUT_THRESHOLD`] on average (0–255).
//! Motion inside a shot moves little of a thumbnail that coarse; a new shot changes most of it.

use fer_contract::{Channels, Pixels};

const CELLS: usize = 16;
/// Mean absolute thumbnail difference (grey levels) above which two frames belong to two shots.
pub const CUT_THRESHOLD: f32 = 30.0;

/// Finds cuts frame after frame.
#[derive(Default)]
pub struct CutDetector {
    last: Option<Vec<f32>>,
}

impl CutDetector {
    /// Whether `frame` starts a new shot (never the first frame).
    pub fn is_cut(&mut self, frame: &Pixels) -> bool {
        let thumbnail = thumbnail(frame);
        let cut = self.last.as_ref().is_some_and(|last| {
            let diff: f32 = last
                .iter()
                .zip(&thumbnail)
                .map(|(a, b)| (a - b).abs())
                .sum();
            diff / thumbnail.len() as f32 > CUT_THRESHOLD
        });
        self.last = Some(thumbnail);
        cut
    }
}

fn thumbnail(frame: &Pixels) -> Vec<f32> {
    let grey = frame.to_channels(Channels::Gray);
    let (w, h) = (grey.width as usize, grey.height as usize);
    let mut sums = vec![0f32; CELLS * CELLS];
    let mut counts = vec![0u32; CELLS * CELLS];
    for y in 0..h {
        let cy = y * CELLS / h.max(1);
        for x in 0..w {
            let cell = cy * CELLS + x * CELLS / w.max(1);
            sums[cell] += f32::from(grey.data[y * w + x]);
            counts[cell] += 1;
        }
    }
    sums.iter()
        .zip(&counts)
        .map(|(s, c)| if *c > 0 { s / *c as f32 } else { 0.0 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(f: impl Fn(u32, u32) -> u8) -> Pixels {
        let (w, h) = (64, 48);
        let data = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| f(x, y));
        Pixels::new(w, h, Channels::Gray, data.collect())
    }

    #[test]
    fn a_new_shot_is_a_cut_and_motion_is_not() {
        let mut cuts = CutDetector::default();
        let shot = |shift: u32| {
            frame(move |x, y| {
                if (x + shift) / 8 % 2 == y / 8 % 2 {
                    40
                } else {
                    200
                }
            })
        };
        assert!(!cuts.is_cut(&shot(0)), "the first frame");
        assert!(!cuts.is_cut(&shot(1)), "a small move");
        assert!(!cuts.is_cut(&shot(2)));
        assert!(cuts.is_cut(&frame(|x, _| (x * 4) as u8)), "another picture");
        assert!(
            !cuts.is_cut(&frame(|x, _| (x * 4 + 3) as u8)),
            "a little brighter"
        );
    }
}
