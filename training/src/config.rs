//! A training run's configuration: one TOML file per mode under `training/configs/`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::augment::AugmentConfig;
use crate::data::Source;
use crate::framing::ReframeConfig;
use crate::model::ModelConfig;
use crate::thresholds::DtmParams;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Labelled dataset.
    pub data: Source,
    /// Folder holding the archives (`../shared/data` from the repository root).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Keep this fraction of each class of the labelled train split (the rest is dropped, or
    /// becomes unlabelled data in semi-supervised modes).
    #[serde(default = "one")]
    pub labelled_fraction: f64,
    /// Use at most this many training images (smoke tests).
    #[serde(default)]
    pub limit_train: Option<usize>,
    /// Use at most this many validation images (smoke tests).
    #[serde(default)]
    pub limit_val: Option<usize>,
    pub seed: u64,
    pub epochs: usize,
    pub batch_size: usize,
    /// Stop after this many optimiser steps in all (smoke tests); `None` runs every epoch.
    #[serde(default)]
    pub max_steps: Option<usize>,
    pub optimizer: OptimizerConfig,
    #[serde(default)]
    pub loss: LossConfig,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub augment: AugmentConfig,
    /// Draw batches with equal probability per class instead of shuffling.
    #[serde(default)]
    pub class_balanced: bool,
    /// Training mode: `supervised`, or one of the semi-supervised modes (see `[ssl]`).
    #[serde(default)]
    pub mode: Mode,
    /// Keep an exponential moving average of the weights (decay per step, warmed up as
    /// min(decay, (1+t)/(10+t))). It is the teacher of the semi-supervised modes (required there)
    /// and, when set, the model that is evaluated, kept and exported.
    #[serde(default)]
    pub ema_decay: Option<f64>,
    /// The semi-supervised modes' settings (ignored by `supervised`).
    #[serde(default)]
    pub ssl: SslConfig,
    /// Save a resumable checkpoint every this many steps (and at each epoch's end).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    /// Evaluate on the validation split every this many epochs, and always at the last. The
    /// best model is chosen among evaluated epochs only. On a small labelled split an evaluation
    /// costs as much as the epoch's training steps (FER2013 val: 3,589 faces), so the 10 % rows
    /// of the ablation evaluate every few epochs.
    #[serde(default = "one_epoch")]
    pub eval_every: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Supervised,
    /// A fixed confidence threshold (`ssl.tau`).
    Fixmatch,
    /// Class thresholds from each class's learning status.
    Flexmatch,
    /// A self-adaptive global threshold, class-relative thresholds and a fairness term.
    Freematch,
    /// This project's Dynamic Threshold Module (`ssl.dtm`).
    Dtm,
}

impl Mode {
    pub fn is_semi_supervised(self) -> bool {
        self != Mode::Supervised
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Supervised => "supervised",
            Mode::Fixmatch => "fixmatch",
            Mode::Flexmatch => "flexmatch",
            Mode::Freematch => "freematch",
            Mode::Dtm => "dtm",
        }
    }
}

/// Unlabelled data and the unsupervised loss of the semi-supervised modes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SslConfig {
    /// Archives of unlabelled faces, relative to `data_dir`.
    pub unlabelled: Vec<PathBuf>,
    /// Add the labelled train images that `labelled_fraction` leaves out, without their labels.
    pub rest_of_train: bool,
    /// Use at most this many images of each unlabelled archive (smoke tests).
    pub limit_unlabelled: Option<usize>,
    /// Unlabelled images per labelled image in a step.
    pub mu: usize,
    /// Weight of the unsupervised loss.
    pub lambda_u: f32,
    /// FixMatch's threshold, and FlexMatch's upper one.
    pub tau: f32,
    /// EMA decay of FreeMatch's confidence estimates.
    pub threshold_decay: f32,
    /// Weight of FreeMatch's self-adaptive fairness term.
    pub fairness: f32,
    pub dtm: DtmParams,
    /// Re-crop the unlabelled faces to the labelled data's framing (drops images without exactly
    /// one face); `None` uses them as they are.
    pub reframe: Option<ReframeConfig>,
    /// What the student learns from an accepted pseudo-label.
    pub pseudo_labels: PseudoLabels,
}

