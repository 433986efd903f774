//! Batches of augmented, normalised images, built on the CPU in parallel (rayon) from the
//! in-memory `u8` datasets.

use burn::prelude::*;
use burn::tensor::TensorData;
use fer_contract::Preprocessor;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rayon::prelude::*;

use crate::augment::{self, AugmentConfig};
use crate::data::Dataset;

/// Which augmentation a batch gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewKind {
    /// Flip and a small affine warp (labelled images, and the teacher's view of unlabelled ones).
    Weak,
    /// The weak warp, RandAugment-style ops and cutout (the student's view of unlabelled images).
    Strong,
    /// No augmentation (evaluation).
    Plain,
}

/// `augment::weak` or `augment::strong`.
type Augmentation = fn(&AugmentConfig, &[u8], usize, usize, usize, &mut StdRng, &mut [u8]);

/// `[b, c, h, w]` data of the samples at `indices`, augmented as `kind` asks and normalised with
/// the contract's preprocessing. Each image's randomness comes from `seed` and its position, so
/// a resumed run draws the same views.
pub fn view_batch(
    augment_config: &AugmentConfig,
    dataset: &Dataset,
    preprocessor: &Preprocessor,
    indices: &[usize],
    kind: ViewKind,
    seed: u64,
) -> Vec<f32> {
    let len = preprocessor.input_len();
    let mut out = vec![0.0f32; indices.len() * len];
    let (width, height, channels) = (
        dataset.width as usize,
        dataset.height as usize,
        dataset.channels.count(),
    );
    out.par_chunks_mut(len)
        .zip(indices.par_iter())
        .enumerate()
        .for_each(|(i, (row, &index))| {
            let mut rng =
                StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
            let mut pixels = dataset.pixels(index);
            let augmentation = match kind {
                ViewKind::Weak => Some(augment::weak as Augmentation),
                ViewKind::Strong => Some(augment::strong as Augmentation),
                ViewKind::Plain => None,
            };
            if let Some(augmentation) = augmentation {
                augmentation(
                    augment_config,
                    dataset.image(index),
                    width,
                    height,
                    channels,
                    &mut rng,
                    &mut pixels.data,
                );
            }
            preprocessor.normalise_into(&pixels, row);
        });
    out
}

/// A batch's data as a `[count, c, h, w]` tensor on `device`.
pub fn images_tensor(
    data: Vec<f32>,
    count: usize,
    dataset: &Dataset,
    device: &Device,
) -> Tensor<4> {
    let shape = [
        count,
        dataset.channels.count(),
        dataset.height as usize,
        dataset.width as usize,
    ];
    Tensor::<4>::from_data(TensorData::new(data, shape), device)
}
