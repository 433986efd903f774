//! `POST /v2/models/{m}[/versions/{v}]/infer`: KServe v2 tensors in, tensors (or top-k
//! classification strings) out. Two inputs, one per request: the model's own FP32 NCHW tensor,
//! normalised by the client as the manifest says, or `image`, BYTES elements of encoded images
//! that the server decodes and preprocesses like `/v1/classify`.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::binary::{self, BinaryReader};
use super::types::{InferInput, InferRequest, InferResponse, OutputTensor, RequestedOutput};
use crate::core::batcher::JobInput;
use crate::core::classify;
use crate::core::registry::LoadedModel;
use crate::error::Error;
use crate::http::Limits;
use crate::metrics::Metrics;

/// Name of the BYTES input of encoded images.
pub const IMAGE_INPUT: &str = "image";
/// Name of the output with softmax probabilities (beside the graph's own output).
pub const PROBABILITIES_OUTPUT: &str = "probabilities";

/// What comes back: the JSON header, and the binary section when some output asked for it.
pub struct InferOutcome {
    pub header: InferResponse,
    pub binary: Vec<u8>,
}

/// The whole use case, from the parsed request to the response tensors.
pub async fn infer(
    model: &Arc<LoadedModel>,
    request: InferRequest,
    binary_section: Bytes,
    limits: Limits,
    metrics: &Metrics,
) -> Result<InferOutcome, Error> {
    let mut reader = BinaryReader::new(binary_section);
    let wanted = requested_outputs(model, &request)?;
    let [input] = request.inputs.as_slice() else {
        return Err(Error::InvalidTensor(format!(
            "expected exactly one input, {:?} (FP32 [batch,{},{},{}]) or {IMAGE_INPUT:?} (BYTES [batch]); got {}",
            model.manifest.input.name,
            model.manifest.input.channels.count(),
            model.manifest.input.height,
            model.manifest.input.width,
            request.inputs.len()
        )));
    };
    let rows = if input.name == model.manifest.input.name {
        tensor_rows(model, input, &mut reader, limits)?
    } else if input.name == IMAGE_INPUT {
        let images = image_elements(input, &mut reader, limits)?;
        let pixels = classify::decode_all(model, images, metrics).await?;
        pixels.into_iter().map(JobInput::Pixels).collect()
    } else {
        return Err(Error::InvalidTensor(format!(
            "unknown input {:?}: model {} takes {:?} or {IMAGE_INPUT:?}",
            input.name, model.manifest.name, model.manifest.input.name
        )));
    };
    if reader.unread() > 0 {
        return Err(Error::InvalidTensor(format!(
            "{} bytes after the JSON header belong to no input",
            reader.unread()
        )));
    }
    let batch = rows.len();
    let raw = classify::infer(model, rows).await?;
    let probabilities: Vec<Vec<f32>> = raw
        .iter()
        .map(|r| classify::probabilities(model, r.clone(), metrics))
        .collect();
    let classes = model.manifest.labels.len();
    let mut outputs = Vec::with_capacity(wanted.len());
    let mut binary_out = Vec::new();
    for output in wanted {
        let values = if output.name == PROBABILITIES_OUTPUT {
            &probabilities
        } else {
            &raw
        };
        let (datatype, shape, json_data, bytes) = match output.classification {
            Some(k) => {
                let k = k.min(classes);
                let strings = top_k_strings(values, &model.manifest.labels, k);
                let bytes = binary::encode_elements(strings.iter().map(|s| s.as_bytes()));
                ("BYTES", vec![batch, k], json!(strings), bytes)
            }
            None => {
                let flat: Vec<f32> = values.iter().flatten().copied().collect();
                let bytes = flat.iter().flat_map(|v| v.to_le_bytes()).collect();
                ("FP32", vec![batch, classes], json!(flat), bytes)
            }
        };
        let mut parameters = Map::new();
        let data = if output.binary {
            parameters.insert("binary_data_size".into(), json!(bytes.len()));
            binary_out.extend_from_slice(&bytes);
            None
        } else {
            Some(json_data)
        };
        outputs.push(OutputTensor {
            name: output.name,
            datatype: datatype.into(),
            shape,
            parameters,
            data,
        });
    }
    Ok(InferOutcome {
        header: InferResponse {
            model_name: model.manifest.name.clone(),
            model_version: model.manifest.version.to_string(),
            id: request.id,
            outputs,
        },
        binary: binary_out,
    })
}

/// Client-normalised rows from the model's FP32 input.
fn tensor_rows(
    model: &LoadedModel,
    input: &InferInput,
    reader: &mut BinaryReader,
    limits: Limits,
) -> Result<Vec<JobInput>, Error> {
    let spec = &model.manifest.input;
    let name = &input.name;
    if input.datatype != "FP32" {
        return Err(Error::InvalidTensor(format!(
            "input {name:?} has datatype {}; the model takes FP32",
            input.datatype
        )));
    }
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
    check_batch(batch, limits)?;
    let row = model.preprocessor.input_len();
    let values = match binary_size(input)? {
        Some(size) => binary::f32s(&reader.take(size, name)?, name)?,
        None => json_numbers(input)?,
    };
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
    Ok(values
        .chunks_exact(row)
        .map(|r| JobInput::Tensor(r.to_vec()))
        .collect())
}

