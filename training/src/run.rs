//! A run: its folder and files, its state and records, how a session of it goes, and its
//! checkpoints (model, optimiser, EMA teacher, threshold policy, state), each written whole.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use burn::store::ModuleRecord;
use serde::{Deserialize, Serialize};

use crate::backend::TrainBackend;
use crate::config::Config;
use crate::metrics::Scores;
use crate::model::FerNet;
use crate::thresholds::Policy;
use crate::train::manifest_template;

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
    /// The evaluated model's validation scores; `None` for an epoch that `eval_every` skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val: Option<Scores>,
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

/// The evaluated epoch with the best macro-F1 (the earliest of equals), with its scores.
pub fn best_evaluated(history: &[EpochRecord]) -> Option<(&EpochRecord, &Scores)> {
    history
        .iter()
        .filter_map(|h| Some((h, h.val.as_ref()?)))
        .fold(None, |best, (h, v)| match best {
            Some((_, b)) if b.macro_f1 >= v.macro_f1 => best,
            _ => Some((h, v)),
        })
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

impl RunState {
    /// The validation scores of the best epoch (`best_epoch`), when it was evaluated.
    pub fn best_scores(&self) -> Option<&Scores> {
        self.history
            .iter()
            .find(|h| h.epoch == self.best_epoch)
            .and_then(|h| h.val.as_ref())
    }
}

/// Writes a file whole or not at all: `write` fills a file beside `path`, which is then renamed
/// over it, so a session stopped mid-write leaves the previous file as it was.
fn replace_whole(
    path: &Path,
    write: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    write(&partial)?;
    std::fs::rename(&partial, path).with_context(|| format!("moving {} into place", path.display()))
}

/// Writes JSON whole (see [`replace_whole`]).
pub fn write_json_atomic(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    replace_whole(path, |partial| {
        Ok(std::fs::write(partial, serde_json::to_vec_pretty(value)?)?)
    })
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

/// Loads a model saved with [`save_model`] into a freshly built network of the config's shape,
/// taking as many input channels as the run's manifest declares.
pub fn load_model(
    config: &Config,
    classes: usize,
    path: &Path,
    device: &Device,
) -> anyhow::Result<FerNet> {
    let record = ModuleRecord::load(path)
        .map_err(|e| anyhow::anyhow!("loading {}: {e:?}", path.display()))?;
    let channels = manifest_template(config, &config.data.classes())
        .input
        .channels
        .count();
    Ok(FerNet::new(&config.model, channels, classes, device).load_record(record))
}

/// Saves a model's weights whole (see [`replace_whole`]).
pub fn save_model(model: &FerNet, path: &Path) -> anyhow::Result<()> {
    replace_whole(path, |partial| {
        model
            .clone()
            .into_record()
            .save(partial)
            .map_err(|e| anyhow::anyhow!("saving {}: {e:?}", path.display()))
    })
}

/// The models and state a checkpoint saves.
pub struct Snapshot<'a> {
    pub model: &'a FerNet,
    pub optimizer: &'a ModuleOptimizer,
    pub teacher: Option<&'a FerNet>,
    pub policy: Option<&'a Policy>,
    pub state: &'a RunState,
}

/// Saves everything a resumed run needs; `started` is when this session began (its wall time is
/// added to the previous sessions').
pub fn checkpoint(run: &RunDir, snapshot: Snapshot, started: Instant) -> anyhow::Result<()> {
    save_model(snapshot.model, &run.last_model())?;
    replace_whole(&run.last_optimizer(), |partial| {
        snapshot
            .optimizer
            .to_record()
            .save(partial)
            .map_err(|e| anyhow::anyhow!("saving optimizer state: {e:?}"))
    })?;
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
