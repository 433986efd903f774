//! `fer-train export`: ONNX graph + manifest + model card into `models/<name>/<version>/`, after a
//! parity check of ONNX Runtime against the burn model on real validation images.
//!
//! Everything is written under `models/.staging/` first (a name fer-server ignores) and renamed into
//! place only once parity has passed, so a watching server never sees a half-written version, and a
//! failed export leaves the version that was there untouched.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::module::Module;
use burn::prelude::*;
use burn_onnx::export::{AxisSpec, InputSpec, OnnxExporter};
use fer_contract::{MANIFEST_FILE, MODEL_FILE, Manifest, Preprocessor};
use ort::session::Session;

use crate::config::Config;
use crate::data::Dataset;
use crate::ensemble::{self, Ensemble};
use crate::eval::{self, argmax};
use crate::metrics::Scores;
use crate::model::FerNet;
use crate::report::{self, CONFUSION_SVG, CURVES_SVG, THRESHOLDS_SVG};
use crate::run::{self, RunDir, RunState};
use crate::train;

mod card;
use card::{Card, data_sources};

/// Manifest metric: passes of the network per face (2 with test-time flip; absent means 1).
pub const FORWARD_PASSES: &str = "forward_passes";

/// Largest |Δlogit| between burn and ONNX Runtime that parity accepts.
pub const PARITY_TOLERANCE: f32 = 1e-4;

/// One trained run in an export: the model's only network, or one member of an ensemble.
#[derive(Clone, Copy)]
pub struct Member<'a> {
    pub config: &'a Config,
    pub run: &'a RunDir,
    /// The command that trained the run, recorded in the manifest and model card; `None`: the
    /// one the run recorded (`command.txt`).
    pub command: Option<&'a str>,
}

#[derive(Clone, Copy)]
pub struct ExportRequest<'a> {
    /// The runs whose best checkpoints the graph holds: one network, or several whose class
    /// probabilities it averages ([`Ensemble`]: one pass of each per face). They must share the
    /// labelled data, validation set and preprocessing.
    pub members: &'a [Member<'a>],
    pub models_dir: &'a Path,
    pub name: &'a str,
    /// The version to write; `None`: the next free one.
    pub version: Option<u64>,
    pub ort_dylib: Option<&'a Path>,
    /// Validation images compared in the parity check (`None`: all).
    pub parity_images: Option<usize>,
    /// Overwrite an existing version folder.
    pub replace: bool,
    /// Publish even when the serving version scores better on the same validation set.
    pub force: bool,
    /// Fold test-time flip into the graph ([`FerNet::forward_mirror_mean`]): each face is scored
    /// with its mirror image and the logits averaged, at twice the compute. The manifest's figures
    /// are then the folded graph's, with the plain model's beside them.
    pub test_time_flip: bool,
}

impl ExportRequest<'_> {
    fn is_ensemble(&self) -> bool {
        self.members.len() > 1
    }

    /// What the graph folds in beyond one network's plain forward pass, in the words the card and
    /// the graph's confusion-matrix title use; empty for a plain network.
    fn folded(&self) -> Vec<&'static str> {
        let mut folded = Vec::new();
        if self.is_ensemble() {
            folded.push("ensemble");
        }
        if self.test_time_flip {
            folded.push("test-time flip");
        }
        folded
    }

    /// Passes of a network per face.
    fn passes(&self) -> usize {
        self.members.len() * if self.test_time_flip { 2 } else { 1 }
    }
}

/// A member with what its run folder recorded.
struct Trained<'a> {
    member: Member<'a>,
    command: String,
    state: RunState,
    best: Scores,
}

impl<'a> Trained<'a> {
    fn read(member: Member<'a>) -> anyhow::Result<Self> {
        let run = &member.run.0;
        let command = match member.command {
            Some(c) => c.to_string(),
            None => std::fs::read_to_string(member.run.command())
                .map(|c| c.trim().to_string())
                .with_context(|| {
                    format!(
                        "{} records no training command: pass --command",
                        run.display()
                    )
                })?,
        };
        let state: RunState = serde_json::from_slice(
            &std::fs::read(member.run.state())
                .with_context(|| format!("{} has no state.json", run.display()))?,
        )?;
        let best = state
            .best_scores()
            .with_context(|| format!("{} has no evaluated epoch to export", run.display()))?
            .clone();
        Ok(Self {
            member,
            command,
            state,
            best,
        })
    }

