//! `inference.GRPCInferenceService`: the Open Inference Protocol over gRPC, as tritonclient speaks
//! it. A request is translated to the core's tensors (`raw_input_contents` or typed `contents`)
//! and runs through the same `Inference::infer_tensors` as the REST `/v2/.../infer`; every output
//! comes back in `raw_output_contents`.

use std::pin::Pin;
use std::time::Instant;

use bytes::Bytes;
use futures::Stream;
use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::observe;
use super::proto::inference as pb;
use super::proto::inference::grpc_inference_service_server::GrpcInferenceService;
use crate::core::inference::ModelChoice;
use crate::core::tensors::{
    self, InputTensor, OutputRequest, TensorData, TensorRequest, TensorSpec, unsupported_datatype,
};
use crate::error::Error;
use crate::state::AppState;

pub struct InferenceService {
    pub state: AppState,
}

/// The `classification` parameter of a requested output: its `k`, 0 meaning none as in Triton.
fn classification(
    output: &str,
    parameters: &std::collections::HashMap<String, pb::InferParameter>,
) -> Result<Option<usize>, Error> {
    use pb::infer_parameter::ParameterChoice;
    let k = match parameters
        .get("classification")
        .map(|p| &p.parameter_choice)
    {
        None => return Ok(None),
        Some(Some(ParameterChoice::Int64Param(k))) => u64::try_from(*k).ok(),
        Some(Some(ParameterChoice::Uint64Param(k))) => Some(*k),
        Some(_) => None,
    };
    match k {
        Some(0) => Ok(None),
        Some(k) => Ok(Some(k as usize)),
        None => Err(Error::InvalidTensor(format!(
            "output {output:?}: classification must be a non-negative integer"
        ))),
    }
}

