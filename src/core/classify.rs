//! Classification: encoded images → decoded in parallel off the async threads → batched
//! inference → labelled, ordered predictions.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use fer_contract::{DecodeLimits, ImageError, OutputKind, Pixels};
use rayon::prelude::*;

use crate::core::batcher::{JobInput, SubmitError};
use crate::core::registry::LoadedModel;
use crate::error::{Error, InferenceError};
use crate::metrics::Metrics;

/// One image's answer: scores by label, sorted best first.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub label: String,
    pub confidence: f32,
    /// `(label, probability)`, highest first; `top_k` entries when asked, else every label.
    pub scores: Vec<(String, f32)>,
}

/// A lone image no larger than this is decoded on the calling (async) thread: a 48×48 face takes
/// about 15 µs, less than the hand-off to the decoder pool and back. Larger ones (known from the
/// header, before decoding), and several images, go to the pool so async threads never block long.
const INLINE_DECODE_LIMITS: DecodeLimits = DecodeLimits {
    max_width: 256,
    max_height: 256,
    max_pixels: 256 * 256,
};

/// Decodes every image (on the rayon pool unless it is one small image); the first failure (by
/// index) fails the request.
pub async fn decode_all(
    model: &Arc<LoadedModel>,
    images: Vec<Bytes>,
    metrics: &Metrics,
) -> Result<Vec<Pixels>, Error> {
    let model = Arc::clone(model);
    let decode = metrics
        .stage_duration
        .with_label_values(&[model.manifest.name.as_str(), "decode"]);
    if let [image] = images.as_slice() {
        let started = Instant::now();
        let configured = model.preprocessor.limits();
        let inline = DecodeLimits {
            max_width: INLINE_DECODE_LIMITS.max_width.min(configured.max_width),
            max_height: INLINE_DECODE_LIMITS.max_height.min(configured.max_height),
            max_pixels: INLINE_DECODE_LIMITS.max_pixels.min(configured.max_pixels),
        };
        // Over the inline limits: decoded (or refused, with the configured limits) on the pool.
        match model.preprocessor.decode_within(image, inline) {
            Err(ImageError::TooLarge { .. }) => {}
            decoded => {
                decode.observe(started.elapsed().as_secs_f64());
                return decoded
                    .map(|pixels| vec![pixels])
                    .map_err(|source| Error::InvalidImage { index: 0, source });
            }
        }
    }
    let decode_one = move |index: usize, bytes: &Bytes| {
        let started = Instant::now();
        let decoded = model
            .preprocessor
            .decode(bytes)
            .map_err(|source| Error::InvalidImage { index, source });
        decode.observe(started.elapsed().as_secs_f64());
        decoded
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let result: Vec<Result<Pixels, Error>> = images
            .par_iter()
            .enumerate()
            .map(|(index, bytes)| decode_one(index, bytes))
            .collect();
        let _ = tx.send(result.into_iter().collect::<Result<Vec<_>, _>>());
    });
    rx.await
        .map_err(|_| InferenceError::Stopped("decoder pool"))?
}

/// Runs images (decoded, or rows the client normalised) through the model's batcher; the graph's
/// raw output row per image, in input order.
pub async fn infer(
    model: &Arc<LoadedModel>,
    inputs: Vec<JobInput>,
) -> Result<Vec<Vec<f32>>, Error> {
    let receivers = match model.batcher.submit_all(inputs) {
        Ok(r) => r,
        Err(SubmitError::Full) => {
            return Err(Error::QueueFull {
                retry_after_secs: 1,
            });
        }
        Err(SubmitError::Closed) => return Err(Error::ShuttingDown),
        Err(SubmitError::WrongLength {
            index,
            expected,
            got,
        }) => {
            return Err(Error::InvalidTensor(format!(
                "image {index}: {got} values where the model takes {expected}"
            )));
        }
    };
    let mut outputs = Vec::with_capacity(receivers.len());
    for receiver in receivers {
        outputs.push(
            receiver
                .await
                .map_err(|_| InferenceError::Stopped("inference worker"))?
                .map_err(InferenceError::Backend)?,
        );
    }
    Ok(outputs)
}

/// Probabilities from a raw output row (a softmax when the graph gives logits); counts the
/// predicted label.
pub fn probabilities(model: &LoadedModel, mut scores: Vec<f32>, metrics: &Metrics) -> Vec<f32> {
    if model.manifest.output.kind == OutputKind::Logits {
        fer_contract::softmax_in_place(&mut scores);
    }
    let best = scores
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i);
    if let Some(label) = best.and_then(|i| model.manifest.labels.get(i)) {
        metrics
            .predictions
            .with_label_values(&[model.manifest.name.as_str(), label.as_str()])
            .inc();
    }
    scores
}

/// A request's `top_k`, checked: `None` asks for every label, 0 is refused (a request for no
/// score is a mistake, not a wish for one).
pub fn check_top_k(top_k: Option<u32>) -> Result<Option<usize>, Error> {
    match top_k {
        Some(0) => Err(Error::BadRequest(
            "top_k must be at least 1 (leave it out for every label)".into(),
        )),
        other => Ok(other.map(|k| k as usize)),
    }
}

/// Classifies decoded images with the model; answers in input order.
pub async fn classify(
    model: &Arc<LoadedModel>,
    images: Vec<Pixels>,
    top_k: Option<usize>,
    metrics: &Metrics,
) -> Result<Vec<Prediction>, Error> {
    let outputs = infer(model, images.into_iter().map(JobInput::from).collect()).await?;
    let labels = &model.manifest.labels;
    Ok(outputs
        .into_iter()
        .map(|raw| to_prediction(labels, &probabilities(model, raw, metrics), top_k))
        .collect())
}

/// Labels ranked by probability, the best first, `top_k` of them (or all): the one ranking of the
/// server and the offline `classify` command.
pub fn to_prediction(labels: &[String], probabilities: &[f32], top_k: Option<usize>) -> Prediction {
    let mut ranked: Vec<(String, f32)> = labels
        .iter()
        .cloned()
        .zip(probabilities.iter().copied())
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let (label, confidence) = ranked[0].clone();
    ranked.truncate(top_k.unwrap_or(labels.len()).clamp(1, labels.len()));
    Prediction {
        label,
        confidence,
        scores: ranked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_rank_scores_and_honour_top_k() {
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let p = to_prediction(&labels, &[0.2, 0.7, 0.1], None);
        assert_eq!(p.label, "b");
        assert!((p.confidence - 0.7).abs() < 1e-6);
        assert_eq!(
            p.scores.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
            ["b", "a", "c"]
        );
        let p = to_prediction(&labels, &[0.2, 0.7, 0.1], Some(1));
        assert_eq!(p.scores.len(), 1);
        assert_eq!(
            to_prediction(&labels, &[0.2, 0.7, 0.1], Some(0))
                .scores
                .len(),
            1
        );
        assert_eq!(
            to_prediction(&labels, &[0.2, 0.7, 0.1], Some(99))
                .scores
                .len(),
            3
        );
    }
}
