//! Use cases and their machinery: the inference service (the one way in), classification,
//! analysis of photos, tensors, batching, admission, the model registry.

pub mod admission;
pub mod analyze;
pub mod batcher;
pub mod classify;
pub mod inference;
pub mod memory;
pub mod registry;
pub mod tensors;
pub mod watcher;
