//! Data augmentation of docs/recipes.md §5; docs/data.md §6.3, each transform a deterministic function of a
//! [`SplitMix64`] generator (the same seed gives the same output).
//!
//! Images are channel-major (`[C, H, W]`); event frames `[T, 2, H, W]` are treated as `T * 2`
//! planes. [`Augmentation`] strings the steps together as a run's settings choose them:
//! - per sample, on CIFAR's `u8` pixels ([`Augmentation::sample_pixels`]): [`random_crop`] →
//!   [`random_hflip`] → [`RandAugment::apply`]; on float planes, event frames or synthetic
//!   images ([`Augmentation::sample_values`]): [`random_crop`] → [`random_hflip`] →
//!   [`snn_augment_wide`];
//! - per batch ([`Augmentation::rows`], [`super::batch_rows`]): mixup of each sample with its
//!   partner (the `u8` pixels for CIFAR) with label smoothing (soft targets), or
//!   [`smooth_targets`] alone → for pixels `/255` and [`normalize`] with [`CIFAR_MEAN`] and
//!   [`CIFAR_STD`] (transformers) or [`CIFAR_RESNET_STD`] (ResNets, docs/choices.md §A18) →
//!   [`random_erasing`], as timm's prefetching loader orders them.

use revsnn_reference::testing::SplitMix64;

mod mixup;
mod rand_augment;
mod spatial;
#[cfg(test)]
mod tests;
mod wide;

pub use mixup::{Mixup, beta, mixup_lambda, smooth_targets};
pub use rand_augment::{RAND_INCREASING_OPS, RandAugment, RandOp};
pub use spatial::{crop_padded, hflip, random_crop, random_erasing, random_hflip};
pub use wide::{WideOp, apply_wide_op, draw_wide_op, snn_augment_wide};

use crate::error::{Error, Result};

/// CIFAR channel means (docs/recipes.md §5.1, 5.2).
pub const CIFAR_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];

/// CIFAR channel standard deviations of the transformer recipe (docs/recipes.md §5.1).
pub const CIFAR_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// The non-standard standard deviations of the CIFAR ResNet recipe, also for CIFAR-100
/// (docs/recipes.md §5.2; docs/choices.md §A18).
pub const CIFAR_RESNET_STD: [f32; 3] = [0.557, 0.549, 0.5534];

/// The shape of one image or stack of planes: `planes` channels (or `T * C` frame planes) of
/// `h x w`, channel-major (docs/conventions.md §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planes {
    /// Number of planes (channels, or time steps x channels).
    pub planes: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl Planes {
    /// `planes x h x w`.
    pub fn new(planes: usize, h: usize, w: usize) -> Self {
        Planes { planes, h, w }
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.planes * self.h * self.w
    }

    /// Whether there is no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check<T>(&self, values: &[T]) -> Result<()> {
        if values.len() == self.len() {
            Ok(())
        } else {
            Err(Error::Usage(format!(
                "augmentation of a {}x{}x{} image got {} values: pass the sample's own shape",
                self.planes,
                self.h,
                self.w,
                values.len()
            )))
        }
    }
}

/// Uniform integer in `[lo, hi]` (both included).
fn randint(rng: &mut SplitMix64, lo: usize, hi: usize) -> usize {
    lo + (rng.next_u64() % (hi - lo + 1) as u64) as usize
}

/// `(x - mean[c]) / std[c]` per channel `c` of a `[C, H, W]` image (docs/recipes.md §5.1, 5.2; `mean` and
/// `std` have `C` entries).
pub fn normalize(values: &mut [f32], shape: Planes, mean: &[f32], std: &[f32]) -> Result<()> {
    shape.check(values)?;
    if mean.len() != shape.planes || std.len() != shape.planes {
        return Err(Error::Usage(format!(
            "normalisation needs one mean and std per channel ({}), got {} and {}",
            shape.planes,
            mean.len(),
            std.len()
        )));
    }
    let plane = shape.h * shape.w;
    for (c, chunk) in values.chunks_mut(plane.max(1)).enumerate() {
        for v in chunk {
            *v = (*v - mean[c]) / std[c];
        }
    }
    Ok(())
}

