//! The admission rules (`core::admission`) as middleware for HTTP inference routes.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::AppState;

/// Middleware for inference routes.
pub async fn admit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let work = async { Ok(next.run(request).await) };
    state
        .admit(work)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}
