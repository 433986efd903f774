//! The training loop: a [`Trainer`] per session (resume, step, end of epoch, checkpoint), the
//! data a run trains on, and its schedule.

use std::time::Instant;

use anyhow::Context;
use burn::module::Module;
use burn::optim::record::OptimizerRecord;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use fer_contract::{Manifest, Preprocessor};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::backend::TrainBackend;
use crate::batch::{ViewKind, images_tensor, view_batch};
use crate::config::Config;
use crate::data::{self, Dataset, Labelled};
use crate::ema;
use crate::eval::{evaluate, predict};
use crate::loss::{SupervisedLoss, Targets};
use crate::model::FerNet;
use crate::report;
use crate::run::{
    EpochRecord, RunDir, RunState, Session, Snapshot, SslRecord, checkpoint, load_model, save_model,
};
use crate::ssl::{self, LabelledBatch, SemiSupervised, StepStats, Unlabelled};
use crate::thresholds::ThresholdPolicy;

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
        precision: Precision::Fp32,
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

fn progress_message(loss: f64, lr: f64, stats: Option<(StepStats, Vec<f32>)>) -> String {
    let mut message = format!("loss {loss:.4} lr {lr:.2e}");
    if let Some((stats, thresholds)) = stats {
        let t: Vec<String> = thresholds.iter().map(|t| format!("{t:.2}")).collect();
        message.push_str(&format!(" mask {:.2} T [{}]", stats.mask_rate, t.join(" ")));
    }
    message
}

/// What a session trains on, loaded once.
struct RunData {
    manifest: Manifest,
    preprocessor: Preprocessor,
    labelled: Labelled,
    unlabelled: Option<Unlabelled>,
}

impl RunData {
    fn load(config: &Config) -> anyhow::Result<Self> {
        let manifest = manifest_template(config, &config.data.classes());
        let preprocessor = Preprocessor::new(&manifest, fer_contract::DecodeLimits::default());
        let t = Instant::now();
        let (labelled, left_out) = load_data(config, &preprocessor, &manifest)?;
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
        Ok(Self {
            manifest,
            preprocessor,
            labelled,
            unlabelled,
        })
    }
}

/// Why a session's loop ended.
enum Ended {
    /// Every epoch (or `max_steps`) done.
    Finished,
    /// `stop_after_steps` reached, at a checkpoint.
    Stopped,
}

/// One session of a run: the model, its optimiser and EMA teacher, the semi-supervised part,
/// and where the run stands. `resume`, `step`, `end_epoch` and `checkpoint` are the loop's parts.
struct Trainer<'d> {
    config: &'d Config,
    run: &'d RunDir,
    data: &'d RunData,
    classes: usize,
    /// The student's device (with autodiff).
    device: Device,
    /// Evaluation and the teacher (without).
    eval_device: Device,
    model: FerNet,
    optimizer: ModuleOptimizer,
    teacher: Option<FerNet>,
    semi: Option<SemiSupervised<'d>>,
    loss_fn: SupervisedLoss,
    state: RunState,
    /// When this session began (its wall time is added to the run's).
    started: Instant,
    steps_per_epoch: usize,
    total_steps: usize,
    warmup: usize,
}

impl<'d> Trainer<'d> {
    /// A fresh run's first step, on `backend`.
    fn new(
        config: &'d Config,
        run: &'d RunDir,
        data: &'d RunData,
        backend: TrainBackend,
    ) -> anyhow::Result<Self> {
        let classes = data.labelled.classes.len();
        let eval_device = backend.device()?;
        let device = eval_device.clone().autodiff();
        device.seed(config.seed);
        let model = FerNet::new(
            &config.model,
            data.manifest.input.channels.count(),
            classes,
            &device,
        );
        let optimizer: ModuleOptimizer = AdamWConfig::new()
            .with_weight_decay(config.optimizer.weight_decay)
            .init();
        let teacher = config.ema_decay.map(|_| model.valid());
        let semi = data.unlabelled.as_ref().and_then(|unlabelled| {
            ssl::policy(config.mode, &config.ssl, classes, unlabelled.len()).map(|policy| {
                SemiSupervised {
                    config,
                    preprocessor: &data.preprocessor,
                    unlabelled,
                    policy,
                    classes,
                    teacher_device: eval_device.clone(),
                }
            })
        });
        let counts = data.labelled.train.class_counts(classes);
        let loss_fn = SupervisedLoss::new(config, &counts, &device);
        let steps_per_epoch = data.labelled.train.len().div_ceil(config.batch_size);
        let total_steps = config
            .max_steps
            .unwrap_or(usize::MAX)
            .min(steps_per_epoch * config.epochs);
        let warmup = (config.optimizer.warmup_epochs * steps_per_epoch as f64) as usize;
        Ok(Self {
            config,
            run,
            data,
            classes,
            device,
            eval_device,
            model,
            optimizer,
            teacher,
            semi,
            loss_fn,
            state: RunState {
                backend,
                ..RunState::default()
            },
            started: Instant::now(),
            steps_per_epoch,
            total_steps,
            warmup,
        })
    }

