//! fer-server: a facial-expression recognition inference server.
//!
//! Layers, top to bottom: `http` and `grpc` (transports, which only translate wire formats) →
//! `core` (the inference service, the one way in: classify, analyze, infer_tensors; batcher, model
//! registry) → `backend` (ONNX Runtime) → `fer_contract` (manifest and preprocessing, shared with
//! the trainer). See `../shared/ARCHITECTURE.md` and the README.

pub mod auth;
pub mod backend;
pub mod cli;
pub mod config;
pub mod core;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod server;
pub mod state;
