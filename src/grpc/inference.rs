//! `inference.GRPCInferenceService`: the Open Inference Protocol over gRPC, as tritonclient speaks
//! it. Inference goes through the same code as the REST `/v2/.../infer`: a gRPC request becomes
//! the REST request's JSON header plus binary section (`raw_input_contents` as they are, typed
//! `contents` serialised), and the response's binary section becomes `raw_output_contents`.

use std::pin::Pin;
use std::time::Instant;

use bytes::Bytes;
use futures::Stream;
use futures::StreamExt;
use serde_json::{Map, Value, json};
use tonic::{Request, Response, Status, Streaming};

use super::observe;
use super::proto::inference as pb;
use super::proto::inference::grpc_inference_service_server::GrpcInferenceService;
use crate::error::Error;
use crate::http::kserve::binary::encode_elements;
use crate::http::kserve::infer::{IMAGE_INPUT, PROBABILITIES_OUTPUT, infer};
use crate::http::kserve::parse_version;
use crate::http::kserve::types::{InferInput, InferRequest, RequestedOutput};
use crate::state::AppState;

pub struct InferenceService {
    pub state: AppState,
}

fn parameter(p: &pb::InferParameter) -> Value {
    use pb::infer_parameter::ParameterChoice;
    match &p.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => json!(b),
        Some(ParameterChoice::Int64Param(i)) => json!(i),
        Some(ParameterChoice::StringParam(s)) => json!(s),
        Some(ParameterChoice::DoubleParam(d)) => json!(d),
        Some(ParameterChoice::Uint64Param(u)) => json!(u),
        None => Value::Null,
    }
}

fn parameters(map: &std::collections::HashMap<String, pb::InferParameter>) -> Map<String, Value> {
    map.iter().map(|(k, v)| (k.clone(), parameter(v))).collect()
}

/// The gRPC request as the REST request's JSON header and binary section.
fn to_rest(request: pb::ModelInferRequest) -> Result<(InferRequest, Bytes), Error> {
    let raw = request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(Error::InvalidTensor(format!(
            "{} raw_input_contents for {} inputs",
            raw.len(),
            request.inputs.len()
        )));
    }
    let mut binary = Vec::new();
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for (i, input) in request.inputs.into_iter().enumerate() {
        let bytes: Option<Vec<u8>> = if let Some(r) = raw.get(i) {
            Some(r.clone())
        } else if let Some(c) = &input.contents {
            if !c.fp32_contents.is_empty() {
                Some(
                    c.fp32_contents
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect(),
                )
            } else if !c.bytes_contents.is_empty() {
                Some(encode_elements(c.bytes_contents.iter().map(Vec::as_slice)))
            } else {
                None
            }
        } else {
            None
        };
        let mut params = parameters(&input.parameters);
        if let Some(bytes) = &bytes {
            params.insert("binary_data_size".into(), json!(bytes.len()));
            binary.extend_from_slice(bytes);
        }
        inputs.push(InferInput {
            name: input.name,
            shape: input.shape,
            datatype: input.datatype,
            parameters: params,
            data: None,
        });
    }
    let outputs = (!request.outputs.is_empty()).then(|| {
        request
            .outputs
            .into_iter()
            .map(|o| {
                let mut params = parameters(&o.parameters);
                params.insert("binary_data".into(), json!(true));
                RequestedOutput {
                    name: o.name,
                    parameters: params,
                }
            })
            .collect()
    });
    let mut params = parameters(&request.parameters);
    params.insert("binary_data_output".into(), json!(true));
    Ok((
        InferRequest {
            id: (!request.id.is_empty()).then_some(request.id),
            parameters: params,
            inputs,
            outputs,
        },
        Bytes::from(binary),
    ))
}

async fn model_infer(
    state: &AppState,
    request: pb::ModelInferRequest,
) -> Result<pb::ModelInferResponse, Error> {
    let version = parse_version(&request.model_version)?;
    let model = state.registry.resolve(&request.model_name, version)?;
    let (rest, binary) = to_rest(request)?;
    let work = infer(&model, rest, binary, state.limits, &state.metrics);
    let outcome = state.admit(work).await?;
    let mut offset = 0usize;
    let mut outputs = Vec::new();
    let mut raw = Vec::new();
    for output in outcome.header.outputs {
        let size = output
            .parameters
            .get("binary_data_size")
            .and_then(Value::as_u64)
            .unwrap_or(0) as usize;
        let end = (offset + size).min(outcome.binary.len());
        raw.push(outcome.binary[offset..end].to_vec());
        offset = end;
        outputs.push(pb::model_infer_response::InferOutputTensor {
            name: output.name,
            datatype: output.datatype,
            shape: output.shape.iter().map(|d| *d as i64).collect(),
            parameters: Default::default(),
            contents: None,
        });
    }
    Ok(pb::ModelInferResponse {
        model_name: outcome.header.model_name,
        model_version: outcome.header.model_version,
        id: outcome.header.id.unwrap_or_default(),
        parameters: Default::default(),
        outputs,
        raw_output_contents: raw,
    })
}