    /// Continues from the run folder's last checkpoint.
    fn resume(&mut self) -> anyhow::Result<()> {
        let (config, run) = (self.config, self.run);
        let backend = self.state.backend;
        self.state = serde_json::from_slice(&std::fs::read(run.state())?)?;
        self.state.backend = backend;
        if self.state.finished {
            return Ok(());
        }
        self.model = load_model(config, self.classes, &run.last_model(), &self.device)?;
        let record = OptimizerRecord::load(run.last_optimizer())
            .map_err(|e| anyhow::anyhow!("optimizer state: {e:?}"))?;
        self.optimizer = self.optimizer.clone().load_record(record);
        if self.teacher.is_some() {
            self.teacher = Some(load_model(
                config,
                self.classes,
                &run.teacher(),
                &self.eval_device,
            )?);
        }
        if let Some(semi) = self.semi.as_mut() {
            semi.policy = serde_json::from_slice(&std::fs::read(run.policy())?)
                .context("the run's policy.json")?;
        }
        tracing::info!(epoch = self.state.epoch, step = self.state.step, "resumed");
        Ok(())
    }

    /// Saves everything a resumed run needs.
    fn checkpoint(&self) -> anyhow::Result<()> {
        checkpoint(
            self.run,
            Snapshot {
                model: &self.model,
                optimizer: &self.optimizer,
                teacher: self.teacher.as_ref(),
                policy: self.semi.as_ref().map(|s| &s.policy),
                state: &self.state,
            },
            self.started,
        )
    }

