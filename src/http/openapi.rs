//! The OpenAPI description, generated from the annotations beside each handler.

use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "fer-server",
        description = "Facial-expression recognition inference server: face crops in, expression labels out.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        crate::http::classify::classify_handler,
        crate::http::analyze::analyze_handler,
        crate::http::models::list_models,
        crate::http::health::healthz,
        crate::http::health::readyz,
        crate::http::health::metrics,
        crate::http::repository::index,
        crate::http::repository::load,
        crate::http::repository::unload,
        crate::http::kserve::server_metadata,
        crate::http::kserve::live,
        crate::http::kserve::ready,
        crate::http::kserve::model_metadata,
        crate::http::kserve::version_metadata,
        crate::http::kserve::model_ready,
        crate::http::kserve::version_ready,
        crate::http::kserve::model_config,
        crate::http::kserve::model_infer,
        crate::http::kserve::version_infer,
    ),
    components(schemas(
        crate::http::kserve::types::LiveResponse,
        crate::http::kserve::types::ReadyResponse,
        crate::http::kserve::types::ModelReadyResponse,
        crate::http::classify::ClassifyJson,
        crate::http::classify::ImageFile,
        crate::http::classify::ImageBase64,
        crate::http::classify::ImageUpload,
        crate::http::classify::ClassifyResponse,
        crate::http::classify::ClassifyResult,
        crate::http::classify::ModelRef,
        crate::http::analyze::AnalyzeResponse,
        crate::http::analyze::AnalyzedImage,
        crate::http::analyze::AnalyzedFace,
        crate::http::analyze::FaceBox,
        crate::http::models::ModelsResponse,
        crate::http::models::ModelVersionInfo,
        crate::http::error::ErrorBody,
        crate::http::error::ErrorDetail,
        crate::http::repository::IndexRequest,
        crate::http::repository::IndexEntry,
        crate::http::repository::ModelControlRequest,
        crate::http::repository::ModelControlResponse,
        crate::http::kserve::types::ServerMetadata,
        crate::http::kserve::types::ModelMetadata,
        crate::http::kserve::types::TensorMetadata,
        crate::http::kserve::types::ModelConfig,
        crate::http::kserve::types::DynamicBatching,
        crate::http::kserve::types::ConfigTensor,
        crate::http::kserve::types::InferRequest,
        crate::http::kserve::types::InferInput,
        crate::http::kserve::types::RequestedOutput,
        crate::http::kserve::types::InferResponse,
        crate::http::kserve::types::OutputTensor,
        crate::http::kserve::types::V2ErrorBody,
    )),
    modifiers(&BearerAuth, &OpenRoutes),
    security(("api_key" = [])),
    tags(
        (name = "inference", description = "Classify faces"),
        (name = "models", description = "The model repository"),
        (name = "health", description = "Liveness, readiness, metrics"),
        (name = "repository", description = "Load, reload and unload models (Triton's repository API)"),
        (name = "kserve-v2", description = "The Open Inference Protocol (KServe v2), as Triton serves it"),
    )
)]
pub struct ApiDoc;

/// The `Authorization: Bearer <key>` scheme, required when the server has API keys configured.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Only when the server is started with --api-key or --api-keys-file",
                    ))
                    .build(),
            ),
        );
    }
}

/// Routes that answer without a key by default (`--auth-health` and `--auth-metrics` close them),
/// so that orchestrators' probes and Prometheus need no secret.
const OPEN_ROUTES: [&str; 5] = [
    "/healthz",
    "/readyz",
    "/v2/health/live",
    "/v2/health/ready",
    "/metrics",
];

/// Marks the open routes as needing no key, and documents the 401 on every other route.
struct OpenRoutes;

impl utoipa::Modify for OpenRoutes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{Ref, RefOr};
        for (path, item) in openapi.paths.paths.iter_mut() {
            let open = OPEN_ROUTES.contains(&path.as_str());
            for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
                if open {
                    operation.security = Some(Vec::new());
                } else {
                    operation
                        .responses
                        .responses
                        .entry("401".to_string())
                        .or_insert_with(|| {
                            utoipa::openapi::ResponseBuilder::new()
                                .description(
                                    "API keys are configured and none, or a wrong one, was given",
                                )
                                .content(
                                    "application/json",
                                    utoipa::openapi::ContentBuilder::new()
                                        .schema(Some(RefOr::Ref(Ref::from_schema_name(
                                            "ErrorBody",
                                        ))))
                                        .build(),
                                )
                                .build()
                                .into()
                        });
                }
            }
        }
    }
}

/// The committed spec, pretty-printed with a trailing newline.
pub fn spec_json() -> String {
    let mut text = ApiDoc::openapi().to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_metrics_pre_register_every_described_route() {
        use std::collections::BTreeSet;
        use utoipa::OpenApi;
        let spec = super::ApiDoc::openapi();
        let mut described = BTreeSet::new();
        for (path, item) in &spec.paths.paths {
            if item.get.is_some() {
                described.insert(("GET", path.as_str()));
            }
            if item.post.is_some() {
                described.insert(("POST", path.as_str()));
            }
        }
        let registered: BTreeSet<_> = crate::metrics::ROUTES.iter().copied().collect();
        assert_eq!(registered, described);
    }

    #[test]
    fn committed_spec_matches_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == super::spec_json(),
            "openapi/openapi.json is stale: run `cargo run -- openapi --out openapi/openapi.json`"
        );
    }
}
