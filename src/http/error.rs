//! `Error` → HTTP response: the status from `Error::status`, a JSON body, `Retry-After` on 429.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::Error;

/// Every error answer: `{"error": {"code", "message"}}` (and `index` for one bad image).
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_image`, `queue_full`, `model_not_found`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// Index of the offending image in the request, when one image is at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
}

impl From<&Error> for ErrorBody {
    fn from(error: &Error) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: error.code().to_string(),
                message: error.to_string(),
                index: error.image_index(),
            },
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        respond(&self, ErrorBody::from(&self))
    }
}

/// The response for `error` with `body` (each protocol has its own body): status, `Retry-After`,
/// `WWW-Authenticate`, and the failure reason for the metrics layer.
pub fn respond(error: &Error, body: impl Serialize) -> Response {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(body)).into_response();
    if let Some(seconds) = error.retry_after_secs() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let Error::Unauthorized = error {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    // Lets the metrics layer count failures by reason without parsing bodies.
    response
        .extensions_mut()
        .insert(FailureReason(error.code()));
    response
}

/// The failure code of an error response, for the metrics middleware.
#[derive(Debug, Clone, Copy)]
pub struct FailureReason(pub &'static str);
