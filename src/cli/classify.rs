//! `fer-server classify FILE...`: the same decode and model as the server, without a server.

use std::io::Write;

use anyhow::Context;
use fer_contract::{OutputKind, Preprocessor, softmax_in_place};

use crate::backend::OnnxSession;
use crate::config::ClassifyArgs;

pub fn run(args: &ClassifyArgs) -> anyhow::Result<()> {
    let (_, environment) = fer_contract::onnx::runtime(args.model.ort_dylib.as_deref())?;
    let name = args
        .model_name
        .as_deref()
        .unwrap_or(&args.model.default_model);
    let model_dir = args.model.models_dir.join(name);
    let version = match args.version {
        Some(v) => v,
        None => newest_version(&model_dir)?,
    };
    let dir = model_dir.join(version.to_string());
    let manifest = fer_contract::Manifest::load(&dir.join(fer_contract::MANIFEST_FILE))?;
    let options = args.model.session_options(1);
    let (mut session, _) = OnnxSession::load(
        environment,
        &dir.join(fer_contract::MODEL_FILE),
        &manifest,
        &options,
    )?;
    let preprocessor = Preprocessor::new(&manifest, args.model.decode_limits());
    let mut row = vec![0.0f32; preprocessor.input_len()];
    let mut scores = Vec::new();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failures = 0;
    for file in &args.files {
        let result = std::fs::read(file)
            .with_context(|| format!("reading {}", file.display()))
            .and_then(|bytes| {
                warn_if_not_a_face_crop(file, &bytes, &manifest);
                Ok(preprocessor.preprocess_into(&bytes, &mut row)?)
            });
        if let Err(e) = result {
            failures += 1;
            if args.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"file": file, "error": e.to_string()})
                )?;
            } else {
                writeln!(out, "{}: error: {e:#}", file.display())?;
            }
            continue;
        }
        session.run(&row, 1, &mut scores)?;
        if manifest.output.kind == OutputKind::Logits {
            softmax_in_place(&mut scores);
        }
        let prediction =
            crate::core::classify::to_prediction(&manifest.labels, &scores, args.top_k);
        if args.json {
            let scores: serde_json::Map<String, serde_json::Value> = prediction
                .scores
                .iter()
                .map(|(l, p)| (l.clone(), serde_json::json!(p)))
                .collect();
            writeln!(
                out,
                "{}",
                serde_json::json!({"file": file, "model": {"name": name, "version": version}, "label": prediction.label, "confidence": prediction.confidence, "scores": scores})
            )?;
        } else {
            let scores: Vec<String> = prediction
                .scores
                .iter()
                .map(|(l, p)| format!("{l} {p:.3}"))
                .collect();
            writeln!(
                out,
                "{}: {} ({})",
                file.display(),
                prediction.label,
                scores.join(", ")
            )?;
        }
    }
    if failures > 0 {
        anyhow::bail!(
            "{failures} of {} files could not be classified",
            args.files.len()
        );
    }
    Ok(())
}

fn newest_version(model_dir: &std::path::Path) -> anyhow::Result<u64> {
    std::fs::read_dir(model_dir)
        .with_context(|| {
            format!(
                "no model folder {}: point --models-dir (or FER_MODELS_DIR) at a model repository, \
                 such as the checkout's models/ or the container's /models",
                model_dir.display()
            )
        })?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .with_context(|| format!("{} holds no version folder", model_dir.display()))
}

/// `classify` takes face crops: a picture several times the model's input side is most likely a
/// photo, whose label would be meaningless; say so on stderr (the label is still printed).
fn warn_if_not_a_face_crop(
    file: &std::path::Path,
    bytes: &[u8],
    manifest: &fer_contract::Manifest,
) {
    let Ok((width, height)) = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(image::ImageError::from)
        .and_then(|r| r.into_dimensions())
    else {
        return;
    };
    let side = manifest.input.width.max(manifest.input.height);
    if width.min(height) > side.saturating_mul(PHOTO_FACTOR) {
        eprintln!(
            "note: {} is {width}×{height}: `classify` expects a cropped face (the model sees {side}×{side}); \
             for a photo, POST it to /v1/analyze of a server with a face detector, which finds and crops every face",
            file.display()
        );
    }
}

/// A picture whose shorter side exceeds this many model input sides is treated as a photo.
const PHOTO_FACTOR: u32 = 6;
