//! ONNX Runtime: finding and loading `libonnxruntime`, and checking a graph against its manifest.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;
use ort::value::{TensorElementType, ValueType};

use crate::manifest::Manifest;

/// The ONNX Runtime release this project is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";
const LIB_NAME: &str = "libonnxruntime.so";
/// `.ort/lib/` of the repository this binary was built from (filled by `scripts/setup-ort.sh`).
const REPO_LIB_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.ort/lib");

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime {ORT_VERSION} ({LIB_NAME}) was not found; looked in: {searched}.\n\
         Get it with `make setup` (runs scripts/setup-ort.sh: extracts it from the PyPI wheel \
         onnxruntime=={ORT_VERSION} into .ort/lib/), or point ORT_DYLIB_PATH (--ort-dylib) at an \
         existing libonnxruntime.so.{ORT_VERSION}"
    )]
    NotFound { searched: String },
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Load { path: String, message: String },
}

/// Where the runtime library is, in order: the explicit path (`--ort-dylib` / `ORT_DYLIB_PATH`),
/// the repository's `.ort/lib/`, then beside the executable (and its `lib/` folder).
pub fn locate_runtime(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(path) = explicit {
        if path.is_dir() {
            candidates.push(path.join(LIB_NAME));
        } else {
            candidates.push(path.to_path_buf());
        }
    } else {
        candidates.push(Path::new(REPO_LIB_DIR).join(LIB_NAME));
        candidates.extend(beside_executable("lib", LIB_NAME));
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| RuntimeError::NotFound {
            searched: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// `file` beside the running executable, then in its `folder` there (empty when the executable's
/// place is unknown): where an installed binary finds what setup fetched.
pub fn beside_executable(folder: &str, file: &str) -> Vec<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .map(|dir| vec![dir.join(file), dir.join(folder).join(file)])
        .unwrap_or_default()
}

static ENVIRONMENT: OnceLock<Result<(PathBuf, Environment), RuntimeError>> = OnceLock::new();

/// Loads ONNX Runtime once per process and returns its environment and the library's path.
///
/// The first call decides the library; later calls return the same one.
pub fn runtime(
    explicit: Option<&Path>,
) -> Result<(&'static Path, &'static Environment), RuntimeError> {
    let path = locate_runtime(explicit)?;
    let loaded = ENVIRONMENT.get_or_init(|| {
        let failed = |e: &dyn std::fmt::Display| RuntimeError::Load {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let environment = ort::init_from(&path)
            .map_err(|e| failed(&e))?
            .with_name("fer")
            .build()
            .map_err(|e| failed(&e))?;
        Ok((path.clone(), environment))
    });
    match loaded {
        Ok((path, env)) => Ok((path.as_path(), env)),
        Err(error) => Err(error.clone()),
    }
}

/// What the graph allows beyond the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphShape {
    /// `Some(n)` when the graph's batch dimension is fixed to `n`; `None` when it is dynamic.
    pub fixed_batch: Option<usize>,
}

/// How a graph differs from its manifest.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GraphError {
    #[error("the graph has {} inputs ({}); a classifier takes exactly one", .0.len(), .0.join(", "))]
    InputCount(Vec<String>),
    #[error("manifest input.name is {manifest:?} but the graph's input is {graph:?}")]
    InputName { manifest: String, graph: String },
    #[error("graph input {name:?} has shape {dims:?}; the manifest declares [batch, {}, {}, {}]", .want[0], .want[1], .want[2])]
    InputShape {
        name: String,
        dims: Vec<i64>,
        want: [i64; 3],
    },
    #[error("manifest output.name is {manifest:?} but the graph's outputs are {graph:?}")]
    OutputName {
        manifest: String,
        graph: Vec<String>,
    },
    #[error(
        "graph output {name:?} has shape {dims:?}; the manifest's {labels} labels need [batch, {labels}]"
    )]
    OutputShape {
        name: String,
        dims: Vec<i64>,
        labels: i64,
    },
    #[error("graph {what} is {found}; expected a float32 tensor")]
    NotFloat { what: &'static str, found: String },
}

/// Checks a loaded graph against its manifest: one `f32` input of the declared name shaped
/// `[batch, C, H, W]`, and an `f32` output of the declared name shaped `[batch, labels]`.
pub fn check_graph(session: &Session, manifest: &Manifest) -> Result<GraphShape, GraphError> {
    let inputs = session.inputs();
    if inputs.len() != 1 {
        return Err(GraphError::InputCount(
            inputs.iter().map(|i| i.name().to_string()).collect(),
        ));
    }
    let input = &inputs[0];
    if input.name() != manifest.input.name {
        return Err(GraphError::InputName {
            manifest: manifest.input.name.clone(),
            graph: input.name().to_string(),
        });
    }
    let dims = float_tensor_dims(input.dtype(), "input")?;
    let want = [
        manifest.input.channels.count() as i64,
        i64::from(manifest.input.height),
        i64::from(manifest.input.width),
    ];
    if dims.len() != 4
        || dims[1..]
            .iter()
            .zip(want)
            .any(|(got, want)| *got >= 0 && *got != want)
    {
        return Err(GraphError::InputShape {
            name: input.name().to_string(),
            dims,
            want,
        });
    }
    let fixed_batch = (dims[0] > 0).then_some(dims[0] as usize);

    let output = session
        .outputs()
        .iter()
        .find(|o| o.name() == manifest.output.name)
        .ok_or_else(|| GraphError::OutputName {
            manifest: manifest.output.name.clone(),
            graph: session
                .outputs()
                .iter()
                .map(|o| o.name().to_string())
                .collect(),
        })?;
    let dims = float_tensor_dims(output.dtype(), "output")?;
    let labels = manifest.labels.len() as i64;
    if dims.len() != 2 || (dims[1] >= 0 && dims[1] != labels) {
        return Err(GraphError::OutputShape {
            name: output.name().to_string(),
            dims,
            labels,
        });
    }
    Ok(GraphShape { fixed_batch })
}

fn float_tensor_dims(ty: &ValueType, what: &'static str) -> Result<Vec<i64>, GraphError> {
    match ty {
        ValueType::Tensor {
            ty: TensorElementType::Float32,
            shape,
            ..
        } => Ok(shape.to_vec()),
        other => Err(GraphError::NotFloat {
            what,
            found: format!("{other:?}"),
        }),
    }
}
