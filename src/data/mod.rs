//! Datasets: samples as `f32` tensors with class labels, loaded from disk or generated.
//!
//! A [`Dataset`] is an indexable, immutable collection; the training loop draws batches from it
//! on worker threads in a seeded order, so the same seed gives the same batches.

pub mod synthetic;

use crate::error::Result;

/// One labelled sample: `values` in row-major order of [`Dataset::sample_shape`].
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub values: Vec<f32>,
    pub label: usize,
}

/// An indexable collection of labelled samples, all of one shape.
pub trait Dataset: Send + Sync {
    /// A short name for messages and metrics (`synthetic`, `cifar10`, ...).
    fn name(&self) -> &str;
    /// The number of samples.
    fn len(&self) -> usize;
    /// Whether there is no sample.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The number of classes; labels are in `[0, num_classes)`.
    fn num_classes(&self) -> usize;
    /// The shape of one sample: `[C, H, W]` for images, `[T, C, H, W]` for event frames.
    fn sample_shape(&self) -> Vec<usize>;
    /// Sample `index` (`< len()`), without augmentation.
    fn get(&self, index: usize) -> Result<Sample>;
}

/// A dataset of `u8` images in CIFAR's layout (`[3, 32, 32]`, channel-major, `get` gives the
/// bytes over 255): what the CIFAR training pipeline (RandAugment, the `u8` mixup, the family's
/// normalisation; docs/recipes.md §5.1, docs/data.md §6.1) starts from.
pub trait PixelImages: Dataset {
    /// The bytes and the label of image `index`, `None` past the end.
    fn image(&self, index: usize) -> Option<(&[u8], usize)>;
}

pub mod augment;
pub mod batch_rows;
pub mod cifar;
pub mod cifar10_dvs;
pub mod dvs128;
pub mod events;
