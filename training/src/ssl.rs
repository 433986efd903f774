//! The semi-supervised part of a training step: unlabelled batches, the EMA teacher's
//! pseudo-labels on their weak view filtered by the mode's threshold policy, and the student's
//! loss on their strong view (Sohn et al.'s FixMatch recipe, shared by every mode):
//!
//! L = L_sup + λ_u · (1/μB) Σ mask_i · CE(student(strong_i), argmax teacher(weak_i)) [+ λ_f · L_fair]
//!
//! (with `ssl.pseudo_labels = "soft"` the target is teacher(weak_i), the whole distribution).
//!
//! The labelled batch and the strong views go through the student in one forward pass, so batch
//! norm sees both. L_fair is FreeMatch's self-adaptive fairness term (FreeMatch only).

use anyhow::Context;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::{log_softmax, softmax};
use fer_contract::{Manifest, Preprocessor};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::batch::{ViewKind, images_tensor, view_batch};
use crate::config::{Config, Mode, PseudoLabels, SslConfig};
use crate::data::{self, Dataset};
use crate::eval::argmax;
use crate::framing::Reframer;
use crate::loss::{SupervisedLoss, Targets};
use crate::model::FerNet;
use crate::thresholds::{Dtm, FixMatch, FlexMatch, FreeMatch, Policy, ThresholdPolicy};

/// The unlabelled images of a run, drawn in a seeded shuffle that is re-drawn each pass.
pub struct Unlabelled {
    pub data: Dataset,
    seed: u64,
}

impl Unlabelled {
    /// The unlabelled archives of the config (from `data_dir`), followed by `left_out` (the labelled
    /// train images that `labelled_fraction` left out, as [`crate::train::load_data`] returns them
    /// for `ssl.rest_of_train`), their labels dropped.
    pub fn load(
        config: &Config,
        preprocessor: &Preprocessor,
        manifest: &Manifest,
        left_out: Option<Dataset>,
    ) -> anyhow::Result<Self> {
        let side = (
            manifest.input.width,
            manifest.input.height,
            manifest.input.channels,
        );
        let reframer = config
            .ssl
            .reframe
            .as_ref()
            .map(Reframer::load)
            .transpose()
            .context("ssl.reframe")?;
        let mut parts = Vec::new();
        for archive in &config.ssl.unlabelled {
            let path = config.data_dir.join(archive);
            let (part, dropped) = data::load_unlabelled(
                &path,
                preprocessor,
                side,
                config.ssl.limit_unlabelled,
                reframer.as_ref(),
            )
            .map_err(|e| anyhow::anyhow!("unlabelled data {}: {e}", path.display()))?;
            if reframer.is_some() {
                tracing::info!(
                    archive = %path.display(),
                    kept = part.len(),
                    dropped,
                    "re-framed to the labelled data's framing (dropped: no face or several)"
                );
            }
            parts.push(part);
        }
        if let Some(mut rest) = left_out {
            rest.labels = None;
            rest.soft = None;
            parts.push(rest);
        }
        let data = parts
            .into_iter()
            .reduce(|all, part| all.concat(&part))
            .filter(|d| !d.is_empty())
            .ok_or_else(|| anyhow::anyhow!("the config gives no unlabelled images"))?;
        Ok(Unlabelled {
            data,
            seed: config.seed ^ 0x5EED_u64,
        })
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The indices of step `step`'s `size` images: positions `step·size ..` of the endless
    /// sequence of shuffled passes, so the draw depends only on the step (a resumed run draws
    /// what the stopped one would have).
    pub fn batch(&self, step: usize, size: usize) -> Vec<usize> {
        let n = self.len();
        let start = step * size;
        let mut pass: Option<(usize, Vec<usize>)> = None;
        (start..start + size)
            .map(|position| {
                let round = position / n;
                if pass.as_ref().is_none_or(|(r, _)| *r != round) {
                    let mut order: Vec<usize> = (0..n).collect();
                    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
                        self.seed
                            .wrapping_add((round as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                    ));
                    pass = Some((round, order));
                }
                pass.as_ref()
                    .map(|(_, order)| order[position % n])
                    .unwrap_or(0)
            })
            .collect()
    }
}

/// The threshold policy of a semi-supervised mode.
pub fn policy(mode: Mode, ssl: &SslConfig, classes: usize, unlabelled: usize) -> Option<Policy> {
    Some(match mode {
        Mode::Supervised => return None,
        Mode::Fixmatch => Policy::FixMatch(FixMatch::new(classes, ssl.tau)),
        Mode::Flexmatch => Policy::FlexMatch(FlexMatch::new(classes, ssl.tau, unlabelled)),
        Mode::Freematch => Policy::FreeMatch(FreeMatch::new(classes, ssl.threshold_decay)),
        Mode::Dtm => Policy::Dtm(Dtm::new(classes, ssl.dtm)),
    })
}

/// What one step's unlabelled half did.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    pub unsup_loss: f64,
    /// Share of the step's unlabelled images whose pseudo-label was accepted.
    pub mask_rate: f64,
}

