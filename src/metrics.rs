//! Prometheus metrics: one registry, recorded at the layer that knows each fact.
//!
//! Buckets are explicit so dashboards can rely on them:
//! - latency histograms (`fer_http_request_duration_seconds`, `fer_stage_duration_seconds`):
//!   [`LATENCY_BUCKETS`], 100 µs to 10 s;
//! - `fer_batch_size`: [`BATCH_BUCKETS`], powers of two to 256.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Seconds; fine steps below 10 ms where a 48×48 classification lives.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Images per executed batch.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Processing stages timed per image or per batch.
pub const STAGES: &[&str] = &["decode", "detect", "queue", "inference", "total"];
/// Reasons a request or an image failed.
pub const FAILURE_REASONS: &[&str] = &[
    "bad_request",
    "uri_too_long",
    "headers_too_large",
    "invalid_image",
    "image_too_large",
    "unsupported_media_type",
    "payload_too_large",
    "too_many_images",
    "model_not_found",
    "model_not_ready",
    "queue_full",
    "cancelled",
    "inference_error",
    "shutting_down",
    "model_load_failed",
    "repository_error",
    "timeout",
    "body_timeout",
    "overloaded",
    "unauthorized",
    "internal_error",
    "not_found",
    "method_not_allowed",
    "invalid_tensor",
    "detector_not_configured",
];
/// Routes pre-registered at zero so a fresh server already shows their series.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/classify"),
    ("POST", "/v1/analyze"),
    ("GET", "/v1/models"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/v2/repository/index"),
    ("POST", "/v2/repository/models/{model}/load"),
    ("POST", "/v2/repository/models/{model}/unload"),
    ("GET", "/v2"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2/models/{model}"),
    ("GET", "/v2/models/{model}/versions/{version}"),
    ("GET", "/v2/models/{model}/ready"),
    ("GET", "/v2/models/{model}/versions/{version}/ready"),
    ("GET", "/v2/models/{model}/config"),
    ("POST", "/v2/models/{model}/infer"),
    ("POST", "/v2/models/{model}/versions/{version}/infer"),
];

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub stage_duration: HistogramVec,
    pub batch_size: HistogramVec,
    pub queue_depth: IntGaugeVec,
    pub failures: IntCounterVec,
    pub predictions: IntCounterVec,
    pub model_ready: IntGaugeVec,
    pub model_loads: IntCounterVec,
    pub execution_provider: IntGaugeVec,
    pub requests_in_flight: prometheus::IntGauge,
    pub grpc_requests: IntCounterVec,
    pub grpc_duration: HistogramVec,
}

