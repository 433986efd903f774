//! Which pseudo-labels count: the confidence thresholds of the semi-supervised modes, as plain
//! state machines over the teacher's probabilities on the weak view of unlabelled images.
//!
//! Each policy sees a batch of teacher probabilities (rows of `classes`, with each image's index
//! in the unlabelled set), updates its state, and returns a mask: 1 where the image's
//! pseudo-label (its argmax) is trusted, 0 where it is not. The training loop multiplies the
//! per-image unsupervised loss by it.
//!
//! - `fixmatch`: one fixed threshold τ (Sohn et al., 2020).
//! - `flexmatch`: class thresholds T(c) = τ·β(c)/(2−β(c)), β(c) the class's learning status: the
//!   unlabelled images last predicted as c above τ, normalised by the largest class count, or by
//!   the images not yet predicted confidently while they outnumber it (warm-up) (Zhang et al., 2021).
//! - `freematch`: a self-adaptive global threshold τ_t = EMA of the batches' mean top confidence,
//!   and class thresholds τ_t·p̃_t(c)/max p̃_t, p̃_t the EMA of the mean probability per class
//!   (Wang et al., 2023). Its fairness loss lives in the training loop.
//! - `dtm`: this project's Dynamic Threshold Module (see training/README.md), a threshold that
//!   follows the stage of training, from lenient to strict, with a floor that bounds label noise,
//!   scaled per class by one of two statistics (`anchor`): the teacher's mean probability of the
//!   class on unlabelled images, relative to the most probable class (FreeMatch's class-relative
//!   part; `unlabelled`), or its mean confidence on the labelled images of the class that it
//!   classifies correctly (Ada-CM's statistic, Li et al., 2022; `labelled`).

use serde::{Deserialize, Serialize};

/// Class thresholds and a trust mask per batch.
pub trait ThresholdPolicy: Send {
    /// Updates the state with a batch and returns its mask (one 0/1 weight per row).
    fn select(&mut self, indices: &[usize], probs: &[f32], progress: f32) -> Vec<f32>;
    /// The current threshold of each class (for progress bars and plots).
    fn thresholds(&self) -> Vec<f32>;
    /// Whether the policy learns from the teacher's predictions on the labelled train images
    /// ([`ThresholdPolicy::observe_labelled`], once per epoch).
    fn wants_labelled(&self) -> bool {
        false
    }
    /// The teacher's probabilities on the labelled train images (rows of `classes`) and their
    /// classes.
    fn observe_labelled(&mut self, _probs: &[f32], _labels: &[usize]) {}
}

/// Index and value of a row's largest probability.
fn top(row: &[f32]) -> (usize, f32) {
    row.iter().copied().enumerate().fold(
        (0, f32::MIN),
        |best, (i, p)| if p > best.1 { (i, p) } else { best },
    )
}

