//! The end-to-end tests: each module starts the real `fer-server` binary on real ports (or runs
//! its real commands) and talks to it as a client would. One test binary rather than one per file:
//! each binary links the whole server, and linking them one by one was most of the test build.
//! `cargo test --release --test e2e <module or test name>` runs a part.

mod common;

mod analyze;
mod deploy;
mod execution_provider;
mod fuzz_regressions;
mod grpc_api;
mod hardening;
mod hot_reload;
mod http_api;
mod model_repository;
mod photo_memory;
mod slow_clients;
mod video;
