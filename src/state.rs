//! What every transport (HTTP, gRPC) shares: the inference service (`core::inference`), the
//! transport's own limits and the access rules. Built once by `server`, cloned into each handler.

use std::sync::Arc;

use crate::auth::ApiKeys;
use crate::core::inference::Inference;

/// Limits on what a transport reads from a client.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body (or gRPC message), in bytes.
    pub body_limit: usize,
    /// Longest a request body may take to arrive (408 after).
    pub body_read_timeout: std::time::Duration,
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
    pub inference: Arc<Inference>,
    pub limits: Limits,
    pub api_keys: Option<Arc<ApiKeys>>,
    pub access: Arc<AccessPolicy>,
}
