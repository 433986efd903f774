//! `POST /v1/classify`: face crops in (raw image, multipart, or JSON base64), predictions out.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::header;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::core::classify::Prediction;
use crate::core::inference::{ModelChoice, ModelId, check_image_limit};
use crate::error::Error;
use crate::http::AppState;

/// Query parameters; an unknown one is a 400 (a misspelt `top_k` would otherwise be ignored).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ClassifyQuery {
    /// Model name (default: the server's default model).
    pub model: Option<String>,
    /// Model version (default: the newest ready version).
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub version: Option<u64>,
    /// Return only the `top_k` best scores per image, at least 1 (default: every label).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 4_294_967_295_u64)]
    pub top_k: Option<u32>,
}

/// JSON request body: base64-encoded images (a `data:image/...;base64,` prefix is accepted).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"images": [EXAMPLE_IMAGE]}))]
pub struct ClassifyJson {
    /// One to `--max-images` images, in order.
    #[schema(min_items = 1, value_type = Vec<ImageBase64>)]
    pub images: Vec<String>,
}

/// One image, base64-encoded.
// Describes the wire format in the OpenAPI document; the handler reads the strings as they come.
#[derive(ToSchema)]
#[schema(value_type = String, min_length = 1)]
#[allow(dead_code)]
pub struct ImageBase64(String);

/// A 48×48 grey gradient as a PNG data URL: a valid image for the description's examples.
pub const EXAMPLE_IMAGE: &str = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAADAAAAAwCAAAAAByaaZbAAAAHUlEQVR42mNkYCUNMI2CUTAKRsEoGAWjYBSMLAAAZrQS68AssD0AAAAASUVORK5CYII=";

/// One image file as the whole body (JPEG, PNG, WebP, BMP or GIF).
// Describes the wire format in the OpenAPI document; the handler reads the bytes as they come.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct ImageFile(Vec<u8>);

/// A multipart body: the images as `image` parts (files), in order.
// Describes the wire format in the OpenAPI document; the handler reads the parts as they stream in.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ImageUpload {
    /// One to `--max-images` image files.
    #[schema(value_type = Vec<ImageFile>, min_items = 1)]
    pub image: Vec<Vec<u8>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelRef {
    pub name: String,
    pub version: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClassifyResult {
    /// The most likely label.
    pub label: String,
    /// Its probability.
    pub confidence: f32,
    /// Probability by label (the `top_k` best, or all).
    pub scores: BTreeMap<String, f32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "model": {"name": "ferplus", "version": 1},
    "results": [{"label": "happiness", "confidence": 0.9275,
                 "scores": {"happiness": 0.9275, "contempt": 0.0132, "disgust": 0.0117}}]
}))]
pub struct ClassifyResponse {
    pub model: ModelRef,
    /// One result per image, in input order.
    pub results: Vec<ClassifyResult>,
}

/// Classify face crops.
///
/// Send one image as the raw body (`Content-Type: image/jpeg`, `image/png`, `image/webp`,
/// `image/bmp` or `application/octet-stream`), several as `multipart/form-data` parts named
/// `image`, or JSON `{"images": ["<base64>", ...]}`. Images are decoded (EXIF orientation
/// honoured), converted and resized as the model's manifest declares.
#[utoipa::path(
    post,
    path = "/v1/classify",
    tag = "inference",
    params(ClassifyQuery),
    request_body(
        description = "The image(s) to classify",
        content(
            (ImageFile = "image/*"),
            (ImageUpload = "multipart/form-data"),
            (ClassifyJson = "application/json"),
        ),
    ),
    responses(
        (status = 200, description = "One prediction per image, in input order", body = ClassifyResponse),
        (status = 400, description = "Empty, corrupt or truncated image; malformed body", body = crate::http::error::ErrorBody),
        (status = 404, description = "Unknown model or version", body = crate::http::error::ErrorBody),
        (status = 408, description = "The body did not arrive within --body-read-timeout-ms", body = crate::http::error::ErrorBody),
        (status = 413, description = "Body over the size limit", body = crate::http::error::ErrorBody),
        (status = 415, description = "Unsupported content type or image format", body = crate::http::error::ErrorBody),
        (status = 422, description = "Image over the pixel limits, or too many images", body = crate::http::error::ErrorBody),
        (status = 429, description = "Queue full or too many requests in progress; retry after the Retry-After header's seconds", body = crate::http::error::ErrorBody),
        (status = 503, description = "Model not ready, or the server is shutting down", body = crate::http::error::ErrorBody),
        (status = 504, description = "The request took longer than --request-timeout-ms; its queued work was dropped", body = crate::http::error::ErrorBody),
    )
)]
pub async fn classify_handler(
    State(state): State<AppState>,
    query: Result<Query<ClassifyQuery>, QueryRejection>,
    request: Request,
) -> Result<Json<ClassifyResponse>, Error> {
    let Query(query) =
        query.map_err(|e| Error::BadRequest(format!("invalid query: {}", e.body_text())))?;
    let choice = ModelChoice {
        name: query.model,
        version: query.version,
    };
    let images = read_images(
        state.limits.body_limit,
        state.inference.max_images(),
        request,
    )
    .await?;
    let classified = state
        .inference
        .classify(&choice, images, query.top_k)
        .await?;
    Ok(Json(ClassifyResponse {
        model: classified.model.into(),
        results: classified
            .predictions
            .into_iter()
            .map(ClassifyResult::from)
            .collect(),
    }))
}

