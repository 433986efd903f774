//! `fer-server serve`: load the repository, warm up, listen, watch the repository, shut down
//! gracefully.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::auth::ApiKeys;
use crate::config::{RepositoryWatch, ServeArgs};
use crate::core::admission::Admission;
use crate::core::analyze::DetectorPool;
use crate::core::inference::Inference;
use crate::core::registry::{ModelRegistry, RegistryOptions};
use crate::core::watcher::{RepositoryWatcher, WatchMode, WatchOptions};
use crate::grpc::fer::FerService;
use crate::grpc::inference::InferenceService;
use crate::grpc::proto::fer::v1::fer_server::FerServer;
use crate::grpc::proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::http::{self, AccessPolicy, AppState, Limits};
use crate::metrics::Metrics;

/// Everything `serve` needs to run, built before the listener opens.
pub struct Server {
    pub state: AppState,
    watch: WatchOptions,
    models_dir: std::path::PathBuf,
    drain_timeout: Duration,
    connection_timeouts: http::connection::ConnectionTimeouts,
}

impl Server {
    /// Loads ONNX Runtime and the repository (warming each version up). Fails if the default model
    /// is not ready.
    pub fn build(args: &ServeArgs) -> anyhow::Result<Self> {
        if args.decode_threads > 0 {
            // Only the first configuration of the global pool counts; later ones are no-ops.
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(args.decode_threads)
                .thread_name(|i| format!("decode-{i}"))
                .build_global();
        }
        let api_keys = ApiKeys::load(&args.access.api_keys, args.access.api_keys_file.as_deref())?;
        if let Some(keys) = &api_keys {
            tracing::info!(keys = keys.len(), "API keys required");
        }
        let (lib, environment) = fer_contract::onnx::runtime(args.model.ort_dylib.as_deref())?;
        tracing::info!(path = %lib.display(), "ONNX Runtime loaded");
        let session = args.model.session_options(args.workers);
        let provider = session.provider.check()?;
        tracing::info!(requested = %session.provider.requested, active = %provider, "execution provider");
        let metrics = Arc::new(Metrics::new());
        let lifecycle = &args.lifecycle;
        let debounce = Duration::from_millis(lifecycle.reload_debounce_ms);
        let options = RegistryOptions {
            models_dir: args.model.models_dir.clone(),
            max_batch_size: args.max_batch_size,
            max_queue_delay: Duration::from_millis(args.max_queue_delay_ms),
            queue_capacity: args.queue_capacity,
            workers: args.workers,
            session,
            decode_limits: args.model.decode_limits(),
            version_policy: lifecycle.version_policy.clone(),
            // At startup nothing is being replaced: load what is there, however fresh.
            settle: Duration::ZERO,
        };
        let registry = ModelRegistry::new(options.clone(), environment, Arc::clone(&metrics));
        registry.reconcile_all()?;
        registry
            .resolve(&args.model.default_model, None)
            .with_context(|| {
                format!(
                    "the default model {:?} cannot be served",
                    args.model.default_model
                )
            })?;
        let registry = registry.with_settle(debounce);
        let detector = &args.detector;
        anyhow::ensure!(
            detector.max_decoded_pixels >= args.model.max_image_pixels,
            "--max-decoded-pixels ({}) is below --max-image-pixels ({}): the largest photo accepted could never be decoded",
            detector.max_decoded_pixels,
            args.model.max_image_pixels
        );
        let path = detector.detector.path().unwrap_or_else(|missing| {
            tracing::warn!("{missing}; /v1/analyze answers 501");
            None
        });
        let detectors = match path {
            Some(path) => {
                let settings = detector.settings(args.model.intra_threads(args.workers));
                let pool =
                    DetectorPool::load(environment, &path, settings, args.model.decode_limits())
                        .with_context(|| format!("loading the face detector {}", path.display()))?;
                tracing::info!(
                    path = %path.display(),
                    kind = pool.kind.name(),
                    input = ?pool.input_size,
                    "face detector ready"
                );
                Some(Arc::new(pool))
            }
            None => {
                tracing::info!("no face detector (--detector none): /v1/analyze answers 501");
                None
            }
        };
        let admission = &args.admission;
        Ok(Self {
            state: AppState {
                inference: Arc::new(Inference::new(
                    Arc::new(registry),
                    metrics,
                    args.model.default_model.clone(),
                    args.max_images,
                    Admission::new(
                        admission.max_concurrent_requests,
                        Duration::from_millis(admission.request_timeout_ms),
                    ),
                    detectors,
                )),
                limits: Limits {
                    body_limit: args.body_limit,
                    body_read_timeout: Duration::from_millis(args.connections.body_read_timeout_ms),
                },
                api_keys: api_keys.map(Arc::new),
                access: Arc::new(AccessPolicy {
                    auth_health: args.access.auth_health,
                    auth_metrics: args.access.auth_metrics,
                    cors_allow_origins: args.access.cors_allow_origins.clone(),
                }),
            },
            watch: WatchOptions {
                mode: match lifecycle.repository_watch {
                    RepositoryWatch::Events => WatchMode::Events,
                    RepositoryWatch::Poll => WatchMode::Poll,
                    RepositoryWatch::Off => WatchMode::Off,
                },
                poll_interval: Duration::from_millis(lifecycle.repository_poll_ms),
                debounce,
            },
            models_dir: options.models_dir,
            drain_timeout: Duration::from_millis(lifecycle.drain_timeout_ms),
            connection_timeouts: http::connection::ConnectionTimeouts {
                header_read: Duration::from_millis(args.connections.header_read_timeout_ms),
                idle: Duration::from_millis(args.connections.idle_timeout_ms),
            },
        })
    }