/// The evaluation transform of both CIFAR recipes (docs/recipes.md §5.1, 5.2): `/255` and normalisation
/// with [`CIFAR_MEAN`] and `std` ([`CIFAR_STD`] or [`CIFAR_RESNET_STD`]).
pub fn to_normalized(image: &[u8], shape: Planes, std: &[f32]) -> Result<Vec<f32>> {
    let mut v: Vec<f32> = image.iter().map(|&b| f32::from(b) / 255.0).collect();
    normalize(&mut v, shape, &CIFAR_MEAN, std)?;
    Ok(v)
}

/// A training run's augmentation (docs/recipes.md §5; docs/data.md §6.3): each step optional, and a step that is off
/// draws nothing from the generator. The recipes' pipelines are these steps with the others off:
/// - CIFAR ResNets (docs/recipes.md §5.2): crop with padding 4, flip; hard labels;
/// - CIFAR transformers (docs/recipes.md §5.1): flip, RandAugment; per batch mixup of the `u8` pixels
///   with label smoothing 0.1, normalisation, random erasing 0.25;
/// - event frames (docs/recipes.md §5.3): flip, SNNAugmentWide; per batch mixup with label smoothing 0.1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augmentation {
    /// A crop of the sample's own size from the sample zero-padded by this much on every side
    /// ([`random_crop`]); 0: no crop.
    pub crop_padding: usize,
    /// A horizontal flip with probability 0.5 ([`random_hflip`]).
    pub flip: bool,
    /// RandAugment ([`RandAugment::apply`]); works on `u8` pixels only.
    pub rand_augment: Option<RandAugment>,
    /// `SNNAugmentWide` ([`snn_augment_wide`]); works on float planes only.
    pub snn_augment_wide: bool,
    /// Mixup of each batch (each sample with its partner, [`super::batch_rows`]), its targets
    /// smoothed by [`Mixup::label_smoothing`].
    pub mixup: Option<Mixup>,
    /// Label smoothing of the targets of a batch that is not mixed; with no mixup and 0, the
    /// batch trains on hard labels.
    pub label_smoothing: f64,
    /// The probability of [`random_erasing`] per sample, after normalisation; 0: none.
    pub random_erasing: f64,
}

impl Augmentation {
    /// No augmentation at all: samples as they are, hard labels.
    pub const NONE: Augmentation = Augmentation {
        crop_padding: 0,
        flip: false,
        rand_augment: None,
        snn_augment_wide: false,
        mixup: None,
        label_smoothing: 0.0,
        random_erasing: 0.0,
    };

    /// Crop and flip, shared by both sample types.
    fn crop_and_flip<T: Copy + Default>(
        &self,
        values: Vec<T>,
        shape: Planes,
        rng: &mut SplitMix64,
    ) -> Result<Vec<T>> {
        let mut values = if self.crop_padding > 0 {
            random_crop(&values, shape, self.crop_padding, rng)?
        } else {
            shape.check(&values)?;
            values
        };
        if self.flip {
            random_hflip(&mut values, shape, rng)?;
        }
        Ok(values)
    }

    /// The per-sample steps on `u8` pixels (CIFAR): crop, flip, RandAugment.
    pub fn sample_pixels(
        &self,
        image: &[u8],
        shape: Planes,
        rng: &mut SplitMix64,
    ) -> Result<Vec<u8>> {
        if self.snn_augment_wide {
            return Err(Error::Usage(
                "SNNAugmentWide works on float planes (event frames, synthetic images), not on \
                 u8 pixels: turn it off for CIFAR"
                    .into(),
            ));
        }
        let mut image = self.crop_and_flip(image.to_vec(), shape, rng)?;
        if let Some(rand_augment) = &self.rand_augment {
            rand_augment.apply(&mut image, shape, rng)?;
        }
        Ok(image)
    }

    /// The per-sample steps on float planes (event frames `[T, 2, H, W]` as `2 T` planes,
    /// synthetic images): crop, flip, SNNAugmentWide.
    pub fn sample_values(
        &self,
        values: Vec<f32>,
        shape: Planes,
        rng: &mut SplitMix64,
    ) -> Result<Vec<f32>> {
        if self.rand_augment.is_some() {
            return Err(Error::Usage(
                "RandAugment works on u8 pixels (CIFAR), not on float planes: turn it off for \
                 this dataset"
                    .into(),
            ));
        }
        let mut values = self.crop_and_flip(values, shape, rng)?;
        if self.snn_augment_wide {
            snn_augment_wide(&mut values, shape, rng)?;
        }
        Ok(values)
    }
}
