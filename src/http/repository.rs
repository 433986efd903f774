//! The repository API, with Triton's paths and shapes: list what is on disk, load (or reload) and
//! unload a model. Loads run on a blocking thread; the answer comes once the model serves or failed.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Request, State};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::core::registry::ModelRegistry;
use crate::error::Error;
use crate::http::AppState;
use crate::http::classify::read_body;

/// `POST /v2/repository/index` body (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IndexRequest {
    /// Only list versions that are ready.
    #[serde(default)]
    pub ready: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IndexEntry {
    pub name: String,
    /// The version, as a string (Triton's format).
    pub version: String,
    /// `READY` or `UNAVAILABLE`.
    pub state: String,
    /// Why the version is unavailable (empty when ready).
    pub reason: String,
}

/// `POST .../load` and `.../unload` body (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelControlRequest {
    /// Triton's config overrides and files are not supported: empty or absent.
    #[serde(default)]
    #[schema(schema_with = empty_object)]
    pub parameters: serde_json::Map<String, serde_json::Value>,
}

/// An object that must be empty (`maxProperties: 0`).
fn empty_object() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .max_properties(Some(0))
        .build()
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelControlResponse {
    pub name: String,
    /// Versions serving after the call.
    pub ready_versions: Vec<u64>,
}

/// The optional body: empty or `null` mean the defaults.
fn parse_body<T: Default + for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice::<Option<T>>(body)
        .map(Option::unwrap_or_default)
        .map_err(|e| Error::BadRequest(format!("invalid JSON body: {e}")))
}

async fn blocking<T: Send + 'static>(
    registry: &Arc<ModelRegistry>,
    work: impl FnOnce(&ModelRegistry) -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let registry = Arc::clone(registry);
    tokio::task::spawn_blocking(move || work(&registry))
        .await
        .map_err(|_| Error::Internal)?
}

/// List the repository.
///
/// Every version folder on disk, with whether it serves and, if not, why.
#[utoipa::path(
    post,
    path = "/v2/repository/index",
    tag = "repository",
    request_body(content = Option<IndexRequest>, content_type = "application/json"),
    responses(
        (status = 200, description = "Every version in the repository", body = Vec<IndexEntry>),
        (status = 400, description = "Malformed body", body = crate::http::error::ErrorBody),
    )
)]
pub async fn index(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Vec<IndexEntry>>, Error> {
    let request: IndexRequest = parse_body(&body)?;
    let entries = blocking(state.inference.registry(), ModelRegistry::index).await?;
    Ok(Json(
        entries
            .into_iter()
            .filter(|e| e.ready || !request.ready)
            .map(|e| IndexEntry {
                name: e.name,
                version: e.version.to_string(),
                state: if e.ready { "READY" } else { "UNAVAILABLE" }.to_string(),
                reason: e.reason,
            })
            .collect(),
    ))
}

/// Load or reload a model.
///
/// Reads the model's folder again and applies its version policy: new or changed versions are
/// loaded, checked and warmed up before they serve; versions that failed before are retried. A
/// model unloaded by request serves again.
#[utoipa::path(
    post,
    path = "/v2/repository/models/{model}/load",
    tag = "repository",
    params(("model" = String, Path, description = "Model name", example = "fer2013")),
    request_body(content = Option<ModelControlRequest>, content_type = "application/json"),
    responses(
        (status = 200, description = "The model serves", body = ModelControlResponse),
        (status = 400, description = "No version of the model could be loaded; malformed body", body = crate::http::error::ErrorBody),
        (status = 404, description = "No such model in the repository", body = crate::http::error::ErrorBody),
    )
)]
pub async fn load(
    State(state): State<AppState>,
    Path(model): Path<String>,
    request: Request,
) -> Result<Json<ModelControlResponse>, Error> {
    let body = read_body(request.into_body(), state.limits.body_limit).await?;
    control_request(&body)?;
    let name = model.clone();
    blocking(state.inference.registry(), move |r| r.load_model(&name)).await?;
    Ok(Json(ModelControlResponse {
        ready_versions: state.inference.registry().ready_versions(&model),
        name: model,
    }))
}

/// Unload a model.
///
/// The model stops serving (requests already on it finish) and is not reloaded from the
/// repository until it is loaded again by request.
#[utoipa::path(
    post,
    path = "/v2/repository/models/{model}/unload",
    tag = "repository",
    params(("model" = String, Path, description = "Model name", example = "fer2013")),
    request_body(content = Option<ModelControlRequest>, content_type = "application/json"),
    responses(
        (status = 200, description = "The model no longer serves", body = ModelControlResponse),
        (status = 400, description = "Malformed body", body = crate::http::error::ErrorBody),
        (status = 404, description = "No such model", body = crate::http::error::ErrorBody),
    )
)]
pub async fn unload(
    State(state): State<AppState>,
    Path(model): Path<String>,
    request: Request,
) -> Result<Json<ModelControlResponse>, Error> {
    let body = read_body(request.into_body(), state.limits.body_limit).await?;
    control_request(&body)?;
    let name = model.clone();
    blocking(state.inference.registry(), move |r| r.unload_model(&name)).await?;
    Ok(Json(ModelControlResponse {
        ready_versions: Vec::new(),
        name: model,
    }))
}

fn control_request(body: &Bytes) -> Result<(), Error> {
    let request: ModelControlRequest = parse_body(body)?;
    if request.parameters.is_empty() {
        Ok(())
    } else {
        Err(Error::BadRequest(
            "load/unload parameters (config overrides, files) are not supported: publish the version in the repository".into(),
        ))
    }
}
