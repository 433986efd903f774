//! `GET /v1/models`: every model version with its manifest and state.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::core::registry::VersionState;
use crate::http::AppState;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelsResponse {
    /// The model used when a request names none.
    pub default_model: String,
    pub models: Vec<ModelVersionInfo>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelVersionInfo {
    pub name: String,
    pub version: u64,
    /// `ready` (loaded, checked, warmed up) or `failed`.
    pub state: String,
    /// Why the version failed to load; for a ready version, why a changed copy of its files
    /// failed to load (the version keeps serving what it loaded before).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Where the version's sessions run: `cpu`, `cuda` or `tensorrt` (ready versions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_provider: Option<String>,
    /// Largest batch the server forms for this version (`--max-batch-size`); a request may carry
    /// more images (`--max-images`, Triton's `max_batch_size` in `/v2/models/{m}/config`), which
    /// then run as several batches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_size: Option<usize>,
    /// The version's manifest (see docs/manifest.md), when it could be read.
    #[schema(value_type = Object)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<serde_json::Value>,
}

/// List models.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "models",
    responses((status = 200, description = "Every model version in the repository", body = ModelsResponse))
)]
pub async fn list_models(State(state): State<AppState>) -> Json<ModelsResponse> {
    let models = state
        .inference
        .registry()
        .models()
        .into_iter()
        .map(|(name, version, entry)| {
            let (state, error, max_batch_size, manifest, provider) = match &entry.state {
                VersionState::Ready(m) => (
                    "ready",
                    entry.reload_error.clone(),
                    Some(m.max_batch_size),
                    Some(&m.manifest),
                    Some(m.execution_provider.as_str().to_string()),
                ),
                VersionState::Failed { manifest, error } => (
                    "failed",
                    Some(error.clone()),
                    None,
                    manifest.as_deref(),
                    None,
                ),
            };
            ModelVersionInfo {
                name: name.clone(),
                version,
                state: state.to_string(),
                error,
                execution_provider: provider,
                max_batch_size,
                manifest: manifest.and_then(|m| serde_json::to_value(m).ok()),
            }
        })
        .collect();
    Json(ModelsResponse {
        default_model: state.inference.default_model().to_string(),
        models,
    })
}
