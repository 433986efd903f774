//! gRPC transport (tonic) on its own port: the Open Inference Protocol's
//! `inference.GRPCInferenceService`, our `fer.v1.Fer`, and `grpc.health.v1`. Like the HTTP
//! handlers these only translate wire format ⇄ core types; errors map through
//! [`Error::grpc_code`].

pub mod fer;
pub mod guard;
pub mod inference;

use std::time::Instant;

use crate::error::Error;
use crate::state::AppState;

/// The generated protocol types and services.
pub mod proto {
    pub mod inference {
        tonic::include_proto!("inference");
    }
    pub mod fer {
        pub mod v1 {
            tonic::include_proto!("fer.v1");
        }
    }
}

/// The gRPC status of an error.
pub fn status(error: Error) -> tonic::Status {
    tonic::Status::new(error.grpc_code(), error.to_string())
}

/// Records one call in `fer_grpc_requests_total` and `fer_grpc_request_duration_seconds`, and a
/// failure by reason.
pub fn observe<T>(
    state: &AppState,
    method: &str,
    started: Instant,
    result: Result<T, Error>,
) -> Result<T, tonic::Status> {
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(e) => e.grpc_code(),
    };
    let code = format!("{code:?}");
    let labels = [method, code.as_str()];
    state
        .inference
        .metrics()
        .grpc_requests
        .with_label_values(&labels)
        .inc();
    state
        .inference
        .metrics()
        .grpc_duration
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    result.map_err(|e| {
        state.inference.metrics().fail(e.code());
        status(e)
    })
}
