//! `POST /v2/models/{m}[/versions/{v}]/infer`, translated: the protocol's REST JSON (and binary
//! tensor extension) ⇄ the core's tensors (`core::tensors`). What the tensors mean, and every
//! check of them against the model, is the core's.

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::binary::BinaryReader;
use super::types::{InferInput, InferRequest, InferResponse, OutputTensor, RequestedOutput};
use crate::core::inference::Inferred;
use crate::core::tensors::{
    InputTensor, OutputRequest, TensorData, TensorRequest, unsupported_datatype,
};
use crate::error::Error;

/// How the answer's outputs are to be written: in the JSON, or after it (binary extension).
pub struct OutputEncoding {
    binary: Vec<bool>,
}

/// The REST request (JSON header and binary section) as the core's tensors.
pub fn to_tensors(
    request: InferRequest,
    binary_section: Bytes,
) -> Result<(TensorRequest, OutputEncoding), Error> {
    let mut reader = BinaryReader::new(binary_section);
    let inputs = request
        .inputs
        .into_iter()
        .map(|input| input_tensor(input, &mut reader))
        .collect::<Result<Vec<_>, _>>()?;
    if reader.unread() > 0 {
        return Err(Error::InvalidTensor(format!(
            "{} bytes after the JSON header belong to no input",
            reader.unread()
        )));
    }
    let binary_default = request
        .parameters
        .get("binary_data_output")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (outputs, binary) = match request.outputs {
        None => (None, Vec::new()),
        Some(requested) => {
            let mut binary = Vec::with_capacity(requested.len());
            let outputs = requested
                .into_iter()
                .map(|o| {
                    binary.push(
                        o.parameters
                            .get("binary_data")
                            .and_then(Value::as_bool)
                            .unwrap_or(binary_default),
                    );
                    output_request(o)
                })
                .collect::<Result<Vec<_>, _>>()?;
            (Some(outputs), binary)
        }
    };
    // Without a list every output is given, each as the request-wide default says.
    let binary = if outputs.is_none() {
        vec![binary_default; 2]
    } else {
        binary
    };
    Ok((TensorRequest { inputs, outputs }, OutputEncoding { binary }))
}

/// The core's answer as the REST answer: the JSON header, and the binary section (empty when no
/// output asked for it).
pub fn from_tensors(
    inferred: Inferred,
    id: Option<String>,
    encoding: &OutputEncoding,
) -> (InferResponse, Vec<u8>) {
    let mut binary_section = Vec::new();
    let outputs = inferred
        .outputs
        .into_iter()
        .enumerate()
        .map(|(i, output)| {
            let mut parameters = Map::new();
            let datatype = output.data.datatype().to_string();
            let data = if encoding.binary.get(i).copied().unwrap_or(false) {
                let bytes = output.data.to_raw();
                parameters.insert("binary_data_size".into(), json!(bytes.len()));
                binary_section.extend_from_slice(&bytes);
                None
            } else {
                Some(match output.data {
                    TensorData::Fp32(values) => json!(values),
                    TensorData::Bytes(elements) => json!(
                        elements
                            .iter()
                            .map(|e| String::from_utf8_lossy(e))
                            .collect::<Vec<_>>()
                    ),
                })
            };
            OutputTensor {
                name: output.name,
                datatype,
                shape: output.shape,
                parameters,
                data,
            }
        })
        .collect();
    let response = InferResponse {
        model_name: inferred.model.name,
        model_version: inferred.model.version.to_string(),
        id,
        outputs,
    };
    (response, binary_section)
}

/// One input: its data from the binary section (`binary_data_size`) or from the JSON.
fn input_tensor(input: InferInput, reader: &mut BinaryReader) -> Result<InputTensor, Error> {
    let name = input.name;
    let data = match input.parameters.get("binary_data_size") {
        Some(size) => {
            let size = size.as_u64().ok_or_else(|| {
                Error::InvalidTensor(format!(
                    "input {name:?}: binary_data_size must be a non-negative integer"
                ))
            })?;
            let bytes = reader.take(size as usize, &name)?;
            TensorData::from_raw(&input.datatype, &bytes, &name)?
        }
        None => json_data(&name, &input.datatype, input.data.as_ref())?,
    };
    Ok(InputTensor {
        name,
        shape: input.shape,
        data,
    })
}