/// Everything a semi-supervised step needs besides the two models.
pub struct SemiSupervised<'a> {
    pub config: &'a Config,
    pub preprocessor: &'a Preprocessor,
    pub unlabelled: &'a Unlabelled,
    pub policy: Policy,
    pub classes: usize,
    /// The teacher's device: the student's backend without autodiff.
    pub teacher_device: Device,
}

/// One step's labelled half, already on the student's device.
pub struct LabelledBatch {
    pub images: Tensor<4>,
    pub targets: Targets,
}

impl SemiSupervised<'_> {
    /// The step's total loss (on the student's autodiff device) and its unlabelled statistics.
    /// `progress` is the share of training done (DTM's stage).
    pub fn loss(
        &mut self,
        student: &FerNet,
        teacher: &FerNet,
        labelled: LabelledBatch,
        supervised: &SupervisedLoss,
        step: usize,
        progress: f32,
    ) -> anyhow::Result<(Tensor<1>, StepStats)> {
        let device = labelled.images.device();
        let n_l = labelled.images.dims()[0];
        let n_u = self.config.ssl.mu * self.config.batch_size;
        let indices = self.unlabelled.batch(step, n_u);
        let seed = self.config.seed ^ (step as u64).wrapping_mul(0xA24B_AED4_963E_E407);
        let data = &self.unlabelled.data;
        let augment = &self.config.augment;

        // The teacher's view: weak, inference mode, no gradient.
        let teacher_device = &self.teacher_device;
        let weak = view_batch(
            augment,
            data,
            self.preprocessor,
            &indices,
            ViewKind::Weak,
            seed,
        );
        let probs = softmax(
            teacher.forward(images_tensor(weak, n_u, data, teacher_device)),
            1,
        )
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("teacher output: {e:?}"))?;
        let mask = self.policy.select(&indices, &probs, progress);

        // The student's view: strong, in one pass with the labelled images.
        let strong = view_batch(
            augment,
            data,
            self.preprocessor,
            &indices,
            ViewKind::Strong,
            seed ^ 0x5157_0D1E,
        );
        let strong = images_tensor(strong, n_u, data, &device);
        let logits = student.forward(Tensor::cat(vec![labelled.images, strong], 0));
        let sup_loss = supervised.forward(logits.clone().narrow(0, 0, n_l), labelled.targets);
        let u_logits = logits.narrow(0, n_l, n_u);

        let accepted = mask.iter().filter(|m| **m > 0.0).count();
        let targets = pseudo_targets(&probs, self.classes, self.config.ssl.pseudo_labels);
        let mask_t = Tensor::<1>::from_data(TensorData::new(mask.clone(), [n_u]), &device);
        let nll = pseudo_label_nll(u_logits.clone(), targets, &device);
        let unsup = (nll * mask_t).sum().div_scalar(n_u as f32);
        let unsup_value = f64::from(unsup.clone().into_scalar::<f32>());
        let mut total = sup_loss + unsup.mul_scalar(self.config.ssl.lambda_u);
        if let Some(target) = self.policy.fairness_target()
            && accepted > 0
            && self.config.ssl.fairness > 0.0
        {
            let kept: Vec<i64> = (0..n_u as i64)
                .filter(|&i| mask[i as usize] > 0.0)
                .collect();
            let fair = fairness_term(u_logits, &kept, &target, &device)?;
            total = total + fair.mul_scalar(self.config.ssl.fairness);
        }
        Ok((
            total,
            StepStats {
                unsup_loss: unsup_value,
                mask_rate: accepted as f64 / n_u as f64,
            },
        ))
    }
}

/// The unlabelled images' targets, one row of `classes` per image: the teacher's argmax one-hot
/// (hard) or its distribution as it is (soft).
fn pseudo_targets(probs: &[f32], classes: usize, kind: PseudoLabels) -> Vec<f32> {
    match kind {
        PseudoLabels::Soft => probs.to_vec(),
        PseudoLabels::Hard => probs
            .chunks(classes)
            .flat_map(|row| {
                let top = argmax(row);
                (0..classes).map(move |c| if c == top { 1.0 } else { 0.0 })
            })
            .collect(),
    }
}

/// Each image's cross-entropy −Σ_c target(c) · log softmax(logits)(c) against its row of `targets`.
fn pseudo_label_nll(logits: Tensor<2>, targets: Vec<f32>, device: &Device) -> Tensor<1> {
    let [n, classes] = logits.dims();
    let targets = Tensor::<2>::from_data(TensorData::new(targets, [n, classes]), device);
    (log_softmax(logits, 1) * targets)
        .sum_dim(1)
        .reshape([n])
        .neg()
}