fn mask_by_class(probs: &[f32], classes: usize, thresholds: &[f32]) -> Vec<f32> {
    probs
        .chunks(classes)
        .map(|row| {
            let (c, p) = top(row);
            if p >= thresholds[c] { 1.0 } else { 0.0 }
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FixMatch {
    classes: usize,
    tau: f32,
}

impl FixMatch {
    pub fn new(classes: usize, tau: f32) -> Self {
        FixMatch { classes, tau }
    }
}

impl ThresholdPolicy for FixMatch {
    fn select(&mut self, _indices: &[usize], probs: &[f32], _progress: f32) -> Vec<f32> {
        mask_by_class(probs, self.classes, &vec![self.tau; self.classes])
    }

    fn thresholds(&self) -> Vec<f32> {
        vec![self.tau; self.classes]
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlexMatch {
    classes: usize,
    tau: f32,
    /// Per unlabelled image: the class it was last predicted as above τ, if ever.
    confident: Vec<Option<u16>>,
}

impl FlexMatch {
    pub fn new(classes: usize, tau: f32, unlabelled: usize) -> Self {
        FlexMatch {
            classes,
            tau,
            confident: vec![None; unlabelled],
        }
    }

    /// β(c): each class's confident count over the largest one, or over the images not yet
    /// predicted confidently while those are more (the warm-up).
    fn learning_status(&self) -> Vec<f32> {
        let mut sigma = vec![0usize; self.classes];
        let mut unused = 0usize;
        for c in &self.confident {
            match c {
                Some(c) => sigma[usize::from(*c)] += 1,
                None => unused += 1,
            }
        }
        let largest = sigma.iter().copied().max().unwrap_or(0).max(unused).max(1);
        sigma.iter().map(|&s| s as f32 / largest as f32).collect()
    }
}

impl ThresholdPolicy for FlexMatch {
    fn select(&mut self, indices: &[usize], probs: &[f32], _progress: f32) -> Vec<f32> {
        for (&i, row) in indices.iter().zip(probs.chunks(self.classes)) {
            let (c, p) = top(row);
            if p > self.tau
                && let Some(slot) = self.confident.get_mut(i)
            {
                *slot = Some(c as u16);
            }
        }
        mask_by_class(probs, self.classes, &self.thresholds())
    }

    fn thresholds(&self) -> Vec<f32> {
        self.learning_status()
            .into_iter()
            .map(|b| self.tau * b / (2.0 - b))
            .collect()
    }
}

/// EMA state shared by FreeMatch and DTM: the mean top confidence and the mean probability of
/// each class over recent batches, both starting at 1/C.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ConfidenceEma {
    classes: usize,
    decay: f32,
    global: f32,
    per_class: Vec<f32>,
}

impl ConfidenceEma {
    fn new(classes: usize, decay: f32) -> Self {
        ConfidenceEma {
            classes,
            decay,
            global: 1.0 / classes as f32,
            per_class: vec![1.0 / classes as f32; classes],
        }
    }

    fn update(&mut self, probs: &[f32]) {
        let rows = probs.len() / self.classes;
        if rows == 0 {
            return;
        }
        let mut mean_top = 0.0;
        let mut mean = vec![0.0f32; self.classes];
        for row in probs.chunks(self.classes) {
            mean_top += top(row).1;
            for (m, p) in mean.iter_mut().zip(row) {
                *m += p;
            }
        }
        let d = self.decay;
        self.global = d * self.global + (1.0 - d) * mean_top / rows as f32;
        for (e, m) in self.per_class.iter_mut().zip(mean) {
            *e = d * *e + (1.0 - d) * m / rows as f32;
        }
    }

    /// p̃(c) / max p̃: 1 for the class the teacher favours most, less for the others.
    fn relative(&self) -> Vec<f32> {
        let max = self
            .per_class
            .iter()
            .copied()
            .fold(f32::MIN, f32::max)
            .max(1e-12);
        self.per_class.iter().map(|p| p / max).collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FreeMatch {
    ema: ConfidenceEma,
    /// EMA of the histogram of the teacher's pseudo-labels (its argmax), for the fairness term.
    label_hist: Vec<f32>,
}

impl FreeMatch {
    pub fn new(classes: usize, decay: f32) -> Self {
        FreeMatch {
            ema: ConfidenceEma::new(classes, decay),
            label_hist: vec![1.0 / classes as f32; classes],
        }
    }

    /// The target class distribution of FreeMatch's self-adaptive fairness term:
    /// p̃_t / hist_t, normalised to sum to 1 (a class the teacher predicts less often than its
    /// mean probability says weighs more).
    pub fn fairness_target(&self) -> Vec<f32> {
        let modulated: Vec<f32> = self
            .ema
            .per_class
            .iter()
            .zip(&self.label_hist)
            .map(|(p, h)| if *h > 0.0 { p / h } else { 0.0 })
            .collect();
        let sum: f32 = modulated.iter().sum();
        modulated.iter().map(|m| m / sum.max(1e-12)).collect()
    }
}

impl ThresholdPolicy for FreeMatch {
    fn select(&mut self, _indices: &[usize], probs: &[f32], _progress: f32) -> Vec<f32> {
        self.ema.update(probs);
        let classes = self.ema.classes;
        let rows = probs.len() / classes;
        if rows > 0 {
            let mut hist = vec![0.0f32; classes];
            for row in probs.chunks(classes) {
                hist[top(row).0] += 1.0 / rows as f32;
            }
            let d = self.ema.decay;
            for (e, h) in self.label_hist.iter_mut().zip(hist) {
                *e = d * *e + (1.0 - d) * h;
            }
        }
        mask_by_class(probs, classes, &self.thresholds())
    }

    fn thresholds(&self) -> Vec<f32> {
        self.ema
            .relative()
            .into_iter()
            .map(|r| self.ema.global * r)
            .collect()
    }
}

/// The Dynamic Threshold Module's parameters (`[ssl.dtm]` in a config; each has a default).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DtmParams {
    /// Stage threshold at the start of training and after `ramp` (a share of training).
    pub tau_start: f32,
    pub tau_end: f32,
    pub ramp: f32,
    /// How strongly a class the teacher is less sure of gets a lower threshold (0: not at all).
    pub gamma: f32,
    /// No threshold goes below this.
    pub floor: f32,
    /// EMA decay of the per-class mean probability p̃.
    pub decay: f32,
    /// The per-class statistic that scales the stage threshold.
    pub anchor: Anchor,
}

/// What DTM's per-class scale is measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Anchor {
    /// (p̃_t(c) / max p̃_t)^γ: the teacher's mean probability of each class on the unlabelled
    /// batches, relative to the class it favours most.
    #[default]
    Unlabelled,
    /// ā(c): the teacher's mean confidence on the labelled train images of class c that it
    /// classifies correctly, measured at each epoch's end (Ada-CM's statistic).
    Labelled,
}

impl Default for DtmParams {
    fn default() -> Self {
        DtmParams {
            tau_start: 0.7,
            tau_end: 0.95,
            ramp: 0.5,
            gamma: 0.5,
            floor: 0.5,
            decay: 0.999,
            anchor: Anchor::Unlabelled,
        }
    }
}

/// T_t(c) = max(floor, τ(s) · a(c)), τ(s) = τ_start + (τ_end − τ_start)·min(1, s/ramp), s the share
/// of training done, and a(c) the anchor's statistic: (p̃_t(c)/max p̃_t)^γ, or ā(c).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dtm {
    params: DtmParams,
    ema: ConfidenceEma,
    progress: f32,
    /// ā(c) of the `labelled` anchor; 1 until a class has a correctly classified image.
    #[serde(default)]
    labelled_confidence: Vec<f32>,
}

impl Dtm {
    pub fn new(classes: usize, params: DtmParams) -> Self {
        Dtm {
            params,
            ema: ConfidenceEma::new(classes, params.decay),
            progress: 0.0,
            labelled_confidence: vec![1.0; classes],
        }
    }

    /// Each class's a(c).
    fn class_scale(&self) -> Vec<f32> {
        match self.params.anchor {
            Anchor::Unlabelled => self
                .ema
                .relative()
                .into_iter()
                .map(|r| r.powf(self.params.gamma))
                .collect(),
            Anchor::Labelled => self.labelled_confidence.clone(),
        }
    }

    fn stage_tau(&self) -> f32 {
        let p = &self.params;
        let s = if p.ramp > 0.0 {
            (self.progress / p.ramp).clamp(0.0, 1.0)
        } else {
            1.0
        };
        p.tau_start + (p.tau_end - p.tau_start) * s
    }
}

impl ThresholdPolicy for Dtm {
    fn select(&mut self, _indices: &[usize], probs: &[f32], progress: f32) -> Vec<f32> {
        self.progress = progress;
        self.ema.update(probs);
        mask_by_class(probs, self.ema.classes, &self.thresholds())
    }

    fn thresholds(&self) -> Vec<f32> {
        let tau = self.stage_tau();
        self.class_scale()
            .into_iter()
            .map(|a| (tau * a).max(self.params.floor))
            .collect()
    }

    fn wants_labelled(&self) -> bool {
        self.params.anchor == Anchor::Labelled
    }

    fn observe_labelled(&mut self, probs: &[f32], labels: &[usize]) {
        let classes = self.ema.classes;
        let mut sum = vec![0.0f64; classes];
        let mut count = vec![0usize; classes];
        for (row, &label) in probs.chunks(classes).zip(labels) {
            let (c, p) = top(row);
            if c == label {
                sum[c] += f64::from(p);
                count[c] += 1;
            }
        }
        for c in 0..classes {
            if count[c] > 0 {
                self.labelled_confidence[c] = (sum[c] / count[c] as f64) as f32;
            }
        }
    }
}

/// The policy of a run, whichever mode it is: saved with each checkpoint (`policy.json`) so a
/// resumed run continues with the same thresholds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    FixMatch(FixMatch),
    FlexMatch(FlexMatch),
    FreeMatch(FreeMatch),
    Dtm(Dtm),
}

impl Policy {
    fn inner(&mut self) -> &mut dyn ThresholdPolicy {
        match self {
            Policy::FixMatch(p) => p,
            Policy::FlexMatch(p) => p,
            Policy::FreeMatch(p) => p,
            Policy::Dtm(p) => p,
        }
    }

    /// FreeMatch's fairness target, for FreeMatch only.
    pub fn fairness_target(&self) -> Option<Vec<f32>> {
        match self {
            Policy::FreeMatch(p) => Some(p.fairness_target()),
            _ => None,
        }
    }
}

impl ThresholdPolicy for Policy {
    fn select(&mut self, indices: &[usize], probs: &[f32], progress: f32) -> Vec<f32> {
        self.inner().select(indices, probs, progress)
    }

    fn wants_labelled(&self) -> bool {
        matches!(self, Policy::Dtm(d) if d.wants_labelled())
    }

    fn observe_labelled(&mut self, probs: &[f32], labels: &[usize]) {
        self.inner().observe_labelled(probs, labels)
    }

    fn thresholds(&self) -> Vec<f32> {
        match self {
            Policy::FixMatch(p) => p.thresholds(),
            Policy::FlexMatch(p) => p.thresholds(),
            Policy::FreeMatch(p) => p.thresholds(),
            Policy::Dtm(p) => p.thresholds(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-5
    }

    #[test]
    fn fixmatch_keeps_only_confident_rows() {
        let mut f = FixMatch::new(2, 0.95);
        let mask = f.select(&[0, 1, 2], &[0.96, 0.04, 0.5, 0.5, 0.02, 0.98], 0.0);
        assert_eq!(mask, vec![1.0, 0.0, 1.0]);
    }

    #[test]
    fn flexmatch_warms_up_then_follows_each_class_learning_status() {
        let mut f = FlexMatch::new(2, 0.9, 4);
        // Nothing learnt yet: β = 0 everywhere, so every threshold is 0 (FlexMatch's warm-up
        // lets everything in at first).
        assert!(f.thresholds().iter().all(|t| *t == 0.0));
        // Three images confidently class 0, one never confident.
        f.select(
            &[0, 1, 2, 3],
            &[0.95, 0.05, 0.97, 0.03, 0.99, 0.01, 0.6, 0.4],
            0.0,
        );
        let t = f.thresholds();
        // β(0) = 3/3 → T = τ·1/1; β(1) = 0 → T = 0.
        assert!(close(t[0], 0.9), "{t:?}");
        assert!(close(t[1], 0.0), "{t:?}");
        // Image 3 becomes confidently class 1: β(1) = 1/3 → T = 0.9·(1/3)/(5/3) = 0.18.
        let mask = f.select(&[3], &[0.05, 0.95], 0.0);
        assert_eq!(mask, vec![1.0]);
        assert!(close(f.thresholds()[1], 0.18), "{:?}", f.thresholds());
    }

    #[test]
    fn freematch_thresholds_follow_the_ema_of_confidence() {
        let mut f = FreeMatch::new(2, 0.5);
        assert!(close(f.thresholds()[0], 0.5));
        // A batch all confidently class 0.
        f.select(&[0, 1], &[0.9, 0.1, 0.9, 0.1], 0.0);
        // τ = 0.5·0.5 + 0.5·0.9 = 0.7; p̃ = [0.7, 0.3] → T = [0.7, 0.7·0.3/0.7 = 0.3].
        let t = f.thresholds();
        assert!(close(t[0], 0.7) && close(t[1], 0.3), "{t:?}");
        // Pseudo-labels so far: hist = 0.5·[0.5, 0.5] + 0.5·[1, 0] = [0.75, 0.25]; the fairness
        // target p̃/hist = [0.7/0.75, 0.3/0.25], normalised.
        let target = f.fairness_target();
        let (a, b) = (0.7f32 / 0.75, 0.3f32 / 0.25);
        assert!(
            close(target[0], a / (a + b)) && close(target[1], b / (a + b)),
            "{target:?}"
        );
    }

    #[test]
    fn a_policy_survives_a_checkpoint() {
        let mut p = Policy::FlexMatch(FlexMatch::new(2, 0.9, 3));
        p.select(&[0, 1], &[0.95, 0.05, 0.02, 0.98], 0.1);
        let saved = serde_json::to_string(&p).unwrap();
        let restored: Policy = serde_json::from_str(&saved).unwrap();
        assert_eq!(restored.thresholds(), p.thresholds());
    }

    #[test]
    fn dtm_gets_stricter_with_the_stage_and_lenient_for_unsure_classes() {
        let params = DtmParams {
            decay: 0.0,
            ..DtmParams::default()
        };
        let mut d = Dtm::new(2, params);
        let batch = [0.9, 0.1, 0.8, 0.2];
        d.select(&[0, 1], &batch, 0.0);
        let early = d.thresholds();
        d.select(&[0, 1], &batch, 1.0);
        let late = d.thresholds();
        assert!(
            close(early[0], 0.7) && close(late[0], 0.95),
            "{early:?} {late:?}"
        );
        // Class 1 (p̃ = 0.15 against 0.85) sits lower, but never under the floor.
        assert!(late[1] < late[0] && late[1] >= 0.5, "{late:?}");
        let relative = (0.15f32 / 0.85).powf(0.5);
        assert!(close(late[1], (0.95 * relative).max(0.5)), "{late:?}");
    }

    #[test]
    fn dtm_anchored_on_labelled_data_scales_by_the_confidence_of_correct_predictions() {
        let params = DtmParams {
            anchor: Anchor::Labelled,
            ..DtmParams::default()
        };
        let mut d = Dtm::new(3, params);
        assert!(d.wants_labelled() && !Dtm::new(3, DtmParams::default()).wants_labelled());
        // Before any labelled statistic: the stage threshold itself.
        assert!(d.thresholds().iter().all(|t| close(*t, 0.7)));
        // Class 0: two correct (0.9, 0.7) and one wrong; class 1: one correct (0.6);
        // class 2: never right, keeps its scale of 1.
        let probs = [
            0.9, 0.05, 0.05, //
            0.7, 0.2, 0.1, //
            0.2, 0.7, 0.1, // labelled 0, predicted 1
            0.3, 0.6, 0.1, //
            0.5, 0.4, 0.1, // labelled 2, predicted 0
        ];
        d.observe_labelled(&probs, &[0, 0, 0, 1, 2]);
        d.select(&[0], &[0.1, 0.1, 0.8], 1.0);
        let t = d.thresholds();
        assert!(close(t[0], 0.95 * 0.8), "{t:?}");
        assert!(close(t[1], (0.95f32 * 0.6).max(0.5)), "{t:?}");
        assert!(close(t[2], 0.95), "{t:?}");
        // It survives a checkpoint.
        let p = Policy::Dtm(d);
        let restored: Policy = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(restored.thresholds(), p.thresholds());
    }
}
