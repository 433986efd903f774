//! The supervised loss: cross-entropy against each image's class (with label smoothing or class
//! weights), or against a distribution over the classes (FER+'s annotator votes, the FER+
//! paper's best scheme: the network learns how people disagree, not only the majority).

use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;

use crate::config::{Config, SoftClassWeights};
use crate::data::Dataset;

/// What a batch's images should be predicted as.
pub enum Targets {
    /// One class index per image, `[batch]`.
    Classes(Tensor<1, Int>),
    /// A probability over the classes per image, `[batch, classes]`, and each image's majority
    /// class, `[batch]` (what per-face class weights look up; boxed to keep the enum small).
    Distribution {
        votes: Tensor<2>,
        majority: Box<Tensor<1, Int>>,
    },
}

impl Targets {
    /// The targets of the images at `indices` of `dataset`: its vote distributions when `soft`
    /// (the dataset must have them), its classes otherwise.
    pub fn of(
        dataset: &Dataset,
        indices: &[usize],
        classes: usize,
        soft: bool,
        device: &Device,
    ) -> anyhow::Result<Targets> {
        let labels: Vec<i64> = indices
            .iter()
            .map(|&i| dataset.label(i).unwrap_or(0) as i64)
            .collect();
        let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [indices.len()]), device);
        if soft {
            let mut rows = Vec::with_capacity(indices.len() * classes);
            for &i in indices {
                let row = dataset.soft_label(i, classes).ok_or_else(|| {
                    anyhow::anyhow!("loss.soft_targets needs a dataset with vote distributions")
                })?;
                rows.extend_from_slice(row);
            }
            return Ok(Targets::Distribution {
                votes: Tensor::<2>::from_data(
                    TensorData::new(rows, [indices.len(), classes]),
                    device,
                ),
                majority: Box::new(labels),
            });
        }
        Ok(Targets::Classes(labels))
    }
}

/// A config's supervised loss.
pub struct SupervisedLoss {
    hard: CrossEntropyLoss,
    smoothing: Option<f32>,
    /// The class weights of `loss.class_weights`, for distributions (`hard` holds its own copy).
    weights: Option<Tensor<1>>,
    /// What the weights scale on a distribution.
    soft_weights: SoftClassWeights,
}

/// Inverse class frequency raised to `power`, (total / (classes · count))^power, as the weight of
/// each class; 1 for a class without training images (no target selects it, and burn refuses a
/// weight of 0).
fn inverse_frequency(counts: &[usize], power: f32) -> Vec<f32> {
    let total: usize = counts.iter().sum();
    counts
        .iter()
        .map(|&c| {
            if c == 0 {
                1.0
            } else {
                (total as f32 / (counts.len() * c) as f32).powf(power)
            }
        })
        .collect()
}

impl SupervisedLoss {
    /// Cross-entropy with the config's label smoothing, weighted by inverse class frequency (to
    /// `loss.class_weight_power`) when `loss.class_weights` is set (`counts`: training images per
    /// class).
    pub fn new(config: &Config, counts: &[usize], device: &Device) -> Self {
        let mut hard = CrossEntropyLossConfig::new().with_smoothing(config.loss.label_smoothing);
        let mut weights = None;
        if config.loss.class_weights {
            let w = inverse_frequency(counts, config.loss.class_weight_power);
            weights = Some(Tensor::<1>::from_data(
                TensorData::new(w.clone(), [w.len()]),
                device,
            ));
            hard = hard.with_weights(Some(w));
        }
        SupervisedLoss {
            hard: hard.init(device),
            smoothing: config.loss.label_smoothing,
            weights,
            soft_weights: config.loss.soft_class_weights,
        }
    }

