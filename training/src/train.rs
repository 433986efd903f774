//! The training loop: batches, optimiser, evaluation each epoch, resumable checkpoints.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use burn::module::Module;
use burn::optim::record::OptimizerRecord;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::store::ModuleRecord;
use fer_contract::{Manifest, Preprocessor};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::augment::AugmentConfig;
use crate::backend::TrainBackend;
use crate::batch::{ViewKind, images_tensor, view_batch};
use crate::config::Config;
use crate::data::{self, Dataset, Labelled};
use crate::ema;
use crate::loss::{SupervisedLoss, Targets};
use crate::metrics::{Confusion, Scores};
use crate::model::FerNet;
use crate::report;
use crate::ssl::{self, LabelledBatch, SemiSupervised, StepStats, Unlabelled};
use crate::thresholds::{Policy, ThresholdPolicy};

/// Files of a run directory.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn state(&self) -> PathBuf {
        self.0.join("state.json")
    }
    pub fn last_model(&self) -> PathBuf {
        self.0.join("last.bpk")
    }
    pub fn last_optimizer(&self) -> PathBuf {
        self.0.join("last-optimizer.bpk")
    }
    pub fn best_model(&self) -> PathBuf {
        self.0.join("best.bpk")
    }
    pub fn config(&self) -> PathBuf {
        self.0.join("config.toml")
    }
    pub fn summary(&self) -> PathBuf {
        self.0.join("summary.json")
    }
    /// The EMA of the weights (runs with `ema_decay`).
    pub fn teacher(&self) -> PathBuf {
        self.0.join("teacher.bpk")
    }
    /// The threshold policy's state (semi-supervised runs).
    pub fn policy(&self) -> PathBuf {
        self.0.join("policy.json")
    }
    /// The command that trains this run, as a user would type it (for `export`).
    pub fn command(&self) -> PathBuf {
        self.0.join("command.txt")
    }
}

/// One epoch's figures, kept in `state.json` and plotted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub step: usize,
    pub train_loss: f64,
    /// Mean cross-entropy of the evaluated model on the validation images (runs from before it
    /// was recorded have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    pub learning_rate: f64,
    pub val: Scores,
    pub seconds: f64,
    /// The unlabelled half of the epoch (semi-supervised modes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl: Option<SslRecord>,
}

/// One epoch's semi-supervised figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SslRecord {
    /// Mean unsupervised loss per step.
    pub unsup_loss: f64,
    /// Mean share of the unlabelled images whose pseudo-label was accepted.
    pub mask_rate: f64,
    /// Each class's threshold at the epoch's end.
    pub thresholds: Vec<f32>,
}

/// Where a run stands; written atomically after every checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct RunState {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimiser steps taken in all.
    pub step: usize,
    /// Steps taken inside the current (incomplete) epoch.
    pub step_in_epoch: usize,
    /// Sum of the losses of the current epoch's steps so far.
    pub epoch_loss_sum: f64,
    /// Sums of the unsupervised losses and mask rates of the current epoch's steps so far.
    #[serde(default)]
    pub epoch_unsup_sum: f64,
    #[serde(default)]
    pub epoch_mask_sum: f64,
    pub best_macro_f1: f64,
    pub best_epoch: usize,
    pub history: Vec<EpochRecord>,
    /// Wall time spent training, over every session of this run.
    pub wall_seconds: f64,
    pub finished: bool,
    /// The backend of the run's latest session (older runs: flex, the only one then).
    #[serde(default)]
    pub backend: TrainBackend,
}

