//! The Open Inference Protocol (KServe v2) over REST, as Triton serves it: health, server and
//! model metadata, Triton's model config, and inference with JSON tensors or the binary tensor
//! extension, plus the classification extension. Errors are `{"error": "<message>"}`, with the
//! same status for each error as the rest of the API.

pub mod binary;
pub mod infer;
pub mod types;

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use self::types::{
    ConfigTensor, DynamicBatching, InferRequest, LiveResponse, ModelConfig, ModelMetadata,
    ModelReadyResponse, ReadyResponse, ServerMetadata, TensorMetadata, V2ErrorBody,
};
use crate::core::inference::ModelChoice;
use crate::core::registry::LoadedModel;
use crate::core::tensors::{self, IMAGE_INPUT, PROBABILITIES_OUTPUT, TensorSpec};
use crate::error::Error;
use crate::http::AppState;
use crate::http::classify::read_body;

/// An error in the protocol's shape.
pub struct V2Error(pub Error);

impl From<Error> for V2Error {
    fn from(error: Error) -> Self {
        V2Error(error)
    }
}

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        crate::http::error::respond(
            &self.0,
            V2ErrorBody {
                error: self.0.to_string(),
            },
        )
    }
}

type V2Result<T> = Result<T, V2Error>;

/// The protocol's "false" for health and readiness: a 4xx with the reason.
fn not_ready(reason: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(V2ErrorBody { error: reason })).into_response()
}

fn path<T>(path: Result<Path<T>, PathRejection>) -> Result<T, Error> {
    path.map(|Path(p)| p)
        .map_err(|e| Error::BadRequest(format!("invalid path: {}", e.body_text())))
}

/// Server metadata.
#[utoipa::path(get, path = "/v2", tag = "kserve-v2", responses((status = 200, body = ServerMetadata)))]
pub async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "fer-server".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: ["classification", "binary_tensor_data", "model_repository"]
            .map(String::from)
            .to_vec(),
    })
}

/// Server liveness (`{"live": true}`, as the Open Inference Protocol defines it).
#[utoipa::path(get, path = "/v2/health/live", tag = "kserve-v2", responses((status = 200, description = "Alive", body = LiveResponse)))]
pub async fn live() -> Json<LiveResponse> {
    Json(LiveResponse { live: true })
}

/// Server readiness: the default model serves and the server is not stopping.
#[utoipa::path(
    get,
    path = "/v2/health/ready",
    tag = "kserve-v2",
    responses(
        (status = 200, description = "Ready", body = ReadyResponse),
        (status = 400, description = "Not ready (the protocol's 4xx)", body = V2ErrorBody),
    )
)]
pub async fn ready(State(state): State<AppState>) -> Response {
    match state.inference.readiness() {
        Ok(()) => Json(ReadyResponse { ready: true }).into_response(),
        Err(e) => not_ready(e.to_string()),
    }
}

fn metadata(model: &LoadedModel, versions: Vec<String>) -> ModelMetadata {
    let (inputs, outputs) = tensors::model_tensors(model);
    let spec = |t: TensorSpec| TensorMetadata {
        name: t.name,
        datatype: t.datatype.into(),
        shape: t.shape,
    };
    ModelMetadata {
        name: model.manifest.name.clone(),
        versions,
        platform: "onnxruntime_onnx".into(),
        inputs: inputs.into_iter().map(spec).collect(),
        outputs: outputs.into_iter().map(spec).collect(),
    }
}

fn resolve(state: &AppState, name: &str, version: Option<&str>) -> Result<Arc<LoadedModel>, Error> {
    let choice = ModelChoice::from_protocol(name, version.unwrap_or(""))?;
    state.inference.resolve(&choice)
}

/// Model metadata (the newest ready version).
#[utoipa::path(
    get,
    path = "/v2/models/{model}",
    tag = "kserve-v2",
    params(("model" = String, Path, example = "ferplus")),
    responses(
        (status = 200, body = ModelMetadata),
        (status = 404, description = "Unknown model", body = V2ErrorBody),
        (status = 503, description = "No version is ready", body = V2ErrorBody),
    )
)]
pub async fn model_metadata(
    State(state): State<AppState>,
    model: Result<Path<String>, PathRejection>,
) -> V2Result<Json<ModelMetadata>> {
    let name = path(model)?;
    let model = resolve(&state, &name, None)?;
    let versions = state.inference.registry().ready_versions(&name);
    Ok(Json(metadata(
        &model,
        versions.iter().map(u64::to_string).collect(),
    )))
}

