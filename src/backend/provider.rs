//! Execution providers: where a session runs (CPU, CUDA, TensorRT), and the rule for when the
//! one asked for is not there: fail with a clear message, or run on the CPU only when the user
//! allowed it (`--allow-cpu-fallback`).
//!
//! GPU providers need a build with the cargo feature `cuda` or `tensorrt` and an ONNX Runtime
//! library built with them (the `onnxruntime-gpu` wheel's, see the README); the default build and
//! the CPU wheel have neither, and this module says which of the two is missing.

use std::path::PathBuf;

use ort::session::builder::SessionBuilder;

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    Cpu,
    Cuda,
    Tensorrt,
}

impl ExecutionProvider {
    pub const ALL: [ExecutionProvider; 3] = [Self::Cpu, Self::Cuda, Self::Tensorrt];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Tensorrt => "tensorrt",
        }
    }
}

impl std::fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The provider asked for and its options.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub requested: ExecutionProvider,
    /// GPU ordinal.
    pub device_id: i32,
    /// TensorRT: build FP16 engines.
    pub trt_fp16: bool,
    /// TensorRT: keep built engines in this folder (rebuilding one takes minutes).
    pub trt_engine_cache: Option<PathBuf>,
    /// Run on the CPU (with a warning) when the requested GPU provider cannot be used.
    pub allow_cpu_fallback: bool,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            requested: ExecutionProvider::Cpu,
            device_id: 0,
            trt_fp16: false,
            trt_engine_cache: None,
            allow_cpu_fallback: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "execution provider {requested} requested but unavailable: {reason} (pass --allow-cpu-fallback to run on the CPU instead)"
)]
pub struct ProviderError {
    pub requested: ExecutionProvider,
    pub reason: Unavailable,
}

/// Why a GPU provider cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error(
        "this fer-server was built without the `{0}` cargo feature (cargo build --release --features {0})"
    )]
    NotBuilt(ExecutionProvider),
    #[error(
        "the loaded ONNX Runtime library has no {0} provider (use the onnxruntime-gpu wheel's library: scripts/setup-ort.sh --gpu)"
    )]
    NotInRuntime(ExecutionProvider),
    /// ONNX Runtime could not tell, or refused to register it (no device, missing CUDA libraries).
    #[error("{0}")]
    Runtime(String),
}

impl ProviderConfig {
    /// What sessions will run on, checked once at startup: the requested provider when this
    /// build and the loaded ONNX Runtime have it, else the CPU if fallback is allowed, else an
    /// error that says what is missing.
    pub fn check(&self) -> Result<ExecutionProvider, ProviderError> {
        match self.requested {
            ExecutionProvider::Cpu => Ok(ExecutionProvider::Cpu),
            gpu => match availability(gpu) {
                Ok(()) => Ok(gpu),
                Err(reason) => self.fall_back(reason),
            },
        }
    }

    /// Registers the provider on a session builder; the provider the session will really use.
    /// A GPU provider that fails to register (no device, missing CUDA libraries) follows the
    /// same rule as [`ProviderConfig::check`].
    pub fn register(
        &self,
        builder: SessionBuilder,
    ) -> Result<(SessionBuilder, ExecutionProvider), ProviderError> {
        match self.requested {
            ExecutionProvider::Cpu => Ok((builder, ExecutionProvider::Cpu)),
            gpu => {
                if let Err(reason) = availability(gpu) {
                    return self.fall_back(reason).map(|p| (builder, p));
                }
                match self.append(builder) {
                    (builder, Ok(())) => Ok((builder, gpu)),
                    (builder, Err(reason)) => self.fall_back(reason).map(|p| (builder, p)),
                }
            }
        }
    }

    fn fall_back(&self, reason: Unavailable) -> Result<ExecutionProvider, ProviderError> {
        if self.allow_cpu_fallback {
            tracing::warn!(requested = %self.requested, %reason, "running on the CPU (--allow-cpu-fallback)");
            Ok(ExecutionProvider::Cpu)
        } else {
            Err(ProviderError {
                requested: self.requested,
                reason,
            })
        }
    }

