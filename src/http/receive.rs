//! Inference routes get their whole body before the handler runs, so that the core admits a
//! request (`core::inference`) only once its bytes are in: a client that stalls mid-upload holds
//! a connection, never one of the `--max-concurrent-requests` slots, and gets 408 after
//! `--body-read-timeout-ms`. A `Content-Length` over the body limit is refused before anything is
//! read.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::error::Error;
use crate::http::AppState;
use crate::http::classify::read_body;
use crate::http::kserve::V2Error;

/// Middleware for inference routes.
pub async fn whole_body(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    match receive(&state, &parts.headers, body).await {
        Ok(body) => next.run(Request::from_parts(parts, Body::from(body))).await,
        // The Open Inference Protocol's routes answer in its error shape.
        Err(error) if parts.uri.path().starts_with("/v2/") => V2Error(error).into_response(),
        Err(error) => error.into_response(),
    }
}

/// The whole body, within the size limit and the body-read timeout.
async fn receive(
    state: &AppState,
    headers: &header::HeaderMap,
    body: Body,
) -> Result<Bytes, Error> {
    let limits = state.limits;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.body_limit as u64) {
        return Err(Error::PayloadTooLarge {
            limit: limits.body_limit,
        });
    }
    tokio::time::timeout(limits.body_read_timeout, read_body(body, limits.body_limit))
        .await
        .unwrap_or(Err(Error::BodyTimeout {
            limit_ms: limits.body_read_timeout.as_millis() as u64,
        }))
}
