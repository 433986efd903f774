//! fer-train: semi-supervised facial-expression training on burn, exporting ONNX for fer-server.

pub mod augment;
pub mod backend;
pub mod batch;
pub mod config;
pub mod data;
pub mod ema;
pub mod ensemble;
pub mod eval;
pub mod export;
pub mod framing;
pub mod frontier;
pub mod glyphs;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod prepare;
pub mod quantize;
pub mod report;
pub mod run;
pub mod ssl;
pub mod thresholds;
pub mod train;