/// FreeMatch's self-adaptive fairness term on the strong-view logits of the accepted images:
/// Σ_c target(c) · log(normalise(p̄_s / hist_s)(c)), where p̄_s is the student's mean probability
/// and hist_s the histogram of its predictions over those images (no gradient through hist_s),
/// as FreeMatch's reference code (USB's `entropy_loss`) computes and adds it.
fn fairness_term(
    u_logits: Tensor<2>,
    kept: &[i64],
    target: &[f32],
    device: &Device,
) -> anyhow::Result<Tensor<1>> {
    let classes = target.len();
    let rows = Tensor::<1, Int>::from_data(TensorData::new(kept.to_vec(), [kept.len()]), device);
    let probs = softmax(u_logits.select(0, rows), 1);
    let predicted = probs
        .clone()
        .inner()
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("student output: {e:?}"))?;
    let mut hist = vec![0.0f32; classes];
    for row in predicted.chunks(classes) {
        hist[argmax(row)] += 1.0 / kept.len() as f32;
    }
    let scaler: Vec<f32> = hist
        .iter()
        .map(|h| if *h > 0.0 { 1.0 / h } else { 0.0 })
        .collect();
    let scaler = Tensor::<2>::from_data(TensorData::new(scaler, [1, classes]), device);
    let target = Tensor::<2>::from_data(TensorData::new(target.to_vec(), [1, classes]), device);
    let modulated = probs.mean_dim(0) * scaler;
    let modulated = modulated.clone() / modulated.sum_dim(1);
    Ok((target * modulated.add_scalar(1e-12).log()).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fer_contract::Channels;

    fn pool(n: usize) -> Unlabelled {
        Unlabelled {
            data: Dataset {
                width: 1,
                height: 1,
                channels: Channels::Gray,
                images: vec![0; n],
                labels: None,
                soft: None,
            },
            seed: 3,
        }
    }

    #[test]
    fn batches_cover_each_pass_once_and_depend_only_on_the_step() {
        let p = pool(10);
        let mut first: Vec<usize> = (0..5).flat_map(|s| p.batch(s, 2)).collect();
        first.sort_unstable();
        assert_eq!(
            first,
            (0..10).collect::<Vec<_>>(),
            "one pass = every image once"
        );
        assert_eq!(p.batch(3, 4), p.batch(3, 4));
        // Straddling two passes: the second pass is another shuffle.
        assert_eq!(p.batch(2, 4).len(), 4);
        assert_ne!(p.batch(0, 10), p.batch(1, 10));
    }

    #[test]
    fn hard_targets_are_the_argmax_and_soft_ones_the_distribution() {
        let probs = [0.2f32, 0.7, 0.1, 0.5, 0.25, 0.25];
        assert_eq!(
            pseudo_targets(&probs, 3, PseudoLabels::Hard),
            vec![0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
        );
        assert_eq!(
            pseudo_targets(&probs, 3, PseudoLabels::Soft),
            probs.to_vec()
        );
    }

    #[test]
    fn pseudo_label_nll_is_the_cross_entropy_against_each_row() {
        let device = Device::flex();
        let logits = || {
            Tensor::<2>::from_data(
                TensorData::new(vec![2.0f32, 0.0, 0.0, 1.0], [2, 2]),
                &device,
            )
        };
        let log_p = |a: f32, b: f32| a - (a.exp() + b.exp()).ln();
        let nll = |targets: Vec<f32>| {
            pseudo_label_nll(logits(), targets, &device)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        // One-hot rows: −log p of the target class, as a hard label's cross-entropy.
        let hard = nll(vec![0.0, 1.0, 0.0, 1.0]);
        assert!((hard[0] + log_p(0.0, 2.0)).abs() < 1e-5, "{hard:?}");
        assert!((hard[1] + log_p(1.0, 0.0)).abs() < 1e-5, "{hard:?}");
        // A split row weighs both classes' log-probabilities.
        let soft = nll(vec![0.5, 0.5, 0.5, 0.5]);
        let expected = -0.5 * (log_p(2.0, 0.0) + log_p(0.0, 2.0));
        assert!((soft[0] - expected).abs() < 1e-5, "{soft:?}");
    }

    #[test]
    fn fairness_term_is_lowest_for_a_balanced_prediction() {
        let device = Device::flex();
        let target = [0.5f32, 0.5];
        let term = |logits: Vec<f32>| {
            let n = logits.len() / 2;
            let t = Tensor::<2>::from_data(TensorData::new(logits, [n, 2]), &device);
            let kept: Vec<i64> = (0..n as i64).collect();
            fairness_term(t, &kept, &target, &device)
                .unwrap()
                .into_scalar::<f32>()
        };
        // Balanced predictions: the modulated mean is [0.5, 0.5] → 2·0.5·ln 0.5.
        let balanced = term(vec![3.0, 0.0, 0.0, 3.0]);
        assert!((balanced - 0.5f32.ln()).abs() < 1e-4, "{balanced}");
        // Collapsed onto class 0: hist_s = [1, 0], so the modulated mean is [1, 0] and the
        // term is 0.5·ln 1 + 0.5·ln 1e-12. (The sign is FreeMatch's reference code's, which adds
        // this term as is; see training/README.md.)
        let collapsed = term(vec![3.0, 0.0, 2.0, 0.0]);
        assert!(collapsed < balanced, "{collapsed} vs {balanced}");
    }
}
