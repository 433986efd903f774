//! ONNX Runtime: one session per inference worker. Nothing above this module knows `ort`.

use std::path::Path;

use fer_contract::Manifest;
use fer_contract::onnx::GraphShape;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

pub mod detector;
pub mod provider;

pub use provider::{ExecutionProvider, ProviderConfig};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{path}: cannot load the ONNX graph: {message}")]
    Load { path: String, message: String },
    #[error("{path}: graph does not match its manifest: {source}")]
    Graph {
        path: String,
        #[source]
        source: fer_contract::onnx::GraphError,
    },
    #[error("{path}: detector graph does not match what its family needs: {message}")]
    Mismatch { path: String, message: String },
    #[error("running the graph: {0}")]
    Run(String),
    #[error(transparent)]
    Provider(#[from] provider::ProviderError),
}

/// Session options derived from the server's configuration.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    pub intra_op_threads: usize,
    /// Let ONNX Runtime's intra-op threads spin while waiting for work (lower latency at the
    /// price of CPU that the decoder and HTTP threads could use).
    pub intra_op_spinning: bool,
    pub provider: ProviderConfig,
}

/// One ONNX Runtime session of a model version; owned by one inference worker.
pub struct OnnxSession {
    session: Session,
    input_shape: [usize; 3],
    classes: usize,
    provider: ExecutionProvider,
}

impl OnnxSession {
    /// Loads `model.onnx` and checks it against the manifest.
    pub fn load(
        environment: &ort::environment::Environment,
        path: &Path,
        manifest: &Manifest,
        options: &SessionOptions,
    ) -> Result<(Self, GraphShape), BackendError> {
        let load_error = |e: ort::Error| BackendError::Load {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let builder = Session::builder(environment)
            .map_err(load_error)?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| load_error(e.into()))?
            .with_intra_threads(options.intra_op_threads.max(1))
            .map_err(|e| load_error(e.into()))?
            .with_intra_op_spinning(options.intra_op_spinning)
            .map_err(|e| load_error(e.into()))?;
        let (mut builder, provider) = options.provider.register(builder)?;
        let session = builder.commit_from_file(path).map_err(load_error)?;
        let shape = fer_contract::onnx::check_graph(&session, manifest).map_err(|source| {
            BackendError::Graph {
                path: path.display().to_string(),
                source,
            }
        })?;
        Ok((
            Self {
                session,
                input_shape: [
                    manifest.input.channels.count(),
                    manifest.input.height as usize,
                    manifest.input.width as usize,
                ],
                classes: manifest.labels.len(),
                provider,
            },
            shape,
        ))
    }

    /// Where this session runs.
    pub fn provider(&self) -> ExecutionProvider {
        self.provider
    }

    /// Runs a batch of `rows` images laid out NCHW in `input`; writes `rows × classes` outputs.
    pub fn run(
        &mut self,
        input: &[f32],
        rows: usize,
        output: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        let [c, h, w] = self.input_shape;
        debug_assert_eq!(input.len(), rows * c * h * w);
        let tensor = TensorRef::from_array_view(([rows, c, h, w], input))
            .map_err(|e| BackendError::Run(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![tensor])
            .map_err(|e| BackendError::Run(e.to_string()))?;
        let (_, values) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| BackendError::Run(e.to_string()))?;
        if values.len() != rows * self.classes {
            return Err(BackendError::Run(format!(
                "graph returned {} values for {rows} images of {} classes",
                values.len(),
                self.classes
            )));
        }
        output.clear();
        output.extend_from_slice(values);
        Ok(())
    }
}
