//! `fer.v1.Fer`: classify face crops, and stream video frames. A stream keeps up to
//! [`STREAM_IN_FLIGHT`] frames in flight, so frames of one stream share inference batches, and
//! answers them in the order they came.

use std::pin::Pin;
use std::time::Instant;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::inference::STREAM_IN_FLIGHT;
use super::observe;
use super::proto::fer::v1 as pb;
use super::proto::fer::v1::fer_server::Fer;
use crate::core::analyze;
use crate::core::classify::{self, Prediction, check_top_k};
use crate::error::Error;
use crate::state::AppState;

pub struct FerService {
    pub state: AppState,
}

fn prediction(p: Prediction) -> pb::Prediction {
    pb::Prediction {
        label: p.label,
        confidence: p.confidence,
        scores: p
            .scores
            .into_iter()
            .map(|(label, probability)| pb::Score { label, probability })
            .collect(),
    }
}

/// Classifies encoded images with the named (or default) model; `(name, version, predictions)`.
async fn classify_images(
    state: &AppState,
    model: &str,
    version: u64,
    images: Vec<Bytes>,
    top: Option<usize>,
) -> Result<(String, u64, Vec<Prediction>), Error> {
    let name = if model.is_empty() {
        &state.default_model
    } else {
        model
    };
    let model = state
        .registry
        .resolve(name, (version > 0).then_some(version))?;
    state.limits.check_image_count(images.len())?;
    let work = async {
        let pixels = classify::decode_all(&model, images, &state.metrics).await?;
        classify::classify(&model, pixels, top, &state.metrics).await
    };
    let predictions = state.admit(work).await?;
    Ok((
        model.manifest.name.clone(),
        model.manifest.version,
        predictions,
    ))
}

/// Finds and classifies the faces of one whole frame.
async fn analyze_frame(
    state: &AppState,
    model: &str,
    image: Bytes,
    top: Option<usize>,
) -> Result<(String, u64, Vec<pb::Face>), Error> {
    let detectors = state
        .detectors
        .clone()
        .ok_or(Error::DetectorNotConfigured)?;
    let name = if model.is_empty() {
        &state.default_model
    } else {
        model
    };
    let model = state.registry.resolve(name, None)?;
    let options = detectors.defaults;
    let work = analyze::analyze(
        &detectors,
        &model,
        vec![image],
        options,
        top,
        &state.metrics,
    );
    let mut analyses = state.admit(work).await?;
    let faces = analyses
        .pop()
        .map(|a| a.faces)
        .unwrap_or_default()
        .into_iter()
        .map(|f| pb::Face {
            x: f.detection.x0,
            y: f.detection.y0,
            width: f.detection.x1 - f.detection.x0,
            height: f.detection.y1 - f.detection.y0,
            score: f.detection.score,
            prediction: Some(prediction(f.prediction)),
        })
        .collect();
    Ok((model.manifest.name.clone(), model.manifest.version, faces))
}

async fn frame_result(state: AppState, frame: pb::Frame) -> pb::FrameResult {
    let started = Instant::now();
    let image = Bytes::from(frame.image);
    let result = match check_top_k(frame.top_k) {
        Err(e) => Err(e),
        Ok(top) if frame.detect => analyze_frame(&state, &frame.model, image, top)
            .await
            .map(|(model, version, faces)| (model, version, None, faces)),
        Ok(top) => classify_images(&state, &frame.model, 0, vec![image], top)
            .await
            .map(|(model, version, mut p)| (model, version, p.pop().map(prediction), Vec::new())),
    };
    let mut out = pb::FrameResult {
        index: frame.index,
        timestamp: frame.timestamp,
        ..Default::default()
    };
    match observe(&state, "StreamFrames.frame", started, result) {
        Ok((model, version, prediction, faces)) => {
            out.model = model;
            out.version = version;
            out.prediction = prediction;
            out.faces = faces;
        }
        Err(status) => out.error = status.message().to_string(),
    }
    out
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<pb::FrameResult, Status>> + Send>>;

#[tonic::async_trait]
impl Fer for FerService {
    async fn classify(
        &self,
        request: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        let images = r.images.into_iter().map(Bytes::from).collect();
        let result = match check_top_k(r.top_k) {
            Ok(top) => classify_images(&self.state, &r.model, r.version, images, top).await,
            Err(e) => Err(e),
        };
        let (model, version, predictions) = observe(&self.state, "Classify", started, result)?;
        Ok(Response::new(pb::ClassifyResponse {
            model,
            version,
            results: predictions.into_iter().map(prediction).collect(),
        }))
    }

    type StreamFramesStream = FrameStream;

    async fn stream_frames(
        &self,
        request: Request<Streaming<pb::Frame>>,
    ) -> Result<Response<Self::StreamFramesStream>, Status> {
        let state = self.state.clone();
        let results = request
            .into_inner()
            .map(move |frame| {
                let state = state.clone();
                async move { Ok(frame_result(state, frame?).await) }
            })
            .buffered(STREAM_IN_FLIGHT);
        Ok(Response::new(Box::pin(results)))
    }
}