    /// Serves HTTP and gRPC until SIGINT/SIGTERM. Then readiness turns false (HTTP, KServe v2 and
    /// `grpc.health.v1`) and new inference requests get 503 / UNAVAILABLE while the listeners stay
    /// open; once the admitted requests have finished the listeners close and open connections
    /// finish their requests in progress. All of it within one `--drain-timeout-ms` of the
    /// signal: whatever is still open then is dropped and `run` returns.
    pub async fn run(
        self,
        http_listener: tokio::net::TcpListener,
        grpc_listener: tokio::net::TcpListener,
    ) -> anyhow::Result<()> {
        let state = self.state.clone();
        let watcher = RepositoryWatcher::start(
            Arc::clone(self.state.inference.registry()),
            &self.models_dir,
            self.watch,
        );
        tokio::spawn(rescan_on_sighup(watcher));
        let (health, health_service) = tonic_health::server::health_reporter();
        tokio::spawn(report_health(self.state.clone(), health));
        // Large flow-control windows: frames of a video stream are hundreds of kilobytes each, and
        // HTTP/2's default 64 KiB window made the stream wait on window updates.
        let grpc = tonic::transport::Server::builder()
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .layer(crate::grpc::guard::Guard {
                state: self.state.clone(),
            })
            .add_service(health_service)
            .add_service(
                GrpcInferenceServiceServer::new(InferenceService {
                    state: self.state.clone(),
                })
                .max_decoding_message_size(self.state.limits.body_limit),
            )
            .add_service(
                FerServer::new(FerService {
                    state: self.state.clone(),
                })
                .max_decoding_message_size(self.state.limits.body_limit),
            );
        let app = http::router(self.state);
        tracing::info!(address = %http_listener.local_addr()?, "listening");
        tracing::info!(address = %grpc_listener.local_addr()?, "grpc listening");
        let drain_timeout = self.drain_timeout;
        let (drained_tx, drained_rx) = tokio::sync::watch::channel(false);
        let (deadline_tx, deadline_rx) = tokio::sync::oneshot::channel::<tokio::time::Instant>();
        tokio::spawn(async move {
            shutdown_signal().await;
            let deadline = tokio::time::Instant::now() + drain_timeout;
            let _ = deadline_tx.send(deadline);
            state.inference.begin_shutdown();
            tracing::info!(
                in_flight = state.inference.in_flight(),
                "shutting down: new requests get 503, finishing those in flight"
            );
            if tokio::time::timeout_at(deadline, state.inference.drained())
                .await
                .is_err()
            {
                tracing::warn!(
                    in_flight = state.inference.in_flight(),
                    "drain timeout: closing with requests still in flight"
                );
            }
            let _ = drained_tx.send(true);
        });
        let drained = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|done| *done).await;
        };
        let http = http::connection::serve(
            http_listener,
            app,
            self.connection_timeouts,
            drained(drained_rx.clone()),
        );
        let grpc = grpc.serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
            drained(drained_rx),
        );
        // Connections still busy at the deadline (a stream that never ends) are dropped with it.
        let deadline = async move {
            match deadline_rx.await {
                Ok(deadline) => tokio::time::sleep_until(deadline).await,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            (_, grpc) = async { tokio::join!(http, grpc) } => grpc?,
            _ = deadline => tracing::warn!("connections still open at the drain timeout; exiting"),
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Keeps `grpc.health.v1` in line with readiness: the server's (`""`) and each service's status is
/// SERVING while the default model serves and the server is not shutting down.
async fn report_health(state: AppState, health: tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus;
    let mut last = None;
    loop {
        let ready = state.inference.readiness().is_ok();
        if last != Some(ready) {
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for service in ["", "inference.GRPCInferenceService", "fer.v1.Fer"] {
                health.set_service_status(service, status).await;
            }
            last = Some(ready);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(unix)]
async fn rescan_on_sighup(watcher: RepositoryWatcher) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; the repository is rescanned only by the watcher");
        std::future::pending::<()>().await;
        return;
    };
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP: rescanning the model repository");
        watcher.rescan();
    }
}

#[cfg(not(unix))]
async fn rescan_on_sighup(watcher: RepositoryWatcher) {
    let _watcher = watcher;
    std::future::pending::<()>().await
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