impl From<ModelId> for ModelRef {
    fn from(model: ModelId) -> Self {
        Self {
            name: model.name,
            version: model.version,
        }
    }
}

impl From<Prediction> for ClassifyResult {
    fn from(p: Prediction) -> Self {
        Self {
            label: p.label,
            confidence: p.confidence,
            scores: p.scores.into_iter().collect(),
        }
    }
}

/// The encoded images of a request, by content type: a raw image, multipart `image` parts, or
/// JSON base64, within the body limit and `--max-images`.
pub async fn read_images(
    limit: usize,
    max_images: usize,
    request: Request,
) -> Result<Vec<Bytes>, Error> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    if essence.starts_with("image/") || essence == "application/octet-stream" {
        Ok(vec![read_body(request.into_body(), limit).await?])
    } else if essence == "multipart/form-data" {
        read_multipart(limit, max_images, request).await
    } else if essence == "application/json" {
        let body = read_body(request.into_body(), limit).await?;
        let json: ClassifyJson = serde_json::from_slice(&body)
            .map_err(|e| Error::BadRequest(format!("invalid JSON body: {e}")))?;
        check_image_limit(json.images.len(), max_images)?;
        json.images
            .iter()
            .enumerate()
            .map(|(index, text)| {
                let payload = match text.split_once(";base64,") {
                    Some((prefix, data)) if prefix.starts_with("data:") => data,
                    _ => text.as_str(),
                };
                base64::engine::general_purpose::STANDARD
                    .decode(payload.trim())
                    .map(Bytes::from)
                    .map_err(|e| Error::BadRequest(format!("image {index}: invalid base64: {e}")))
            })
            .collect()
    } else if essence.is_empty() {
        // Nothing sent is a request without an image; bytes of no declared type are a 415.
        if read_body(request.into_body(), limit).await?.is_empty() {
            Err(Error::BadRequest("the request holds no image".into()))
        } else {
            Err(Error::UnsupportedMediaType("(none)".into()))
        }
    } else {
        Err(Error::UnsupportedMediaType(essence))
    }
}

pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, Error> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|e| body_error(&e, limit))
}

fn body_error(error: &(dyn std::error::Error + 'static), limit: usize) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return Error::PayloadTooLarge { limit };
        }
        source = e.source();
    }
    Error::BadRequest(format!("cannot read the request body: {error}"))
}

async fn read_multipart(
    limit: usize,
    max_images: usize,
    request: Request,
) -> Result<Vec<Bytes>, Error> {
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| Error::BadRequest(format!("invalid multipart body: {}", e.body_text())))?;
    let mut images = Vec::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(Error::PayloadTooLarge { limit });
            }
            Err(e) => {
                return Err(Error::BadRequest(format!(
                    "invalid multipart body: {}",
                    e.body_text()
                )));
            }
        };
        let name = field.name().unwrap_or("").to_string();
        if name != "image" {
            return Err(Error::BadRequest(format!(
                "unexpected multipart field {name:?}: send each image as a part named \"image\""
            )));
        }
        check_image_limit(images.len() + 1, max_images)?;
        let bytes = field.bytes().await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                Error::PayloadTooLarge { limit }
            } else {
                Error::BadRequest(format!("invalid multipart body: {}", e.body_text()))
            }
        })?;
        images.push(bytes);
    }
    Ok(images)
}