/// gRPC methods pre-registered at zero (`StreamFrames.frame` counts each frame of a stream).
pub const GRPC_METHODS: &[&str] = &[
    "ModelReady",
    "ModelMetadata",
    "ModelInfer",
    "ModelStreamInfer",
    "Classify",
    "StreamFrames",
    "StreamFrames.frame",
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "fer_http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "fer_http_request_duration_seconds",
                "HTTP request latency by route, method and status",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let stage_duration = HistogramVec::new(
            HistogramOpts::new(
                "fer_stage_duration_seconds",
                "Time per stage: decode (decode + resize, per image), detect (decode + face detection + crops, per photo of /v1/analyze), queue (wait before its batch ran, per image), inference (session run, per batch), total (whole classify call, per request)",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["model", "stage"],
        )
        .expect("valid metric");
        let batch_size = HistogramVec::new(
            HistogramOpts::new("fer_batch_size", "Images per executed inference batch")
                .buckets(BATCH_BUCKETS.to_vec()),
            &["model"],
        )
        .expect("valid metric");
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "fer_queue_depth",
                "Images waiting in a model's batching queue",
            ),
            &["model"],
        )
        .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new(
                "fer_failures_total",
                "Failed requests (or dropped images) by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let predictions = IntCounterVec::new(
            Opts::new(
                "fer_predictions_total",
                "Predicted labels by model and label",
            ),
            &["model", "label"],
        )
        .expect("valid metric");
        let model_ready = IntGaugeVec::new(
            Opts::new(
                "fer_model_ready",
                "1 when a model version is loaded and warmed up, 0 when it failed",
            ),
            &["model", "version"],
        )
        .expect("valid metric");
        let model_loads = IntCounterVec::new(
            Opts::new(
                "fer_model_loads_total",
                "Attempts to load a model version (startup, reload, explicit load) by outcome: success or failure",
            ),
            &["model", "outcome"],
        )
        .expect("valid metric");
        let execution_provider = IntGaugeVec::new(
            Opts::new(
                "fer_execution_provider",
                "1 for the execution provider a model's newest loaded version runs on (cpu, cuda, tensorrt), 0 for the others",
            ),
            &["model", "provider"],
        )
        .expect("valid metric");
        let requests_in_flight = prometheus::IntGauge::new(
            "fer_requests_in_flight",
            "Inference requests admitted and not yet answered",
        )
        .expect("valid metric");
        let grpc_requests = IntCounterVec::new(
            Opts::new(
                "fer_grpc_requests_total",
                "gRPC calls by method and status code",
            ),
            &["method", "code"],
        )
        .expect("valid metric");
        let grpc_duration = HistogramVec::new(
            HistogramOpts::new(
                "fer_grpc_request_duration_seconds",
                "gRPC call latency by method and status code (streams: per opened stream, and per frame)",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method", "code"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(stage_duration.clone()),
            Box::new(batch_size.clone()),
            Box::new(queue_depth.clone()),
            Box::new(failures.clone()),
            Box::new(predictions.clone()),
            Box::new(model_ready.clone()),
            Box::new(model_loads.clone()),
            Box::new(execution_provider.clone()),
            Box::new(requests_in_flight.clone()),
            Box::new(grpc_requests.clone()),
            Box::new(grpc_duration.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        for reason in FAILURE_REASONS {
            failures.with_label_values(&[*reason]);
        }
        for method in GRPC_METHODS {
            grpc_requests.with_label_values(&[*method, "Ok"]);
            grpc_duration.with_label_values(&[*method, "Ok"]);
        }
        for (method, route) in ROUTES {
            http_requests.with_label_values(&[*route, *method, "200"]);
            http_duration.with_label_values(&[*route, *method, "200"]);
        }
        Self {
            registry,
            http_requests,
            http_duration,
            stage_duration,
            batch_size,
            queue_depth,
            failures,
            predictions,
            model_ready,
            model_loads,
            execution_provider,
            requests_in_flight,
            grpc_requests,
            grpc_duration,
        }
    }

    /// Creates a model's series at zero (its labels, stages, queue and batch size).
    pub fn register_model(&self, model: &str, labels: &[String]) {
        for stage in STAGES {
            self.stage_duration.with_label_values(&[model, *stage]);
        }
        self.batch_size.with_label_values(&[model]);
        self.queue_depth.with_label_values(&[model]);
        for outcome in ["success", "failure"] {
            self.model_loads.with_label_values(&[model, outcome]);
        }
        for label in labels {
            self.predictions.with_label_values(&[model, label.as_str()]);
        }
    }

    /// Marks where a model's newly loaded version runs.
    pub fn set_execution_provider(&self, model: &str, active: crate::backend::ExecutionProvider) {
        for provider in crate::backend::ExecutionProvider::ALL {
            self.execution_provider
                .with_label_values(&[model, provider.as_str()])
                .set(i64::from(provider == active));
        }
    }

    pub fn fail(&self, reason: &str) {
        self.failures.with_label_values(&[reason]).inc();
    }

    /// The Prometheus text exposition of every series.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_registry_shows_every_family_at_zero() {
        let m = Metrics::new();
        m.register_model("fer2013", &["happy".into(), "sad".into()]);
        let text = m.encode();
        for family in [
            "fer_http_requests_total",
            "fer_http_request_duration_seconds_bucket",
            "fer_stage_duration_seconds_bucket",
            "fer_batch_size_bucket",
            "fer_queue_depth",
            "fer_failures_total",
            "fer_predictions_total",
        ] {
            assert!(text.contains(family), "{family} missing");
        }
        assert!(
            text.contains(r#"fer_predictions_total{label="sad",model="fer2013"} 0"#),
            "{text}"
        );
        assert!(text.contains(r#"fer_failures_total{reason="queue_full"} 0"#));
        assert!(text.contains(r#"le="0.0001""#));
    }
}