fn write_json_atomic(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The manifest template of a run: the contract the trainer preprocesses with and exports.
pub fn manifest_template(config: &Config, classes: &[String]) -> Manifest {
    use fer_contract::*;
    Manifest {
        format_version: FORMAT_VERSION,
        name: match config.data {
            data::Source::Fer2013 => "fer2013".into(),
            data::Source::Ferplus => "ferplus".into(),
        },
        version: 1,
        labels: classes.to_vec(),
        input: InputSpec {
            name: "input".into(),
            layout: Layout::Nchw,
            channels: Channels::Gray,
            height: 48,
            width: 48,
        },
        output: OutputSpec {
            name: "logits".into(),
            kind: OutputKind::Logits,
        },
        preprocessing: Preprocessing {
            resize: ResizeMethod::Bilinear,
            scale: 1.0 / 255.0,
            mean: vec![0.5],
            std: vec![0.5],
        },
        provenance: Provenance::default(),
    }
}

/// Loads the labelled data a config asks for, applying its fraction and limits. The second value
/// holds the train images that `labelled_fraction` left out when the config uses them as
/// unlabelled data (a semi-supervised mode with `ssl.rest_of_train`), `None` otherwise.
pub fn load_data(
    config: &Config,
    preprocessor: &Preprocessor,
    manifest: &Manifest,
) -> anyhow::Result<(Labelled, Option<Dataset>)> {
    let side = (
        manifest.input.width,
        manifest.input.height,
        manifest.input.channels,
    );
    let mut labelled = data::load_labelled(config.data, &config.data_dir, preprocessor, side)
        .with_context(|| {
            format!(
                "loading {:?} from {}",
                config.data,
                config.data_dir.display()
            )
        })?;
    let classes = labelled.classes.len();
    let mut left_out = None;
    if config.labelled_fraction < 1.0 {
        let (keep, rest) = data::stratified_split(
            &labelled.train,
            classes,
            config.labelled_fraction,
            config.seed,
        );
        if config.mode.is_semi_supervised() && config.ssl.rest_of_train {
            left_out = Some(labelled.train.subset(&rest));
        }
        labelled.train = labelled.train.subset(&keep);
    }
    if let Some(limit) = config.limit_train.filter(|l| *l < labelled.train.len()) {
        let (keep, _) = data::stratified_split(
            &labelled.train,
            classes,
            limit as f64 / labelled.train.len() as f64,
            config.seed,
        );
        labelled.train = labelled.train.subset(&keep);
    }
    if let Some(limit) = config.limit_val.filter(|l| *l < labelled.val.len()) {
        let (keep, _) = data::stratified_split(
            &labelled.val,
            classes,
            limit as f64 / labelled.val.len() as f64,
            config.seed,
        );
        labelled.val = labelled.val.subset(&keep);
    }
    Ok((labelled, left_out))
}

/// Learning rate at `step`: linear warm-up, then cosine decay to zero.
pub fn learning_rate(base: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    base * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

/// The order of one epoch's samples: a seeded shuffle, or class-balanced draws.
fn epoch_order(
    train: &Dataset,
    classes: usize,
    seed: u64,
    epoch: usize,
    balanced: bool,
) -> Vec<usize> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let n = train.len();
    if !balanced {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        return order;
    }
    let labels = train.labels.as_ref().expect("labelled");
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l].push(i);
    }
    by_class.retain(|c| !c.is_empty());
    (0..n)
        .map(|_| {
            let class = &by_class[rng.random_range(0..by_class.len())];
            class[rng.random_range(0..class.len())]
        })
        .collect()
}

/// Logits of every image of a dataset, in order (`[n × classes]`, row-major).
pub fn predict(
    model: &FerNet,
    dataset: &Dataset,
    preprocessor: &Preprocessor,
    device: &Device,
    batch: usize,
) -> anyhow::Result<Vec<f32>> {
    let mut logits = Vec::new();
    let indices: Vec<usize> = (0..dataset.len()).collect();
    for chunk in indices.chunks(batch) {
        let data = view_batch(
            &AugmentConfig::default(),
            dataset,
            preprocessor,
            chunk,
            ViewKind::Plain,
            0,
        );
        let out = model.forward(images_tensor(data, chunk.len(), dataset, device));
        logits.extend(
            out.into_data()
                .try_to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?,
        );
    }
    Ok(logits)
}

/// Scores of a model on a labelled dataset, and its mean cross-entropy there (against the class).
pub fn evaluate(
    model: &FerNet,
    dataset: &Dataset,
    preprocessor: &Preprocessor,
    classes: usize,
    device: &Device,
) -> anyhow::Result<(Scores, f64)> {
    let logits = predict(model, dataset, preprocessor, device, 256)?;
    score_logits(&logits, dataset, classes)
}

/// As [`evaluate`], with the logits averaged over each image and its mirror image (test-time
/// flip).
pub fn evaluate_with_flip(
    model: &FerNet,
    dataset: &Dataset,
    preprocessor: &Preprocessor,
    classes: usize,
    device: &Device,
) -> anyhow::Result<(Scores, f64)> {
    let plain = predict(model, dataset, preprocessor, device, 256)?;
    let mirrored = predict(model, &dataset.mirrored(), preprocessor, device, 256)?;
    let logits: Vec<f32> = plain
        .iter()
        .zip(&mirrored)
        .map(|(a, b)| (a + b) / 2.0)
        .collect();
    score_logits(&logits, dataset, classes)
}

