//! The model repository: `models/<name>/<version>/{model.onnx, manifest.json}`.
//!
//! Every version found is loaded, checked against its manifest, warmed up at every batch size the
//! batcher will use, and only then marked ready. A version that fails is kept with its error (for
//! `GET /v1/models` and the logs); requests go to the newest ready version unless one is named.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fer_contract::{DecodeLimits, MANIFEST_FILE, MODEL_FILE, Manifest, Preprocessor};

use crate::backend::{OnnxSession, SessionOptions};
use crate::core::batcher::{BatchMetrics, BatchPolicy, Batcher, Engine};
use crate::error::Error;
use crate::metrics::Metrics;

/// How models are loaded and served (from the server's configuration).
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    pub models_dir: PathBuf,
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
    pub queue_capacity: usize,
    /// Inference workers (sessions, each on its own thread) per model version.
    pub workers: usize,
    pub intra_op_threads: usize,
    pub decode_limits: DecodeLimits,
}

/// A version ready to serve.
pub struct LoadedModel {
    pub manifest: Manifest,
    pub preprocessor: Preprocessor,
    pub batcher: Batcher,
    pub dir: PathBuf,
    pub max_batch_size: usize,
}

pub enum VersionState {
    Ready(Arc<LoadedModel>),
    Failed {
        manifest: Option<Box<Manifest>>,
        error: String,
    },
}

pub struct ModelRegistry {
    models: BTreeMap<String, BTreeMap<u64, VersionState>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read the model repository {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl ModelRegistry {
    /// Scans the repository and loads every version.
    pub fn load(
        options: &RegistryOptions,
        environment: &ort::environment::Environment,
        metrics: &Metrics,
    ) -> Result<Self, RegistryError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| RegistryError::Io { path, source }
        };
        let mut models: BTreeMap<String, BTreeMap<u64, VersionState>> = BTreeMap::new();
        let dir = &options.models_dir;
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let model_dir = entry.map_err(io(dir))?.path();
            let Some(name) = model_dir
                .file_name()
                .and_then(|n| n.to_str())
                .map(String::from)
            else {
                continue;
            };
            if !model_dir.is_dir() || name.starts_with('.') {
                continue;
            }
            for entry in std::fs::read_dir(&model_dir).map_err(io(&model_dir))? {
                let version_dir = entry.map_err(io(&model_dir))?.path();
                let Some(version) = version_dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                if !version_dir.is_dir() {
                    continue;
                }
                let state = match load_version(
                    &name,
                    version,
                    &version_dir,
                    options,
                    environment,
                    metrics,
                ) {
                    Ok(model) => {
                        tracing::info!(model = %name, version, dir = %version_dir.display(), "model ready");
                        metrics
                            .model_ready
                            .with_label_values(&[name.as_str(), &version.to_string()])
                            .set(1);
                        VersionState::Ready(Arc::new(model))
                    }
                    Err((manifest, error)) => {
                        tracing::error!(model = %name, version, %error, "model failed to load");
                        metrics
                            .model_ready
                            .with_label_values(&[name.as_str(), &version.to_string()])
                            .set(0);
                        VersionState::Failed { manifest, error }
                    }
                };
                models
                    .entry(name.clone())
                    .or_default()
                    .insert(version, state);
            }
        }
        Ok(Self { models })
    }

    /// The named version, or the newest ready one.
    pub fn resolve(&self, name: &str, version: Option<u64>) -> Result<Arc<LoadedModel>, Error> {
        let versions = self
            .models
            .get(name)
            .ok_or_else(|| Error::ModelNotFound(name.to_string()))?;
        let pick = |v: u64, state: &VersionState| match state {
            VersionState::Ready(m) => Ok(Arc::clone(m)),
            VersionState::Failed { error, .. } => Err(Error::ModelNotReady {
                model: name.to_string(),
                version: v,
                reason: error.clone(),
            }),
        };
        match version {
            Some(v) => versions
                .get(&v)
                .ok_or_else(|| Error::VersionNotFound {
                    model: name.to_string(),
                    version: v,
                })
                .and_then(|s| pick(v, s)),
            None => versions
                .iter()
                .rev()
                .find_map(|(_, s)| match s {
                    VersionState::Ready(m) => Some(Arc::clone(m)),
                    VersionState::Failed { .. } => None,
                })
                .ok_or_else(|| {
                    let (v, s) = versions
                        .iter()
                        .next_back()
                        .expect("a listed model has a version");
                    pick(*v, s)
                        .err()
                        .unwrap_or_else(|| Error::ModelNotFound(name.to_string()))
                }),
        }
    }

    /// Every model and version with its state.
    pub fn models(&self) -> impl Iterator<Item = (&str, u64, &VersionState)> {
        self.models
            .iter()
            .flat_map(|(name, versions)| versions.iter().map(move |(v, s)| (name.as_str(), *v, s)))
    }
}

