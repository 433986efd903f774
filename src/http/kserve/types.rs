//! The Open Inference Protocol (KServe v2) JSON shapes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// `GET /v2/health/live`'s body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LiveResponse {
    pub live: bool,
}

/// `GET /v2/health/ready`'s body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadyResponse {
    pub ready: bool,
}

/// A model (version) readiness answer's body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelReadyResponse {
    pub name: String,
    pub ready: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    /// `-1` for the batch dimension.
    pub shape: Vec<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// `POST /v2/models/{m}/infer` body (the JSON part, with the binary extension).
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({
    "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                "data": [crate::http::classify::EXAMPLE_IMAGE.trim_start_matches("data:image/png;base64,")]}],
    "outputs": [{"name": "probabilities"}]
}))]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    /// One input: the models take one tensor.
    #[schema(min_items = 1, max_items = 1)]
    pub inputs: Vec<InferInput>,
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct InferInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    /// `binary_data_size`: the tensor's bytes follow the JSON.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    /// Row-major values, flat or nested (absent with `binary_data_size`).
    #[serde(default)]
    #[schema(schema_with = tensor_data)]
    pub data: Option<Value>,
}

/// An array of values of any type: numbers, base64 strings, or nested arrays of them.
fn tensor_data() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType};
    ArrayBuilder::new()
        .items(ObjectBuilder::new().schema_type(SchemaType::AnyValue))
        .build()
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RequestedOutput {
    pub name: String,
    /// `classification: k` (top-k `"score:index:label"` strings), `binary_data: bool`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<OutputTensor>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OutputTensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<usize>,
    /// `binary_data_size` when the data follows the JSON.
    #[serde(skip_serializing_if = "Map::is_empty")]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    /// Row-major values, flat (absent when the data follows the JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = tensor_data)]
    pub data: Option<Value>,
}

/// Error body of the v2 routes, as the protocol defines it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct V2ErrorBody {
    pub error: String,
}

/// Triton's model configuration (`GET /v2/models/{m}/config`), the fields a client reads.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelConfig {
    pub name: String,
    pub platform: String,
    pub backend: String,
    /// Most images one request may carry (`--max-images`), as Triton means it.
    pub max_batch_size: usize,
    pub input: Vec<ConfigTensor>,
    pub output: Vec<ConfigTensor>,
    /// How the server batches requests: the largest batch it forms (`--max-batch-size`, what
    /// `/v1/models` calls `max_batch_size`); a request larger than that runs as several batches.
    pub dynamic_batching: DynamicBatching,
}

/// Triton's `dynamic_batching` block.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DynamicBatching {
    pub preferred_batch_size: Vec<usize>,
    pub max_queue_delay_microseconds: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConfigTensor {
    pub name: String,
    pub data_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Without the batch dimension.
    pub dims: Vec<i64>,
}
