//! The network: a compact VGG-style CNN sized for real-time CPU inference on 48×48 faces.
//!
//! Four stages of two 3×3 conv + batch-norm + ReLU layers (widths from the config), a 2×2 max-pool
//! after each of the first three stages, global average pooling, dropout and one linear layer.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::prelude::*;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};

/// Shape of the network (part of the training config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Output channels of each stage.
    #[serde(default = "default_widths")]
    pub widths: Vec<usize>,
    /// Conv layers per stage.
    #[serde(default = "default_depth")]
    pub convs_per_stage: usize,
    #[serde(default = "default_dropout")]
    pub dropout: f64,
}

fn default_widths() -> Vec<usize> {
    vec![32, 64, 128, 256]
}
fn default_depth() -> usize {
    2
}
fn default_dropout() -> f64 {
    0.3
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            widths: default_widths(),
            convs_per_stage: default_depth(),
            dropout: default_dropout(),
        }
    }
}

#[derive(Module, Debug)]
pub struct ConvBnRelu {
    conv: Conv2d,
    norm: BatchNorm,
}

impl ConvBnRelu {
    fn new(input: usize, output: usize, device: &Device) -> Self {
        Self {
            conv: Conv2dConfig::new([input, output], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .init(device),
            norm: BatchNormConfig::new(output).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        relu(self.norm.forward(self.conv.forward(x)))
    }
}

#[derive(Module, Debug)]
pub struct Stage {
    layers: Vec<ConvBnRelu>,
}

#[derive(Module, Debug)]
pub struct FerNet {
    stages: Vec<Stage>,
    pool: MaxPool2d,
    gap: AdaptiveAvgPool2d,
    dropout: Dropout,
    head: Linear,
}

impl FerNet {
    pub fn new(config: &ModelConfig, in_channels: usize, classes: usize, device: &Device) -> Self {
        let mut stages = Vec::new();
        let mut input = in_channels;
        for &width in &config.widths {
            let layers = (0..config.convs_per_stage.max(1))
                .map(|i| ConvBnRelu::new(if i == 0 { input } else { width }, width, device))
                .collect();
            stages.push(Stage { layers });
            input = width;
        }
        Self {
            stages,
            pool: MaxPool2dConfig::new([2, 2]).init(),
            gap: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            dropout: DropoutConfig::new(config.dropout).init(),
            head: LinearConfig::new(input, classes).init(device),
        }
    }

    /// `[batch, C, H, W]` normalised images → `[batch, classes]` logits.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let last = self.stages.len().saturating_sub(1);
        let mut x = images;
        for (i, stage) in self.stages.iter().enumerate() {
            for layer in &stage.layers {
                x = layer.forward(x);
            }
            if i < last {
                x = self.pool.forward(x);
            }
        }
        let x = self.gap.forward(x).flatten::<2>(1, 3);
        self.head.forward(self.dropout.forward(x))
    }

    /// Test-time flip in one graph: the mean of the logits of each image and of its mirror
    /// image (twice [`FerNet::forward`]'s compute). `fer-train export --test-time-flip` traces
    /// this. The mirror is a gather along the width with reversed indices, because the ONNX
    /// exporter lowers `select` (Gather) but neither `flip` nor a negative-step slice.
    pub fn forward_mirror_mean(&self, images: Tensor<4>) -> Tensor<2> {
        let width = images.dims()[3];
        let reversed: Vec<i64> = (0..width as i64).rev().collect();
        let reversed =
            Tensor::<1, Int>::from_data(TensorData::new(reversed, [width]), &images.device());
        let mirrored = images.clone().select(3, reversed);
        (self.forward(images) + self.forward(mirrored)).mul_scalar(0.5)
    }
}

/// Multiply-accumulates of one forward pass for an `in_channels × side × side` input.
pub fn forward_macs(config: &ModelConfig, in_channels: usize, side: usize, classes: usize) -> u64 {
    let mut macs = 0u64;
    let mut input = in_channels;
    let mut side = side;
    let stages = config.widths.len();
    for (i, &width) in config.widths.iter().enumerate() {
        for layer in 0..config.convs_per_stage.max(1) {
            let cin = if layer == 0 { input } else { width };
            macs += (side * side * cin * width * 9) as u64;
        }
        input = width;
        if i + 1 < stages {
            side /= 2;
        }
    }
    macs + (input * classes) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_mean_averages_an_image_and_its_mirror() {
        let device = Device::flex();
        let config = ModelConfig {
            widths: vec![4, 8],
            convs_per_stage: 1,
            dropout: 0.0,
        };
        let model = FerNet::new(&config, 1, 3, &device);
        let (w, h) = (6, 5);
        let pixels: Vec<f32> = (0..2 * w * h)
            .map(|i| ((i * 37) % 11) as f32 / 11.0 - 0.5)
            .collect();
        let mut mirrored = pixels.clone();
        for row in mirrored.chunks_mut(w) {
            row.reverse();
        }
        let tensor =
            |data: Vec<f32>| Tensor::<4>::from_data(TensorData::new(data, [2, 1, h, w]), &device);
        let plain = model.forward(tensor(pixels.clone()));
        let flipped = model.forward(tensor(mirrored.clone()));
        let expected = values((plain + flipped.clone()).mul_scalar(0.5));
        let got = values(model.forward_mirror_mean(tensor(pixels)));
        assert_close(&expected, &got);
        // The mirror image's own mirror mean is the same: the result is mirror-symmetric.
        assert_close(&got, &values(model.forward_mirror_mean(tensor(mirrored))));
        let asymmetric = values(flipped);
        assert!(
            asymmetric
                .iter()
                .zip(&got)
                .any(|(a, b)| (a - b).abs() > 1e-4),
            "the test image is mirror-symmetric"
        );
    }

    fn values(logits: Tensor<2>) -> Vec<f32> {
        logits.into_data().try_to_vec::<f32>().unwrap()
    }

    fn assert_close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }
}
