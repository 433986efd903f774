//! The admission rules (`core::admission`) as middleware for HTTP inference routes, applied once
//! the request's body is in: a client that stalls mid-upload holds a connection, never one of
//! the `--max-concurrent-requests` slots, and gets 408 after `--body-read-timeout-ms`. A
//! `Content-Length` over the body limit is refused before anything is read.

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
pub async fn admit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // The Open Inference Protocol's routes answer in its error shape.
    let v2 = request.uri().path().starts_with("/v2/");
    let respond = |error: Error| {
        if v2 {
            V2Error(error).into_response()
        } else {
            error.into_response()
        }
    };
    if state.shutting_down() {
        return respond(Error::ShuttingDown);
    }
    let (parts, body) = request.into_parts();
    let body = match receive(&state, &parts.headers, body).await {
        Ok(body) => body,
        Err(error) => return respond(error),
    };
    let request = Request::from_parts(parts, Body::from(body));
    let work = async { Ok(next.run(request).await) };
    state.admit(work).await.unwrap_or_else(respond)
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