/// An input's JSON `data`: numbers for FP32, base64 strings for BYTES; flat or nested.
fn json_data(name: &str, datatype: &str, data: Option<&Value>) -> Result<TensorData, Error> {
    let data = data.ok_or_else(|| {
        Error::InvalidTensor(format!(
            "input {name:?} has neither data nor binary_data_size"
        ))
    })?;
    let elements = flatten(data);
    let not = |i: usize, v: &Value, what: &str| {
        Error::InvalidTensor(format!("input {name:?}: element {i} is {v}, not {what}"))
    };
    match datatype {
        "FP32" => elements
            .into_iter()
            .enumerate()
            .map(|(i, v)| v.as_f64().map(|f| f as f32).ok_or_else(|| not(i, v, "a number")))
            .collect::<Result<_, _>>()
            .map(TensorData::Fp32),
        "BYTES" => elements
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let text = v.as_str().ok_or_else(|| not(i, v, "a string"))?;
                base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map(Bytes::from)
                    .map_err(|e| {
                        Error::InvalidTensor(format!(
                            "input {name:?} element {i}: JSON BYTES elements are base64-encoded images: {e}"
                        ))
                    })
            })
            .collect::<Result<_, _>>()
            .map(TensorData::Bytes),
        other => Err(unsupported_datatype(name, other)),
    }
}

/// Row-major order, whether the client nested the arrays or not.
fn flatten(data: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    let mut stack = vec![data];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items.iter().rev()),
            other => out.push(other),
        }
    }
    out
}

/// A requested output; `classification: 0` means none, as in Triton.
fn output_request(output: RequestedOutput) -> Result<OutputRequest, Error> {
    let classification = match output.parameters.get("classification") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(0) => None,
            Some(k) => Some(k as usize),
            None => {
                return Err(Error::InvalidTensor(format!(
                    "output {:?}: classification must be a non-negative integer",
                    output.name
                )));
            }
        },
    };
    Ok(OutputRequest {
        name: output.name,
        classification,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_data_flattens_nested_arrays_in_row_major_order() {
        let nested = json!([[1, 2], [3, 4.5]]);
        assert_eq!(
            json_data("x", "FP32", Some(&nested)).unwrap(),
            TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.5])
        );
        assert!(json_data("x", "BYTES", Some(&json!(["AAAA", 1]))).is_err());
        assert!(json_data("x", "FP32", None).is_err());
        assert!(
            matches!(json_data("x", "FP16", Some(&nested)), Err(Error::InvalidTensor(m)) if m.contains("datatype FP16"))
        );
    }

    #[test]
    fn outputs_are_written_as_each_asked() {
        let request: InferRequest = serde_json::from_value(json!({
            "parameters": {"binary_data_output": true},
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["AAAA"]}],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": false}},
                        {"name": "logits", "parameters": {"classification": 2}}]
        }))
        .unwrap();
        let (tensors, encoding) = to_tensors(request, Bytes::new()).unwrap();
        assert_eq!(encoding.binary, [false, true]);
        let outputs = tensors.outputs.unwrap();
        assert_eq!(outputs[1].classification, Some(2));
        let inferred = Inferred {
            model: crate::core::inference::ModelId {
                name: "m".into(),
                version: 1,
            },
            outputs: vec![
                crate::core::tensors::OutputTensor {
                    name: "probabilities".into(),
                    shape: vec![1, 1],
                    data: TensorData::Fp32(vec![0.5]),
                },
                crate::core::tensors::OutputTensor {
                    name: "logits".into(),
                    shape: vec![1, 1],
                    data: TensorData::Bytes(vec![Bytes::from_static(b"1:0:a")]),
                },
            ],
        };
        let (header, binary) = from_tensors(inferred, Some("7".into()), &encoding);
        assert_eq!(header.outputs[0].data, Some(json!([0.5])));
        assert_eq!(header.outputs[1].parameters["binary_data_size"], json!(9));
        assert_eq!(binary, b"\x05\x00\x00\x001:0:a");
        assert_eq!(header.id.as_deref(), Some("7"));
    }
}