/// The target of the unlabelled loss for an accepted image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PseudoLabels {
    /// The teacher's argmax, one-hot (FixMatch and every mode's default).
    #[default]
    Hard,
    /// The teacher's whole class distribution on the weak view: the unlabelled counterpart of
    /// `loss.soft_targets`, so a recipe that learns vote distributions does not learn one-hot
    /// labels on its unlabelled half.
    Soft,
}

impl Default for SslConfig {
    fn default() -> Self {
        Self {
            unlabelled: vec![PathBuf::from("unlabeled-faces.tar.gz")],
            rest_of_train: true,
            limit_unlabelled: None,
            mu: 2,
            lambda_u: 1.0,
            tau: 0.95,
            threshold_decay: 0.999,
            fairness: 0.01,
            dtm: DtmParams::default(),
            reframe: None,
            pseudo_labels: PseudoLabels::Hard,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    pub learning_rate: f64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f32,
    /// Linear warm-up, in epochs, before the cosine decay.
    #[serde(default)]
    pub warmup_epochs: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossConfig {
    #[serde(default)]
    pub label_smoothing: Option<f32>,
    /// Weight each class by inverse frequency of the majority labels (raised to
    /// `class_weight_power`); with `soft_targets`, `soft_class_weights` says what is weighted.
    #[serde(default)]
    pub class_weights: bool,
    /// The exponent of the inverse frequency: 1 is the plain inverse, 0.5 its square root (milder
    /// weights for the rarest classes). Needs `class_weights`.
    #[serde(default = "one_f32")]
    pub class_weight_power: f32,
    /// With `soft_targets` and `class_weights`: weight each class's share of the votes, or each
    /// face by its majority class. Needs both.
    #[serde(default)]
    pub soft_class_weights: SoftClassWeights,
    /// Learn each image's annotator vote distribution instead of its majority class (FER+ only;
    /// evaluation stays on the majority class).
    #[serde(default)]
    pub soft_targets: bool,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            label_smoothing: None,
            class_weights: false,
            class_weight_power: 1.0,
            soft_class_weights: SoftClassWeights::Votes,
            soft_targets: false,
        }
    }
}

/// What class weights scale when the targets are vote distributions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SoftClassWeights {
    /// Each class's share of an image's votes, by its class's weight. A face with nine neutral
    /// votes and one contempt vote then weighs contempt above neutral (`ferplus-soft-cw` lost
    /// this way: it called most neutral faces contempt).
    #[default]
    Votes,
    /// The whole face, by its majority class's weight; its distribution keeps its shape. For a
    /// one-hot distribution without label smoothing both are the same loss.
    Face,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("../shared/data")
}
fn one() -> f64 {
    1.0
}
fn one_f32() -> f32 {
    1.0
}
fn default_weight_decay() -> f32 {
    5e-4
}
fn one_epoch() -> usize {
    1
}

fn default_checkpoint_every() -> usize {
    200
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: {1}")]
    Parse(String, toml::de::Error),
    #[error("{0}: {1}")]
    Invalid(String, InvalidConfig),
}