    fn load(&self, classes: usize, device: &Device) -> anyhow::Result<FerNet> {
        let m = self.member;
        Ok(run::load_model(m.config, classes, &m.run.best_model(), device)?.valid())
    }
}

/// Refuses an ensemble whose members would not score the same faces the same way.
fn check_compatible(members: &[Member]) -> anyhow::Result<()> {
    let Some(first) = members.first() else {
        bail!("nothing to export: give at least one run");
    };
    let template = |c: &Config| train::manifest_template(c, &c.data.classes());
    let reference = template(first.config);
    for m in &members[1..] {
        let other = template(m.config);
        if m.config.data != first.config.data
            || m.config.limit_val != first.config.limit_val
            || other.labels != reference.labels
            || other.input != reference.input
            || other.preprocessing != reference.preprocessing
        {
            bail!(
                "{} and {} were not trained on the same data, validation set and input: an ensemble's members must share them",
                first.run.0.display(),
                m.run.0.display()
            );
        }
    }
    Ok(())
}

/// A version's headline validation figures, from its manifest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    pub version: u64,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub images: usize,
}

impl Figures {
    fn of(manifest: &Manifest) -> Option<Figures> {
        let m = &manifest.provenance.metrics;
        Some(Figures {
            version: manifest.version,
            accuracy: *m.get("val_accuracy")?,
            macro_f1: *m.get("val_macro_f1")?,
            images: *m.get("val_images")? as usize,
        })
    }
}

/// What an export did.
#[derive(Debug, Clone)]
pub struct Exported {
    pub dir: PathBuf,
    pub parity: Parity,
    pub figures: Figures,
    /// The version a server with the default policy served before (the newest with a manifest),
    /// when it was measured on the same validation set.
    pub serving: Option<Figures>,
}

/// The numbered version folders of model `name`, newest first.
fn versions(models_dir: &Path, name: &str) -> Vec<u64> {
    let mut found: Vec<u64> = std::fs::read_dir(models_dir.join(name))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    found.sort_unstable_by(|a, b| b.cmp(a));
    found
}

/// The first version number above every existing one (1 for a new model).
pub fn next_version(models_dir: &Path, name: &str) -> u64 {
    versions(models_dir, name).first().map_or(1, |v| v + 1)
}

