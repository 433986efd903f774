//! The model contract shared by the fer trainer and the fer server.
//!
//! A served model is an ONNX graph plus a [`Manifest`] that says how an image becomes the graph's
//! input and what its outputs mean. Both halves of the project use this crate for that contract
//! (manifest type, decode, resize, normalise), so a model is preprocessed the same way when it is
//! trained and when it is served.

#[cfg(feature = "onnx")]
pub mod detect;
pub mod manifest;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod preprocess;

pub use manifest::{
    Channels, FORMAT_VERSION, InputSpec, Layout, MANIFEST_FILE, MODEL_FILE, Manifest,
    ManifestError, OutputKind, OutputSpec, Precision, Preprocessing, Provenance, ResizeMethod,
};
pub use preprocess::{DecodeLimits, ImageError, Pixels, Preprocessor};

/// Numerically stable softmax, in place.
pub fn softmax_in_place(values: &mut [f32]) {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in values.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    if sum > 0.0 {
        for v in values.iter_mut() {
            *v /= sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut v = [1.0, 3.0, 2.0];
        softmax_in_place(&mut v);
        let sum: f32 = v.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert!(v[1] > v[2] && v[2] > v[0]);
        assert!((v[1] - 0.665_241).abs() < 1e-5, "{v:?}");
        let mut big = [0.0, 1000.0];
        softmax_in_place(&mut big);
        assert_eq!(big, [0.0, 1.0], "no overflow on large logits");
    }
}
