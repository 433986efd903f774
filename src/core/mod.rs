//! Use cases and their machinery: batching, the model registry, classification.

pub mod batcher;
pub mod classify;
pub mod registry;
pub mod watcher;
