//! Offline commands of the binary.

pub mod classify;
pub mod healthcheck;
pub mod video;
