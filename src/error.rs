//! The server's one error type, mapped once to HTTP statuses and gRPC codes (here).

use std::sync::Arc;

use fer_contract::ImageError;

use crate::backend::BackendError;

/// Why inference failed on the server's side (a 500).
#[derive(Debug, Clone, thiserror::Error)]
pub enum InferenceError {
    #[error(transparent)]
    Backend(Arc<BackendError>),
    /// A worker pool the request needed is gone (the server is stopping).
    #[error("the {0} stopped")]
    Stopped(&'static str),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model {0:?} not found")]
    ModelNotFound(String),
    #[error("model {model:?} has no version {version}")]
    VersionNotFound { model: String, version: u64 },
    #[error("model {model:?} version {version} is not ready: {reason}")]
    ModelNotReady {
        model: String,
        version: u64,
        reason: String,
    },
    #[error("image {index}: {source}")]
    InvalidImage { index: usize, source: ImageError },
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "unsupported content type {0:?}: send image/* bytes, multipart/form-data with `image` parts, or application/json {{\"images\": [base64, ...]}}"
    )]
    UnsupportedMediaType(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{count} images in one request; the limit is {limit}")]
    TooManyImages { count: usize, limit: usize },
    #[error("the inference queue is full; retry after {retry_after_secs} s")]
    QueueFull { retry_after_secs: u64 },
    #[error("inference failed: {0}")]
    Inference(#[from] InferenceError),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("model {model:?} could not be loaded: {reason}")]
    ModelLoadFailed { model: String, reason: String },
    #[error("the model repository cannot be read: {0}")]
    Repository(String),
    #[error("the request took longer than the server's limit of {limit_ms} ms")]
    Timeout { limit_ms: u64 },
    #[error("the request body did not arrive within {limit_ms} ms")]
    BodyTimeout { limit_ms: u64 },
    #[error("{limit} requests are already in progress; retry after {retry_after_secs} s")]
    Overloaded { limit: usize, retry_after_secs: u64 },
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("internal error")]
    Internal,
    #[error(
        "no face detector is configured: start the server with --detector <UltraFace .onnx> (see the README)"
    )]
    DetectorNotConfigured,
    #[error("invalid tensor: {0}")]
    InvalidTensor(String),
    #[error("no route for {0}")]
    RouteNotFound(String),
    #[error("method not allowed for this route")]
    MethodNotAllowed,
    /// A request the HTTP library refused before any route saw it (`http::connection` answers).
    #[error("{0}")]
    Unparsable(Unparsable),
}

/// Why the HTTP library could not read a request (HTTP/1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unparsable {
    #[error("the request is not valid HTTP/1.1: its request line or a header cannot be parsed")]
    Malformed,
    #[error("the request's URI is longer than the server reads (65,534 bytes)")]
    UriTooLong,
    #[error(
        "the request's headers are more or larger than the server reads (100 headers, 408 KiB in all)"
    )]
    HeadersTooLarge,
}

