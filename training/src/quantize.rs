//! `fer-train quantize`: an INT8 variant of an exported model version, calibrated on training
//! faces, scored against its FP32 source on the validation set, and published beside it as a
//! model of its own (`<name>-int8/<version>`).
//!
//! The quantization itself is ONNX Runtime's quantizer (Python, the same release as the runtime:
//! `training/quantize/`); everything around it is here, in the trainer, so that the calibration
//! faces go through the contract's preprocessing and the figures come from the same runtime the
//! server loads.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use fer_contract::{MANIFEST_FILE, MODEL_FILE, Manifest, Precision, Preprocessor};
use ort::session::Session;
use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::data::{self, Dataset, Source};
use crate::eval::{argmax, onnx_logits, score_logits};
use crate::export::stage_and_publish;
use crate::metrics::Scores;

/// The quantizer script, carried in the binary so the command works from any directory.
const SCRIPT: &str = include_str!("../quantize/quantize.py");

/// Largest accuracy an INT8 variant may lose against its source before it is refused (without
/// `force`): half a point.
pub const DEFAULT_MAX_ACCURACY_DROP: f64 = 0.005;

pub struct QuantizeRequest<'a> {
    /// The FP32 version folder (`models/<name>/<version>`).
    pub source: &'a Path,
    pub models_dir: &'a Path,
    /// Model name of the variant (`None`: `<source name>-int8`).
    pub name: Option<&'a str>,
    /// Version of the variant (`None`: the source's version number).
    pub version: Option<u64>,
    pub data_dir: &'a Path,
    /// Training faces the activations are calibrated on.
    pub calibration_images: usize,
    /// `minmax`, `percentile` or `entropy` (ONNX Runtime's calibration methods).
    pub method: &'a str,
    pub seed: u64,
    /// Python with `training/quantize/requirements.txt` installed.
    pub python: &'a Path,
    pub ort_dylib: Option<&'a Path>,
    pub max_accuracy_drop: f64,
    pub replace: bool,
    pub force: bool,
    /// The command line, recorded in the manifest and the model card.
    pub command: &'a str,
}

/// Both precisions on the same validation faces.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub images: usize,
    pub fp32: Scores,
    pub int8: Scores,
    /// Largest difference of a class probability between the two, over every face.
    pub max_abs_dprob: f32,
    /// Faces whose top class is the same in both.
    pub argmax_agree: usize,
}

pub struct Quantized {
    pub dir: PathBuf,
    pub comparison: Comparison,
}

/// Which labelled dataset a model was trained on, from its labels.
fn source_of(manifest: &Manifest) -> anyhow::Result<Source> {
    Source::of_labels(&manifest.labels).with_context(|| {
            format!(
                "{}/{}: its labels are neither FER2013's nor FER+'s, so there is no validation set to score it on",
                manifest.name, manifest.version
            )
        })
}

pub fn quantize(req: &QuantizeRequest) -> anyhow::Result<Quantized> {
    let source_manifest = Manifest::load(&req.source.join(MANIFEST_FILE))?;
    if source_manifest.precision != Precision::Fp32 {
        bail!(
            "{}: already {}",
            req.source.display(),
            source_manifest.precision.as_str()
        );
    }
    let name = req
        .name
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}-int8", source_manifest.name));
    let version = req.version.unwrap_or(source_manifest.version);
    let existing = req.models_dir.join(&name).join(version.to_string());
    if existing.exists() && !req.replace {
        bail!(
            "{} exists: pass --replace to overwrite it",
            existing.display()
        );
    }
    let dataset = source_of(&source_manifest)?;
    let preprocessor = Preprocessor::new(&source_manifest, fer_contract::DecodeLimits::default());
    let side = (
        source_manifest.input.width,
        source_manifest.input.height,
        source_manifest.input.channels,
    );
    let labelled = data::load_labelled(dataset, req.data_dir, &preprocessor, side)?;

    let (dir, comparison) = stage_and_publish(req.models_dir, &name, version, |staging| {
        write_variant(
            req,
            staging,
            &source_manifest,
            &name,
            version,
            &labelled.train,
            &labelled.val,
            &preprocessor,
        )
    })?;
    Ok(Quantized { dir, comparison })
}

