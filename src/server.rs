//! `fer-server serve`: load the repository, warm up, listen, shut down gracefully.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;

use crate::config::ServeArgs;
use crate::core::registry::{ModelRegistry, RegistryOptions};
use crate::http::{self, AppState, Limits};
use crate::metrics::Metrics;

/// Everything `serve` needs to run, built before the listener opens.
pub struct Server {
    pub state: AppState,
}

impl Server {
    /// Loads ONNX Runtime and every model (warming each up). Fails if the default model is not ready.
    pub fn build(args: &ServeArgs) -> anyhow::Result<Self> {
        if args.decode_threads > 0 {
            // Only the first configuration of the global pool counts; later ones are no-ops.
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(args.decode_threads)
                .thread_name(|i| format!("decode-{i}"))
                .build_global();
        }
        let (lib, environment) = fer_contract::onnx::runtime(args.model.ort_dylib.as_deref())?;
        tracing::info!(path = %lib.display(), "ONNX Runtime loaded");
        let metrics = Arc::new(Metrics::new());
        let options = RegistryOptions {
            models_dir: args.model.models_dir.clone(),
            max_batch_size: args.max_batch_size.max(1),
            max_queue_delay: Duration::from_millis(args.max_queue_delay_ms),
            queue_capacity: args.queue_capacity.max(1),
            workers: args.workers.max(1),
            intra_op_threads: args.model.intra_threads(args.workers),
            decode_limits: args.model.decode_limits(),
        };
        let registry = ModelRegistry::load(&options, environment, &metrics)?;
        registry
            .resolve(&args.model.default_model, None)
            .with_context(|| {
                format!(
                    "the default model {:?} cannot be served",
                    args.model.default_model
                )
            })?;
        Ok(Self {
            state: AppState {
                registry: Arc::new(registry),
                metrics,
                default_model: Arc::from(args.model.default_model.as_str()),
                limits: Limits {
                    body_limit: args.body_limit,
                    max_images: args.max_images.max(1),
                },
                shutting_down: Arc::new(AtomicBool::new(false)),
            },
        })
    }

    /// Serves until SIGINT/SIGTERM, then lets in-flight requests finish.
    pub async fn run(self, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
        let shutting_down = Arc::clone(&self.state.shutting_down);
        let app = http::router(self.state);
        tracing::info!(address = %listener.local_addr()?, "listening");
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                shutting_down.store(true, Ordering::SeqCst);
                tracing::info!("shutting down: finishing in-flight requests");
            })
            .await?;
        Ok(())
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
