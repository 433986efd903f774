//! Offline commands of the binary.

pub mod classify;