/// Metadata of one model version.
#[utoipa::path(
    get,
    path = "/v2/models/{model}/versions/{version}",
    tag = "kserve-v2",
    params(("model" = String, Path, example = "ferplus"), ("version" = u64, Path, minimum = 0, maximum = 9_223_372_036_854_775_807_i64, description = "Version number")),
    responses(
        (status = 200, body = ModelMetadata),
        (status = 400, description = "The version is not a number", body = V2ErrorBody),
        (status = 404, description = "Unknown model or version", body = V2ErrorBody),
        (status = 503, description = "The version is not ready", body = V2ErrorBody),
    )
)]
pub async fn version_metadata(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
) -> V2Result<Json<ModelMetadata>> {
    let (name, version) = path(params)?;
    let model = resolve(&state, &name, Some(&version))?;
    Ok(Json(metadata(&model, vec![version])))
}

/// Ready: 200; known but not ready: the protocol's 400; unknown or malformed: as every route.
fn readiness(state: &AppState, name: &str, version: Option<&str>) -> Response {
    match resolve(state, name, version) {
        Ok(_) => Json(ModelReadyResponse {
            name: name.to_string(),
            ready: true,
        })
        .into_response(),
        Err(e @ Error::ModelNotReady { .. }) => not_ready(e.to_string()),
        Err(e) => V2Error(e).into_response(),
    }
}

/// Model readiness.
#[utoipa::path(
    get,
    path = "/v2/models/{model}/ready",
    tag = "kserve-v2",
    params(("model" = String, Path, example = "ferplus")),
    responses(
        (status = 200, description = "Ready", body = ModelReadyResponse),
        (status = 400, description = "Not ready; a version that is not a number", body = V2ErrorBody),
        (status = 404, description = "Unknown model or version", body = V2ErrorBody),
    )
)]
pub async fn model_ready(
    State(state): State<AppState>,
    model: Result<Path<String>, PathRejection>,
) -> V2Result<Response> {
    Ok(readiness(&state, &path(model)?, None))
}

/// Readiness of one model version.
#[utoipa::path(
    get,
    path = "/v2/models/{model}/versions/{version}/ready",
    tag = "kserve-v2",
    params(("model" = String, Path, example = "ferplus"), ("version" = u64, Path, minimum = 0, maximum = 9_223_372_036_854_775_807_i64, description = "Version number")),
    responses(
        (status = 200, description = "Ready", body = ModelReadyResponse),
        (status = 400, description = "Not ready; a version that is not a number", body = V2ErrorBody),
        (status = 404, description = "Unknown model or version", body = V2ErrorBody),
    )
)]
pub async fn version_ready(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
) -> V2Result<Response> {
    let (name, version) = path(params)?;
    Ok(readiness(&state, &name, Some(&version)))
}

/// Triton's model configuration.
#[utoipa::path(
    get,
    path = "/v2/models/{model}/config",
    tag = "kserve-v2",
    params(("model" = String, Path, example = "ferplus")),
    responses(
        (status = 200, body = ModelConfig),
        (status = 404, description = "Unknown model", body = V2ErrorBody),
        (status = 503, description = "No version is ready", body = V2ErrorBody),
    )
)]
pub async fn model_config(
    State(state): State<AppState>,
    model: Result<Path<String>, PathRejection>,
) -> V2Result<Json<ModelConfig>> {
    let model = resolve(&state, &path(model)?, None)?;
    let m = &model.manifest;
    let classes = m.labels.len() as i64;
    Ok(Json(ModelConfig {
        name: m.name.clone(),
        platform: "onnxruntime_onnx".into(),
        backend: "onnxruntime".into(),
        max_batch_size: state.inference.max_images(),
        input: vec![
            ConfigTensor {
                name: m.input.name.clone(),
                data_type: "TYPE_FP32".into(),
                format: Some("FORMAT_NCHW".into()),
                dims: vec![
                    m.input.channels.count() as i64,
                    m.input.height as i64,
                    m.input.width as i64,
                ],
            },
            ConfigTensor {
                name: IMAGE_INPUT.into(),
                data_type: "TYPE_STRING".into(),
                format: None,
                dims: vec![1],
            },
        ],
        output: [m.output.name.as_str(), PROBABILITIES_OUTPUT]
            .iter()
            .map(|name| ConfigTensor {
                name: name.to_string(),
                data_type: "TYPE_FP32".into(),
                format: None,
                dims: vec![classes],
            })
            .collect(),
        dynamic_batching: DynamicBatching {
            preferred_batch_size: vec![model.max_batch_size],
            max_queue_delay_microseconds: state.inference.registry().max_queue_delay().as_micros()
                as u64,
        },
    }))
}

