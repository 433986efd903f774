//! API keys on HTTP routes: the `Authorization: Bearer <key>` header, checked against
//! [`crate::auth::ApiKeys`].

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::Error;
use crate::http::AppState;

/// The bearer token of a request, if it has one.
fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    crate::auth::bearer_token(value)
}

/// Middleware: 401 without a valid key, when keys are configured.
pub async fn require_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(keys) = state.api_keys.as_deref() else {
        return next.run(request).await;
    };
    if bearer(&request).is_some_and(|token| keys.verify(token)) {
        next.run(request).await
    } else {
        Error::Unauthorized.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bearer_tokens() {
        let request = |value: &str| {
            Request::builder()
                .header(header::AUTHORIZATION, value)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        assert_eq!(bearer(&request("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&request("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&request("Basic abc")), None);
        assert_eq!(bearer(&request("abc")), None);
    }
}