impl Error {
    /// HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Error::ModelNotFound(_) | Error::VersionNotFound { .. } | Error::RouteNotFound(_) => {
                404
            }
            Error::MethodNotAllowed => 405,
            Error::Unparsable(Unparsable::Malformed) => 400,
            Error::Unparsable(Unparsable::UriTooLong) => 414,
            Error::Unparsable(Unparsable::HeadersTooLarge) => 431,
            Error::DetectorNotConfigured => 501,
            Error::ModelNotReady { .. } | Error::ShuttingDown => 503,
            Error::InvalidImage { source, .. } => match source {
                ImageError::Empty | ImageError::Corrupt(_) => 400,
                ImageError::Unsupported(_) => 415,
                ImageError::TooLarge { .. } => 422,
            },
            Error::BadRequest(_) | Error::InvalidTensor(_) => 400,
            Error::UnsupportedMediaType(_) => 415,
            Error::PayloadTooLarge { .. } => 413,
            Error::TooManyImages { .. } => 422,
            Error::QueueFull { .. } | Error::Overloaded { .. } => 429,
            // Triton answers a failed load with 400.
            Error::ModelLoadFailed { .. } => 400,
            Error::Unauthorized => 401,
            Error::BodyTimeout { .. } => 408,
            Error::Timeout { .. } => 504,
            Error::Inference(_) | Error::Repository(_) | Error::Internal => 500,
        }
    }

    /// gRPC status code (the same cases as [`Self::status`]).
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self.status() {
            401 => Code::Unauthenticated,
            404 => Code::NotFound,
            405 | 501 => Code::Unimplemented,
            413 | 429 => Code::ResourceExhausted,
            503 => Code::Unavailable,
            504 => Code::DeadlineExceeded,
            400 if matches!(self, Error::ModelLoadFailed { .. }) => Code::FailedPrecondition,
            400..=499 => Code::InvalidArgument,
            _ => Code::Internal,
        }
    }

    /// Stable machine-readable code; also the `reason` label of `fer_failures_total`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::ModelNotFound(_) | Error::VersionNotFound { .. } => "model_not_found",
            Error::ModelNotReady { .. } => "model_not_ready",
            Error::InvalidImage { source, .. } => match source {
                ImageError::TooLarge { .. } => "image_too_large",
                ImageError::Unsupported(_) => "unsupported_media_type",
                ImageError::Empty | ImageError::Corrupt(_) => "invalid_image",
            },
            Error::BadRequest(_) => "bad_request",
            Error::UnsupportedMediaType(_) => "unsupported_media_type",
            Error::PayloadTooLarge { .. } => "payload_too_large",
            Error::TooManyImages { .. } => "too_many_images",
            Error::QueueFull { .. } => "queue_full",
            Error::Inference(_) => "inference_error",
            Error::ShuttingDown => "shutting_down",
            Error::ModelLoadFailed { .. } => "model_load_failed",
            Error::Repository(_) => "repository_error",
            Error::Timeout { .. } => "timeout",
            Error::BodyTimeout { .. } => "body_timeout",
            Error::Overloaded { .. } => "overloaded",
            Error::Unauthorized => "unauthorized",
            Error::Internal => "internal_error",
            Error::RouteNotFound(_) => "not_found",
            Error::InvalidTensor(_) => "invalid_tensor",
            Error::DetectorNotConfigured => "detector_not_configured",
            Error::MethodNotAllowed => "method_not_allowed",
            Error::Unparsable(Unparsable::Malformed) => "bad_request",
            Error::Unparsable(Unparsable::UriTooLong) => "uri_too_long",
            Error::Unparsable(Unparsable::HeadersTooLarge) => "headers_too_large",
        }
    }

    /// Seconds a client should wait before retrying (`Retry-After`), for load-shedding errors.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Error::QueueFull { retry_after_secs }
            | Error::Overloaded {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// Index of the offending image, for errors about one image.
    pub fn image_index(&self) -> Option<usize> {
        match self {
            Error::InvalidImage { index, .. } => Some(*index),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::FAILURE_REASONS;

    #[test]
    fn every_code_is_a_registered_failure_reason() {
        let errors = [
            Error::ModelNotFound("x".into()),
            Error::ModelNotReady {
                model: "x".into(),
                version: 1,
                reason: "r".into(),
            },
            Error::InvalidImage {
                index: 0,
                source: ImageError::Empty,
            },
            Error::InvalidImage {
                index: 0,
                source: ImageError::Unsupported("gif".into()),
            },
            Error::BadRequest("x".into()),
            Error::UnsupportedMediaType("text/plain".into()),
            Error::PayloadTooLarge { limit: 1 },
            Error::TooManyImages { count: 2, limit: 1 },
            Error::QueueFull {
                retry_after_secs: 1,
            },
            Error::Inference(InferenceError::Stopped("decoder pool")),
            Error::ShuttingDown,
            Error::ModelLoadFailed {
                model: "x".into(),
                reason: "r".into(),
            },
            Error::Repository("x".into()),
            Error::Timeout { limit_ms: 1 },
            Error::Overloaded {
                limit: 1,
                retry_after_secs: 1,
            },
            Error::Unauthorized,
            Error::Internal,
            Error::RouteNotFound("/x".into()),
            Error::InvalidTensor("x".into()),
            Error::MethodNotAllowed,
            Error::BodyTimeout { limit_ms: 1 },
            Error::DetectorNotConfigured,
            Error::VersionNotFound {
                model: "x".into(),
                version: 2,
            },
            Error::Unparsable(Unparsable::Malformed),
            Error::Unparsable(Unparsable::UriTooLong),
            Error::Unparsable(Unparsable::HeadersTooLarge),
        ];
        for e in &errors {
            // No wildcard: a new variant does not compile until it is listed here and above.
            match e {
                Error::ModelNotFound(_)
                | Error::VersionNotFound { .. }
                | Error::ModelNotReady { .. }
                | Error::InvalidImage { .. }
                | Error::BadRequest(_)
                | Error::UnsupportedMediaType(_)
                | Error::PayloadTooLarge { .. }
                | Error::TooManyImages { .. }
                | Error::QueueFull { .. }
                | Error::Inference(_)
                | Error::ShuttingDown
                | Error::ModelLoadFailed { .. }
                | Error::Repository(_)
                | Error::Timeout { .. }
                | Error::BodyTimeout { .. }
                | Error::Overloaded { .. }
                | Error::Unauthorized
                | Error::Internal
                | Error::DetectorNotConfigured
                | Error::InvalidTensor(_)
                | Error::RouteNotFound(_)
                | Error::MethodNotAllowed
                | Error::Unparsable(_) => {}
            }
        }
        for e in errors {
            assert!(FAILURE_REASONS.contains(&e.code()), "{}", e.code());
            assert!((400..600).contains(&e.status()));
            let internal = e.grpc_code() == tonic::Code::Internal;
            assert_eq!(internal, e.status() == 500, "{e}: {:?}", e.grpc_code());
        }
        assert_eq!(
            Error::QueueFull {
                retry_after_secs: 1
            }
            .grpc_code(),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(
            Error::Timeout { limit_ms: 1 }.grpc_code(),
            tonic::Code::DeadlineExceeded
        );
    }

    #[test]
    fn client_errors_are_4xx_and_name_the_image() {
        let e = Error::InvalidImage {
            index: 3,
            source: ImageError::Corrupt("truncated".into()),
        };
        assert_eq!(e.status(), 400);
        assert_eq!(e.image_index(), Some(3));
        assert!(e.to_string().starts_with("image 3: "));
        assert_eq!(
            Error::QueueFull {
                retry_after_secs: 1
            }
            .status(),
            429
        );
    }
}
