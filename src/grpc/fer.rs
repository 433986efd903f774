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
use crate::core::analyze::Face;
use crate::core::classify::Prediction;
use crate::core::inference::{AnalyzeOverrides, ModelChoice};
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

/// The protocol's model fields: an empty name is the default model, version 0 the newest ready.
fn choice(model: String, version: u64) -> ModelChoice {
    ModelChoice {
        name: (!model.is_empty()).then_some(model),
        version: (version > 0).then_some(version),
    }
}

fn face(f: Face) -> pb::Face {
    let d = f.detection;
    pb::Face {
        x: d.x0,
        y: d.y0,
        width: d.x1 - d.x0,
        height: d.y1 - d.y0,
        score: d.score,
        prediction: Some(prediction(f.prediction)),
    }
}

/// One frame: its expression, or with `detect` each face found in it and its expression.
async fn frame_result(state: AppState, frame: pb::Frame) -> pb::FrameResult {
    let started = Instant::now();
    let inference = &state.inference;
    let choice = choice(frame.model, 0);
    let images = vec![Bytes::from(frame.image)];
    let result = if frame.detect {
        inference
            .analyze(&choice, images, frame.top_k, AnalyzeOverrides::default())
            .await
            .map(|mut a| {
                let faces = a.images.pop().map(|i| i.faces).unwrap_or_default();
                (a.model, None, faces.into_iter().map(face).collect())
            })
    } else {
        inference
            .classify(&choice, images, frame.top_k)
            .await
            .map(|mut c| (c.model, c.predictions.pop().map(prediction), Vec::new()))
    };
    let mut out = pb::FrameResult {
        index: frame.index,
        timestamp: frame.timestamp,
        ..Default::default()
    };
    match observe(&state, "StreamFrames.frame", started, result) {
        Ok((model, prediction, faces)) => {
            out.model = model.name;
            out.version = model.version;
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
        let result = self
            .state
            .inference
            .classify(&choice(r.model, r.version), images, r.top_k)
            .await;
        let classified = observe(&self.state, "Classify", started, result)?;
        Ok(Response::new(pb::ClassifyResponse {
            model: classified.model.name,
            version: classified.model.version,
            results: classified.predictions.into_iter().map(prediction).collect(),
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
