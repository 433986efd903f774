//! Analysis of full photos and frames: decode at full size → detect faces → crop each face as the
//! training data frames faces (aligned by its landmarks where the detector finds them) → the
//! model's preprocessing → the same batched classification as `classify`.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use fer_contract::{DecodeLimits, Pixels};

use crate::backend::detector::{DetectOptions, Detection, DetectorKind, FaceDetector, face_crop};
use crate::core::classify::{self, Prediction};
use crate::core::registry::LoadedModel;
use crate::error::{Error, InferenceError};
use crate::metrics::Metrics;

/// How detector sessions are loaded and what a request gets unless it asks otherwise.
#[derive(Debug, Clone, Copy)]
pub struct DetectorSettings {
    pub sessions: usize,
    pub intra_op_threads: usize,
    /// `None`: the detector family's own threshold.
    pub score_threshold: Option<f32>,
    pub nms_iou: f32,
    pub min_face: f32,
    pub margin: f32,
    pub align: bool,
    /// Decoded pixels in flight across all requests (`--max-decoded-pixels`).
    pub max_decoded_pixels: u64,
}

/// Detector sessions, each used by one request at a time, on blocking threads.
pub struct DetectorPool {
    idle: Receiver<FaceDetector>,
    back: Sender<FaceDetector>,
    /// The model file's name without extension, e.g. `centerface`.
    pub name: String,
    pub kind: DetectorKind,
    pub input_size: (u32, u32),
    /// What a request gets unless it asks otherwise.
    pub defaults: AnalyzeOptions,
    limits: DecodeLimits,
    /// Kilopixels that may be decoded at once: a photo waits for its share before it is decoded,
    /// so N concurrent huge photos queue instead of multiplying memory.
    budget: Arc<tokio::sync::Semaphore>,
    budget_kilopixels: u32,
}

impl DetectorPool {
    pub fn load(
        environment: &ort::environment::Environment,
        path: &Path,
        settings: DetectorSettings,
        limits: DecodeLimits,
    ) -> Result<Self, crate::backend::BackendError> {
        let budget_kilopixels = u32::try_from(settings.max_decoded_pixels.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS as u32);
        let (back, idle) = crossbeam_channel::unbounded();
        let first = FaceDetector::load(environment, path, settings.intra_op_threads)?;
        let (kind, input_size) = (first.kind(), first.input_size());
        let _ = back.send(first);
        for _ in 1..settings.sessions.max(1) {
            let _ = back.send(FaceDetector::load(
                environment,
                path,
                settings.intra_op_threads,
            )?);
        }
        Ok(Self {
            idle,
            back,
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            kind,
            input_size,
            defaults: AnalyzeOptions {
                detect: DetectOptions {
                    score_threshold: settings
                        .score_threshold
                        .unwrap_or(kind.default_score_threshold()),
                    nms_iou: settings.nms_iou,
                    min_face: settings.min_face,
                },
                margin: settings.margin,
                align: settings.align,
            },
            limits,
            budget: Arc::new(tokio::sync::Semaphore::new(budget_kilopixels as usize)),
            budget_kilopixels,
        })
    }

    /// Waits until `width × height` pixels may be decoded; the share returns when the permit drops.
    async fn reserve(
        &self,
        width: u32,
        height: u32,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        let kilopixels = (u64::from(width) * u64::from(height)).div_ceil(1024).max(1);
        let share = kilopixels.min(u64::from(self.budget_kilopixels)) as u32;
        Arc::clone(&self.budget)
            .acquire_many_owned(share)
            .await
            .map_err(|_| Error::Internal)
    }

    /// Decodes one photo and finds its faces (blocking).
    fn detect(
        &self,
        bytes: &[u8],
        index: usize,
        options: DetectOptions,
    ) -> Result<(Pixels, Vec<Detection>), Error> {
        let image = fer_contract::preprocess::decode_rgb(bytes, &self.limits)
            .map_err(|source| Error::InvalidImage { index, source })?;
        let mut detector = self
            .idle
            .recv()
            .map_err(|_| InferenceError::Stopped("face detector pool"))?;
        let found = detector.detect(&image, options);
        let _ = self.back.send(detector);
        let faces = found.map_err(|e| InferenceError::Backend(Arc::new(e.into())))?;
        Ok((image, faces))
    }
}

/// How one request wants faces found and cropped.
#[derive(Debug, Clone, Copy)]
pub struct AnalyzeOptions {
    pub detect: DetectOptions,
    /// Context beyond the training data's framing, as a share of the crop's side on each side.
    pub margin: f32,
    /// Align faces by their landmarks (where the detector finds them).
    pub align: bool,
}

/// A face in a photo and what it shows.
#[derive(Debug, Clone)]
pub struct Face {
    pub detection: Detection,
    pub prediction: Prediction,
}

/// One analysed photo.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub width: u32,
    pub height: u32,
    pub faces: Vec<Face>,
}

/// Photos at least this large hand their memory back to the system once analysed (a 12-megapixel
/// phone photo is 36 MB decoded).
const LARGE_PHOTO_PIXELS: u64 = 4_000_000;

/// Finds and classifies every face of every image; answers in input order.
pub async fn analyze(
    detectors: &Arc<DetectorPool>,
    model: &Arc<LoadedModel>,
    images: Vec<Bytes>,
    options: AnalyzeOptions,
    top_k: Option<usize>,
    metrics: &Metrics,
) -> Result<Vec<Analysis>, Error> {
    let detect_time = metrics
        .stage_duration
        .with_label_values(&[model.manifest.name.as_str(), "detect"]);
    let mut found = Vec::with_capacity(images.len());
    for (index, bytes) in images.into_iter().enumerate() {
        // The header says what the decode will cost; the photo waits for that share of the budget.
        let (width, height) = fer_contract::preprocess::dimensions(&bytes, &detectors.limits)
            .map_err(|source| Error::InvalidImage { index, source })?;
        let permit = detectors.reserve(width, height).await?;
        let pool = Arc::clone(detectors);
        let prepare = Arc::clone(model);
        let detect_time = detect_time.clone();
        // Decoding, detection and cropping are CPU work: off the async threads.
        let one = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let (image, faces) = pool.detect(&bytes, index, options.detect)?;
            detect_time.observe(started.elapsed().as_secs_f64());
            let crops = faces
                .iter()
                .map(|d| {
                    let crop = face_crop(pool.kind, &image, d, options.margin, options.align);
                    prepare
                        .preprocessor
                        .prepare(&crop)
                        .map_err(|source| Error::InvalidImage { index, source })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let (width, height) = (image.width, image.height);
            drop(image);
            drop(permit);
            if u64::from(width) * u64::from(height) >= LARGE_PHOTO_PIXELS {
                crate::core::memory::give_back();
            }
            Ok::<_, Error>((width, height, faces, crops))
        })
        .await
        .map_err(|_| Error::Internal)??;
        found.push(one);
    }
    let crops: Vec<Pixels> = found
        .iter()
        .flat_map(|(_, _, _, c)| c.iter().cloned())
        .collect();
    let mut predictions = classify::classify(model, crops, top_k, metrics)
        .await?
        .into_iter();
    Ok(found
        .into_iter()
        .map(|(width, height, detections, _)| Analysis {
            width,
            height,
            faces: detections
                .into_iter()
                .zip(predictions.by_ref())
                .map(|(detection, prediction)| Face {
                    detection,
                    prediction,
                })
                .collect(),
        })
        .collect())
}
