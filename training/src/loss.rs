//! The supervised loss: cross-entropy against each image's class (with label smoothing or class
//! weights), or against a distribution over the classes (FER+'s annotator votes, the FER+
//! paper's best scheme: the network learns how people disagree, not only the majority).

use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;

use crate::config::Config;
use crate::data::Dataset;

/// What a batch's images should be predicted as.
pub enum Targets {
    /// One class index per image, `[batch]`.
    Classes(Tensor<1, Int>),
    /// A probability over the classes per image, `[batch, classes]`.
    Distribution(Tensor<2>),
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
        if soft {
            let mut rows = Vec::with_capacity(indices.len() * classes);
            for &i in indices {
                let row = dataset.soft_label(i, classes).ok_or_else(|| {
                    anyhow::anyhow!("loss.soft_targets needs a dataset with vote distributions")
                })?;
                rows.extend_from_slice(row);
            }
            return Ok(Targets::Distribution(Tensor::<2>::from_data(
                TensorData::new(rows, [indices.len(), classes]),
                device,
            )));
        }
        let labels: Vec<i64> = indices
            .iter()
            .map(|&i| dataset.label(i).unwrap_or(0) as i64)
            .collect();
        Ok(Targets::Classes(Tensor::<1, Int>::from_data(
            TensorData::new(labels, [indices.len()]),
            device,
        )))
    }
}

/// A config's supervised loss.
pub struct SupervisedLoss {
    hard: CrossEntropyLoss,
    smoothing: Option<f32>,
}

impl SupervisedLoss {
    /// Cross-entropy with the config's label smoothing, weighted by inverse class frequency when
    /// `loss.class_weights` is set (`counts`: training images per class).
    pub fn new(config: &Config, counts: &[usize], device: &Device) -> Self {
        let classes = counts.len();
        let mut hard = CrossEntropyLossConfig::new().with_smoothing(config.loss.label_smoothing);
        if config.loss.class_weights {
            let total: usize = counts.iter().sum();
            let weights = counts
                .iter()
                .map(|&c| {
                    if c == 0 {
                        0.0
                    } else {
                        total as f32 / (classes * c) as f32
                    }
                })
                .collect();
            hard = hard.with_weights(Some(weights));
        }
        SupervisedLoss {
            hard: hard.init(device),
            smoothing: config.loss.label_smoothing,
        }
    }

    /// The mean loss over the batch, shape `[1]`. A distribution is smoothed like a class:
    /// (1 − ε)·t + ε/C.
    pub fn forward(&self, logits: Tensor<2>, targets: Targets) -> Tensor<1> {
        match targets {
            Targets::Classes(classes) => self.hard.forward(logits, classes),
            Targets::Distribution(t) => {
                let classes = t.dims()[1] as f32;
                let t = match self.smoothing {
                    Some(e) if e > 0.0 => t.mul_scalar(1.0 - e).add_scalar(e / classes),
                    _ => t,
                };
                (log_softmax(logits, 1) * t).sum_dim(1).neg().mean()
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
        let one_hot = |rows: Vec<f32>| {
            Targets::Distribution(Tensor::<2>::from_data(
                TensorData::new(rows, [2, 3]),
                &device,
            ))
        };
        let soft_one_hot = value(loss.forward(logits(), one_hot(vec![1., 0., 0., 0., 1., 0.])));
        assert!(
            (hard - soft_one_hot).abs() < 1e-5,
            "{hard} vs {soft_one_hot}"
        );
        // Moving half of the first image's mass onto a class the network finds unlikely costs more.
        let split = value(loss.forward(logits(), one_hot(vec![0.5, 0., 0.5, 0., 1., 0.])));
        assert!(split > soft_one_hot + 0.5, "{split}");
    }

    #[test]
    fn smoothing_applies_to_distributions_too() {
        let device = Device::flex();
        let plain = SupervisedLoss::new(&config(""), &[1, 1], &device);
        let smooth = SupervisedLoss::new(&config("label_smoothing = 0.2"), &[1, 1], &device);
        let logits = || Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 0.0], [1, 2]), &device);
        let target = || {
            Targets::Distribution(Tensor::<2>::from_data(
                TensorData::new(vec![1.0f32, 0.0], [1, 2]),
                &device,
            ))
        };
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