type InferStream = Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let state = &self.state;
        let ready = state.readiness().is_ok();
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        let result = parse_version(&r.version)
            .map(|version| self.state.registry.resolve(&r.name, version).is_ok());
        let ready = observe(&self.state, "ModelReady", started, result)?;
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "fer-server".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: ["classification", "model_repository"]
                .map(String::from)
                .to_vec(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        let result = (|| {
            let model = self
                .state
                .registry
                .resolve(&r.name, parse_version(&r.version)?)?;
            let m = &model.manifest;
            let tensor = |name: &str, datatype: &str, shape: Vec<i64>| {
                pb::model_metadata_response::TensorMetadata {
                    name: name.to_string(),
                    datatype: datatype.to_string(),
                    shape,
                }
            };
            let classes = m.labels.len() as i64;
            Ok(pb::ModelMetadataResponse {
                name: m.name.clone(),
                versions: vec![m.version.to_string()],
                platform: "onnxruntime_onnx".into(),
                inputs: vec![
                    tensor(
                        &m.input.name,
                        "FP32",
                        vec![
                            -1,
                            m.input.channels.count() as i64,
                            m.input.height as i64,
                            m.input.width as i64,
                        ],
                    ),
                    tensor(IMAGE_INPUT, "BYTES", vec![-1]),
                ],
                outputs: vec![
                    tensor(&m.output.name, "FP32", vec![-1, classes]),
                    tensor(PROBABILITIES_OUTPUT, "FP32", vec![-1, classes]),
                ],
            })
        })();
        Ok(Response::new(observe(
            &self.state,
            "ModelMetadata",
            started,
            result,
        )?))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let started = Instant::now();
        let result = model_infer(&self.state, request.into_inner()).await;
        Ok(Response::new(observe(
            &self.state,
            "ModelInfer",
            started,
            result,
        )?))
    }

    type ModelStreamInferStream = InferStream;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let state = self.state.clone();
        // Requests are answered in order, several in flight at once (so the batcher can batch them).
        let responses = request
            .into_inner()
            .map(move |message| {
                let state = state.clone();
                async move {
                    let request = message?;
                    let response = match model_infer(&state, request).await {
                        Ok(r) => pb::ModelStreamInferResponse {
                            error_message: String::new(),
                            infer_response: Some(r),
                        },
                        Err(e) => {
                            state.metrics.fail(e.code());
                            pb::ModelStreamInferResponse {
                                error_message: e.to_string(),
                                infer_response: None,
                            }
                        }
                    };
                    Ok(response)
                }
            })
            .buffered(STREAM_IN_FLIGHT);
        Ok(Response::new(Box::pin(responses)))
    }
}

/// Requests of one stream processed at once.
pub const STREAM_IN_FLIGHT: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    fn input(
        name: &str,
        datatype: &str,
        contents: Option<pb::InferTensorContents>,
    ) -> pb::model_infer_request::InferInputTensor {
        pb::model_infer_request::InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: vec![2],
            parameters: Default::default(),
            contents,
        }
    }

    #[test]
    fn typed_contents_become_the_binary_section_in_input_order() {
        let request = pb::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![
                input(
                    "x",
                    "FP32",
                    Some(pb::InferTensorContents {
                        fp32_contents: vec![1.0, -2.5],
                        ..Default::default()
                    }),
                ),
                input(
                    "image",
                    "BYTES",
                    Some(pb::InferTensorContents {
                        bytes_contents: vec![b"ab".to_vec(), b"c".to_vec()],
                        ..Default::default()
                    }),
                ),
                input("empty", "FP32", None),
            ],
            id: "7".into(),
            ..Default::default()
        };
        let (rest, binary) = to_rest(request).unwrap();
        assert_eq!(rest.id.as_deref(), Some("7"));
        assert_eq!(rest.parameters["binary_data_output"], json!(true));
        let sizes: Vec<Option<u64>> = rest
            .inputs
            .iter()
            .map(|i| i.parameters.get("binary_data_size").and_then(Value::as_u64))
            .collect();
        assert_eq!(sizes, [Some(8), Some(4 + 2 + 4 + 1), None]);
        let mut want = Vec::new();
        want.extend(1.0f32.to_le_bytes());
        want.extend((-2.5f32).to_le_bytes());
        want.extend(encode_elements([b"ab".as_slice(), b"c"]));
        assert_eq!(&binary[..], &want[..]);
    }

    #[test]
    fn raw_contents_must_match_the_inputs() {
        let request = pb::ModelInferRequest {
            inputs: vec![input("x", "FP32", None), input("y", "FP32", None)],
            raw_input_contents: vec![vec![0; 4]],
            ..Default::default()
        };
        assert!(matches!(to_rest(request), Err(Error::InvalidTensor(_))));
    }
}