/// The newest version of `name` whose manifest loads: what `fer-server` serves by default.
pub fn serving_version(models_dir: &Path, name: &str) -> Option<Manifest> {
    versions(models_dir, name).into_iter().find_map(|v| {
        Manifest::load(
            &models_dir
                .join(name)
                .join(v.to_string())
                .join(MANIFEST_FILE),
        )
        .ok()
    })
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Parity {
    pub images: usize,
    pub max_abs_diff: f32,
    pub argmax_agree: usize,
}

impl Parity {
    pub fn passed(&self) -> bool {
        self.max_abs_diff <= PARITY_TOLERANCE && self.argmax_agree == self.images
    }
}

/// Exports the run's best checkpoint as a new version (or over `req.version` with `req.replace`),
/// unless the serving version is more accurate on the same validation set (`req.force` overrides).
pub fn export(req: &ExportRequest) -> anyhow::Result<Exported> {
    check_compatible(req.members)?;
    let version = match req.version {
        Some(v) => {
            let dir = req.models_dir.join(req.name).join(v.to_string());
            if dir.exists() && !req.replace {
                bail!(
                    "{} exists: pass --replace to overwrite it, or leave out --version to write the next free one ({})",
                    dir.display(),
                    next_version(req.models_dir, req.name)
                );
            }
            v
        }
        None => next_version(req.models_dir, req.name),
    };
    let trained = req
        .members
        .iter()
        .map(|m| Trained::read(*m))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = trained[0].member.config;
    let classes = config.data.classes();
    let device = Device::flex();
    let mut nets = trained
        .iter()
        .map(|t| t.load(classes.len(), &device))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let params: Vec<usize> = nets.iter().map(|n| n.num_params()).collect();
    let first = nets.remove(0);
    let model = Ensemble::new(first, nets);

    let mut manifest = train::manifest_template(config, &classes);
    manifest.name = req.name.to_string();
    manifest.version = version;
    let (c, h, w) = (
        manifest.input.channels.count(),
        manifest.input.height as usize,
        manifest.input.width as usize,
    );
    let onnx = OnnxExporter::new()
        .export_dynamic(
            &model,
            Tensor::<4>::zeros([2, c, h, w], &device),
            Tensor::<4>::zeros([3, c, h, w], &device),
            &[InputSpec::new(vec![
                AxisSpec::dynamic("batch"),
                AxisSpec::Static,
                AxisSpec::Static,
                AxisSpec::Static,
            ])],
            |m: &Ensemble, x| m.forward(x, req.test_time_flip),
        )
        .map_err(|e| anyhow::anyhow!("ONNX export: {e}"))?;

    let serving = serving_version(req.models_dir, req.name);
    let (dir, (parity, figures, serving)) = stage_and_publish(
        req.models_dir,
        req.name,
        version,
        |staging| {
            let (parity, manifest) =
                write_version(req, &trained, &params, staging, onnx.as_bytes(), manifest)?;
            let figures = Figures::of(&manifest).context("the new manifest has no figures")?;
            let serving = serving
                .as_ref()
                .filter(|m| m.labels == manifest.labels)
                .and_then(Figures::of)
                .filter(|f| f.images == figures.images);
            if let Some(old) = serving
                && old.accuracy > figures.accuracy
                && !req.force
            {
                bail!(
                    "not published: {name}/{new} scores {a:.4} accuracy (macro-F1 {f:.4}) on the {n} validation images, \
                     below the serving {name}/{old_v} ({oa:.4}, macro-F1 {of:.4}); pass --force to publish it anyway",
                    name = req.name,
                    new = version,
                    a = figures.accuracy,
                    f = figures.macro_f1,
                    n = figures.images,
                    old_v = old.version,
                    oa = old.accuracy,
                    of = old.macro_f1
                );
            }
            Ok((parity, figures, serving))
        },
    )?;
    Ok(Exported {
        dir,
        parity,
        figures,
        serving,
    })
}

/// Writes a version of `name` into a staging folder beside the repository (`write` fills it),
/// then moves it into place as `<models_dir>/<name>/<version>/`; when `write` fails the staging
/// folder is removed and nothing is published.
pub(crate) fn stage_and_publish<T>(
    models_dir: &Path,
    name: &str,
    version: u64,
    write: impl FnOnce(&Path) -> anyhow::Result<T>,
) -> anyhow::Result<(PathBuf, T)> {
    let staging = models_dir
        .join(".staging")
        .join(format!("{name}-{version}-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    let written = match write(&staging) {
        Ok(written) => written,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let dir = models_dir.join(name).join(version.to_string());
    publish(&staging, &dir)?;
    Ok((dir, written))
}

/// Moves a finished version folder into place. A new version appears in one rename; an existing one
/// is first moved aside, then replaced, then deleted.
fn publish(staging: &Path, dir: &Path) -> anyhow::Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if dir.exists() {
        let old = staging.with_extension("replaced");
        std::fs::rename(dir, &old)
            .with_context(|| format!("moving the old {} aside", dir.display()))?;
        std::fs::rename(staging, dir)?;
        std::fs::remove_dir_all(&old)?;
    } else {
        std::fs::rename(staging, dir)?;
    }
    Ok(())
}

/// Writes the graph, checks parity, then writes the manifest and model card, all into `dir`.
fn write_version(
    req: &ExportRequest,
    trained: &[Trained],
    params: &[usize],
    dir: &Path,
    onnx: &[u8],
    mut manifest: Manifest,
) -> anyhow::Result<(Parity, Manifest)> {
    let config = trained[0].member.config;
    let classes = config.data.classes();
    let model_path = dir.join(MODEL_FILE);
    std::fs::write(&model_path, onnx)?;
    let device = Device::flex();

    let (_, environment) = fer_contract::onnx::runtime(req.ort_dylib)?;
    let mut session = Session::builder(environment)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .commit_from_file(&model_path)
        .map_err(|e| anyhow::anyhow!("loading the exported graph: {e}"))?;
    // burn-onnx names tensors itself: record the names it chose.
    manifest.input.name = session.inputs()[0].name().to_string();
    manifest.output.name = session.outputs()[0].name().to_string();
    fer_contract::onnx::check_graph(&session, &manifest)
        .map_err(|e| anyhow::anyhow!("{}: {e}", model_path.display()))?;

    let preprocessor = Preprocessor::new(&manifest, fer_contract::DecodeLimits::default());
    let (labelled, _) = train::load_data(config, &preprocessor, &manifest)?;
    let val = match req.parity_images {
        Some(n) if n < labelled.val.len() => labelled.val.subset(&(0..n).collect::<Vec<_>>()),
        _ => labelled.val.clone(),
    };
    // A graph that is not one network's plain forward pass (test-time flip, an ensemble) is
    // scored here on the whole validation set; training chose each member's epoch by its plain
    // figures, which a plain single network keeps.
    let folded = req.folded();
    let measured = !folded.is_empty();
    let scored = if measured { &labelled.val } else { &val };
    // Each member's logits from a fresh load (the exporter moved the modules it captured onto its
    // capture device), mirror-mean with test-time flip; the graph must reproduce their
    // combination, which serves both the parity check (its first rows) and the figures.
    let member_logits = trained
        .iter()
        .map(|t| {
            let model = t.load(classes.len(), &device)?;
            if req.test_time_flip {
                eval::predict_mirror_mean(&model, scored, &preprocessor, &device, 128)
            } else {
                eval::predict(&model, scored, &preprocessor, &device, 128)
            }
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let burn_logits = ensemble::combine(&member_logits, classes.len());
    let parity = check_parity(
        &burn_logits[..val.len() * classes.len()],
        &mut session,
        &val,
        &preprocessor,
    )?;
    if !parity.passed() {
        bail!(
            "parity failed on {} images: max |Δlogit| {} (tolerance {PARITY_TOLERANCE}), argmax agrees on {}",
            parity.images,
            parity.max_abs_diff,
            parity.argmax_agree
        );
    }

    let scores = if measured {
        eval::score_logits(&burn_logits, &labelled.val, classes.len())?.0
    } else {
        trained[0].best.clone()
    };
    // Each member alone, as the graph runs it (with the flip when folded in).
    let alone = if req.is_ensemble() {
        member_logits
            .iter()
            .map(|l| Ok(eval::score_logits(l, &labelled.val, classes.len())?.0))
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let p = &mut manifest.provenance;
    p.data = Vec::new();
    for t in trained {
        for source in data_sources(t.member.config) {
            if !p.data.contains(&source) {
                p.data.push(source);
            }
        }
    }
    p.command = trained
        .iter()
        .map(|t| t.command.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    p.trainer = format!("fer-train {}", env!("CARGO_PKG_VERSION"));
    p.seed = (!req.is_ensemble()).then_some(config.seed);
    p.metrics.insert("val_accuracy".into(), scores.accuracy);
    p.metrics.insert("val_macro_f1".into(), scores.macro_f1);
    for (label, f1) in classes.iter().zip(&scores.per_class_f1) {
        p.metrics.insert(format!("val_f1_{label}"), *f1);
    }
    if req.passes() > 1 {
        // Passes of a network per face: what the graph costs against its network's MACs
        // (`fer-train frontier` multiplies by it).
        p.metrics.insert(FORWARD_PASSES.into(), req.passes() as f64);
    }
    let first = &trained[0];
    if req.is_ensemble() {
        for (i, (t, s)) in trained.iter().zip(&alone).enumerate() {
            let n = i + 1;
            p.metrics
                .insert(format!("val_accuracy_member_{n}"), s.accuracy);
            p.metrics
                .insert(format!("val_macro_f1_member_{n}"), s.macro_f1);
            p.metrics
                .insert(format!("best_epoch_member_{n}"), t.state.best_epoch as f64);
        }
    } else {
        if req.test_time_flip {
            p.metrics
                .insert("val_accuracy_without_flip".into(), first.best.accuracy);
            p.metrics
                .insert("val_macro_f1_without_flip".into(), first.best.macro_f1);
        }
        p.metrics.insert("epochs".into(), first.state.epoch as f64);
        p.metrics
            .insert("best_epoch".into(), first.state.best_epoch as f64);
    }
    p.metrics
        .insert("val_images".into(), labelled.val.len() as f64);
    p.metrics
        .insert("train_images".into(), labelled.train.len() as f64);
    let wall: f64 = trained.iter().map(|t| t.state.wall_seconds).sum();
    p.metrics.insert("train_wall_seconds".into(), wall.round());
    let mut notes = format!(
        "ONNX parity on {} validation images: max |Δlogit| {:.2e}, argmax agreement {}/{}",
        parity.images, parity.max_abs_diff, parity.argmax_agree, parity.images,
    );
    if req.is_ensemble() {
        let seeds: Vec<String> = trained
            .iter()
            .map(|t| t.member.config.seed.to_string())
            .collect();
        notes.push_str(&format!(
            "; an ensemble of {} networks (seeds {}): the graph outputs the log of their mean class probabilities",
            trained.len(),
            seeds.join(", ")
        ));
    }
    if req.test_time_flip {
        notes.push_str(
            "; test-time flip folded into the graph (logits of each face and its mirror image averaged: twice the compute)",
        );
    }
    p.notes = notes;
    manifest
        .validate()
        .map_err(|e| anyhow::anyhow!("exported manifest: {e}"))?;
    manifest.save(&dir.join(MANIFEST_FILE))?;
    let card = Card {
        req,
        manifest: &manifest,
        trained,
        params,
        parity: &parity,
        scores: &scores,
        alone: &alone,
    };
    std::fs::write(dir.join("MODEL_CARD.md"), card.render())?;
    copy_training_record(trained, dir)?;
    if measured {
        // The run's own confusion matrix (under training/) is its plain network's; the card's
        // figures are this graph's, so draw its matrix beside the card.
        let what = folded.join(", ");
        report::confusion_plot(
            &dir.join(CONFUSION_SVG),
            &format!(
                "{}/{} ({what}): validation confusion matrix",
                manifest.name, manifest.version
            ),
            &scores,
            &manifest.labels,
        )?;
    }
    Ok((parity, manifest))
}

/// Compares burn's logits (`[images × classes]`, computed by the caller) with ONNX Runtime's on
/// the same preprocessed images.
pub fn check_parity(
    burn_logits: &[f32],
    session: &mut Session,
    data: &Dataset,
    preprocessor: &Preprocessor,
) -> anyhow::Result<Parity> {
    let ort_logits = eval::onnx_logits(session, data, preprocessor, 64)?;
    let classes = burn_logits.len() / data.len().max(1);
    let (mut max_abs_diff, mut argmax_agree) = (0.0f32, 0);
    for (mine, theirs) in burn_logits
        .chunks(classes.max(1))
        .zip(ort_logits.chunks(classes.max(1)))
    {
        for (a, b) in mine.iter().zip(theirs) {
            max_abs_diff = max_abs_diff.max((a - b).abs());
        }
        if argmax(mine) == argmax(theirs) {
            argmax_agree += 1;
        }
    }
    Ok(Parity {
        images: data.len(),
        max_abs_diff,
        argmax_agree,
    })
}

/// Copies each member's summary and pictures that its run has into the version folder `dir`,
/// under `training/` (per member, `training/member-N/`, in an ensemble), so the card's figures can
/// be looked at beside it.
fn copy_training_record(trained: &[Trained], dir: &Path) -> anyhow::Result<()> {
    for (i, t) in trained.iter().enumerate() {
        let to = if trained.len() == 1 {
            dir.join("training")
        } else {
            dir.join("training").join(format!("member-{}", i + 1))
        };
        std::fs::create_dir_all(&to)?;
        let run = t.member.run;
        let pictures = [CURVES_SVG, CONFUSION_SVG, THRESHOLDS_SVG].map(|f| run.0.join(f));
        for from in std::iter::once(run.summary()).chain(pictures) {
            if let Some(file) = from.file_name().filter(|_| from.exists()) {
                std::fs::copy(&from, to.join(file))
                    .with_context(|| format!("copying {}", from.display()))?;
            }
        }
    }
    Ok(())
}