/// Inference (newest ready version).
///
/// JSON body, or with the binary tensor extension a JSON header of `Inference-Header-Content-Length`
/// bytes followed by the tensors' bytes. One input: the model's FP32 `[batch, C, H, W]` tensor,
/// normalised as its manifest says, or `image`, BYTES `[batch]` of encoded images (JSON: base64
/// strings) that the server decodes and preprocesses. Outputs: the graph's output and
/// `probabilities`, as FP32 `[batch, classes]`, or with `parameters.classification = k` as BYTES
/// `"score:index:label"` strings `[batch, k]`.
#[utoipa::path(
    post,
    path = "/v2/models/{model}/infer",
    tag = "kserve-v2",
    params(("model" = String, Path, example = "ferplus")),
    request_body(content = InferRequest, content_type = "application/json"),
    responses(
        (status = 200, body = types::InferResponse),
        (status = 400, description = "Malformed request; wrong shape, datatype or size; a version that is not a number", body = V2ErrorBody),
        (status = 404, description = "Unknown model or version", body = V2ErrorBody),
        (status = 408, description = "The body did not arrive within --body-read-timeout-ms", body = V2ErrorBody),
        (status = 413, description = "Body over the size limit", body = V2ErrorBody),
        (status = 422, description = "More images than --max-images, or an image over the pixel limits", body = V2ErrorBody),
        (status = 429, description = "Queue full or too many requests in progress; retry after the Retry-After header's seconds", body = V2ErrorBody),
        (status = 503, description = "Model not ready, or the server is shutting down", body = V2ErrorBody),
        (status = 504, description = "The request took longer than --request-timeout-ms", body = V2ErrorBody),
    )
)]
pub async fn model_infer(
    State(state): State<AppState>,
    model: Result<Path<String>, PathRejection>,
    request: Request,
) -> V2Result<Response> {
    let name = path(model)?;
    Ok(run_infer(&state, &name, None, request).await?)
}

/// Inference on one model version.
#[utoipa::path(
    post,
    path = "/v2/models/{model}/versions/{version}/infer",
    tag = "kserve-v2",
    params(("model" = String, Path, example = "ferplus"), ("version" = u64, Path, minimum = 0, maximum = 9_223_372_036_854_775_807_i64, description = "Version number")),
    request_body(content = InferRequest, content_type = "application/json"),
    responses(
        (status = 200, body = types::InferResponse),
        (status = 400, description = "Malformed request; wrong shape, datatype or size; a version that is not a number", body = V2ErrorBody),
        (status = 404, description = "Unknown model or version", body = V2ErrorBody),
        (status = 408, description = "The body did not arrive within --body-read-timeout-ms", body = V2ErrorBody),
        (status = 413, description = "Body over the size limit", body = V2ErrorBody),
        (status = 422, description = "More images than --max-images, or an image over the pixel limits", body = V2ErrorBody),
        (status = 429, description = "Queue full or too many requests in progress; retry after the Retry-After header's seconds", body = V2ErrorBody),
        (status = 503, description = "Model not ready, or the server is shutting down", body = V2ErrorBody),
        (status = 504, description = "The request took longer than --request-timeout-ms", body = V2ErrorBody),
    )
)]
pub async fn version_infer(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> V2Result<Response> {
    let (name, version) = path(params)?;
    Ok(run_infer(&state, &name, Some(&version), request).await?)
}

async fn run_infer(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    request: Request,
) -> Result<Response, Error> {
    let header_length = match request.headers().get(binary::HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    Error::BadRequest(format!("{} must be a byte count", binary::HEADER_LENGTH))
                })?,
        ),
    };
    let choice = ModelChoice::from_protocol(name, version.unwrap_or(""))?;
    let body = read_body(request.into_body(), state.limits.body_limit).await?;
    let (json, tensors) = binary::split(body, header_length)?;
    let parsed: InferRequest = serde_json::from_slice(&json)
        .map_err(|e| Error::BadRequest(format!("invalid inference request JSON: {e}")))?;
    let id = parsed.id.clone();
    let (request, encoding) = infer::to_tensors(parsed, tensors)?;
    let inferred = state.inference.infer_tensors(&choice, request).await?;
    let (header, binary_section) = infer::from_tensors(inferred, id, &encoding);
    let header = serde_json::to_vec(&header).map_err(|_| Error::Internal)?;
    if binary_section.is_empty() {
        return Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            header,
        )
            .into_response());
    }
    let header_len = header.len();
    let mut body = header;
    body.extend_from_slice(&binary_section);
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        body,
    )
        .into_response();
    response
        .headers_mut()
        .insert(binary::HEADER_LENGTH, HeaderValue::from(header_len));
    Ok(response)
}