    /// Epochs until the run is done or `stop_at` (a step) is reached.
    fn run_epochs(&mut self, stop_at: Option<usize>) -> anyhow::Result<Ended> {
        let config = self.config;
        while self.state.epoch < config.epochs && self.state.step < self.total_steps {
            let epoch_started = Instant::now();
            let order = epoch_order(
                &self.data.labelled.train,
                self.classes,
                config.seed,
                self.state.epoch,
                config.class_balanced,
            );
            let bar = ProgressBar::new(self.steps_per_epoch as u64)
                .with_position(self.state.step_in_epoch as u64);
            bar.set_style(
                ProgressStyle::with_template("epoch {prefix} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}, {per_sec}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(format!("{}/{}", self.state.epoch + 1, config.epochs));
            let mut lr = 0.0;
            for batch in order
                .chunks(config.batch_size)
                .skip(self.state.step_in_epoch)
            {
                if self.state.step >= self.total_steps {
                    break;
                }
                let (loss, rate, stats) = self.step(batch)?;
                lr = rate;
                bar.set_message(progress_message(loss, lr, stats));
                bar.inc(1);
                let stopping =
                    stop_at == Some(self.state.step) && self.state.step < self.total_steps;
                if self.state.step.is_multiple_of(config.checkpoint_every) || stopping {
                    self.checkpoint()?;
                }
                if stopping {
                    bar.finish_and_clear();
                    tracing::info!(
                        step = self.state.step,
                        "stopped as asked; the next session resumes here"
                    );
                    return Ok(Ended::Stopped);
                }
            }
            bar.finish_and_clear();
            self.end_epoch(lr, epoch_started)?;
        }
        Ok(Ended::Finished)
    }

    /// One optimiser step on one batch of labelled indices (and, semi-supervised, an unlabelled
    /// batch); the loss, learning rate and pseudo-labelling figures.
    #[allow(clippy::type_complexity)]
    fn step(
        &mut self,
        batch: &[usize],
    ) -> anyhow::Result<(f64, f64, Option<(StepStats, Vec<f32>)>)> {
        let config = self.config;
        let train = &self.data.labelled.train;
        let step = self.state.step;
        let lr = learning_rate(
            config.optimizer.learning_rate,
            step,
            self.warmup,
            self.total_steps,
        );
        let images = view_batch(
            &config.augment,
            train,
            &self.data.preprocessor,
            batch,
            ViewKind::Weak,
            config.seed ^ step as u64,
        );
        let images = images_tensor(images, batch.len(), train, &self.device);
        let targets = Targets::of(
            train,
            batch,
            self.classes,
            config.loss.soft_targets,
            &self.device,
        )?;
        let progress = step as f32 / self.total_steps.max(1) as f32;
        let (loss, stats) = match (self.semi.as_mut(), self.teacher.as_ref()) {
            (Some(semi), Some(teacher)) => {
                let (loss, stats) = semi.loss(
                    &self.model,
                    teacher,
                    LabelledBatch { images, targets },
                    &self.loss_fn,
                    step,
                    progress,
                )?;
                (loss, Some((stats, semi.policy.thresholds())))
            }
            _ => (
                self.loss_fn.forward(self.model.forward(images), targets),
                None,
            ),
        };
        let loss_value = f64::from(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &self.model);
        self.model = self.optimizer.step(lr, self.model.clone(), grads);
        if let (Some(average), Some(decay)) = (self.teacher.take(), config.ema_decay) {
            self.teacher = Some(ema::update(
                average,
                &self.model,
                ema::decay_at(decay, step),
            )?);
        }
        let state = &mut self.state;
        state.step += 1;
        state.step_in_epoch += 1;
        state.epoch_loss_sum += loss_value;
        if let Some((s, _)) = &stats {
            state.epoch_unsup_sum += s.unsup_loss;
            state.epoch_mask_sum += s.mask_rate;
        }
        Ok((loss_value, lr, stats))
    }

    /// Evaluates the model the run keeps (the EMA teacher when there is one) when `eval_every`
    /// says so, records the epoch, keeps the best, feeds the labelled anchor (every epoch),
    /// checkpoints and plots.
    fn end_epoch(&mut self, lr: f64, epoch_started: Instant) -> anyhow::Result<()> {
        let data = self.data;
        let classes = self.classes;
        let evaluated = match &self.teacher {
            Some(average) => average.clone(),
            None => self.model.valid().to_device(&self.eval_device),
        };
        let epoch = self.state.epoch + 1;
        let last = epoch >= self.config.epochs || self.state.step >= self.total_steps;
        let evaluation = if last || epoch.is_multiple_of(self.config.eval_every) {
            Some(evaluate(
                &evaluated,
                &data.labelled.val,
                &data.preprocessor,
                classes,
                &self.eval_device,
            )?)
        } else {
            None
        };
        if let Some(semi) = self.semi.as_mut().filter(|s| s.policy.wants_labelled()) {
            // The labelled anchor of DTM: the teacher's confidence on the labelled train images.
            let mut probs = predict(
                &evaluated,
                &data.labelled.train,
                &data.preprocessor,
                &self.eval_device,
                256,
            )?;
            for row in probs.chunks_mut(classes) {
                fer_contract::softmax_in_place(row);
            }
            let truth = data
                .labelled
                .train
                .labels
                .as_ref()
                .context("the labelled anchor needs labels")?;
            semi.policy.observe_labelled(&probs, truth);
        }
        let state = &mut self.state;
        let steps = state.step_in_epoch.max(1) as f64;
        let (val, val_loss) = evaluation.unzip();
        let record = EpochRecord {
            epoch,
            step: state.step,
            train_loss: state.epoch_loss_sum / steps,
            val_loss,
            learning_rate: lr,
            val,
            seconds: epoch_started.elapsed().as_secs_f64(),
            ssl: self.semi.as_ref().map(|s| SslRecord {
                unsup_loss: state.epoch_unsup_sum / steps,
                mask_rate: state.epoch_mask_sum / steps,
                thresholds: s.policy.thresholds(),
            }),
        };
        println!(
            "epoch {:>3}  step {:>6}  loss {:.4}  {}{}  ({:.0} s)",
            record.epoch,
            record.step,
            record.train_loss,
            record.val.as_ref().map_or_else(
                || "(not evaluated)".to_string(),
                |v| format!("val acc {:.4}  val macro-F1 {:.4}", v.accuracy, v.macro_f1)
            ),
            record
                .ssl
                .as_ref()
                .map(|s| format!("  mask rate {:.3}", s.mask_rate))
                .unwrap_or_default(),
            record.seconds
        );
        let first_evaluated = !state.history.iter().any(|h| h.val.is_some());
        if let Some(v) = record.val.as_ref()
            && (v.macro_f1 > state.best_macro_f1 || first_evaluated)
        {
            state.best_macro_f1 = v.macro_f1;
            state.best_epoch = record.epoch;
            save_model(&evaluated, &self.run.best_model())?;
        }
        state.history.push(record);
        state.epoch += 1;
        state.step_in_epoch = 0;
        state.epoch_loss_sum = 0.0;
        state.epoch_unsup_sum = 0.0;
        state.epoch_mask_sum = 0.0;
        self.checkpoint()?;
        report::plots(&self.run.0, &self.state.history, &data.labelled.classes)
    }

    /// Marks the run finished, checkpoints it and writes its summary.
    fn finish(mut self) -> anyhow::Result<RunState> {
        self.state.finished = true;
        self.checkpoint()?;
        let data = self.data;
        let counts = data.labelled.train.class_counts(self.classes);
        report::summary(
            self.run,
            self.config,
            &self.state,
            &data.labelled,
            data.unlabelled.as_ref().map_or(0, Unlabelled::len),
            &counts,
        )?;
        Ok(self.state)
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
    let data = RunData::load(config)?;
    std::fs::write(run.config(), toml::to_string_pretty(config)?)?;
    let mut trainer = Trainer::new(config, run, &data, backend)?;
    if resume && run.state().is_file() {
        trainer.resume()?;
        if trainer.state.finished {
            tracing::info!(dir = %run.0.display(), "run already finished");
            return Ok(trainer.state);
        }
    }
    let stop_at = stop_after_steps.map(|n| trainer.state.step + n);
    match trainer.run_epochs(stop_at)? {
        Ended::Stopped => Ok(trainer.state),
        Ended::Finished => trainer.finish(),
    }
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
