//! The model card of an exported version: what the model saw, how it was trained, how to
//! reproduce it, and its validation and parity figures.

use fer_contract::Manifest;

use super::{ExportRequest, PARITY_TOLERANCE, Parity, Trained};
use crate::config::{Config, Mode, PseudoLabels};
use crate::metrics::Scores;
use crate::model::forward_macs;
use crate::thresholds::Anchor;

/// What a model saw: the labelled set, and the unlabelled ones of the semi-supervised modes.
pub(super) fn data_sources(config: &Config) -> Vec<String> {
    let mut sources = vec![format!(
        "{} (`{}`{})",
        config.data.describe(),
        config.data.archive_name(),
        if config.labelled_fraction < 1.0 {
            format!(
                ", {:.0} % of train labelled, stratified, seed {}",
                config.labelled_fraction * 100.0,
                config.seed
            )
        } else {
            String::new()
        }
    )];
    if config.mode.is_semi_supervised() {
        for archive in &config.ssl.unlabelled {
            sources.push(format!(
                "unlabelled faces, no expression labels (`{}`)",
                archive.display()
            ));
        }
        if config.ssl.rest_of_train && config.labelled_fraction < 1.0 {
            sources.push("the rest of the train split, its labels dropped".into());
        }
    }
    sources
}

/// One sentence on how the model was trained.
fn method(config: &Config) -> String {
    let ema = config
        .ema_decay
        .map(|d| format!(" The exported weights are the EMA of the student's (decay {d})."))
        .unwrap_or_default();
    let ssl = &config.ssl;
    let learns = match ssl.pseudo_labels {
        PseudoLabels::Hard => "the pseudo-labels (the teacher's top class)",
        PseudoLabels::Soft => "the teacher's class distributions (soft pseudo-labels)",
    };
    let semi = |policy: String| {
        format!(
            "Semi-supervised training ({}): an EMA teacher pseudo-labels the weak view of {} unlabelled images per labelled one; \
             the student learns {learns} of the images that pass {policy} on a strong view (RandAugment-style ops and cutout), \
             with weight λ_u = {}.{ema}",
            config.mode.name(),
            ssl.mu,
            ssl.lambda_u
        )
    };
    let training = match config.mode {
        Mode::Supervised => format!("Supervised training (cross-entropy).{ema}"),
        Mode::Fixmatch => semi(format!("a fixed confidence threshold of {}", ssl.tau)),
        Mode::Flexmatch => semi(format!(
            "FlexMatch's class thresholds (τ = {}, scaled by each class's learning status)",
            ssl.tau
        )),
        Mode::Freematch => semi(format!(
            "FreeMatch's self-adaptive thresholds (EMA {}), plus its fairness term with weight {}",
            ssl.threshold_decay, ssl.fairness
        )),
        Mode::Dtm => {
            let d = &ssl.dtm;
            let scale = match d.anchor {
                Anchor::Unlabelled => format!("(p̃_t(c)/max p̃_t)^{}", d.gamma),
                Anchor::Labelled => "ā(c), the teacher's mean confidence on the labelled images of c it classifies correctly".into(),
            };
            semi(format!(
                "the Dynamic Threshold Module (T_t(c) = max({}, τ(s)·{scale}), τ rising from {} to {} over the first {:.0} % of training; see training/README.md)",
                d.floor,
                d.tau_start,
                d.tau_end,
                d.ramp * 100.0
            ))
        }
    };
    let reframed = match &ssl.reframe {
        Some(r) if config.mode.is_semi_supervised() => format!(
            " The unlabelled faces were re-cropped to the labelled data's framing (margin {}, shift {}, measured with {}).",
            r.margin,
            r.shift,
            r.detector.display()
        ),
        _ => String::new(),
    };
    let targets = if config.loss.soft_targets {
        " The labelled images' targets are their annotator vote distributions (soft targets), not the majority label."
    } else {
        ""
    };
    format!("{training}{targets}{reframed}")
}

/// The run folder a `fer-train train` command line trains into (its `--run` argument).
fn run_folder_of(command: &str) -> Option<&str> {
    let mut words = command.split_whitespace();
    while let Some(word) = words.next() {
        if word == "--run" {
            return words.next();
        }
        if let Some(folder) = word.strip_prefix("--run=") {
            return Some(folder);
        }
    }
    None
}