/// Settings that contradict each other; the text says which.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidConfig(pub String);

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io(name.clone(), e))?;
        let config: Config =
            toml::from_str(&text).map_err(|e| ConfigError::Parse(name.clone(), e))?;
        config
            .validate()
            .map_err(|m| ConfigError::Invalid(name, m))?;
        Ok(config)
    }

    /// Checks that the settings are consistent with each other; the error says what is wrong.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        self.first_problem()
            .map_or(Ok(()), |problem| Err(InvalidConfig(problem)))
    }

    /// The first inconsistency found, in words, or `None`.
    fn first_problem(&self) -> Option<String> {
        if !(self.labelled_fraction > 0.0 && self.labelled_fraction <= 1.0) {
            return Some("labelled_fraction must be in (0, 1]".into());
        }
        if self.epochs == 0 || self.batch_size == 0 {
            return Some("epochs and batch_size must be positive".into());
        }
        if self.eval_every == 0 {
            return Some("eval_every must be at least 1 (epochs between evaluations)".into());
        }
        if self.checkpoint_every == 0 {
            return Some("checkpoint_every must be at least 1 (steps between checkpoints)".into());
        }
        if self.optimizer.learning_rate <= 0.0 {
            return Some("optimizer.learning_rate must be positive".into());
        }
        if self.model.widths.is_empty() {
            return Some("model.widths must list at least one stage".into());
        }
        if self.loss.soft_targets && self.data != Source::Ferplus {
            return Some(
                "loss.soft_targets needs data = \"ferplus\" (the only dataset with votes)".into(),
            );
        }
        let loss = &self.loss;
        if !(loss.class_weight_power.is_finite() && loss.class_weight_power > 0.0) {
            return Some("loss.class_weight_power must be positive".into());
        }
        if !loss.class_weights
            && (loss.class_weight_power != 1.0
                || loss.soft_class_weights != SoftClassWeights::Votes)
        {
            return Some(
                "loss.class_weight_power and loss.soft_class_weights need loss.class_weights = true"
                    .into(),
            );
        }
        if loss.soft_class_weights != SoftClassWeights::Votes && !loss.soft_targets {
            return Some("loss.soft_class_weights needs loss.soft_targets = true".into());
        }
        if let Some(d) = self.ema_decay
            && !(0.0..1.0).contains(&d)
        {
            return Some("ema_decay must be in [0, 1)".into());
        }
        if self.mode.is_semi_supervised() {
            if self.ema_decay.is_none() {
                return Some(format!(
                    "mode {} needs ema_decay (its teacher is the EMA of the weights)",
                    self.mode.name()
                ));
            }
            let ssl = &self.ssl;
            if ssl.mu == 0 {
                return Some("ssl.mu must be positive".into());
            }
            if ssl.unlabelled.is_empty() && !(ssl.rest_of_train && self.labelled_fraction < 1.0) {
                return Some("semi-supervised modes need unlabelled data: ssl.unlabelled, or ssl.rest_of_train with labelled_fraction < 1".into());
            }
            if !(0.0..=1.0).contains(&ssl.tau) || !(0.0..1.0).contains(&ssl.threshold_decay) {
                return Some("ssl.tau must be in [0, 1] and ssl.threshold_decay in [0, 1)".into());
            }
            if let Some(r) = &ssl.reframe
                && !(r.margin > -0.5 && r.shift.abs() < 1.0)
            {
                return Some("ssl.reframe needs margin > -0.5 and |shift| < 1".into());
            }
            let d = &ssl.dtm;
            if !(0.0 < d.floor
                && d.floor <= d.tau_start
                && d.tau_start <= d.tau_end
                && d.tau_end <= 1.0)
            {
                return Some("ssl.dtm needs 0 < floor ≤ tau_start ≤ tau_end ≤ 1".into());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_configs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut n = 0;
        for dir in [root.clone(), root.join("ablation"), root.join("campaign")] {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "toml") {
                    Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                    n += 1;
                }
            }
        }
        assert!(n >= 19, "{n} configs");
    }

    #[test]
    fn refuses_unknown_keys_and_modes() {
        let base = "data = \"fer2013\"\nseed = 1\nepochs = 1\nbatch_size = 8\n[optimizer]\nlearning_rate = 0.001\n";
        assert!(toml::from_str::<Config>(base).is_ok());
        assert!(toml::from_str::<Config>(&format!("mode = \"magic\"\n{base}")).is_err());
        assert!(toml::from_str::<Config>(&format!("epoch = 3\n{base}")).is_err());
        assert!(toml::from_str::<Config>(&format!("{base}[ssl]\nmuu = 3\n")).is_err());
        let soft = toml::from_str::<Config>(&format!("{base}[ssl]\npseudo_labels = \"soft\"\n"));
        assert_eq!(soft.unwrap().ssl.pseudo_labels, PseudoLabels::Soft);
        assert_eq!(
            toml::from_str::<Config>(base).unwrap().ssl.pseudo_labels,
            PseudoLabels::Hard
        );
        assert!(
            toml::from_str::<Config>(&format!("{base}[ssl]\npseudo_labels = \"fuzzy\"\n")).is_err()
        );
    }

    #[test]
    fn every_zero_is_refused() {
        let base = "data = \"fer2013\"\nseed = 1\nepochs = 1\nbatch_size = 8\n";
        let opt = "[optimizer]\nlearning_rate = 0.001\n";
        let parse = |extra: &str| {
            toml::from_str::<Config>(&format!("{base}{extra}{opt}"))
                .unwrap()
                .validate()
        };
        assert!(
            parse("checkpoint_every = 0\n")
                .unwrap_err()
                .0
                .contains("checkpoint_every")
        );
        assert!(parse("checkpoint_every = 1\n").is_ok());
        assert!(
            parse("eval_every = 0\n")
                .unwrap_err()
                .0
                .contains("eval_every")
        );
        assert!(parse("eval_every = 5\n").is_ok());
    }

    #[test]
    fn semi_supervised_modes_need_a_teacher_and_unlabelled_data() {
        let base = "data = \"fer2013\"\nseed = 1\nepochs = 1\nbatch_size = 8\n";
        let opt = "[optimizer]\nlearning_rate = 0.001\n";
        let parse = |extra: &str, tail: &str| {
            toml::from_str::<Config>(&format!("{base}{extra}{opt}{tail}"))
                .unwrap()
                .validate()
        };
        assert!(
            parse("mode = \"dtm\"\n", "")
                .unwrap_err()
                .0
                .contains("ema_decay")
        );
        assert!(parse("mode = \"dtm\"\nema_decay = 0.999\n", "").is_ok());
        assert!(
            parse(
                "mode = \"fixmatch\"\nema_decay = 0.999\n",
                "[ssl]\nunlabelled = []\n"
            )
            .is_err()
        );
        assert!(
            parse(
                "mode = \"fixmatch\"\nema_decay = 0.999\nlabelled_fraction = 0.1\n",
                "[ssl]\nunlabelled = []\n"
            )
            .is_ok()
        );
        assert!(
            parse(
                "mode = \"dtm\"\nema_decay = 0.999\n",
                "[ssl.dtm]\nfloor = 0.9\n"
            )
            .is_err()
        );
        assert!(parse("", "").is_ok(), "supervised needs no [ssl]");
    }

    /// The class-weight knobs refuse settings that would do nothing or nonsense.
    #[test]
    fn class_weight_knobs_need_what_they_modify() {
        let base = "data = \"ferplus\"\nseed = 1\nepochs = 1\nbatch_size = 8\n[optimizer]\nlearning_rate = 0.001\n[loss]\n";
        let parse = |extra: &str| {
            toml::from_str::<Config>(&format!("{base}{extra}"))
                .unwrap()
                .validate()
        };
        let face = "soft_class_weights = \"face\"\n";
        assert!(
            parse(&format!(
                "class_weights = true\nsoft_targets = true\n{face}"
            ))
            .is_ok()
        );
        assert!(parse(&format!("soft_targets = true\n{face}")).is_err());
        assert!(parse(&format!("class_weights = true\n{face}")).is_err());
        assert!(parse("class_weights = true\nclass_weight_power = 0.5\n").is_ok());
        assert!(parse("class_weight_power = 0.5\n").is_err());
        assert!(parse("class_weights = true\nclass_weight_power = 0.0\n").is_err());
        assert!(
            toml::from_str::<Config>(&format!("{base}soft_class_weights = \"both\"\n")).is_err()
        );
    }
}
