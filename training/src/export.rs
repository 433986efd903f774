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

use crate::config::{Config, Mode};
use crate::data::Dataset;
use crate::eval::{self, argmax};
use crate::metrics::Scores;
use crate::model::{FerNet, forward_macs};
use crate::run::{self, RunDir, RunState};
use crate::thresholds::Anchor;
use crate::train;

/// Manifest metric: passes of the network per face (2 with test-time flip; absent means 1).
pub const FORWARD_PASSES: &str = "forward_passes";

/// Largest |Δlogit| between burn and ONNX Runtime that parity accepts.
pub const PARITY_TOLERANCE: f32 = 1e-4;

#[derive(Clone, Copy)]
pub struct ExportRequest<'a> {
    pub config: &'a Config,
    pub run: &'a RunDir,
    pub models_dir: &'a Path,
    pub name: &'a str,
    /// The version to write; `None`: the next free one.
    pub version: Option<u64>,
    /// The command that trained the run, recorded in the manifest and model card; `None`: the one
    /// the run recorded (`command.txt`).
    pub command: Option<&'a str>,
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
    let command = match req.command {
        Some(c) => c.to_string(),
        None => std::fs::read_to_string(req.run.command())
            .map(|c| c.trim().to_string())
            .with_context(|| {
                format!(
                    "{} records no training command: pass --command",
                    req.run.0.display()
                )
            })?,
    };
    let state: RunState =
        serde_json::from_slice(&std::fs::read(req.run.state()).context("run has no state.json")?)?;
    let best = state
        .best_scores()
        .context("run has no evaluated epoch to export")?;
    let classes = req.config.data.classes();
    let device = Device::flex();
    let model = run::load_model(req.config, classes.len(), &req.run.best_model(), &device)?.valid();

    let mut manifest = train::manifest_template(req.config, &classes);
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
            |m: &FerNet, x| {
                if req.test_time_flip {
                    m.forward_mirror_mean(x)
                } else {
                    m.forward(x)
                }
            },
        )
        .map_err(|e| anyhow::anyhow!("ONNX export: {e}"))?;

    let serving = serving_version(req.models_dir, req.name);
    let (dir, (parity, figures, serving)) = stage_and_publish(
        req.models_dir,
        req.name,
        version,
        |staging| {
            let (parity, manifest) = write_version(
                req,
                &command,
                staging,
                onnx.as_bytes(),
                manifest,
                best,
                &state,
            )?;
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
    command: &str,
    dir: &Path,
    onnx: &[u8],
    mut manifest: Manifest,
    best: &Scores,
    state: &RunState,
) -> anyhow::Result<(Parity, Manifest)> {
    let classes = req.config.data.classes();
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
    let (labelled, _) = train::load_data(req.config, &preprocessor, &manifest)?;
    let val = match req.parity_images {
        Some(n) if n < labelled.val.len() => labelled.val.subset(&(0..n).collect::<Vec<_>>()),
        _ => labelled.val.clone(),
    };
    // The exporter moves the module it captured onto its capture device: compare a fresh load.
    let model = run::load_model(req.config, classes.len(), &req.run.best_model(), &device)?.valid();
    // burn's logits: with test-time flip, the mean over each face and its mirrored pixels on the
    // whole validation set, which serve both the parity check (its first rows) and the manifest's
    // figures; without, on the parity images only (the figures are training's).
    let burn_logits = if req.test_time_flip {
        eval::predict_mirror_mean(&model, &labelled.val, &preprocessor, &device, 128)?
    } else {
        eval::predict(&model, &val, &preprocessor, &device, 128)?
    };
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

    // With test-time flip the figures are the folded graph's, measured on the whole validation
    // set; training chose the epoch by the plain model's.
    let scores = if req.test_time_flip {
        eval::score_logits(&burn_logits, &labelled.val, classes.len())?.0
    } else {
        best.clone()
    };
    let p = &mut manifest.provenance;
    p.data = data_sources(req.config);
    p.command = command.to_string();
    p.trainer = format!("fer-train {}", env!("CARGO_PKG_VERSION"));
    p.seed = Some(req.config.seed);
    p.metrics.insert("val_accuracy".into(), scores.accuracy);
    p.metrics.insert("val_macro_f1".into(), scores.macro_f1);
    for (label, f1) in classes.iter().zip(&scores.per_class_f1) {
        p.metrics.insert(format!("val_f1_{label}"), *f1);
    }
    if req.test_time_flip {
        // Passes of the network per face: what the graph costs against its network's MACs
        // (`fer-train frontier` multiplies by it).
        p.metrics.insert(FORWARD_PASSES.into(), 2.0);
        p.metrics
            .insert("val_accuracy_without_flip".into(), best.accuracy);
        p.metrics
            .insert("val_macro_f1_without_flip".into(), best.macro_f1);
    }
    p.metrics
        .insert("val_images".into(), labelled.val.len() as f64);
    p.metrics
        .insert("train_images".into(), labelled.train.len() as f64);
    p.metrics.insert("epochs".into(), state.epoch as f64);
    p.metrics
        .insert("best_epoch".into(), state.best_epoch as f64);
    p.metrics
        .insert("train_wall_seconds".into(), state.wall_seconds.round());
    p.notes = format!(
        "ONNX parity on {} validation images: max |Δlogit| {:.2e}, argmax agreement {}/{}{}",
        parity.images,
        parity.max_abs_diff,
        parity.argmax_agree,
        parity.images,
        if req.test_time_flip {
            "; test-time flip folded into the graph (logits of each face and its mirror image averaged: twice the compute)"
        } else {
            ""
        }
    );
    manifest
        .validate()
        .map_err(|e| anyhow::anyhow!("exported manifest: {e}"))?;
    manifest.save(&dir.join(MANIFEST_FILE))?;
    std::fs::write(
        dir.join("MODEL_CARD.md"),
        model_card(req, &manifest, &model, state, &parity, &scores, best),
    )?;
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

/// What a model saw: the labelled set, and the unlabelled ones of the semi-supervised modes.
fn data_sources(config: &Config) -> Vec<String> {
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
    let semi = |policy: String| {
        format!(
            "Semi-supervised training ({}): an EMA teacher pseudo-labels the weak view of {} unlabelled images per labelled one; \
             the student learns the pseudo-labels that pass {policy} on a strong view (RandAugment-style ops and cutout), \
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

fn model_card(
    req: &ExportRequest,
    manifest: &Manifest,
    model: &FerNet,
    state: &RunState,
    parity: &Parity,
    scores: &Scores,
    plain: &Scores,
) -> String {
    let macs = forward_macs(
        &req.config.model,
        manifest.input.channels.count(),
        manifest.input.width as usize,
        manifest.labels.len(),
    );
    let mode = method(req.config);
    let mut per_class = String::new();
    for (label, f1) in manifest.labels.iter().zip(&scores.per_class_f1) {
        per_class.push_str(&format!("| {label} | {f1:.4} |\n"));
    }
    let flip_export = if req.test_time_flip {
        " Exported from the run's best checkpoint by `fer-train export --test-time-flip`."
    } else {
        ""
    };
    let (flip_cost, flip_method, flip_metrics) = if req.test_time_flip {
        (
            " (twice that with the test-time flip below)",
            format!(
                " At inference the graph scores each face and its mirror image and averages their logits (test-time flip, folded \
                 into the export): twice the compute, for {:.4} accuracy and {:.4} macro-F1 against the plain model's {:.4} and {:.4}.",
                scores.accuracy, scores.macro_f1, plain.accuracy, plain.macro_f1
            ),
            ", test-time flip included",
        )
    } else {
        ("", String::new(), "")
    };
    format!(
        "# {name} v{version}\n\n\
         Facial-expression classifier for 48×48 grayscale face crops, trained by `fer-train` ({backend}).\n\n\
         ## Data\n{data}. Read in place from `../shared/data/`; the images are research data and are not redistributed here.\n\n\
         ## Method\n{mode} A {params}-parameter VGG-style CNN (widths {widths:?}, {depth} conv per stage, \
         {mmacs:.1} M multiply-accumulates per image{flip_cost}), AdamW, cosine schedule, weak augmentation (flip, small affine) of labelled images.{flip_method}\n\n\
         ## Reproduce\n```\n{command}\n```\nSeed {seed}. {epochs} epochs ({steps} steps), best epoch {best_epoch}, \
         {hours:.2} h of training wall time on the CPU it ran on.{stopped}{flip_export}\n\n\
         ## Validation metrics (best epoch{flip_metrics})\n- accuracy: {acc:.4}\n- macro-F1: {f1:.4}\n\n| class | F1 |\n|---|---|\n{per_class}\n\
         ## Export check\nONNX Runtime vs burn on {images} validation images: max |Δlogit| {diff:.2e} (tolerance {tol:.0e}), argmax agreement {agree}/{images}.\n\n\
         ## Intended use\nClassifying the expression of a single, roughly frontal, cropped face (as `POST /v1/classify` expects). \
         Research and demonstration use.\n\n\
         ## Limits\nTrained on FER2013-style faces (low resolution, mostly frontal, internet photos); accuracy drops on profile views, \
         occlusions and demographics under-represented in that data. An expression label is not an emotion: it describes a face, not what a person feels. \
         Do not use it to make decisions about people.\n",
        name = manifest.name,
        version = manifest.version,
        backend = state.backend.describe(),
        data = data_sources(req.config).join("; "),
        mode = mode,
        params = model.num_params(),
        widths = req.config.model.widths,
        depth = req.config.model.convs_per_stage,
        mmacs = macs as f64 / 1e6,
        command = manifest.provenance.command,
        seed = req.config.seed,
        epochs = state.epoch,
        steps = state.step,
        best_epoch = state.best_epoch,
        hours = state.wall_seconds / 3600.0,
        stopped = if state.finished {
            String::new()
        } else {
            format!(
                " Training was stopped after epoch {} of the config's {} (the learning-rate schedule had not reached its end); \
                 the same command resumes the run from its last checkpoint.",
                state.epoch, req.config.epochs
            )
        },
        acc = scores.accuracy,
        f1 = scores.macro_f1,
        images = parity.images,
        diff = parity.max_abs_diff,
        tol = PARITY_TOLERANCE,
        agree = parity.argmax_agree,
    )
}
