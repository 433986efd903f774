//! Use cases and their machinery: batching, the model registry, classification.

pub mod admission;
pub mod analyze;
pub mod batcher;
pub mod classify;
pub mod memory;
pub mod registry;
pub mod watcher;