fn score_logits(
    logits: &[f32],
    dataset: &Dataset,
    classes: usize,
) -> anyhow::Result<(Scores, f64)> {
    let labels = dataset.labels.as_ref().context("evaluation needs labels")?;
    let mut confusion = Confusion::new(classes);
    let mut loss = 0.0f64;
    for (row, &truth) in logits.chunks(classes).zip(labels) {
        confusion.add(truth, argmax(row));
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let log_sum = row
            .iter()
            .map(|v| f64::from(v - max).exp())
            .sum::<f64>()
            .ln();
        loss += log_sum - f64::from(row[truth] - max);
    }
    Ok((confusion.scores(), loss / labels.len().max(1) as f64))
}

pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0
}

/// Loads a model saved with [`save_model`] into a freshly built network of the config's shape.
pub fn load_model(
    config: &Config,
    classes: usize,
    path: &Path,
    device: &Device,
) -> anyhow::Result<FerNet> {
    let record = ModuleRecord::load(path)
        .map_err(|e| anyhow::anyhow!("loading {}: {e:?}", path.display()))?;
    Ok(FerNet::new(&config.model, 1, classes, device).load_record(record))
}

fn save_model(model: &FerNet, path: &Path) -> anyhow::Result<()> {
    model
        .clone()
        .into_record()
        .save(path)
        .map_err(|e| anyhow::anyhow!("saving {}: {e:?}", path.display()))
}

/// The models and state a checkpoint saves.
struct Snapshot<'a> {
    model: &'a FerNet,
    optimizer: &'a ModuleOptimizer,
    teacher: Option<&'a FerNet>,
    policy: Option<&'a Policy>,
    state: &'a RunState,
}

fn progress_message(loss: f64, lr: f64, stats: Option<(StepStats, Vec<f32>)>) -> String {
    let mut message = format!("loss {loss:.4} lr {lr:.2e}");
    if let Some((stats, thresholds)) = stats {
        let t: Vec<String> = thresholds.iter().map(|t| format!("{t:.2}")).collect();
        message.push_str(&format!(" mask {:.2} T [{}]", stats.mask_rate, t.join(" ")));
    }
    message
}

/// How one session of a run goes (the config says what the run is).
#[derive(Debug, Clone, Copy)]
pub struct Session {
    /// Continue from the run directory's checkpoint, when it holds one.
    pub resume: bool,
    pub backend: TrainBackend,
    /// Stop after this many steps of this session, checkpointed; the run stays unfinished and the
    /// next session resumes it (for a time-boxed machine, and for the resume test).
    pub stop_after_steps: Option<usize>,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            resume: true,
            backend: TrainBackend::default(),
            stop_after_steps: None,
        }
    }
}

