//! The one way into inference, for every transport: [`Inference`] owns the model registry, the
//! default model, the admission rules, the request limits, the face detectors and their defaults,
//! and the metrics, and offers one entry point per use case on protocol-neutral types:
//! [`Inference::classify`] (face crops), [`Inference::analyze`] (photos: detect, then classify)
//! and [`Inference::infer_tensors`] (the Open Inference Protocol). Each does
//! resolve → check → admit → decode → batch → record, once; HTTP and gRPC only translate wire
//! formats, so the same request gets the same answer (and the same error) over both.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;

use crate::backend::detector::DetectOptions;
use crate::core::admission::Admission;
use crate::core::analyze::{self, Analysis, AnalyzeOptions, DetectorPool};
use crate::core::classify::{self, Prediction};
use crate::core::registry::{LoadedModel, ModelRegistry};
use crate::core::tensors::{self, OutputTensor, TensorRequest};
use crate::error::Error;
use crate::metrics::Metrics;

/// Which model a request names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelChoice {
    /// `None`: the server's default model.
    pub name: Option<String>,
    /// `None`: the newest ready version.
    pub version: Option<u64>,
}

impl ModelChoice {
    /// The default model's newest ready version.
    pub fn default_model() -> Self {
        Self::default()
    }

    pub fn named(name: impl Into<String>, version: Option<u64>) -> Self {
        Self {
            name: Some(name.into()),
            version,
        }
    }

    /// The Open Inference Protocol's spelling (REST paths and gRPC fields): a version is a
    /// number, or empty for the newest ready one.
    pub fn from_protocol(name: &str, version: &str) -> Result<Self, Error> {
        let version = if version.is_empty() {
            None
        } else {
            Some(version.parse().map_err(|_| {
                Error::BadRequest(format!("model version {version:?} is not a number"))
            })?)
        };
        Ok(Self::named(name, version))
    }
}

/// The model version that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelId {
    pub name: String,
    pub version: u64,
}

impl ModelId {
    fn of(model: &LoadedModel) -> Self {
        Self {
            name: model.manifest.name.clone(),
            version: model.manifest.version,
        }
    }
}

/// Predictions for face crops, in input order.
#[derive(Debug, Clone)]
pub struct Classified {
    pub model: ModelId,
    pub predictions: Vec<Prediction>,
}

/// How a request wants faces found, where it differs from the server's defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnalyzeOverrides {
    /// In [0, 1].
    pub score_threshold: Option<f32>,
    /// Pixels, in [0, 1e6].
    pub min_face_size: Option<f32>,
    /// In [-0.25, 2].
    pub margin: Option<f32>,
    pub align: Option<bool>,
}

/// The faces of each photo, in input order.
#[derive(Debug, Clone)]
pub struct Analyzed {
    pub model: ModelId,
    /// The face detector's model file name.
    pub detector: String,
    pub images: Vec<Analysis>,
}

/// Output tensors, as requested.
#[derive(Debug, Clone)]
pub struct Inferred {
    pub model: ModelId,
    pub outputs: Vec<OutputTensor>,
}

/// The inference service every transport shares.
pub struct Inference {
    registry: Arc<ModelRegistry>,
    metrics: Arc<Metrics>,
    default_model: String,
    max_images: usize,
    admission: Admission,
    shutting_down: AtomicBool,
    detectors: Option<Arc<DetectorPool>>,
}

impl Inference {
    pub fn new(
        registry: Arc<ModelRegistry>,
        metrics: Arc<Metrics>,
        default_model: String,
        max_images: usize,
        admission: Admission,
        detectors: Option<Arc<DetectorPool>>,
    ) -> Self {
        Self {
            registry,
            metrics,
            default_model,
            max_images,
            admission,
            shutting_down: AtomicBool::new(false),
            detectors,
        }
    }

    pub fn registry(&self) -> &Arc<ModelRegistry> {
        &self.registry
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    /// Most images (or tensor rows) one request may carry (`--max-images`).
    pub fn max_images(&self) -> usize {
        self.max_images
    }

    /// From now on readiness is false and inference is refused (503 / UNAVAILABLE).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Inference requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.admission.in_flight()
    }

    /// Resolves once no admitted request is left.
    pub async fn drained(&self) {
        self.admission.drained().await
    }

    /// Ready to serve: not shutting down, and the default model has a ready version. One answer
    /// for `/readyz`, `/v2/health/ready`, gRPC `ServerReady` and `grpc.health.v1`.
    pub fn readiness(&self) -> Result<(), Error> {
        if self.shutting_down() {
            return Err(Error::ShuttingDown);
        }
        self.resolve(&ModelChoice::default_model()).map(|_| ())
    }

    /// The ready model version a request names.
    pub fn resolve(&self, choice: &ModelChoice) -> Result<Arc<LoadedModel>, Error> {
        let name = choice.name.as_deref().unwrap_or(&self.default_model);
        self.registry.resolve(name, choice.version)
    }

    /// Classifies face crops (encoded images).
    pub async fn classify(
        &self,
        choice: &ModelChoice,
        images: Vec<Bytes>,
        top_k: Option<u32>,
    ) -> Result<Classified, Error> {
        let started = Instant::now();
        let model = self.resolve(choice)?;
        let top_k = classify::check_top_k(top_k)?;
        self.check_image_count(images.len())?;
        self.admit(&model, started, async {
            let pixels = classify::decode_all(&model, images, &self.metrics).await?;
            let predictions = classify::classify(&model, pixels, top_k, &self.metrics).await?;
            Ok(Classified {
                model: ModelId::of(&model),
                predictions,
            })
        })
        .await
    }