#[allow(clippy::too_many_arguments)]
fn write_variant(
    req: &QuantizeRequest,
    staging: &Path,
    source: &Manifest,
    name: &str,
    version: u64,
    train: &Dataset,
    val: &Dataset,
    preprocessor: &Preprocessor,
) -> anyhow::Result<Comparison> {
    let calibration = calibration_sample(train, req.calibration_images, req.seed);
    let faces = staging.join("calibration.npy");
    write_npy(&faces, &calibration, preprocessor)?;
    let script = staging.join("quantize.py");
    std::fs::write(&script, SCRIPT)?;
    let int8_path = staging.join(MODEL_FILE);
    run_quantizer(req, &script, &faces, &int8_path)?;
    std::fs::remove_file(&faces)?;
    std::fs::remove_file(&script)?;

    let mut manifest = source.clone();
    manifest.name = name.to_string();
    manifest.version = version;
    manifest.precision = Precision::Int8;
    let (_, environment) = fer_contract::onnx::runtime(req.ort_dylib)?;
    let session = |path: &Path| {
        Session::builder(environment)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .commit_from_file(path)
            .map_err(|e| anyhow::anyhow!("loading {}: {e}", path.display()))
    };
    let mut fp32 = session(&req.source.join(MODEL_FILE))?;
    let mut int8 = session(&int8_path)?;
    fer_contract::onnx::check_graph(&int8, &manifest)
        .map_err(|e| anyhow::anyhow!("{}: {e}", int8_path.display()))?;
    let comparison = compare(&mut fp32, &mut int8, val, preprocessor, &manifest)?;
    let drop = comparison.fp32.accuracy - comparison.int8.accuracy;
    if drop > req.max_accuracy_drop && !req.force {
        bail!(
            "not published: INT8 scores {:.4} accuracy on the {} validation images, {:.2} points under FP32's {:.4} \
             (allowed: {:.2}); pass --force to publish it anyway",
            comparison.int8.accuracy,
            comparison.images,
            drop * 100.0,
            comparison.fp32.accuracy,
            req.max_accuracy_drop * 100.0
        );
    }

    let p = &mut manifest.provenance;
    p.command = format!("{}; then {}", source.provenance.command, req.command);
    p.trainer = format!(
        "fer-train {} (ONNX Runtime {} quantizer)",
        env!("CARGO_PKG_VERSION"),
        quantizer_version(req.python).unwrap_or_else(|| "?".into())
    );
    let m = &mut p.metrics;
    // The source's plain-model figures (a test-time-flip export's) describe the FP32 model: its
    // own manifest keeps them. Its `forward_passes` holds here too.
    m.remove("val_accuracy_without_flip");
    m.remove("val_macro_f1_without_flip");
    m.insert("val_accuracy".into(), comparison.int8.accuracy);
    m.insert("val_macro_f1".into(), comparison.int8.macro_f1);
    for (label, f1) in manifest.labels.iter().zip(&comparison.int8.per_class_f1) {
        m.insert(format!("val_f1_{label}"), *f1);
    }
    m.insert("val_images".into(), comparison.images as f64);
    m.insert("fp32_val_accuracy".into(), comparison.fp32.accuracy);
    m.insert("fp32_val_macro_f1".into(), comparison.fp32.macro_f1);
    m.insert(
        "int8_max_abs_dprob".into(),
        f64::from(comparison.max_abs_dprob),
    );
    m.insert(
        "int8_argmax_agreement".into(),
        comparison.argmax_agree as f64 / comparison.images.max(1) as f64,
    );
    m.insert("calibration_images".into(), calibration.len() as f64);
    p.notes = format!(
        "INT8 (QDQ, per-channel 7-bit weights, 8-bit activations calibrated with `{}` on {} train faces) of {}/{}; \
         on {} validation faces: accuracy {:.4} vs FP32 {:.4}, max |Δprob| {:.3}, same top class on {}",
        req.method,
        calibration.len(),
        source.name,
        source.version,
        comparison.images,
        comparison.int8.accuracy,
        comparison.fp32.accuracy,
        comparison.max_abs_dprob,
        comparison.argmax_agree
    );
    manifest
        .validate()
        .map_err(|e| anyhow::anyhow!("quantized manifest: {e}"))?;
    manifest.save(&staging.join(MANIFEST_FILE))?;
    std::fs::write(
        staging.join("MODEL_CARD.md"),
        model_card(req, source, &manifest, &comparison, calibration.len()),
    )?;
    Ok(comparison)
}

/// `n` distinct training faces, drawn with `seed` (all of them when the set is smaller).
fn calibration_sample(train: &Dataset, n: usize, seed: u64) -> Dataset {
    let mut indices: Vec<usize> = (0..train.len()).collect();
    indices.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    indices.truncate(n.max(1));
    indices.sort_unstable();
    train.subset(&indices)
}