/// Encoded images from the BYTES `image` input (JSON: base64 strings).
fn image_elements(
    input: &InferInput,
    reader: &mut BinaryReader,
    limits: Limits,
) -> Result<Vec<Bytes>, Error> {
    if input.datatype != "BYTES" {
        return Err(Error::InvalidTensor(format!(
            "input {IMAGE_INPUT:?} has datatype {}; it takes BYTES (encoded images)",
            input.datatype
        )));
    }
    let batch = match input.shape.as_slice() {
        [b] | [b, 1] if *b >= 1 => *b as usize,
        _ => {
            return Err(Error::InvalidTensor(format!(
                "input {IMAGE_INPUT:?} has shape {:?}; it takes [batch] or [batch, 1]",
                input.shape
            )));
        }
    };
    check_batch(batch, limits)?;
    let elements = match binary_size(input)? {
        Some(size) => binary::elements(&reader.take(size, IMAGE_INPUT)?, IMAGE_INPUT)?,
        None => json_strings(input)?
            .iter()
            .enumerate()
            .map(|(i, s)| {
                base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .map(Bytes::from)
                    .map_err(|e| {
                        Error::InvalidTensor(format!(
                            "input {IMAGE_INPUT:?} element {i}: JSON BYTES elements are base64-encoded images: {e}"
                        ))
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    if elements.len() != batch {
        return Err(Error::InvalidTensor(format!(
            "input {IMAGE_INPUT:?}: shape {:?} holds {batch} images but {} were sent",
            input.shape,
            elements.len()
        )));
    }
    Ok(elements)
}

fn check_batch(batch: usize, limits: Limits) -> Result<(), Error> {
    if batch > limits.max_images {
        return Err(Error::TooManyImages {
            count: batch,
            limit: limits.max_images,
        });
    }
    Ok(())
}

fn binary_size(input: &InferInput) -> Result<Option<usize>, Error> {
    match input.parameters.get("binary_data_size") {
        None => Ok(None),
        Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
            Error::InvalidTensor(format!(
                "input {:?}: binary_data_size must be a non-negative integer",
                input.name
            ))
        }),
    }
}

fn json_data(input: &InferInput) -> Result<Vec<&Value>, Error> {
    let data = input.data.as_ref().ok_or_else(|| {
        Error::InvalidTensor(format!(
            "input {:?} has neither data nor binary_data_size",
            input.name
        ))
    })?;
    let mut out = Vec::new();
    let mut stack = vec![data];
    // Row-major order, whether the client nested the arrays or not.
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items.iter().rev()),
            other => out.push(other),
        }
    }
    Ok(out)
}

fn json_numbers(input: &InferInput) -> Result<Vec<f32>, Error> {
    json_data(input)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_f64().map(|f| f as f32).ok_or_else(|| {
                Error::InvalidTensor(format!(
                    "input {:?}: element {i} is {v}, not a number",
                    input.name
                ))
            })
        })
        .collect()
}

fn json_strings(input: &InferInput) -> Result<Vec<&str>, Error> {
    json_data(input)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str().ok_or_else(|| {
                Error::InvalidTensor(format!(
                    "input {:?}: element {i} is {v}, not a string",
                    input.name
                ))
            })
        })
        .collect()
}

struct WantedOutput {
    name: String,
    classification: Option<usize>,
    binary: bool,
}

/// The outputs to return: those requested, or all of them.
fn requested_outputs(
    model: &LoadedModel,
    request: &InferRequest,
) -> Result<Vec<WantedOutput>, Error> {
    let binary_default = request
        .parameters
        .get("binary_data_output")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let graph_output = model.manifest.output.name.as_str();
    let all = [graph_output, PROBABILITIES_OUTPUT];
    let Some(requested) = &request.outputs else {
        return Ok(all
            .iter()
            .map(|name| WantedOutput {
                name: name.to_string(),
                classification: None,
                binary: binary_default,
            })
            .collect());
    };
    requested
        .iter()
        .map(|o: &RequestedOutput| {
            if !all.contains(&o.name.as_str()) {
                return Err(Error::InvalidTensor(format!(
                    "unknown output {:?}: model {} has {:?}",
                    o.name, model.manifest.name, all
                )));
            }
            let classification = match o.parameters.get("classification") {
                None => None,
                Some(v) => match v.as_u64() {
                    Some(0) => None,
                    Some(k) => Some(k as usize),
                    None => {
                        return Err(Error::InvalidTensor(format!(
                            "output {:?}: classification must be a non-negative integer",
                            o.name
                        )));
                    }
                },
            };
            let binary = o
                .parameters
                .get("binary_data")
                .and_then(Value::as_bool)
                .unwrap_or(binary_default);
            Ok(WantedOutput {
                name: o.name.clone(),
                classification,
                binary,
            })
        })
        .collect()
}

/// Triton's classification extension: the `k` best of each row as `"score:index:label"`.
fn top_k_strings(rows: &[Vec<f32>], labels: &[String], k: usize) -> Vec<String> {
    rows.iter()
        .flat_map(|row| {
            let mut ranked: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
            ranked
                .into_iter()
                .take(k)
                .map(|(i, score)| format!("{score}:{i}:{}", labels.get(i).map_or("", |l| l)))
                .collect::<Vec<_>>()
        })
        .collect()
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
        );
    }

    #[test]
    fn json_data_flattens_nested_arrays_in_row_major_order() {
        let input = InferInput {
            name: "x".into(),
            shape: vec![2, 2],
            datatype: "FP32".into(),
            parameters: Map::new(),
            data: Some(json!([[1, 2], [3, 4.5]])),
        };
        assert_eq!(json_numbers(&input).unwrap(), [1.0, 2.0, 3.0, 4.5]);
        let strings = InferInput {
            data: Some(json!(["a", 1])),
            ..input
        };
        assert!(json_strings(&strings).is_err());
    }
}