    /// Finds the faces in photos and classifies each.
    pub async fn analyze(
        &self,
        choice: &ModelChoice,
        images: Vec<Bytes>,
        top_k: Option<u32>,
        overrides: AnalyzeOverrides,
    ) -> Result<Analyzed, Error> {
        let started = Instant::now();
        let detectors = self
            .detectors
            .as_ref()
            .ok_or(Error::DetectorNotConfigured)?;
        let model = self.resolve(choice)?;
        let top_k = classify::check_top_k(top_k)?;
        let options = analyze_options(detectors.defaults, overrides)?;
        self.check_image_count(images.len())?;
        self.admit(&model, started, async {
            let images =
                analyze::analyze(detectors, &model, images, options, top_k, &self.metrics).await?;
            Ok(Analyzed {
                model: ModelId::of(&model),
                detector: detectors.name.clone(),
                images,
            })
        })
        .await
    }

    /// Runs the Open Inference Protocol's tensors (or encoded images) through a model.
    pub async fn infer_tensors(
        &self,
        choice: &ModelChoice,
        request: TensorRequest,
    ) -> Result<Inferred, Error> {
        let started = Instant::now();
        let model = self.resolve(choice)?;
        let (rows, outputs) = tensors::check(&model, request, self.max_images)?;
        self.admit(&model, started, async {
            let outputs = tensors::run(&model, rows, outputs, &self.metrics).await?;
            Ok(Inferred {
                model: ModelId::of(&model),
                outputs,
            })
        })
        .await
    }

    /// A request must hold at least one image and at most `--max-images`.
    fn check_image_count(&self, count: usize) -> Result<(), Error> {
        if count == 0 {
            return Err(Error::BadRequest("the request holds no image".into()));
        }
        check_image_limit(count, self.max_images)
    }

    /// Runs a checked request's work under the admission rules (shutdown, concurrency, timeout),
    /// counted in `fer_requests_in_flight`, and records its `total` stage.
    async fn admit<T>(
        &self,
        model: &LoadedModel,
        started: Instant,
        work: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let answer = self
            .admission
            .run(&self.shutting_down, &self.metrics.requests_in_flight, work)
            .await?;
        self.metrics
            .stage_duration
            .with_label_values(&[model.manifest.name.as_str(), "total"])
            .observe(started.elapsed().as_secs_f64());
        Ok(answer)
    }
}

/// At most `max_images` images (or tensor rows) in one request (`--max-images`).
pub fn check_image_limit(count: usize, max_images: usize) -> Result<(), Error> {
    if count > max_images {
        return Err(Error::TooManyImages {
            count,
            limit: max_images,
        });
    }
    Ok(())
}

/// A request's detection and cropping options: its overrides, checked, over the defaults.
fn analyze_options(
    defaults: AnalyzeOptions,
    overrides: AnalyzeOverrides,
) -> Result<AnalyzeOptions, Error> {
    let options = AnalyzeOptions {
        detect: DetectOptions {
            score_threshold: overrides
                .score_threshold
                .unwrap_or(defaults.detect.score_threshold),
            nms_iou: defaults.detect.nms_iou,
            min_face: overrides.min_face_size.unwrap_or(defaults.detect.min_face),
        },
        margin: overrides.margin.unwrap_or(defaults.margin),
        align: overrides.align.unwrap_or(defaults.align),
    };
    let valid = |v: f32, range: std::ops::RangeInclusive<f32>| v.is_finite() && range.contains(&v);
    if !valid(options.detect.score_threshold, 0.0..=1.0)
        || !valid(options.detect.min_face, 0.0..=1e6)
        || !valid(options.margin, fer_contract::detect::MIN_FACE_MARGIN..=2.0)
    {
        return Err(Error::BadRequest(
            "score_threshold must be in [0, 1], min_face_size in [0, 1e6], margin in [-0.25, 2]"
                .into(),
        ));
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_versions_are_numbers_or_empty() {
        assert_eq!(
            ModelChoice::from_protocol("m", "").unwrap(),
            ModelChoice::named("m", None)
        );
        assert_eq!(
            ModelChoice::from_protocol("m", "3").unwrap(),
            ModelChoice::named("m", Some(3))
        );
        assert!(matches!(
            ModelChoice::from_protocol("m", "x"),
            Err(Error::BadRequest(_))
        ));
    }

    #[test]
    fn analyze_overrides_are_checked_over_the_defaults() {
        let defaults = AnalyzeOptions {
            detect: DetectOptions {
                score_threshold: 0.5,
                nms_iou: 0.3,
                min_face: 20.0,
            },
            margin: 0.0,
            align: true,
        };
        let options = analyze_options(
            defaults,
            AnalyzeOverrides {
                margin: Some(0.2),
                align: Some(false),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(options.detect.score_threshold, 0.5);
        assert_eq!(options.margin, 0.2);
        assert!(!options.align);
        for bad in [
            AnalyzeOverrides {
                score_threshold: Some(1.5),
                ..Default::default()
            },
            AnalyzeOverrides {
                min_face_size: Some(f32::NAN),
                ..Default::default()
            },
            AnalyzeOverrides {
                margin: Some(-0.5),
                ..Default::default()
            },
        ] {
            assert!(matches!(
                analyze_options(defaults, bad),
                Err(Error::BadRequest(_))
            ));
        }
    }
}
