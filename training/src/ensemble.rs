//! Several trained networks served as one graph (`fer-train export --run A --run B`).
//!
//! The members' class probabilities are averaged (each member's logits first averaged with its
//! mirror image's when test-time flip is folded in), and the graph outputs the log of that mean:
//! a valid logit vector whose softmax, which the server applies, is the mean probability itself.
//! Averaging probabilities rather than logits keeps one over-confident member from outvoting the
//! others (on FER2013 val it was the better of the two).

use burn::module::Module;
use burn::prelude::*;

use crate::model::FerNet;

/// At least one network (`first`), by construction.
#[derive(Module, Debug)]
pub struct Ensemble {
    first: FerNet,
    rest: Vec<FerNet>,
}

impl Ensemble {
    pub fn new(first: FerNet, rest: Vec<FerNet>) -> Self {
        Self { first, rest }
    }

    /// Networks in the ensemble.
    pub fn count(&self) -> usize {
        1 + self.rest.len()
    }

    /// `[batch, C, H, W]` normalised images → `[batch, classes]` logits. One member: its own
    /// logits, unchanged. Several: `ln(mean_m softmax(logits_m))`.
    pub fn forward(&self, images: Tensor<4>, test_time_flip: bool) -> Tensor<2> {
        let logits = |m: &FerNet| {
            if test_time_flip {
                m.forward_mirror_mean(images.clone())
            } else {
                m.forward(images.clone())
            }
        };
        if self.rest.is_empty() {
            return logits(&self.first);
        }
        let sum = self
            .rest
            .iter()
            .fold(softmax_rows(logits(&self.first)), |sum, m| {
                sum + softmax_rows(logits(m))
            });
        sum.div_scalar(self.count() as f32)
            .add_scalar(PROBABILITY_FLOOR)
            .log()
    }
}

/// Added to the mean probability before its log, so that a class every member rules out (its
/// probability under f32's range) gets a finite logit, ln(1e-30) ≈ −69, instead of −∞, which
/// JSON cannot carry (KServe v2 returns the raw output). Below f32's precision for any
/// probability over 1e-23, so it changes nothing else.
pub const PROBABILITY_FLOOR: f32 = 1e-30;

/// Row-wise softmax from the ops the ONNX exporter lowers (max with indices, sub, exp, sum,
/// div): burn's fused `softmax` is not among them.
fn softmax_rows(logits: Tensor<2>) -> Tensor<2> {
    let (max, _) = logits.clone().max_dim_with_indices(1);
    let e = (logits - max).exp();
    let total = e.clone().sum_dim(1);
    e / total
}

/// The same combination on logits computed elsewhere: one `[images × classes]` row-major vector
/// per member. What the exported graph is checked against.
pub fn combine(members: &[Vec<f32>], classes: usize) -> Vec<f32> {
    match members {
        [] => Vec::new(),
        [one] => one.clone(),
        _ => {
            let mut mean = vec![0.0f64; members[0].len()];
            for logits in members {
                for (row, out) in logits.chunks(classes).zip(mean.chunks_mut(classes)) {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let total: f64 = row.iter().map(|&z| f64::from(z - max).exp()).sum();
                    for (o, &z) in out.iter_mut().zip(row) {
                        *o += f64::from(z - max).exp() / total;
                    }
                }
            }
            let n = members.len() as f64;
            mean.iter()
                .map(|p| (p / n + f64::from(PROBABILITY_FLOOR)).ln() as f32)
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn softmax(row: &[f32]) -> Vec<f64> {
        let e: Vec<f64> = row.iter().map(|&z| f64::from(z).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    #[test]
    fn one_member_is_its_own_logits() {
        let a = vec![1.0, -2.0, 0.5, 3.0, 0.0, 0.0];
        assert_eq!(combine(std::slice::from_ref(&a), 3), a);
    }

    #[test]
    fn several_members_give_the_log_of_their_mean_probabilities() {
        let a = vec![4.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        let b = vec![0.0, 0.0, 2.0, 0.0, 3.0, 0.0];
        let out = combine(&[a.clone(), b.clone()], 3);
        for r in 0..2 {
            let (pa, pb) = (softmax(&a[r * 3..][..3]), softmax(&b[r * 3..][..3]));
            let mine = softmax(&out[r * 3..][..3]);
            for c in 0..3 {
                assert!((mine[c] - (pa[c] + pb[c]) / 2.0).abs() < 1e-6, "row {r}");
            }
            let sum: f64 = out[r * 3..][..3].iter().map(|&z| f64::from(z).exp()).sum();
            assert!((sum - 1.0).abs() < 1e-6, "already normalised: {sum}");
        }
        // A confident member does not outvote two that agree against it, as a logit mean would.
        // Logit mean: (12 + 0 + 0) / 3 = 4 against (0 + 2 + 2) / 3 ≈ 1.33 picks class 0; a member's
        // probability weighs at most 1/3 here: (1.00 + 0.12 + 0.12) / 3 ≈ 0.41 against 0.59.
        let sure = vec![12.0, 0.0];
        let other = vec![0.0, 2.0];
        let out = combine(&[sure, other.clone(), other], 2);
        assert!(out[1] > out[0], "{out:?}");
        // A class both members rule out keeps a finite logit.
        let out = combine(&[vec![200.0, 0.0], vec![150.0, 0.0]], 2);
        assert!(out.iter().all(|z| z.is_finite()), "{out:?}");
        assert!(out[1] < -60.0, "{out:?}");
    }

    #[test]
    fn the_graph_computes_what_combine_computes() {
        let device = Device::flex();
        let config = crate::model::ModelConfig {
            widths: vec![4, 8],
            convs_per_stage: 1,
            dropout: 0.0,
        };
        let members: Vec<FerNet> = (0..3)
            .map(|_| FerNet::new(&config, 1, 3, &device))
            .collect();
        let images = Tensor::<4>::random(
            [5, 1, 8, 8],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let values = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
        let each: Vec<Vec<f32>> = members
            .iter()
            .map(|m| values(m.forward(images.clone())))
            .collect();
        let expected = combine(&each, 3);
        let mut members = members.into_iter();
        let first = members.next().unwrap();
        let ensemble = Ensemble::new(first, members.collect());
        let graph = values(ensemble.forward(images.clone(), false));
        for (a, b) in graph.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-4, "{graph:?} vs {expected:?}");
        }
        // Inputs far out of range: the graph's logits stay finite.
        let extreme = values(ensemble.forward(images.mul_scalar(1e4), false));
        assert!(extreme.iter().all(|z| z.is_finite()), "{extreme:?}");
    }
}