type LoadFailure = (Option<Box<Manifest>>, String);

fn load_version(
    name: &str,
    version: u64,
    dir: &Path,
    options: &RegistryOptions,
    environment: &ort::environment::Environment,
    metrics: &Metrics,
) -> Result<LoadedModel, LoadFailure> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let manifest = Manifest::load(&manifest_path).map_err(|e| (None, e.to_string()))?;
    let fail = |message: String| (Some(Box::new(manifest.clone())), message);
    if manifest.name != name || manifest.version != version {
        return Err(fail(format!(
            "{}: declares {} version {} but lives in {}/{}",
            manifest_path.display(),
            manifest.name,
            manifest.version,
            name,
            version
        )));
    }
    let model_path = dir.join(MODEL_FILE);
    let session_options = SessionOptions {
        intra_op_threads: options.intra_op_threads,
    };
    let mut sessions = Vec::new();
    let mut fixed_batch = None;
    for _ in 0..options.workers.max(1) {
        let (session, shape) =
            OnnxSession::load(environment, &model_path, &manifest, session_options)
                .map_err(|e| fail(e.to_string()))?;
        fixed_batch = shape.fixed_batch;
        sessions.push(session);
    }
    let max_batch_size = fixed_batch.unwrap_or(options.max_batch_size).max(1);
    let preprocessor = Preprocessor::new(&manifest, options.decode_limits);
    warm_up(&mut sessions, &preprocessor, max_batch_size, fixed_batch)
        .map_err(|e| fail(format!("{}: warm-up: {e}", model_path.display())))?;
    metrics.register_model(name, &manifest.labels);
    let batch_metrics = BatchMetrics {
        queue_wait: metrics.stage_duration.with_label_values(&[name, "queue"]),
        inference: metrics
            .stage_duration
            .with_label_values(&[name, "inference"]),
        batch_size: metrics.batch_size.with_label_values(&[name]),
        queue_depth: metrics.queue_depth.with_label_values(&[name]),
        cancelled: metrics.failures.with_label_values(&["cancelled"]),
    };
    let policy = BatchPolicy {
        max_batch_size,
        max_queue_delay: options.max_queue_delay,
        queue_capacity: options.queue_capacity,
        fixed_batch,
    };
    let batcher = Batcher::start(
        name,
        sessions,
        preprocessor.clone(),
        manifest.labels.len(),
        policy,
        batch_metrics,
    )
    .map_err(|e| fail(format!("starting inference workers: {e}")))?;
    Ok(LoadedModel {
        manifest,
        preprocessor,
        batcher,
        dir: dir.to_path_buf(),
        max_batch_size,
    })
}

/// Runs a real inference at every batch size the batcher can form, on every session, so the first
/// requests do not pay for ONNX Runtime's lazy allocations.
fn warm_up<E: Engine>(
    sessions: &mut [E],
    preprocessor: &Preprocessor,
    max_batch: usize,
    fixed: Option<usize>,
) -> Result<(), String> {
    let row = preprocessor.input_len();
    let input = vec![0.0f32; max_batch * row];
    let mut output = Vec::new();
    for session in sessions {
        let sizes: Vec<usize> = match fixed {
            Some(n) => vec![n],
            None => (1..=max_batch).collect(),
        };
        for rows in sizes {
            session.run(&input[..rows * row], rows, &mut output)?;
        }
    }
    Ok(())
}
