//! Face tracks across frames (a face keeps its track while its box overlaps the track's last box,
//! until a cut between shots) and temporal smoothing of each track's probabilities, as the ABAW entries smooth per subject.

use std::str::FromStr;

/// A face box in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    pub x: f32,
    pub y: f32,
    pub width: f32,
    pub height: f32,
}

impl Rect {
    fn iou(&self, other: &Rect) -> f32 {
        let x0 = self.x.max(other.x);
        let y0 = self.y.max(other.y);
        let x1 = (self.x + self.width).min(other.x + other.width);
        let y1 = (self.y + self.height).min(other.y + other.height);
        let inter = (x1 - x0).max(0.0) * (y1 - y0).max(0.0);
        let union = self.width * self.height + other.width * other.height - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }
}

/// How probabilities are smoothed over time, per track.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Smoothing {
    None,
    /// Exponential moving average: `s = α·p + (1 − α)·s`.
    Ema(f32),
    /// Mean of the last `n` frames of the track.
    Mean(usize),
}

impl FromStr for Smoothing {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid smoothing {text:?}: none, ema:ALPHA (0 < α ≤ 1) or mean:N");
        match text.split_once(':') {
            None if text == "none" => Ok(Smoothing::None),
            Some(("ema", a)) => match a.parse::<f32>() {
                Ok(a) if a > 0.0 && a <= 1.0 => Ok(Smoothing::Ema(a)),
                _ => Err(bad()),
            },
            Some(("mean", n)) => match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Smoothing::Mean(n)),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

struct Track {
    id: usize,
    last: Rect,
    last_frame: u64,
    ema: Vec<f32>,
    window: std::collections::VecDeque<Vec<f32>>,
}

/// Assigns track ids and smooths probabilities, frame after frame.
pub struct Tracker {
    tracks: Vec<Track>,
    next_id: usize,
    smoothing: Smoothing,
    /// Frames a track survives without a matching face.
    patience: u64,
}

impl Tracker {
    pub fn new(smoothing: Smoothing) -> Self {
        Self {
            tracks: Vec::new(),
            next_id: 0,
            smoothing,
            patience: 5,
        }
    }

    /// A new shot begins: every track ends (the next faces start new ones).
    pub fn cut(&mut self) {
        self.tracks.clear();
    }

    /// The track id and smoothed probabilities of each face of frame `index` (in the faces'
    /// order).
    pub fn update(&mut self, index: u64, faces: &[(Rect, Vec<f32>)]) -> Vec<(usize, Vec<f32>)> {
        self.tracks
            .retain(|t| index.saturating_sub(t.last_frame) <= self.patience);
        let mut taken = vec![false; self.tracks.len()];
        let mut out = Vec::with_capacity(faces.len());
        for (rect, probabilities) in faces {
            let best = self
                .tracks
                .iter()
                .enumerate()
                .filter(|(i, _)| !taken[*i])
                .map(|(i, t)| (i, t.last.iou(rect)))
                .filter(|(_, iou)| *iou > 0.3)
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(i, _)| i);
            let i = match best {
                Some(i) => i,
                None => {
                    self.tracks.push(Track {
                        id: self.next_id,
                        last: *rect,
                        last_frame: index,
                        ema: probabilities.clone(),
                        window: Default::default(),
                    });
                    taken.push(false);
                    self.next_id += 1;
                    self.tracks.len() - 1
                }
            };
            taken[i] = true;
            let track = &mut self.tracks[i];
            track.last = *rect;
            track.last_frame = index;
            let smoothed = match self.smoothing {
                Smoothing::None => probabilities.clone(),
                Smoothing::Ema(alpha) => {
                    for (s, p) in track.ema.iter_mut().zip(probabilities) {
                        *s = alpha * p + (1.0 - alpha) * *s;
                    }
                    track.ema.clone()
                }
                Smoothing::Mean(n) => {
                    track.window.push_back(probabilities.clone());
                    while track.window.len() > n {
                        track.window.pop_front();
                    }
                    let len = track.window.len() as f32;
                    (0..probabilities.len())
                        .map(|k| track.window.iter().map(|w| w[k]).sum::<f32>() / len)
                        .collect()
                }
            };
            out.push((track.id, smoothed));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(x: f32) -> Rect {
        Rect {
            x,
            y: 0.0,
            width: 10.0,
            height: 10.0,
        }
    }

    #[test]
    fn faces_keep_their_track_and_are_smoothed() {
        let mut t = Tracker::new("ema:0.5".parse().unwrap());
        let a = t.update(0, &[(r(0.0), vec![1.0, 0.0]), (r(100.0), vec![0.0, 1.0])]);
        assert_eq!(a.iter().map(|x| x.0).collect::<Vec<_>>(), [0, 1]);
        // The same two faces, listed the other way round and moved a little.
        let b = t.update(1, &[(r(101.0), vec![1.0, 0.0]), (r(1.0), vec![0.0, 1.0])]);
        assert_eq!(b[0].0, 1);
        assert_eq!(b[1].0, 0);
        assert_eq!(b[1].1, [0.5, 0.5], "ema of [1, 0] then [0, 1]");
        let c = t.update(2, &[(r(500.0), vec![1.0, 0.0])]);
        assert_eq!(c[0].0, 2, "a face elsewhere starts a track");
        t.cut();
        let d = t.update(3, &[(r(500.0), vec![0.0, 1.0])]);
        assert_eq!(d[0].0, 3, "after a cut the same place is another face");
        assert_eq!(d[0].1, [0.0, 1.0], "and its smoothing starts afresh");

        let mut m = Tracker::new("mean:2".parse().unwrap());
        m.update(0, &[(r(0.0), vec![1.0])]);
        m.update(1, &[(r(0.0), vec![0.0])]);
        assert_eq!(m.update(2, &[(r(0.0), vec![0.5])])[0].1, [0.25]);
        for bad in ["ema:0", "ema:2", "mean:0", "median:3", "x"] {
            assert!(bad.parse::<Smoothing>().is_err(), "{bad}");
        }
    }
}