/// What the model card is written from.
pub(super) struct Card<'a> {
    pub(super) req: &'a ExportRequest<'a>,
    pub(super) manifest: &'a Manifest,
    pub(super) trained: &'a [Trained<'a>],
    pub(super) params: &'a [usize],
    pub(super) parity: &'a Parity,
    /// The graph's validation figures.
    pub(super) scores: &'a Scores,
    /// Each ensemble member's alone (empty for one network).
    pub(super) alone: &'a [Scores],
}

impl Card<'_> {
    pub(super) fn render(&self) -> String {
        let (manifest, req) = (self.manifest, self.req);
        let mut backends: Vec<&str> = Vec::new();
        for t in self.trained {
            if !backends.contains(&t.state.backend.describe()) {
                backends.push(t.state.backend.describe());
            }
        }
        let mut per_class = String::new();
        for (label, f1) in manifest.labels.iter().zip(&self.scores.per_class_f1) {
            per_class.push_str(&format!("| {label} | {f1:.4} |\n"));
        }
        let (method, reproduce) = if req.is_ensemble() {
            self.ensemble_sections()
        } else {
            self.single_sections()
        };
        let folded = req.folded();
        let included = if folded.is_empty() {
            String::new()
        } else {
            format!(", {} included", folded.join(" and "))
        };
        let pictures = if !folded.is_empty() {
            "This graph's confusion matrix: `confusion.svg`. The training run's curves and confusion \
             matrix (its plain network: no flip, no ensemble): `training/`."
        } else {
            "The training run's curves and confusion matrix: `training/`."
        };
        format!(
            "# {name} v{version}\n\n\
             Facial-expression classifier for 48×48 grayscale face crops, trained by `fer-train` ({backend}).\n\n\
             ## Data\n{data}. Read in place from `../shared/data/`; the images are research data and are not redistributed here.\n\n\
             ## Method\n{method}\n\n\
             ## Reproduce\n{reproduce}\n\n\
             ## Validation metrics (best epoch{included})\n- accuracy: {acc:.4}\n- macro-F1: {f1:.4}\n\n| class | F1 |\n|---|---|\n{per_class}\n{pictures}\n\n\
             ## Export check\nONNX Runtime vs burn on {images} validation images: max |Δlogit| {diff:.2e} (tolerance {tol:.0e}), argmax agreement {agree}/{images}.\n\n\
             ## Intended use\nClassifying the expression of a single, roughly frontal, cropped face (as `POST /v1/classify` expects). \
             Research and demonstration use.\n\n\
             ## Limits\nTrained on FER2013-style faces (low resolution, mostly frontal, internet photos); accuracy drops on profile views, \
             occlusions and demographics under-represented in that data. An expression label is not an emotion: it describes a face, not what a person feels. \
             Do not use it to make decisions about people.\n",
            name = manifest.name,
            version = manifest.version,
            backend = backends.join(", "),
            data = manifest.provenance.data.join("; "),
            acc = self.scores.accuracy,
            f1 = self.scores.macro_f1,
            images = self.parity.images,
            diff = self.parity.max_abs_diff,
            tol = PARITY_TOLERANCE,
            agree = self.parity.argmax_agree,
        )
    }

    /// "A 1180000-parameter VGG-style CNN (…)" for member `i`.
    fn network(&self, i: usize) -> String {
        let config = self.trained[i].member.config;
        let macs = forward_macs(
            &config.model,
            self.manifest.input.channels.count(),
            self.manifest.input.width as usize,
            self.manifest.labels.len(),
        );
        format!(
            "A {}-parameter VGG-style CNN (widths {:?}, {} conv per stage, {:.1} M multiply-accumulates per image",
            self.params[i],
            config.model.widths,
            config.model.convs_per_stage,
            macs as f64 / 1e6
        )
    }

    /// "Seed 42. 30 epochs (…) …" for member `i`.
    fn schedule(&self, i: usize) -> String {
        let (t, config) = (&self.trained[i], self.trained[i].member.config);
        let stopped = if t.state.finished {
            String::new()
        } else {
            format!(
                " Training was stopped after epoch {} of the config's {} (the learning-rate schedule had not reached its end); \
                 the same command resumes the run from its last checkpoint.",
                t.state.epoch, config.epochs
            )
        };
        format!(
            "Seed {}. {} epochs ({} steps), best epoch {}, {:.2} h of training wall time on the CPU it ran on.{stopped}",
            config.seed,
            t.state.epoch,
            t.state.step,
            t.state.best_epoch,
            t.state.wall_seconds / 3600.0
        )
    }

    fn single_sections(&self) -> (String, String) {
        let (req, t) = (self.req, &self.trained[0]);
        let (flip_cost, flip_method, flip_export) = if req.test_time_flip {
            (
                " (twice that with the test-time flip below)",
                format!(
                    " At inference the graph scores each face and its mirror image and averages their logits (test-time flip, folded \
                     into the export): twice the compute, for {:.4} accuracy and {:.4} macro-F1 against the plain model's {:.4} and {:.4}.",
                    self.scores.accuracy, self.scores.macro_f1, t.best.accuracy, t.best.macro_f1
                ),
                " Exported from the run's best checkpoint by `fer-train export --test-time-flip`.",
            )
        } else {
            ("", String::new(), "")
        };
        (
            format!(
                "{} {}){flip_cost}, AdamW, cosine schedule, weak augmentation (flip, small affine) of labelled images.{flip_method}",
                method(t.member.config),
                self.network(0)
            ),
            format!("```\n{}\n```\n{}{flip_export}", t.command, self.schedule(0)),
        )
    }

    fn ensemble_sections(&self) -> (String, String) {
        let req = self.req;
        let n = self.trained.len();
        let flip = if req.test_time_flip {
            " on the face and on its mirror image (test-time flip: each network's two logit vectors averaged first)"
        } else {
            " on the face"
        };
        let mut text = format!(
            "An ensemble of {n} networks trained separately. The graph runs each{flip} and outputs the log of their mean class \
             probabilities, so the softmax the server applies gives that mean: {passes} passes of a network per face.",
            passes = req.passes()
        );
        for (i, t) in self.trained.iter().enumerate() {
            let a = &self.alone[i];
            text.push_str(&format!(
                "\n\n### Member {k}\n{} {}), AdamW, cosine schedule, weak augmentation (flip, small affine) of labelled images. \
                 {} Alone{}: {:.4} accuracy, {:.4} macro-F1.",
                method(t.member.config),
                self.network(i),
                self.schedule(i),
                if req.test_time_flip { ", with test-time flip" } else { "" },
                a.accuracy,
                a.macro_f1,
                k = i + 1
            ));
        }
        let commands: Vec<&str> = self.trained.iter().map(|t| t.command.as_str()).collect();
        // The folders the commands above train into; the folder exported from where a command
        // names none.
        let runs: Vec<String> = self
            .trained
            .iter()
            .map(|t| {
                let folder = run_folder_of(&t.command)
                    .map(str::to_string)
                    .unwrap_or_else(|| t.member.run.0.display().to_string());
                format!("--run {folder}")
            })
            .collect();
        (
            text,
            format!(
                "Train the members (one command each):\n```\n{}\n```\nthen export them together, in this order:\n```\n\
                 fer-train export --name {} {}{}\n```",
                commands.join("\n"),
                req.name,
                runs.join(" "),
                if req.test_time_flip {
                    " --test-time-flip"
                } else {
                    ""
                }
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::run_folder_of;

    #[test]
    fn the_run_folder_is_read_from_the_training_command() {
        assert_eq!(
            run_folder_of("fer-train train --config c.toml --run runs/a --stop-after-steps 9"),
            Some("runs/a")
        );
        assert_eq!(
            run_folder_of("fer-train train --run=runs/b"),
            Some("runs/b")
        );
        assert_eq!(run_folder_of("fer-train train --config c.toml"), None);
        assert_eq!(run_folder_of("fer-train train --run"), None);
        assert_eq!(run_folder_of("fer-train train --runs x"), None);
    }
}
