//! The Open Inference Protocol's tensors, protocol-neutral: what `infer_tensors` takes and gives,
//! whether the request came as REST JSON, REST with the binary tensor extension, or gRPC. Two
//! inputs, one per request: the model's own FP32 NCHW tensor, normalised by the client as the
//! manifest says, or [`IMAGE_INPUT`], BYTES elements of encoded images that the server decodes
//! and preprocesses like `/v1/classify`. Two outputs: the graph's own and [`PROBABILITIES_OUTPUT`].

use std::sync::Arc;

use bytes::Bytes;

use crate::core::batcher::JobInput;
use crate::core::classify;
use crate::core::inference::check_image_limit;
use crate::core::registry::LoadedModel;
use crate::error::Error;
use crate::metrics::Metrics;

/// Name of the BYTES input of encoded images.
pub const IMAGE_INPUT: &str = "image";
/// Name of the output with softmax probabilities (beside the graph's own output).
pub const PROBABILITIES_OUTPUT: &str = "probabilities";

/// A tensor's elements, row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Fp32(Vec<f32>),
    /// One byte string per element (encoded images in, `"score:index:label"` strings out).
    Bytes(Vec<Bytes>),
}

impl TensorData {
    /// The protocol's name of the datatype.
    pub fn datatype(&self) -> &'static str {
        match self {
            TensorData::Fp32(_) => "FP32",
            TensorData::Bytes(_) => "BYTES",
        }
    }

    /// Elements in the protocol's binary layout (REST's binary extension, gRPC's raw contents):
    /// FP32 little-endian; BYTES as a 4-byte little-endian length, then the bytes.
    pub fn from_raw(datatype: &str, bytes: &Bytes, input: &str) -> Result<Self, Error> {
        match datatype {
            "FP32" => f32s(bytes, input).map(TensorData::Fp32),
            "BYTES" => elements(bytes, input).map(TensorData::Bytes),
            other => Err(unsupported_datatype(input, other)),
        }
    }

    /// The elements in the protocol's binary layout.
    pub fn to_raw(&self) -> Vec<u8> {
        match self {
            TensorData::Fp32(values) => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            TensorData::Bytes(elements) => encode_elements(elements.iter().map(|e| &e[..])),
        }
    }
}

/// The error for a datatype no input takes.
pub fn unsupported_datatype(input: &str, datatype: &str) -> Error {
    Error::InvalidTensor(format!(
        "input {input:?} has datatype {datatype}; inputs are FP32 (the model's tensor) or BYTES ({IMAGE_INPUT:?}, encoded images)"
    ))
}

/// One input tensor of a request.
#[derive(Debug, Clone)]
pub struct InputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

/// An output a request asks for.
#[derive(Debug, Clone)]
pub struct OutputRequest {
    pub name: String,
    /// The classification extension: the `k` best of each row as `"score:index:label"` strings.
    pub classification: Option<usize>,
}

/// An inference request on tensors.
#[derive(Debug, Clone)]
pub struct TensorRequest {
    pub inputs: Vec<InputTensor>,
    /// `None`: every output, as FP32.
    pub outputs: Option<Vec<OutputRequest>>,
}

/// One output tensor of the answer.
#[derive(Debug, Clone)]
pub struct OutputTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

/// A tensor's name, datatype and shape (`-1` for the batch dimension), as model metadata lists them.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

/// The inputs and outputs a model offers over the protocol (REST and gRPC metadata).
pub fn model_tensors(model: &LoadedModel) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    let m = &model.manifest;
    let classes = m.labels.len() as i64;
    let inputs = vec![
        TensorSpec {
            name: m.input.name.clone(),
            datatype: "FP32",
            shape: vec![
                -1,
                m.input.channels.count() as i64,
                m.input.height as i64,
                m.input.width as i64,
            ],
        },
        TensorSpec {
            name: IMAGE_INPUT.into(),
            datatype: "BYTES",
            shape: vec![-1],
        },
    ];
    let outputs = [m.output.name.as_str(), PROBABILITIES_OUTPUT]
        .iter()
        .map(|name| TensorSpec {
            name: name.to_string(),
            datatype: "FP32",
            shape: vec![-1, classes],
        })
        .collect();
    (inputs, outputs)
}

