//! The model manifest: `models/<name>/<version>/manifest.json`, beside `model.onnx`.
//!
//! Format version 1 is documented in `docs/manifest.md`. Unknown fields are refused so that a typo
//! in a hand-edited manifest is an error, not a silently ignored setting.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The manifest format this crate reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// File name of the manifest inside a version folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the ONNX graph inside a version folder.
pub const MODEL_FILE: &str = "model.onnx";

/// Largest input side a manifest may declare; larger inputs are not face crops.
const MAX_INPUT_SIDE: u32 = 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version; must equal [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Model name; equals the repository folder name.
    pub name: String,
    /// Model version; equals the version folder name.
    pub version: u64,
    /// Class labels in the order of the graph's output.
    pub labels: Vec<String>,
    pub input: InputSpec,
    pub output: OutputSpec,
    /// Numeric precision of the graph (absent in older manifests: FP32).
    #[serde(default)]
    pub precision: Precision,
    pub preprocessing: Preprocessing,
    pub provenance: Provenance,
}

/// Numeric precision of a graph's weights and activations. The graph's input and output stay
/// FP32 either way: an INT8 graph quantizes and dequantizes inside (ONNX QDQ), so the server feeds
/// and reads both the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    /// 8-bit integer weights and activations, calibrated on training faces (`fer-train quantize`).
    Int8,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Name of the graph's input tensor.
    pub name: String,
    pub layout: Layout,
    pub channels: Channels,
    pub height: u32,
    pub width: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Layout {
    /// Batch, channels, height, width; the only layout format version 1 defines.
    Nchw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channels {
    /// One luma channel (BT.601 weights, the Y of a JPEG).
    Gray,
    /// Three channels, red, green, blue.
    Rgb,
}

impl Channels {
    pub fn count(self) -> usize {
        match self {
            Channels::Gray => 1,
            Channels::Rgb => 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Name of the graph's output tensor, shaped `[batch, labels.len()]`.
    pub name: String,
    pub kind: OutputKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// Unnormalised scores; the server applies a softmax.
    Logits,
    /// Probabilities that already sum to one.
    Probabilities,
}

/// How decoded pixels become the input tensor: resize to `height × width` (stretching, no
/// aspect-ratio padding: inputs are face crops), then `(pixel · scale − mean[c]) / std[c]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocessing {
    pub resize: ResizeMethod,
    pub scale: f32,
    /// One value per channel.
    pub mean: Vec<f32>,
    /// One value per channel, each greater than zero.
    pub std: Vec<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMethod {
    Nearest,
    Bilinear,
    /// Catmull-Rom cubic convolution.
    Bicubic,
    Lanczos3,
}

/// Where a model came from: enough to reproduce it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// Datasets the model saw.
    pub data: Vec<String>,
    /// The command that trained it.
    pub command: String,
    /// The tool and version that produced it.
    pub trainer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Validation metrics by name (e.g. `val_accuracy`, `val_macro_f1`).
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Free-form notes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub notes: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: invalid manifest JSON: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: {source}")]
    Invalid {
        path: String,
        source: InvalidManifest,
    },
}

/// A manifest whose fields contradict each other or the contract; the text says which.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidManifest(pub String);

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Io {
            path: display.clone(),
            source,
        })?;
        Self::from_json(&text, &display)
    }

    /// Parses and validates manifest JSON; `origin` names the source in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest =
            serde_json::from_str(text).map_err(|source| ManifestError::Parse {
                path: origin.to_string(),
                source,
            })?;
        manifest
            .validate()
            .map_err(|source| ManifestError::Invalid {
                path: origin.to_string(),
                source,
            })?;
        Ok(manifest)
    }

    /// Writes the manifest as pretty JSON.
    pub fn save(&self, path: &Path) -> Result<(), ManifestError> {
        let io = |source| ManifestError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut text = serde_json::to_string_pretty(self).map_err(|e| io(e.into()))?;
        text.push('\n');
        std::fs::write(path, text).map_err(io)
    }

    /// Checks the manifest's internal consistency; the message says what is wrong.
    pub fn validate(&self) -> Result<(), InvalidManifest> {
        self.first_problem()
            .map_or(Ok(()), |problem| Err(InvalidManifest(problem)))
    }

    /// The first inconsistency found, in words, or `None`.
    fn first_problem(&self) -> Option<String> {
        if self.format_version != FORMAT_VERSION {
            return Some(format!(
                "format_version {} is not supported (this build reads {FORMAT_VERSION})",
                self.format_version
            ));
        }
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Some(format!(
                "name {:?} must be non-empty ASCII letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        if self.labels.len() < 2 {
            return Some("labels must list at least two classes".into());
        }
        let mut seen = std::collections::HashSet::new();
        for label in &self.labels {
            if label.is_empty() {
                return Some("labels must not be empty strings".into());
            }
            if !seen.insert(label) {
                return Some(format!("label {label:?} appears twice"));
            }
        }
        if self.input.name.is_empty() || self.output.name.is_empty() {
            return Some("input.name and output.name must name graph tensors".into());
        }
        for (side, value) in [("height", self.input.height), ("width", self.input.width)] {
            if value == 0 || value > MAX_INPUT_SIDE {
                return Some(format!(
                    "input.{side} {value} must be between 1 and {MAX_INPUT_SIDE}"
                ));
            }
        }
        let channels = self.input.channels.count();
        let p = &self.preprocessing;
        if p.mean.len() != channels || p.std.len() != channels {
            return Some(format!(
                "preprocessing.mean and preprocessing.std need {channels} value(s) for {:?} input, got {} and {}",
                self.input.channels,
                p.mean.len(),
                p.std.len()
            ));
        }
        if !p.scale.is_finite() || p.scale <= 0.0 {
            return Some("preprocessing.scale must be a positive number".into());
        }
        if p.std.iter().any(|s| !s.is_finite() || *s <= 0.0)
            || p.mean.iter().any(|m| !m.is_finite())
        {
            return Some("preprocessing.std must be positive and mean finite".into());
        }
        None
    }

    /// Number of `f32` values one preprocessed image occupies in the input tensor.
    pub fn input_len(&self) -> usize {
        self.input.channels.count() * self.input.height as usize * self.input.width as usize
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            name: "fer2013".into(),
            version: 1,
            labels: ["angry", "happy", "sad"].map(String::from).to_vec(),
            input: InputSpec {
                name: "input".into(),
                layout: Layout::Nchw,
                channels: Channels::Gray,
                height: 48,
                width: 48,
            },
            output: OutputSpec {
                name: "logits".into(),
                kind: OutputKind::Logits,
            },
            precision: Precision::Fp32,
            preprocessing: Preprocessing {
                resize: ResizeMethod::Bilinear,
                scale: 1.0 / 255.0,
                mean: vec![0.5],
                std: vec![0.5],
            },
            provenance: Provenance::default(),
        }
    }

    #[test]
    fn a_manifest_without_precision_is_fp32() {
        let mut value = serde_json::to_value(sample()).unwrap();
        value.as_object_mut().unwrap().remove("precision");
        let m = Manifest::from_json(&value.to_string(), "t").unwrap();
        assert_eq!(m.precision, Precision::Fp32);
        value["precision"] = "int4".into();
        assert!(Manifest::from_json(&value.to_string(), "t").is_err());
    }

    #[test]
    fn round_trips_through_json() {
        let m = sample();
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(Manifest::from_json(&text, "t").unwrap(), m);
        let mut int8 = sample();
        int8.precision = Precision::Int8;
        let text = serde_json::to_string(&int8).unwrap();
        assert!(text.contains(r#""precision":"int8""#), "{text}");
        assert_eq!(Manifest::from_json(&text, "t").unwrap(), int8);
        assert!(text.contains("\"layout\":\"NCHW\""));
        assert!(text.contains("\"channels\":\"gray\""));
    }

    fn invalid(edit: impl FnOnce(&mut Manifest)) -> String {
        let mut m = sample();
        edit(&mut m);
        let text = serde_json::to_string(&m).unwrap();
        Manifest::from_json(&text, "models/x/1/manifest.json")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn refuses_inconsistent_manifests_naming_the_file() {
        let e = invalid(|m| m.preprocessing.mean = vec![0.5, 0.5, 0.5]);
        assert!(e.starts_with("models/x/1/manifest.json: "), "{e}");
        assert!(e.contains("need 1 value"), "{e}");
        assert!(invalid(|m| m.labels.push("happy".into())).contains("appears twice"));
        assert!(invalid(|m| m.labels.truncate(1)).contains("at least two"));
        assert!(invalid(|m| m.format_version = 9).contains("format_version 9"));
        assert!(invalid(|m| m.input.height = 0).contains("input.height"));
        assert!(invalid(|m| m.preprocessing.std = vec![0.0]).contains("std"));
        assert!(invalid(|m| m.name = "../etc".into()).contains("name"));
    }

    #[test]
    fn refuses_unknown_fields_and_bad_enums() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["input"]["colour"] = "gray".into();
        let e = Manifest::from_json(&v.to_string(), "m.json").unwrap_err();
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
        let mut v = serde_json::to_value(sample()).unwrap();
        v["input"]["channels"] = "cmyk".into();
        assert!(Manifest::from_json(&v.to_string(), "m.json").is_err());
    }

    #[test]
    fn input_len_counts_channels() {
        let mut m = sample();
        assert_eq!(m.input_len(), 48 * 48);
        m.input.channels = Channels::Rgb;
        assert_eq!(m.input_len(), 3 * 48 * 48);
    }
}
