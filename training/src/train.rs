//! The training loop: batches, optimiser, evaluation each epoch, resumable checkpoints.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::record::OptimizerRecord;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::TensorData;
use fer_contract::{Manifest, Preprocessor};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment;
use crate::config::Config;
use crate::data::{self, Dataset, Labelled};
use crate::metrics::{Confusion, Scores};
use crate::model::FerNet;
use crate::report;

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
}

/// One epoch's figures, kept in `state.json` and plotted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub step: usize,
    pub train_loss: f64,
    pub learning_rate: f64,
    pub val: Scores,
    pub seconds: f64,
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
    pub best_macro_f1: f64,
    pub best_epoch: usize,
    pub history: Vec<EpochRecord>,
    /// Wall time spent training, over every session of this run.
    pub wall_seconds: f64,
    pub finished: bool,
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

/// Loads the labelled data a config asks for, applying its fraction and limits.
pub fn load_data(
    config: &Config,
    preprocessor: &Preprocessor,
    manifest: &Manifest,
) -> anyhow::Result<Labelled> {
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
    if config.labelled_fraction < 1.0 {
        let (keep, _) = data::stratified_split(
            &labelled.train,
            classes,
            config.labelled_fraction,
            config.seed,
        );
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
    Ok(labelled)
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

/// Augmented (weak view), normalised batch of the given samples, as `[b, c, h, w]` data.
fn weak_batch(
    config: &Config,
    train: &Dataset,
    preprocessor: &Preprocessor,
    indices: &[usize],
    step_seed: u64,
) -> Vec<f32> {
    let len = preprocessor.input_len();
    let mut out = vec![0.0f32; indices.len() * len];
    out.par_chunks_mut(len)
        .zip(indices.par_iter())
        .enumerate()
        .for_each(|(i, (row, &index))| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(
                step_seed.wrapping_mul(1_000_003).wrapping_add(i as u64),
            );
            let mut pixels = train.pixels(index);
            augment::weak(
                &config.augment,
                train.image(index),
                train.width as usize,
                train.height as usize,
                train.channels.count(),
                &mut rng,
                &mut pixels.data,
            );
            preprocessor.normalise_into(&pixels, row);
        });
    out
}

fn images_tensor(data: Vec<f32>, count: usize, dataset: &Dataset, device: &Device) -> Tensor<4> {
    let shape = [
        count,
        dataset.channels.count(),
        dataset.height as usize,
        dataset.width as usize,
    ];
    Tensor::<4>::from_data(TensorData::new(data, shape), device)
}

/// Logits of every image of a dataset, in order (`[n × classes]`, row-major).
pub fn predict(
    model: &FerNet,
    dataset: &Dataset,
    preprocessor: &Preprocessor,
    device: &Device,
    batch: usize,
) -> anyhow::Result<Vec<f32>> {
    let len = preprocessor.input_len();
    let mut logits = Vec::new();
    let indices: Vec<usize> = (0..dataset.len()).collect();
    for chunk in indices.chunks(batch) {
        let mut data = vec![0.0f32; chunk.len() * len];
        data.par_chunks_mut(len)
            .zip(chunk.par_iter())
            .for_each(|(row, &i)| preprocessor.normalise_into(&dataset.pixels(i), row));
        let out = model.forward(images_tensor(data, chunk.len(), dataset, device));
        logits.extend(
            out.into_data()
                .try_to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?,
        );
    }
    Ok(logits)
}

pub fn evaluate(
    model: &FerNet,
    dataset: &Dataset,
    preprocessor: &Preprocessor,
    classes: usize,
    device: &Device,
) -> anyhow::Result<Scores> {
    let logits = predict(model, dataset, preprocessor, device, 256)?;
    let labels = dataset.labels.as_ref().context("evaluation needs labels")?;
    let mut confusion = Confusion::new(classes);
    for (row, &truth) in logits.chunks(classes).zip(labels) {
        confusion.add(truth, argmax(row));
    }
    Ok(confusion.scores())
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

/// Trains (or resumes) the run in `run`; returns the final state.
pub fn train(config: &Config, run: &RunDir, resume: bool) -> anyhow::Result<RunState> {
    std::fs::create_dir_all(&run.0)?;
    let started = Instant::now();
    let classes_all = config.data.classes();
    let manifest = manifest_template(config, &classes_all);
    let preprocessor = Preprocessor::new(&manifest, fer_contract::DecodeLimits::default());
    let t = Instant::now();
    let labelled = load_data(config, &preprocessor, &manifest)?;
    let classes = labelled.classes.len();
    tracing::info!(
        train = labelled.train.len(),
        val = labelled.val.len(),
        seconds = t.elapsed().as_secs_f64(),
        "data loaded"
    );
    std::fs::write(run.config(), toml::to_string_pretty(config)?)?;

    let device = Device::flex().autodiff();
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
        tracing::info!(epoch = state.epoch, step = state.step, "resumed");
    }

    let counts = labelled.train.class_counts(classes);
    let mut loss_config = CrossEntropyLossConfig::new().with_smoothing(config.loss.label_smoothing);
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
        loss_config = loss_config.with_weights(Some(weights));
    }
    let loss_fn = loss_config.init(&device);
    let steps_per_epoch = labelled.train.len().div_ceil(config.batch_size);
    let total_steps = config
        .max_steps
        .unwrap_or(usize::MAX)
        .min(steps_per_epoch * config.epochs);
    let warmup = (config.optimizer.warmup_epochs * steps_per_epoch as f64) as usize;
    let eval_device = Device::flex();

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
            let images = weak_batch(
                config,
                &labelled.train,
                &preprocessor,
                batch,
                config.seed ^ state.step as u64,
            );
            let targets: Vec<i64> = batch
                .iter()
                .map(|&i| labelled.train.label(i).unwrap_or(0) as i64)
                .collect();
            let images = images_tensor(images, batch.len(), &labelled.train, &device);
            let targets =
                Tensor::<1, Int>::from_data(TensorData::new(targets, [batch.len()]), &device);
            let loss = loss_fn.forward(model.forward(images), targets);
            let loss_value = f64::from(loss.clone().into_scalar::<f32>());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(lr, model, grads);
            state.step += 1;
            state.step_in_epoch += 1;
            state.epoch_loss_sum += loss_value;
            bar.set_message(format!("loss {loss_value:.4} lr {lr:.2e}"));
            bar.inc(1);
            if state.step % config.checkpoint_every == 0 {
                checkpoint(run, &model, &optimizer, &state, started)?;
            }
        }
        bar.finish_and_clear();
        let scores = evaluate(
            &model.valid().to_device(&eval_device),
            &labelled.val,
            &preprocessor,
            classes,
            &eval_device,
        )?;
        let record = EpochRecord {
            epoch: state.epoch + 1,
            step: state.step,
            train_loss: state.epoch_loss_sum / state.step_in_epoch.max(1) as f64,
            learning_rate: lr,
            val: scores.clone(),
            seconds: epoch_started.elapsed().as_secs_f64(),
        };
        println!(
            "epoch {:>3}  step {:>6}  loss {:.4}  val acc {:.4}  val macro-F1 {:.4}  ({:.0} s)",
            record.epoch,
            record.step,
            record.train_loss,
            scores.accuracy,
            scores.macro_f1,
            record.seconds
        );
        if scores.macro_f1 > state.best_macro_f1 || state.history.is_empty() {
            state.best_macro_f1 = scores.macro_f1;
            state.best_epoch = record.epoch;
            save_model(&model, &run.best_model())?;
        }
        state.history.push(record);
        state.epoch += 1;
        state.step_in_epoch = 0;
        state.epoch_loss_sum = 0.0;
        checkpoint(run, &model, &optimizer, &state, started)?;
        report::plots(&run.0, &state.history, &labelled.classes)?;
    }
    state.finished = true;
    checkpoint(run, &model, &optimizer, &state, started)?;
    report::summary(run, config, &state, &labelled, &counts)?;
    Ok(state)
}

fn checkpoint(
    run: &RunDir,
    model: &FerNet,
    optimizer: &ModuleOptimizer,
    state: &RunState,
    started: Instant,
) -> anyhow::Result<()> {
    save_model(model, &run.last_model())?;
    optimizer
        .to_record()
        .save(run.last_optimizer())
        .map_err(|e| anyhow::anyhow!("saving optimizer state: {e:?}"))?;
    let mut saved = state.clone();
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
