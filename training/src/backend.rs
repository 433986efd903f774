//! Which burn backend runs the training: the pure-Rust `flex` CPU backend (default, always built),
//! or libtorch through burn-tch (`--features tch`, needs a libtorch such as the PyPI `torch` wheel).
//! Both go through burn's dispatch `Device`, so the rest of the trainer does not change.

use burn::prelude::*;

/// A training backend, chosen with `--backend` / `FER_TRAIN_BACKEND`.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TrainBackend {
    /// burn's pure-Rust CPU backend.
    #[default]
    Flex,
    /// libtorch on the CPU (burn-tch; build with `--features tch`).
    Tch,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "this fer-train was built without the `tch` feature; rebuild with `--features tch` (see training/README.md)"
)]
pub struct BackendUnavailable;

impl TrainBackend {
    /// How a model card names the backend.
    pub fn describe(self) -> &'static str {
        match self {
            TrainBackend::Flex => "burn, flex CPU backend",
            TrainBackend::Tch => "burn, tch backend on libtorch (CPU)",
        }
    }

    /// The inference device of this backend (evaluation, export).
    pub fn device(self) -> Result<Device, BackendUnavailable> {
        match self {
            TrainBackend::Flex => Ok(Device::flex()),
            TrainBackend::Tch => tch_device(),
        }
    }
}

#[cfg(feature = "tch")]
#[allow(deprecated)] // burn marks burn-tch deprecated; it is still the fastest CPU backend here
fn tch_device() -> Result<Device, BackendUnavailable> {
    Ok(Device::libtorch())
}

#[cfg(not(feature = "tch"))]
fn tch_device() -> Result<Device, BackendUnavailable> {
    Err(BackendUnavailable)
}
