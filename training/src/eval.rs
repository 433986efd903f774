//! Evaluation: a model's logits on a dataset, its scores and loss there (with or without
//! test-time flip).

use anyhow::Context;
use burn::prelude::*;
use fer_contract::Preprocessor;
use ort::session::Session;
use ort::value::TensorRef;

use crate::augment::AugmentConfig;
use crate::batch::{ViewKind, images_tensor, view_batch};
use crate::data::Dataset;
use crate::metrics::{Confusion, Scores};
use crate::model::FerNet;

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
    let logits = predict_mirror_mean(model, dataset, preprocessor, device, 256)?;
    score_logits(&logits, dataset, classes)
}

/// As [`predict`], averaged with the logits of the mirrored images (test-time flip). Mirrors the
/// pixels themselves, independently of [`FerNet::forward_mirror_mean`], so that the export's
/// parity check tests that graph's mirroring too.
pub fn predict_mirror_mean(
    model: &FerNet,
    dataset: &Dataset,
    preprocessor: &Preprocessor,
    device: &Device,
    batch: usize,
) -> anyhow::Result<Vec<f32>> {
    let plain = predict(model, dataset, preprocessor, device, batch)?;
    let mirrored = predict(model, &dataset.mirrored(), preprocessor, device, batch)?;
    Ok(plain
        .iter()
        .zip(&mirrored)
        .map(|(a, b)| (a + b) / 2.0)
        .collect())
}

pub fn score_logits(
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

/// An ONNX Runtime session's logits on every image of a dataset, in batches (`[n × classes]`,
/// row-major): the exported graph scored as the server runs it.
pub fn onnx_logits(
    session: &mut Session,
    data: &Dataset,
    preprocessor: &Preprocessor,
    batch: usize,
) -> anyhow::Result<Vec<f32>> {
    let row = preprocessor.input_len();
    let (c, h, w) = (
        data.channels.count(),
        data.height as usize,
        data.width as usize,
    );
    let mut input = vec![0.0f32; batch * row];
    let mut logits = Vec::new();
    for start in (0..data.len()).step_by(batch.max(1)) {
        let n = batch.min(data.len() - start);
        for (j, dst) in input[..n * row].chunks_mut(row).enumerate() {
            preprocessor.normalise_into(&data.pixels(start + j), dst);
        }
        let tensor = TensorRef::from_array_view(([n, c, h, w], &input[..n * row]))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let outputs = session
            .run(ort::inputs![tensor])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (_, out) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        logits.extend_from_slice(out);
    }
    Ok(logits)
}