/// Checks a request against the model: the rows the batcher runs, and the outputs to give.
pub fn check(
    model: &LoadedModel,
    request: TensorRequest,
    max_images: usize,
) -> Result<(Rows, Vec<OutputRequest>), Error> {
    let outputs = checked_outputs(model, request.outputs)?;
    let manifest = &model.manifest;
    let Ok::<[InputTensor; 1], _>([input]) = request.inputs.try_into() else {
        return Err(Error::InvalidTensor(format!(
            "expected exactly one input, {:?} (FP32 [batch,{},{},{}]) or {IMAGE_INPUT:?} (BYTES [batch])",
            manifest.input.name,
            manifest.input.channels.count(),
            manifest.input.height,
            manifest.input.width,
        )));
    };
    let rows = if input.name == manifest.input.name {
        Rows::Tensor(tensor_rows(model, input, max_images)?)
    } else if input.name == IMAGE_INPUT {
        Rows::Images(image_elements(input, max_images)?)
    } else {
        return Err(Error::InvalidTensor(format!(
            "unknown input {:?}: model {} takes {:?} or {IMAGE_INPUT:?}",
            input.name, manifest.name, manifest.input.name
        )));
    };
    Ok((rows, outputs))
}

/// What a checked request runs: client-normalised rows, or images to decode first.
pub enum Rows {
    Tensor(Vec<Vec<f32>>),
    Images(Vec<Bytes>),
}

/// Runs checked rows through the model and builds the requested outputs.
pub async fn run(
    model: &Arc<LoadedModel>,
    rows: Rows,
    outputs: Vec<OutputRequest>,
    metrics: &Metrics,
) -> Result<Vec<OutputTensor>, Error> {
    let inputs: Vec<JobInput> = match rows {
        Rows::Tensor(rows) => rows.into_iter().map(JobInput::Tensor).collect(),
        Rows::Images(images) => classify::decode_all(model, images, metrics)
            .await?
            .into_iter()
            .map(JobInput::Pixels)
            .collect(),
    };
    let batch = inputs.len();
    let raw = classify::infer(model, inputs).await?;
    let probabilities: Vec<Vec<f32>> = raw
        .iter()
        .map(|r| classify::probabilities(model, r.clone(), metrics))
        .collect();
    let labels = &model.manifest.labels;
    Ok(outputs
        .into_iter()
        .map(|output| {
            let values = if output.name == PROBABILITIES_OUTPUT {
                &probabilities
            } else {
                &raw
            };
            match output.classification {
                Some(k) => {
                    let k = k.min(labels.len());
                    OutputTensor {
                        name: output.name,
                        shape: vec![batch, k],
                        data: TensorData::Bytes(top_k_strings(values, labels, k)),
                    }
                }
                None => OutputTensor {
                    name: output.name,
                    shape: vec![batch, labels.len()],
                    data: TensorData::Fp32(values.iter().flatten().copied().collect()),
                },
            }
        })
        .collect())
}

/// The outputs to give: those requested (known names only), or all of them.
fn checked_outputs(
    model: &LoadedModel,
    requested: Option<Vec<OutputRequest>>,
) -> Result<Vec<OutputRequest>, Error> {
    let all = [model.manifest.output.name.as_str(), PROBABILITIES_OUTPUT];
    let Some(requested) = requested else {
        return Ok(all
            .iter()
            .map(|name| OutputRequest {
                name: name.to_string(),
                classification: None,
            })
            .collect());
    };
    if let Some(unknown) = requested.iter().find(|o| !all.contains(&o.name.as_str())) {
        return Err(Error::InvalidTensor(format!(
            "unknown output {:?}: model {} has {:?}",
            unknown.name, model.manifest.name, all
        )));
    }
    Ok(requested)
}

/// Client-normalised rows from the model's FP32 input.
fn tensor_rows(
    model: &LoadedModel,
    input: InputTensor,
    max_images: usize,
) -> Result<Vec<Vec<f32>>, Error> {
    let spec = &model.manifest.input;
    let name = &input.name;
    let TensorData::Fp32(values) = input.data else {
        return Err(Error::InvalidTensor(format!(
            "input {name:?} has datatype {}; the model takes FP32",
            input.data.datatype()
        )));
    };
    let want = [
        spec.channels.count() as i64,
        spec.height as i64,
        spec.width as i64,
    ];
    let batch = match input.shape.as_slice() {
        [b, c, h, w] if [*c, *h, *w] == want && *b >= 1 => *b as usize,
        _ => {
            return Err(Error::InvalidTensor(format!(
                "input {name:?} has shape {:?}; the model takes [batch, {}, {}, {}] with batch ≥ 1",
                input.shape, want[0], want[1], want[2]
            )));
        }
    };
    check_image_limit(batch, max_images)?;
    let row = model.preprocessor.input_len();
    if values.len() != batch * row {
        return Err(Error::InvalidTensor(format!(
            "input {name:?}: shape {:?} holds {} values but {} were sent",
            input.shape,
            batch * row,
            values.len()
        )));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::InvalidTensor(format!(
            "input {name:?}: value {i} is not a finite number"
        )));
    }
    Ok(values.chunks_exact(row).map(<[f32]>::to_vec).collect())
}