/// The gRPC request as the core's tensors: each input's data from `raw_input_contents` (the
/// protocol's binary layout) or its typed `contents`.
fn to_tensors(request: pb::ModelInferRequest) -> Result<TensorRequest, Error> {
    let raw = request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(Error::InvalidTensor(format!(
            "{} raw_input_contents for {} inputs",
            raw.len(),
            request.inputs.len()
        )));
    }
    let inputs = request
        .inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| {
            let data = match (raw.get(i), input.contents) {
                (Some(bytes), _) => {
                    TensorData::from_raw(&input.datatype, &Bytes::from(bytes.clone()), &input.name)?
                }
                (None, Some(c)) => match input.datatype.as_str() {
                    "FP32" => TensorData::Fp32(c.fp32_contents),
                    "BYTES" => {
                        TensorData::Bytes(c.bytes_contents.into_iter().map(Bytes::from).collect())
                    }
                    other => return Err(unsupported_datatype(&input.name, other)),
                },
                (None, None) => {
                    return Err(Error::InvalidTensor(format!(
                        "input {:?} has neither contents nor raw_input_contents",
                        input.name
                    )));
                }
            };
            Ok(InputTensor {
                name: input.name,
                shape: input.shape,
                data,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = (!request.outputs.is_empty())
        .then(|| {
            request
                .outputs
                .into_iter()
                .map(|o| {
                    Ok(OutputRequest {
                        classification: classification(&o.name, &o.parameters)?,
                        name: o.name,
                    })
                })
                .collect::<Result<Vec<_>, Error>>()
        })
        .transpose()?;
    Ok(TensorRequest { inputs, outputs })
}

/// One inference, answered with every output in `raw_output_contents`, as tritonclient reads it.
async fn model_infer(
    state: &AppState,
    request: pb::ModelInferRequest,
) -> Result<pb::ModelInferResponse, Error> {
    let choice = ModelChoice::from_protocol(&request.model_name, &request.model_version)?;
    let id = request.id.clone();
    let tensors = to_tensors(request)?;
    let inferred = state.inference.infer_tensors(&choice, tensors).await?;
    let (outputs, raw) = inferred
        .outputs
        .into_iter()
        .map(|output| {
            let tensor = pb::model_infer_response::InferOutputTensor {
                name: output.name,
                datatype: output.data.datatype().into(),
                shape: output.shape.iter().map(|d| *d as i64).collect(),
                parameters: Default::default(),
                contents: None,
            };
            (tensor, output.data.to_raw())
        })
        .unzip();
    Ok(pb::ModelInferResponse {
        model_name: inferred.model.name,
        model_version: inferred.model.version.to_string(),
        id,
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
        let ready = state.inference.readiness().is_ok();
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        let result = ModelChoice::from_protocol(&r.name, &r.version)
            .map(|choice| self.state.inference.resolve(&choice).is_ok());
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
        let result = ModelChoice::from_protocol(&r.name, &r.version)
            .and_then(|choice| self.state.inference.resolve(&choice))
            .map(|model| {
                let (inputs, outputs) = tensors::model_tensors(&model);
                let spec = |t: TensorSpec| pb::model_metadata_response::TensorMetadata {
                    name: t.name,
                    datatype: t.datatype.into(),
                    shape: t.shape,
                };
                pb::ModelMetadataResponse {
                    name: model.manifest.name.clone(),
                    versions: vec![model.manifest.version.to_string()],
                    platform: "onnxruntime_onnx".into(),
                    inputs: inputs.into_iter().map(spec).collect(),
                    outputs: outputs.into_iter().map(spec).collect(),
                }
            });
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
                            state.inference.metrics().fail(e.code());
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
    fn typed_and_raw_contents_become_the_same_tensors() {
        let typed = pb::ModelInferRequest {
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
            ],
            ..Default::default()
        };
        let raw = pb::ModelInferRequest {
            inputs: vec![input("x", "FP32", None), input("image", "BYTES", None)],
            raw_input_contents: to_tensors(typed.clone())
                .unwrap()
                .inputs
                .iter()
                .map(|i| i.data.to_raw())
                .collect(),
            ..Default::default()
        };
        for request in [typed, raw] {
            let tensors = to_tensors(request).unwrap();
            assert_eq!(tensors.inputs[0].data, TensorData::Fp32(vec![1.0, -2.5]));
            assert_eq!(
                tensors.inputs[1].data,
                TensorData::Bytes(vec![Bytes::from_static(b"ab"), Bytes::from_static(b"c")])
            );
            assert!(tensors.outputs.is_none());
        }
    }

    #[test]
    fn raw_contents_must_match_the_inputs_and_data_must_be_there() {
        let request = pb::ModelInferRequest {
            inputs: vec![input("x", "FP32", None), input("y", "FP32", None)],
            raw_input_contents: vec![vec![0; 4]],
            ..Default::default()
        };
        assert!(matches!(to_tensors(request), Err(Error::InvalidTensor(_))));
        let empty = pb::ModelInferRequest {
            inputs: vec![input("x", "FP32", None)],
            ..Default::default()
        };
        assert!(matches!(to_tensors(empty), Err(Error::InvalidTensor(m)) if m.contains("neither")));
    }

    #[test]
    fn classification_is_a_non_negative_integer() {
        use pb::infer_parameter::ParameterChoice;
        let with = |choice| {
            std::collections::HashMap::from([(
                "classification".to_string(),
                pb::InferParameter {
                    parameter_choice: Some(choice),
                },
            )])
        };
        assert_eq!(classification("o", &Default::default()).unwrap(), None);
        assert_eq!(
            classification("o", &with(ParameterChoice::Int64Param(3))).unwrap(),
            Some(3)
        );
        assert_eq!(
            classification("o", &with(ParameterChoice::Uint64Param(0))).unwrap(),
            None
        );
        assert!(classification("o", &with(ParameterChoice::Int64Param(-1))).is_err());
        assert!(classification("o", &with(ParameterChoice::StringParam("2".into()))).is_err());
    }
}