    /// The mean loss over the batch, shape `[1]`. A distribution is smoothed like a class:
    /// (1 − ε)·t + ε/C. With class weights w on the votes, a distribution's loss is
    /// Σ_i Σ_c w_c·t̃_ic·(−log p_ic) / Σ_i Σ_c w_c·t_ic (t̃ smoothed, t not); on the face, with y_i
    /// its majority class, Σ_i w_{y_i}·Σ_c t̃_ic·(−log p_ic) / Σ_i w_{y_i}. For a one-hot t the
    /// first is exactly burn's weighted loss of the class, whose normaliser is the targets'
    /// weights; so is the second without smoothing (with it, the ε/C share is not weighted by class).
    pub fn forward(&self, logits: Tensor<2>, targets: Targets) -> Tensor<1> {
        match targets {
            Targets::Classes(classes) => self.hard.forward(logits, classes),
            Targets::Distribution { votes: t, majority } => {
                let [batch, classes] = t.dims();
                let smoothed = match self.smoothing {
                    Some(e) if e > 0.0 => {
                        t.clone().mul_scalar(1.0 - e).add_scalar(e / classes as f32)
                    }
                    _ => t.clone(),
                };
                let log_p = log_softmax(logits, 1);
                match (&self.weights, self.soft_weights) {
                    (None, _) => (log_p * smoothed).sum_dim(1).neg().mean(),
                    (Some(w), SoftClassWeights::Face) => {
                        let per_face = (log_p * smoothed).sum_dim(1).neg().reshape([batch]);
                        let face_w = w.clone().select(0, *majority);
                        (per_face * face_w.clone()).sum() / face_w.sum()
                    }
                    (Some(w), SoftClassWeights::Votes) => {
                        let w = w.clone().reshape([1, classes]).repeat_dim(0, batch);
                        let normaliser = (t * w.clone()).sum();
                        (log_p * smoothed * w).sum().neg() / normaliser
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(extra: &str) -> Config {
        toml::from_str(&format!(
            "data = \"ferplus\"\nseed = 1\nepochs = 1\nbatch_size = 2\n[optimizer]\nlearning_rate = 0.001\n[loss]\n{extra}"
        ))
        .unwrap()
    }

    /// Distribution targets from rows of `classes` probabilities; each row's majority is its
    /// first largest entry, as FER+'s majority label.
    fn distribution(rows: Vec<f32>, classes: usize, device: &Device) -> Targets {
        let majority: Vec<i64> = rows
            .chunks(classes)
            .map(|r| {
                r.iter()
                    .enumerate()
                    .fold(
                        (0, f32::MIN),
                        |(bi, bv), (i, &v)| {
                            if v > bv { (i, v) } else { (bi, bv) }
                        },
                    )
                    .0 as i64
            })
            .collect();
        let batch = majority.len();
        Targets::Distribution {
            votes: Tensor::<2>::from_data(TensorData::new(rows, [batch, classes]), device),
            majority: Box::new(Tensor::<1, Int>::from_data(
                TensorData::new(majority, [batch]),
                device,
            )),
        }
    }

    #[test]
    fn a_one_hot_distribution_is_the_class_loss_and_votes_move_it() {
        let device = Device::flex();
        let loss = SupervisedLoss::new(&config(""), &[1, 1, 1], &device);
        let logits = || {
            Tensor::<2>::from_data(
                TensorData::new(vec![2.0f32, 0.5, -1.0, 0.0, 1.0, 0.3], [2, 3]),
                &device,
            )
        };
        let value = |t: Tensor<1>| t.into_scalar::<f32>();
        let hard = value(loss.forward(
            logits(),
            Targets::Classes(Tensor::<1, Int>::from_data(
                TensorData::new(vec![0i64, 1], [2]),
                &device,
            )),
        ));
        let one_hot = |rows: Vec<f32>| distribution(rows, 3, &device);
        let soft_one_hot = value(loss.forward(logits(), one_hot(vec![1., 0., 0., 0., 1., 0.])));
        assert!(
            (hard - soft_one_hot).abs() < 1e-5,
            "{hard} vs {soft_one_hot}"
        );
        // Moving half of the first image's mass onto a class the network finds unlikely costs more.
        let split = value(loss.forward(logits(), one_hot(vec![0.5, 0., 0.5, 0., 1., 0.])));
        assert!(split > soft_one_hot + 0.5, "{split}");
    }

    /// Class weights apply to vote distributions as to classes: a one-hot distribution costs
    /// what its class costs, with and without smoothing, and a rare class's votes weigh more.
    #[test]
    fn class_weights_apply_to_distributions() {
        let device = Device::flex();
        let logits = || {
            Tensor::<2>::from_data(
                TensorData::new(vec![2.0f32, 0.5, -1.0, 0.0, 1.0, 0.3], [2, 3]),
                &device,
            )
        };
        let dist = |rows: Vec<f32>| distribution(rows, 3, &device);
        let value = |t: Tensor<1>| t.into_scalar::<f32>();
        // Class 2 is rare: weight 8 / (3·1) against 8 / (3·6) for class 0.
        let counts = [6, 1, 1];
        for extra in [
            "class_weights = true",
            "class_weights = true\nlabel_smoothing = 0.2",
        ] {
            let loss = SupervisedLoss::new(&config(extra), &counts, &device);
            let hard = value(loss.forward(
                logits(),
                Targets::Classes(Tensor::<1, Int>::from_data(
                    TensorData::new(vec![0i64, 2], [2]),
                    &device,
                )),
            ));
            let one_hot = value(loss.forward(logits(), dist(vec![1., 0., 0., 0., 0., 1.])));
            assert!(
                (hard - one_hot).abs() < 1e-5,
                "{extra}: {hard} vs {one_hot}"
            );
        }
        let plain = SupervisedLoss::new(&config(""), &counts, &device);
        let weighted = SupervisedLoss::new(&config("class_weights = true"), &counts, &device);
        // Both images half on class 0 (likely for the first) and half on class 2 (unlikely): the
        // weighted loss leans towards the rare class's larger error.
        let split = || dist(vec![0.5, 0., 0.5, 0.5, 0., 0.5]);
        let (a, b) = (
            value(plain.forward(logits(), split())),
            value(weighted.forward(logits(), split())),
        );
        assert!(b > a + 0.1, "plain {a}, weighted {b}");
    }

    /// Per-face weights leave a distribution's shape alone: faces of one majority class cost
    /// what they cost unweighted, whatever their stray votes; across classes, a face of a rare
    /// class weighs its class's weight. One-hot targets cost what their classes cost.
    #[test]
    fn per_face_class_weights_weigh_faces_not_votes() {
        let device = Device::flex();
        let logits = || {
            Tensor::<2>::from_data(
                TensorData::new(vec![2.0f32, 0.5, -1.0, 0.0, 1.0, 0.3], [2, 3]),
                &device,
            )
        };
        let value = |t: Tensor<1>| t.into_scalar::<f32>();
        let counts = [6, 1, 1];
        let face = "class_weights = true\nsoft_targets = true\nsoft_class_weights = \"face\"";
        let plain = SupervisedLoss::new(&config(""), &counts, &device);
        let per_face = SupervisedLoss::new(&config(face), &counts, &device);
        let per_vote = SupervisedLoss::new(&config("class_weights = true"), &counts, &device);
        // Both faces mostly class 0, with stray votes for the rare class 2.
        let stray = || distribution(vec![0.8, 0., 0.2, 0.9, 0., 0.1], 3, &device);
        let (a, b, c) = (
            value(plain.forward(logits(), stray())),
            value(per_face.forward(logits(), stray())),
            value(per_vote.forward(logits(), stray())),
        );
        assert!((a - b).abs() < 1e-5, "plain {a}, per face {b}");
        assert!(c > a + 0.1, "per vote {c} should lean on the stray votes");
        // One face of each class: the weighted mean of the two faces' own losses.
        let rows = vec![0.8, 0., 0.2, 0.1, 0., 0.9];
        let w = inverse_frequency(&counts, 1.0);
        // Each face's own (unweighted) loss, as a batch of one.
        let logit_rows = [[2.0f32, 0.5, -1.0], [0.0, 1.0, 0.3]];
        let alone = |i: usize| {
            let l =
                Tensor::<2>::from_data(TensorData::new(logit_rows[i].to_vec(), [1, 3]), &device);
            value(plain.forward(l, distribution(rows[i * 3..i * 3 + 3].to_vec(), 3, &device)))
        };
        let expected = (w[0] * alone(0) + w[2] * alone(1)) / (w[0] + w[2]);
        let got = value(per_face.forward(logits(), distribution(rows, 3, &device)));
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
        let hard = value(per_face.forward(
            logits(),
            Targets::Classes(Tensor::<1, Int>::from_data(
                TensorData::new(vec![0i64, 2], [2]),
                &device,
            )),
        ));
        let one_hot = value(per_face.forward(
            logits(),
            distribution(vec![1., 0., 0., 0., 0., 1.], 3, &device),
        ));
        assert!((hard - one_hot).abs() < 1e-5, "{hard} vs {one_hot}");
    }

    #[test]
    fn the_weight_power_softens_the_inverse_frequency() {
        let counts = [6, 1, 1, 0];
        let full = inverse_frequency(&counts, 1.0);
        let root = inverse_frequency(&counts, 0.5);
        assert!((full[1] - 2.0).abs() < 1e-6, "{full:?}");
        for (f, r) in full.iter().zip(&root) {
            assert!((f.sqrt() - r).abs() < 1e-6, "{full:?} {root:?}");
        }
        assert_eq!(root[3], 1.0, "a class without images keeps weight 1");
    }

    #[test]
    fn smoothing_applies_to_distributions_too() {
        let device = Device::flex();
        let plain = SupervisedLoss::new(&config(""), &[1, 1], &device);
        let smooth = SupervisedLoss::new(&config("label_smoothing = 0.2"), &[1, 1], &device);
        let logits = || Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 0.0], [1, 2]), &device);
        let target = || distribution(vec![1.0f32, 0.0], 2, &device);
        let a = plain.forward(logits(), target()).into_scalar::<f32>();
        let b = smooth.forward(logits(), target()).into_scalar::<f32>();
        // smoothed target [0.9, 0.1]: −0.9·log p0 − 0.1·log p1
        let (lp0, lp1) = (
            (-(1.0f32 + (-3.0f32).exp()).ln()),
            (-3.0 - (1.0f32 + (-3.0f32).exp()).ln()),
        );
        assert!((a + lp0).abs() < 1e-5, "{a}");
        assert!((b - (-0.9 * lp0 - 0.1 * lp1)).abs() < 1e-5, "{b}");
    }
}