/// Encoded images from the BYTES `image` input.
fn image_elements(input: InputTensor, max_images: usize) -> Result<Vec<Bytes>, Error> {
    let TensorData::Bytes(elements) = input.data else {
        return Err(Error::InvalidTensor(format!(
            "input {IMAGE_INPUT:?} has datatype {}; it takes BYTES (encoded images)",
            input.data.datatype()
        )));
    };
    let batch = match input.shape.as_slice() {
        [b] | [b, 1] if *b >= 1 => *b as usize,
        _ => {
            return Err(Error::InvalidTensor(format!(
                "input {IMAGE_INPUT:?} has shape {:?}; it takes [batch] or [batch, 1]",
                input.shape
            )));
        }
    };
    check_image_limit(batch, max_images)?;
    if elements.len() != batch {
        return Err(Error::InvalidTensor(format!(
            "input {IMAGE_INPUT:?}: shape {:?} holds {batch} images but {} were sent",
            input.shape,
            elements.len()
        )));
    }
    Ok(elements)
}

/// Triton's classification extension: the `k` best of each row as `"score:index:label"`.
fn top_k_strings(rows: &[Vec<f32>], labels: &[String], k: usize) -> Vec<Bytes> {
    rows.iter()
        .flat_map(|row| {
            let mut ranked: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
            ranked
                .into_iter()
                .take(k)
                .map(|(i, score)| {
                    Bytes::from(format!("{score}:{i}:{}", labels.get(i).map_or("", |l| l)))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Little-endian FP32 values.
fn f32s(bytes: &[u8], input: &str) -> Result<Vec<f32>, Error> {
    if !bytes.len().is_multiple_of(4) {
        return Err(Error::InvalidTensor(format!(
            "input {input:?}: {} bytes is not a whole number of FP32 values",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// BYTES elements: each a 4-byte little-endian length, then that many bytes.
fn elements(bytes: &Bytes, input: &str) -> Result<Vec<Bytes>, Error> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let bad = || {
            Error::InvalidTensor(format!(
                "input {input:?}: malformed BYTES element at offset {at} (4-byte little-endian length, then the bytes)"
            ))
        };
        let header = bytes.get(at..at + 4).ok_or_else(bad)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let start = at + 4;
        let end = start
            .checked_add(len)
            .filter(|e| *e <= bytes.len())
            .ok_or_else(bad)?;
        out.push(bytes.slice(start..end));
        at = end;
    }
    Ok(out)
}

/// Serialises BYTES elements.
fn encode_elements<'a>(elements: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in elements {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_strings_rank_each_row() {
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let rows = vec![vec![0.1, 0.7, 0.2], vec![0.5, 0.1, 0.4]];
        assert_eq!(
            top_k_strings(&rows, &labels, 2),
            ["0.7:1:b", "0.2:2:c", "0.5:0:a", "0.4:2:c"]
                .map(|s: &'static str| Bytes::from_static(s.as_bytes()))
        );
    }

    #[test]
    fn raw_elements_round_trip_and_refuse_overruns() {
        let data = TensorData::Bytes(vec![
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from_static(b"xyz"),
        ]);
        let raw = Bytes::from(data.to_raw());
        assert_eq!(TensorData::from_raw("BYTES", &raw, "x").unwrap(), data);
        let mut cut = raw.to_vec();
        cut.pop();
        assert!(TensorData::from_raw("BYTES", &Bytes::from(cut), "x").is_err());
        for junk in [&[1u8, 0][..], &[0xff, 0xff, 0xff, 0xff]] {
            assert!(TensorData::from_raw("BYTES", &Bytes::copy_from_slice(junk), "x").is_err());
        }
        let floats = TensorData::Fp32(vec![1.0, -2.5]);
        let raw = Bytes::from(floats.to_raw());
        assert_eq!(TensorData::from_raw("FP32", &raw, "x").unwrap(), floats);
        assert!(TensorData::from_raw("FP32", &raw.slice(..3), "x").is_err());
        assert!(matches!(
            TensorData::from_raw("INT64", &raw, "x"),
            Err(Error::InvalidTensor(m)) if m.contains("datatype INT64")
        ));
    }
}