/// Writes the faces, preprocessed for the model, as a float32 NumPy array `[n, c, h, w]`.
fn write_npy(path: &Path, faces: &Dataset, preprocessor: &Preprocessor) -> anyhow::Result<()> {
    let shape = [
        faces.len(),
        faces.channels.count(),
        faces.height as usize,
        faces.width as usize,
    ];
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}, {}, {}), }}",
        shape[0], shape[1], shape[2], shape[3]
    );
    // Magic (6) + version (2) + header length (2) + header, padded with spaces to a multiple of
    // 64 bytes and ended by a newline (NPY format 1.0).
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut bytes =
        Vec::with_capacity(10 + header.len() + faces.len() * preprocessor.input_len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    let mut row = vec![0.0f32; preprocessor.input_len()];
    for i in 0..faces.len() {
        preprocessor.normalise_into(&faces.pixels(i), &mut row);
        for v in &row {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(path, bytes)?;
    Ok(())
}

fn run_quantizer(
    req: &QuantizeRequest,
    script: &Path,
    faces: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    let output = Command::new(req.python)
        .arg(script)
        .arg("--model")
        .arg(req.source.join(MODEL_FILE))
        .arg("--calibration")
        .arg(faces)
        .arg("--out")
        .arg(out)
        .arg("--method")
        .arg(req.method)
        .output()
        .with_context(|| {
            format!(
                "running {} (install the quantizer with scripts/setup-quantize.sh, or pass --python)",
                req.python.display()
            )
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(12).collect();
        bail!(
            "the quantizer failed ({}):\n{}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

fn quantizer_version(python: &Path) -> Option<String> {
    let out = Command::new(python)
        .args(["-c", "import onnxruntime; print(onnxruntime.__version__)"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

fn compare(
    fp32: &mut Session,
    int8: &mut Session,
    val: &Dataset,
    preprocessor: &Preprocessor,
    manifest: &Manifest,
) -> anyhow::Result<Comparison> {
    let classes = manifest.labels.len();
    let a = onnx_logits(fp32, val, preprocessor, 64)?;
    let b = onnx_logits(int8, val, preprocessor, 64)?;
    let (mut max_abs_dprob, mut argmax_agree) = (0.0f32, 0);
    for (ra, rb) in a.chunks(classes).zip(b.chunks(classes)) {
        for (pa, pb) in softmax(ra).iter().zip(softmax(rb)) {
            max_abs_dprob = max_abs_dprob.max((pa - pb).abs());
        }
        if argmax(ra) == argmax(rb) {
            argmax_agree += 1;
        }
    }
    Ok(Comparison {
        images: val.len(),
        fp32: score_logits(&a, val, classes)?.0,
        int8: score_logits(&b, val, classes)?.0,
        max_abs_dprob,
        argmax_agree,
    })
}

fn model_card(
    req: &QuantizeRequest,
    source: &Manifest,
    manifest: &Manifest,
    c: &Comparison,
    calibration: usize,
) -> String {
    let mut rows = format!(
        "| | FP32 ({src}/{sv}) | INT8 ({name}/{v}) |\n|---|---|---|\n| accuracy | {:.4} | {:.4} |\n| macro-F1 | {:.4} | {:.4} |\n",
        c.fp32.accuracy,
        c.int8.accuracy,
        c.fp32.macro_f1,
        c.int8.macro_f1,
        src = source.name,
        sv = source.version,
        name = manifest.name,
        v = manifest.version,
    );
    for (i, label) in manifest.labels.iter().enumerate() {
        rows.push_str(&format!(
            "| F1 {label} | {:.3} | {:.3} |\n",
            c.fp32.per_class_f1[i], c.int8.per_class_f1[i]
        ));
    }
    format!(
        "# {name}/{version}: INT8 variant of {src}/{sv}\n\n\
         The same graph (every network and forward pass of it, where it is an ensemble or folds in a \
         test-time flip), labels, input and preprocessing as `{src}/{sv}` (see its model card for the \
         data, the training and the limits of the model), with its weights and activations quantized to \
         8-bit integers inside the graph (ONNX QDQ; the input and output stay float32, so clients see no \
         difference but the scores).\n\n\
         ## How it was made\n\n\
         ONNX Runtime's static quantizer (`training/quantize/quantize.py`): batch normalisation folded \
         into the convolutions, per-channel signed 7-bit weights (`reduce_range`: x86 CPUs without VNNI \
         saturate with full 8-bit weights), unsigned 8-bit activations calibrated with the `{method}` \
         method on {calibration} training faces drawn with seed {seed}, preprocessed by the contract \
         exactly as the server does.\n\n\
         ```\n{command}\n```\n\n\
         ## Validation ({n} faces, same runtime, same faces)\n\n\
         {rows}\n\
         Largest difference of a class probability: {dprob:.3}; same top class on {agree} of {n} faces \
         ({agree_pct:.1} %).\n\n\
         ## Speed\n\n\
         Whether INT8 is faster depends on the CPU: ONNX Runtime's integer convolutions pay on CPUs with \
         VNNI (AVX-512 VNNI or AVX-VNNI); on AVX2 alone they cost about what float ones do. Measure on \
         your machine: `scripts/bench.sh --model {src} --model {name}` prints faces per second of both, \
         raw and through the server, in one run.\n",
        name = manifest.name,
        version = manifest.version,
        src = source.name,
        sv = source.version,
        method = req.method,
        seed = req.seed,
        command = req.command,
        n = c.images,
        dprob = c.max_abs_dprob,
        agree = c.argmax_agree,
        agree_pct = 100.0 * c.argmax_agree as f64 / c.images.max(1) as f64,
    )
}
