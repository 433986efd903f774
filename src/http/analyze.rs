//! `POST /v1/analyze`: photos or video frames in, every face found with its box, detection score,
//! and expression.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::core::analyze::{Analysis, Face};
use crate::core::inference::{AnalyzeOverrides, ModelChoice};
use crate::error::Error;
use crate::http::AppState;
use crate::http::classify::{ModelRef, read_images};

/// Query parameters; an unknown one is a 400.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AnalyzeQuery {
    /// Expression model (default: the server's default model).
    pub model: Option<String>,
    /// Model version (default: the newest ready version).
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub version: Option<u64>,
    /// Return only the `top_k` best scores per face, at least 1 (default: every label).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 4_294_967_295_u64)]
    pub top_k: Option<u32>,
    /// Lowest face-detection score kept, in [0, 1] (default: `--detector-score-threshold`).
    #[param(minimum = 0, maximum = 1)]
    pub score_threshold: Option<f32>,
    /// Smallest face side kept, in pixels, at most 1,000,000 (default: `--min-face-size`).
    #[param(minimum = 0, maximum = 1_000_000)]
    pub min_face_size: Option<f32>,
    /// Context added beyond the training data's framing, as a share of the crop's side on each
    /// side, in [-0.25, 2] (default: `--face-margin`, 0: faces framed as the training data).
    #[param(minimum = -0.25, maximum = 2)]
    pub margin: Option<f32>,
    /// Turn each face upright by its landmarks before classifying it (default: `--align-faces`,
    /// true; detectors without landmarks crop the box either way).
    pub align: Option<bool>,
}

/// A face box in pixels of the original image (EXIF orientation applied).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FaceBox {
    pub x: f32,
    pub y: f32,
    pub width: f32,
    pub height: f32,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AnalyzedFace {
    #[serde(rename = "box")]
    pub bbox: FaceBox,
    /// Detection score.
    pub score: f32,
    /// Five landmarks `[x, y]` in pixels of the original image: the eye on the image's left,
    /// the other eye, the nose tip, the mouth corner on the image's left, the other one
    /// (detectors that find them: CenterFace).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub landmarks: Option<Vec<[f32; 2]>>,
    pub label: String,
    pub confidence: f32,
    pub scores: BTreeMap<String, f32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AnalyzedImage {
    pub width: u32,
    pub height: u32,
    /// Best detection first.
    pub faces: Vec<AnalyzedFace>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "model": {"name": "ferplus", "version": 1},
    "detector": "centerface",
    "results": [{"width": 1024, "height": 484, "faces": [{
        "box": {"x": 300.7, "y": 100.9, "width": 107.2, "height": 131.0},
        "score": 0.912,
        "landmarks": [[319.4, 158.8], [366.8, 148.9], [344.6, 179.5], [335.2, 202.2], [375.9, 193.8]],
        "label": "happiness", "confidence": 0.904, "scores": {"happiness": 0.904}
    }]}]
}))]
pub struct AnalyzeResponse {
    pub model: ModelRef,
    /// The face detector (its model file's name).
    pub detector: String,
    /// One entry per image, in input order.
    pub results: Vec<AnalyzedImage>,
}

/// Find and classify the faces in photos.
///
/// The same bodies as `/v1/classify` (raw image, multipart `image` parts, JSON base64), but whole
/// photos or video frames: each is decoded at full size, faces are detected (CenterFace by default,
/// or UltraFace; non-maximum suppression), each face is turned upright by its landmarks and framed
/// as the training data (or cropped as a square around its box), and classified like a face crop.
#[utoipa::path(
    post,
    path = "/v1/analyze",
    tag = "inference",
    params(AnalyzeQuery),
    request_body(
        description = "The photo(s) to analyse",
        content(
            (crate::http::classify::ImageFile = "image/*"),
            (crate::http::classify::ImageUpload = "multipart/form-data"),
            (crate::http::classify::ClassifyJson = "application/json"),
        ),
    ),
    responses(
        (status = 200, description = "The faces of each image, in input order", body = AnalyzeResponse),
        (status = 400, description = "Corrupt image, malformed body or query", body = crate::http::error::ErrorBody),
        (status = 404, description = "Unknown model or version", body = crate::http::error::ErrorBody),
        (status = 408, description = "The body did not arrive within --body-read-timeout-ms", body = crate::http::error::ErrorBody),
        (status = 413, description = "Body over the size limit", body = crate::http::error::ErrorBody),
        (status = 415, description = "Unsupported content type or image format", body = crate::http::error::ErrorBody),
        (status = 422, description = "Image over the pixel limits, or too many images", body = crate::http::error::ErrorBody),
        (status = 429, description = "Queue full or too many requests in progress", body = crate::http::error::ErrorBody),
        (status = 501, description = "No face detector configured (--detector)", body = crate::http::error::ErrorBody),
        (status = 503, description = "Model not ready, or the server is shutting down", body = crate::http::error::ErrorBody),
        (status = 504, description = "The request took longer than --request-timeout-ms", body = crate::http::error::ErrorBody),
    )
)]
pub async fn analyze_handler(
    State(state): State<AppState>,
    query: Result<Query<AnalyzeQuery>, QueryRejection>,
    request: Request,
) -> Result<Json<AnalyzeResponse>, Error> {
    let Query(query) =
        query.map_err(|e| Error::BadRequest(format!("invalid query: {}", e.body_text())))?;
    let choice = ModelChoice {
        name: query.model,
        version: query.version,
    };
    let overrides = AnalyzeOverrides {
        score_threshold: query.score_threshold,
        min_face_size: query.min_face_size,
        margin: query.margin,
        align: query.align,
    };
    let images = read_images(
        state.limits.body_limit,
        state.inference.max_images(),
        request,
    )
    .await?;
    let analyzed = state
        .inference
        .analyze(&choice, images, query.top_k, overrides)
        .await?;
    Ok(Json(AnalyzeResponse {
        model: analyzed.model.into(),
        detector: analyzed.detector,
        results: analyzed
            .images
            .into_iter()
            .map(AnalyzedImage::from)
            .collect(),
    }))
}

impl From<Analysis> for AnalyzedImage {
    fn from(a: Analysis) -> Self {
        Self {
            width: a.width,
            height: a.height,
            faces: a.faces.into_iter().map(AnalyzedFace::from).collect(),
        }
    }
}

impl From<Face> for AnalyzedFace {
    fn from(f: Face) -> Self {
        let d = f.detection;
        Self {
            bbox: FaceBox {
                x: d.x0,
                y: d.y0,
                width: d.x1 - d.x0,
                height: d.y1 - d.y0,
            },
            score: d.score,
            landmarks: d.landmarks.map(|marks| marks.to_vec()),
            label: f.prediction.label,
            confidence: f.prediction.confidence,
            scores: f.prediction.scores.into_iter().collect(),
        }
    }
}
