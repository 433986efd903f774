//! fer-server: a facial-expression recognition inference server.
//!
//! Layers, top to bottom: `http` (transport) → `core` (classify use case, batcher, model
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