    /// Appends the GPU providers; the builder comes back either way (without them on failure).
    #[cfg(any(feature = "cuda", feature = "tensorrt"))]
    fn append(&self, builder: SessionBuilder) -> (SessionBuilder, Result<(), Unavailable>) {
        use ort::ep;
        let mut providers = Vec::new();
        #[cfg(feature = "tensorrt")]
        if self.requested == ExecutionProvider::Tensorrt {
            let mut trt = ep::TensorRT::default()
                .with_device_id(self.device_id)
                .with_fp16(self.trt_fp16);
            if let Some(dir) = &self.trt_engine_cache {
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(dir.display().to_string());
            }
            providers.push(trt.build().error_on_failure());
        }
        // TensorRT hands the nodes it cannot run to CUDA.
        #[cfg(feature = "cuda")]
        providers.push(
            ep::CUDA::default()
                .with_device_id(self.device_id)
                .build()
                .error_on_failure(),
        );
        match builder.with_execution_providers(providers) {
            Ok(builder) => (builder, Ok(())),
            Err(e) => {
                let reason = Unavailable::Runtime(e.to_string());
                (e.recover(), Err(reason))
            }
        }
    }

    #[cfg(not(any(feature = "cuda", feature = "tensorrt")))]
    fn append(&self, builder: SessionBuilder) -> (SessionBuilder, Result<(), Unavailable>) {
        (builder, Err(Unavailable::NotBuilt(self.requested)))
    }
}

/// Whether this build and the loaded ONNX Runtime library have a GPU provider.
fn availability(provider: ExecutionProvider) -> Result<(), Unavailable> {
    let compiled = match provider {
        ExecutionProvider::Cpu => return Ok(()),
        ExecutionProvider::Cuda => cfg!(feature = "cuda"),
        ExecutionProvider::Tensorrt => cfg!(feature = "tensorrt"),
    };
    if !compiled {
        return Err(Unavailable::NotBuilt(provider));
    }
    runtime_has(provider)
}

#[cfg(any(feature = "cuda", feature = "tensorrt"))]
fn runtime_has(provider: ExecutionProvider) -> Result<(), Unavailable> {
    use ort::ep::ExecutionProvider as _;
    let available = match provider {
        #[cfg(feature = "cuda")]
        ExecutionProvider::Cuda => ort::ep::CUDA::is_available(),
        #[cfg(feature = "tensorrt")]
        ExecutionProvider::Tensorrt => ort::ep::TensorRT::is_available(),
        _ => Ok(false),
    }
    .map_err(|e| Unavailable::Runtime(e.to_string()))?;
    if available {
        Ok(())
    } else {
        Err(Unavailable::NotInRuntime(provider))
    }
}

#[cfg(not(any(feature = "cuda", feature = "tensorrt")))]
fn runtime_has(provider: ExecutionProvider) -> Result<(), Unavailable> {
    Err(Unavailable::NotBuilt(provider))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(requested: ExecutionProvider, allow_cpu_fallback: bool) -> ProviderConfig {
        ProviderConfig {
            requested,
            allow_cpu_fallback,
            ..ProviderConfig::default()
        }
    }

    #[test]
    fn cpu_is_always_there() {
        assert_eq!(
            config(ExecutionProvider::Cpu, false).check().unwrap(),
            ExecutionProvider::Cpu
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_missing_gpu_provider_fails_clearly_unless_fallback_is_allowed() {
        for gpu in [ExecutionProvider::Cuda, ExecutionProvider::Tensorrt] {
            let error = config(gpu, false).check().unwrap_err().to_string();
            assert!(
                error.contains(&format!("execution provider {gpu}")),
                "{error}"
            );
            assert!(error.contains("--allow-cpu-fallback"), "{error}");
            assert!(error.contains("feature"), "{error}");
            assert_eq!(config(gpu, true).check().unwrap(), ExecutionProvider::Cpu);
        }
    }
}
