//! What every transport (HTTP, gRPC) shares: the model registry, metrics, limits, admission,
//! access rules and the shutdown flag. Built once by `server`, cloned into each handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::auth::ApiKeys;
use crate::core::admission::Admission;
use crate::core::registry::ModelRegistry;
use crate::metrics::Metrics;

/// Request limits enforced by the transport.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub body_limit: usize,
    pub max_images: usize,
    /// Longest a request body may take to arrive (408 after).
    pub body_read_timeout: std::time::Duration,
}

impl Limits {
    /// A request must hold at least one image and at most `max_images`.
    pub fn check_image_count(&self, count: usize) -> Result<(), crate::error::Error> {
        use crate::error::Error;
        if count == 0 {
            return Err(Error::BadRequest("the request holds no image".into()));
        }
        if count > self.max_images {
            return Err(Error::TooManyImages {
                count,
                limit: self.max_images,
            });
        }
        Ok(())
    }
}

/// Which routes need an API key (when keys are configured) and who else may call.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    pub auth_health: bool,
    pub auth_metrics: bool,
    /// CORS origins; empty: no CORS headers at all.
    pub cors_allow_origins: Vec<String>,
}

#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<ModelRegistry>,
    pub metrics: Arc<Metrics>,
    pub default_model: Arc<str>,
    pub limits: Limits,
    pub shutting_down: Arc<AtomicBool>,
    pub admission: Arc<Admission>,
    pub api_keys: Option<Arc<ApiKeys>>,
    pub access: Arc<AccessPolicy>,
    /// Face detection for `/v1/analyze`, when configured.
    pub detectors: Option<Arc<crate::core::analyze::DetectorPool>>,
}

impl AppState {
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Ready to serve: not shutting down, and the default model has a ready version. One answer
    /// for `/readyz`, `/v2/health/ready`, gRPC `ServerReady` and `grpc.health.v1`.
    pub fn readiness(&self) -> Result<(), crate::error::Error> {
        if self.shutting_down() {
            return Err(crate::error::Error::ShuttingDown);
        }
        self.registry.resolve(&self.default_model, None).map(|_| ())
    }

    /// Runs inference work under the admission rules (shutdown, concurrency, timeout), counted
    /// in `fer_requests_in_flight`. Every transport's inference goes through here.
    pub async fn admit<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, crate::error::Error>>,
    ) -> Result<T, crate::error::Error> {
        self.admission
            .run(&self.shutting_down, &self.metrics.requests_in_flight, work)
            .await
    }
}