/// Trains (or resumes) the run in `run`; returns the state it reached (`finished` unless the
/// session was told to stop early).
pub fn train(config: &Config, run: &RunDir, session: Session) -> anyhow::Result<RunState> {
    let Session {
        resume,
        backend,
        stop_after_steps,
    } = session;
    anyhow::ensure!(
        stop_after_steps != Some(0),
        "stop_after_steps must be at least 1"
    );
    std::fs::create_dir_all(&run.0)?;
    let started = Instant::now();
    let classes_all = config.data.classes();
    let manifest = manifest_template(config, &classes_all);
    let preprocessor = Preprocessor::new(&manifest, fer_contract::DecodeLimits::default());
    let t = Instant::now();
    let (labelled, left_out) = load_data(config, &preprocessor, &manifest)?;
    let classes = labelled.classes.len();
    let unlabelled = if config.mode.is_semi_supervised() {
        Some(Unlabelled::load(
            config,
            &preprocessor,
            &manifest,
            left_out,
        )?)
    } else {
        None
    };
    tracing::info!(
        train = labelled.train.len(),
        val = labelled.val.len(),
        unlabelled = unlabelled.as_ref().map_or(0, Unlabelled::len),
        seconds = t.elapsed().as_secs_f64(),
        "data loaded"
    );
    std::fs::write(run.config(), toml::to_string_pretty(config)?)?;

    let eval_device = backend.device()?;
    let device = eval_device.clone().autodiff();
    device.seed(config.seed);
    let mut model = FerNet::new(
        &config.model,
        manifest.input.channels.count(),
        classes,
        &device,
    );
    let mut optimizer: ModuleOptimizer = AdamWConfig::new()
        .with_weight_decay(config.optimizer.weight_decay)
        .init();
    let mut teacher = config.ema_decay.map(|_| model.valid());
    let mut policy = unlabelled
        .as_ref()
        .and_then(|u| ssl::policy(config.mode, &config.ssl, classes, u.len()));
    let mut state = RunState::default();
    if resume && run.state().is_file() {
        state = serde_json::from_slice(&std::fs::read(run.state())?)?;
        if state.finished {
            tracing::info!(dir = %run.0.display(), "run already finished");
            return Ok(state);
        }
        model = load_model(config, classes, &run.last_model(), &device)?;
        let record = OptimizerRecord::load(run.last_optimizer())
            .map_err(|e| anyhow::anyhow!("optimizer state: {e:?}"))?;
        optimizer = optimizer.load_record(record);
        if teacher.is_some() {
            teacher = Some(load_model(config, classes, &run.teacher(), &eval_device)?);
        }
        if policy.is_some() {
            policy = Some(
                serde_json::from_slice(&std::fs::read(run.policy())?)
                    .context("the run's policy.json")?,
            );
        }
        tracing::info!(epoch = state.epoch, step = state.step, "resumed");
    }
    state.backend = backend;

    let counts = labelled.train.class_counts(classes);
    let loss_fn = SupervisedLoss::new(config, &counts, &device);
    let mut semi = match (unlabelled.as_ref(), policy) {
        (Some(unlabelled), Some(policy)) => Some(SemiSupervised {
            config,
            preprocessor: &preprocessor,
            unlabelled,
            policy,
            classes,
            teacher_device: eval_device.clone(),
        }),
        _ => None,
    };
    // Saves everything a resumed run needs, from this function's current bindings.
    macro_rules! save_checkpoint {
        () => {
            checkpoint(
                run,
                Snapshot {
                    model: &model,
                    optimizer: &optimizer,
                    teacher: teacher.as_ref(),
                    policy: semi.as_ref().map(|s| &s.policy),
                    state: &state,
                },
                started,
            )
        };
    }
    let steps_per_epoch = labelled.train.len().div_ceil(config.batch_size);
    let total_steps = config
        .max_steps
        .unwrap_or(usize::MAX)
        .min(steps_per_epoch * config.epochs);
    let warmup = (config.optimizer.warmup_epochs * steps_per_epoch as f64) as usize;
    let stop_at = stop_after_steps.map(|n| state.step + n);

    while state.epoch < config.epochs && state.step < total_steps {
        let epoch_started = Instant::now();
        let order = epoch_order(
            &labelled.train,
            classes,
            config.seed,
            state.epoch,
            config.class_balanced,
        );
        let bar =
            ProgressBar::new(steps_per_epoch as u64).with_position(state.step_in_epoch as u64);
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}, {per_sec}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!("{}/{}", state.epoch + 1, config.epochs));
        let mut lr = 0.0;
        for batch in order.chunks(config.batch_size).skip(state.step_in_epoch) {
            if state.step >= total_steps {
                break;
            }
            lr = learning_rate(
                config.optimizer.learning_rate,
                state.step,
                warmup,
                total_steps,
            );
            let images = view_batch(
                &config.augment,
                &labelled.train,
                &preprocessor,
                batch,
                ViewKind::Weak,
                config.seed ^ state.step as u64,
            );
            let images = images_tensor(images, batch.len(), &labelled.train, &device);
            let targets = Targets::of(
                &labelled.train,
                batch,
                classes,
                config.loss.soft_targets,
                &device,
            )?;
            let progress = state.step as f32 / total_steps.max(1) as f32;
            let (loss, stats) = match (semi.as_mut(), teacher.as_ref()) {
                (Some(semi), Some(teacher)) => {
                    let (loss, stats) = semi.loss(
                        &model,
                        teacher,
                        LabelledBatch { images, targets },
                        &loss_fn,
                        state.step,
                        progress,
                    )?;
                    (loss, Some((stats, semi.policy.thresholds())))
                }
                _ => (loss_fn.forward(model.forward(images), targets), None),
            };
            let loss_value = f64::from(loss.clone().into_scalar::<f32>());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(lr, model, grads);
            if let (Some(average), Some(decay)) = (teacher.take(), config.ema_decay) {
                teacher = Some(ema::update(
                    average,
                    &model,
                    ema::decay_at(decay, state.step),
                )?);
            }
            state.step += 1;
            state.step_in_epoch += 1;
            state.epoch_loss_sum += loss_value;
            if let Some((s, _)) = &stats {
                state.epoch_unsup_sum += s.unsup_loss;
                state.epoch_mask_sum += s.mask_rate;
            }
            bar.set_message(progress_message(loss_value, lr, stats));
            bar.inc(1);
            let stopping = stop_at == Some(state.step) && state.step < total_steps;
            if state.step % config.checkpoint_every == 0 || stopping {
                save_checkpoint!()?;
            }
            if stopping {
                bar.finish_and_clear();
                tracing::info!(
                    step = state.step,
                    "stopped as asked; the next session resumes here"
                );
                return Ok(state);
            }
        }
        bar.finish_and_clear();
        // The EMA, when the run keeps one, is the model that is evaluated, kept and exported.
        let evaluated = match &teacher {
            Some(average) => average.clone(),
            None => model.valid().to_device(&eval_device),
        };
        let (scores, val_loss) = evaluate(
            &evaluated,
            &labelled.val,
            &preprocessor,
            classes,
            &eval_device,
        )?;
        if let Some(semi) = semi.as_mut().filter(|s| s.policy.wants_labelled()) {
            // The labelled anchor of DTM: the teacher's confidence on the labelled train images.
            let mut probs = predict(
                &evaluated,
                &labelled.train,
                &preprocessor,
                &eval_device,
                256,
            )?;
            for row in probs.chunks_mut(classes) {
                fer_contract::softmax_in_place(row);
            }
            let truth = labelled
                .train
                .labels
                .as_ref()
                .context("the labelled anchor needs labels")?;
            semi.policy.observe_labelled(&probs, truth);
        }
        let steps = state.step_in_epoch.max(1) as f64;
        let record = EpochRecord {
            epoch: state.epoch + 1,
            step: state.step,
            train_loss: state.epoch_loss_sum / steps,
            val_loss: Some(val_loss),
            learning_rate: lr,
            val: scores.clone(),
            seconds: epoch_started.elapsed().as_secs_f64(),
            ssl: semi.as_ref().map(|s| SslRecord {
                unsup_loss: state.epoch_unsup_sum / steps,
                mask_rate: state.epoch_mask_sum / steps,
                thresholds: s.policy.thresholds(),
            }),
        };
        println!(
            "epoch {:>3}  step {:>6}  loss {:.4}  val acc {:.4}  val macro-F1 {:.4}{}  ({:.0} s)",
            record.epoch,
            record.step,
            record.train_loss,
            scores.accuracy,
            scores.macro_f1,
            record
                .ssl
                .as_ref()
                .map(|s| format!("  mask rate {:.3}", s.mask_rate))
                .unwrap_or_default(),
            record.seconds
        );
        if scores.macro_f1 > state.best_macro_f1 || state.history.is_empty() {
            state.best_macro_f1 = scores.macro_f1;
            state.best_epoch = record.epoch;
            save_model(&evaluated, &run.best_model())?;
        }
        state.history.push(record);
        state.epoch += 1;
        state.step_in_epoch = 0;
        state.epoch_loss_sum = 0.0;
        state.epoch_unsup_sum = 0.0;
        state.epoch_mask_sum = 0.0;
        save_checkpoint!()?;
        report::plots(&run.0, &state.history, &labelled.classes)?;
    }
    state.finished = true;
    save_checkpoint!()?;
    report::summary(
        run,
        config,
        &state,
        &labelled,
        unlabelled.as_ref().map_or(0, Unlabelled::len),
        &counts,
    )?;
    Ok(state)
}

fn checkpoint(run: &RunDir, snapshot: Snapshot, started: Instant) -> anyhow::Result<()> {
    save_model(snapshot.model, &run.last_model())?;
    snapshot
        .optimizer
        .to_record()
        .save(run.last_optimizer())
        .map_err(|e| anyhow::anyhow!("saving optimizer state: {e:?}"))?;
    if let Some(teacher) = snapshot.teacher {
        save_model(teacher, &run.teacher())?;
    }
    if let Some(policy) = snapshot.policy {
        write_json_atomic(&run.policy(), policy)?;
    }
    let mut saved = snapshot.state.clone();
    saved.wall_seconds += started.elapsed().as_secs_f64();
    write_json_atomic(&run.state(), &saved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((learning_rate(1.0, 0, 10, 100) - 0.1).abs() < 1e-12);
        assert!((learning_rate(1.0, 9, 10, 100) - 1.0).abs() < 1e-12);
        assert!((learning_rate(1.0, 10, 10, 100) - 1.0).abs() < 1e-12);
        assert!(learning_rate(1.0, 55, 10, 100) < 0.6);
        assert!(learning_rate(1.0, 100, 10, 100).abs() < 1e-12);
    }
}
