//! What every gRPC call passes before its message is decoded: the API key, checked on the
//! call's headers (a 16 MB message from a client without a key is refused unread), with the same
//! rule as HTTP: health (`ServerLive`, `ServerReady`, `grpc.health.v1`) is open unless
//! `--auth-health`, everything else needs a key when keys are configured. And on the way out,
//! tonic's OUT_OF_RANGE for a message over the size limit becomes RESOURCE_EXHAUSTED, the code
//! gRPC's status table gives it (and the one HTTP's 413 maps to).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::http::{self, HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use tonic::body::Body;

use crate::error::Error;
use crate::state::AppState;

/// The layer, for `tonic::transport::Server::layer`.
#[derive(Clone)]
pub struct Guard {
    pub state: AppState,
}

impl<S> tower::Layer<S> for Guard {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    state: AppState,
}

/// Health calls: open unless `--auth-health`, as on HTTP.
fn is_health(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path == "/inference.GRPCInferenceService/ServerLive"
        || path == "/inference.GRPCInferenceService/ServerReady"
}

impl<S> tower::Service<http::Request<Body>> for Guarded<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path();
        let open = is_health(path) && !self.state.access.auth_health;
        if !open && let Err(error) = authorized(&self.state, request.headers()) {
            let method = path.rsplit('/').next().unwrap_or("").to_string();
            let status =
                super::observe::<()>(&self.state, &method, Instant::now(), Err(error)).err();
            let response = status.map_or_else(
                || tonic::Status::unauthenticated("").into_http(),
                tonic::Status::into_http,
            );
            return Box::pin(std::future::ready(Ok(response)));
        }
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            let (mut parts, body) = response.into_parts();
            size_code(&mut parts.headers);
            // A streaming call's status comes in the trailers.
            let body = body.map_frame(|mut frame| {
                if let Some(trailers) = frame.trailers_mut() {
                    size_code(trailers);
                }
                frame
            });
            Ok(http::Response::from_parts(parts, Body::new(body)))
        })
    }
}

/// The call's `authorization: Bearer <key>`, when keys are configured.
fn authorized(state: &AppState, headers: &HeaderMap) -> Result<(), Error> {
    let Some(keys) = state.api_keys.as_deref() else {
        return Ok(());
    };
    let token = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::bearer_token);
    match token {
        Some(token) if keys.verify(token) => Ok(()),
        _ => Err(Error::Unauthorized),
    }
}

/// OUT_OF_RANGE (11) about a message's length → RESOURCE_EXHAUSTED (8).
fn size_code(headers: &mut HeaderMap) {
    let too_large = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| {
                m.contains("message%20length%20too%20large")
                    || m.contains("message length too large")
            });
    if too_large {
        headers.insert("grpc-status", HeaderValue::from_static("8"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_limit_is_resource_exhausted_and_nothing_else_changes() {
        let status = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 20000000 bytes, the limit is: 16777216 bytes",
        );
        let mut headers = status.into_http::<Body>().into_parts().0.headers;
        size_code(&mut headers);
        assert_eq!(headers["grpc-status"], "8");

        let mut other = tonic::Status::out_of_range("version 99 is out of range")
            .into_http::<Body>()
            .into_parts()
            .0
            .headers;
        size_code(&mut other);
        assert_eq!(other["grpc-status"], "11");
    }

    #[test]
    fn health_calls_are_told_apart() {
        assert!(is_health("/grpc.health.v1.Health/Check"));
        assert!(is_health("/inference.GRPCInferenceService/ServerReady"));
        assert!(!is_health("/inference.GRPCInferenceService/ServerMetadata"));
        assert!(!is_health("/fer.v1.Fer/Classify"));
    }
}
