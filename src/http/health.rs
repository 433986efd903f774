//! Liveness, readiness and the Prometheus endpoint.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::http::AppState;

/// Liveness: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "Alive", body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: 200 only when the default model is loaded and warmed up.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready to serve the default model", body = String),
        (status = 503, description = "Not ready", body = String),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.inference.readiness() {
        Ok(()) => (StatusCode::OK, "ready".to_string()),
        Err(crate::error::Error::ShuttingDown) => {
            (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_string())
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}")),
    }
}

/// Prometheus metrics, text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.inference.metrics().encode(),
    )
}
