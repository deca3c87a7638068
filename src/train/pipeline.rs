//! The training sets' input pipelines (docs/recipes.md §5; docs/data.md §6): samples normalised as evaluation sees
//! them, and the run's [`Augmentation`] on top.
//!
//! - CIFAR: the augmentation starts from the `u8` pixels ([`Augmentation::sample_pixels`], then
//!   [`Augmentation::rows`] with the family's normalisation: [`CIFAR_RESNET_STD`] for ResNets,
//!   [`CIFAR_STD`] for transformers);
//! - every other dataset: from the float samples ([`Augmentation::sample_values`], then
//!   [`Augmentation::rows`]).
//!
//! Mixup stops at the run's `mixup_off_epoch`; label smoothing goes on. Every random choice comes
//! from the batch's seed, each sample's from a stream of its own ([`Augmentation::samples`]), so
//! a seed and an epoch fix the batches, and any rows of a batch can be made without the others.

use std::ops::Range;
use std::sync::Arc;

use super::loader::{Batch, BatchSource};
use crate::data::augment::{Augmentation, CIFAR_RESNET_STD, CIFAR_STD, Planes, to_normalized};
use crate::data::batch_rows::Rows;
use crate::data::{Dataset, PixelImages, Sample};
use crate::error::{Error, Result};

fn out_of_range(name: &str, index: usize, len: usize) -> Error {
    Error::Usage(format!(
        "sample {index} is out of range: {name} has {len} samples"
    ))
}

/// The first `len` samples of a dataset (`--train-samples`, `--test-samples`).
pub struct Capped {
    inner: Arc<dyn Dataset>,
    len: usize,
}

impl Capped {
    /// At most `cap` samples of `inner`.
    pub fn new(inner: Arc<dyn Dataset>, cap: usize) -> Self {
        let len = inner.len().min(cap);
        Capped { inner, len }
    }
}

impl Dataset for Capped {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn len(&self) -> usize {
        self.len
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn sample_shape(&self) -> Vec<usize> {
        self.inner.sample_shape()
    }
    fn get(&self, index: usize) -> Result<Sample> {
        if index >= self.len {
            return Err(out_of_range(self.name(), index, self.len));
        }
        self.inner.get(index)
    }
}

/// CIFAR's (or synthetic-cifar's) samples normalised for evaluation ([`to_normalized`] with the
/// family's `std`), the first `len` of them.
pub struct CifarNormalized {
    cifar: Arc<dyn PixelImages>,
    std: [f32; 3],
    len: usize,
}

impl CifarNormalized {
    /// The first `cap` samples of `cifar`, normalised with [`CIFAR_RESNET_STD`] for ResNets
    /// (`resnet`) and [`CIFAR_STD`] for transformers.
    pub fn new(cifar: Arc<dyn PixelImages>, resnet: bool, cap: usize) -> Self {
        let len = cifar.len().min(cap);
        let std = if resnet { CIFAR_RESNET_STD } else { CIFAR_STD };
        CifarNormalized { cifar, std, len }
    }
}

impl CifarNormalized {
    /// The `[3, 32, 32]` bytes and the label of sample `index`.
    fn pixels(&self, index: usize) -> Result<(&[u8], usize)> {
        (index < self.len)
            .then(|| self.cifar.image(index))
            .flatten()
            .ok_or_else(|| out_of_range(self.name(), index, self.len))
    }
}

impl Dataset for CifarNormalized {
    fn name(&self) -> &str {
        self.cifar.name()
    }
    fn len(&self) -> usize {
        self.len
    }
    fn num_classes(&self) -> usize {
        self.cifar.num_classes()
    }
    fn sample_shape(&self) -> Vec<usize> {
        vec![3, 32, 32]
    }
    fn get(&self, index: usize) -> Result<Sample> {
        let (bytes, label) = self.pixels(index)?;
        Ok(Sample {
            values: to_normalized(bytes, CIFAR_PLANES, &self.std)?,
            label,
        })
    }
}

/// The shape of a CIFAR image.
const CIFAR_PLANES: Planes = Planes {
    planes: 3,
    h: 32,
    w: 32,
};

/// A dataset split as opened: its samples as evaluation sees them and, for CIFAR, the pixels the
/// training augmentation starts from.
pub struct OpenedSplit {
    /// The samples, capped; also fixes the length, shape and classes.
    pub data: Arc<dyn Dataset>,
    /// The same samples with their `u8` pixels, for CIFAR.
    pub cifar: Option<Arc<CifarNormalized>>,
}

/// A training set: its samples and the run's augmentation.
pub struct TrainSet {
    /// The samples, as opened.
    pub split: OpenedSplit,
    /// The augmentation of every epoch.
    pub augmentation: Augmentation,
    /// The first epoch without mixup (label smoothing goes on).
    pub mixup_off_epoch: usize,
}

impl TrainSet {
    /// The batches of epoch `epoch` for a head of `num_classes` classes.
    pub fn source(&self, epoch: usize, num_classes: usize) -> Arc<dyn BatchSource> {
        let mut augmentation = self.augmentation;
        if epoch >= self.mixup_off_epoch {
            augmentation.mixup = None;
        }
        match &self.split.cifar {
            Some(cifar) => Arc::new(CifarTrain {
                cifar: cifar.clone(),
                augmentation,
                num_classes,
            }),
            None => Arc::new(FloatTrain {
                data: self.split.data.clone(),
                augmentation,
                num_classes,
            }),
        }
    }
}

/// CIFAR training batches: augmented from the pixels.
struct CifarTrain {
    cifar: Arc<CifarNormalized>,
    augmentation: Augmentation,
    num_classes: usize,
}

impl BatchSource for CifarTrain {
    fn rows(&self, indices: &[usize], rows: Range<usize>, seed: u64) -> Result<Batch> {
        let augmentation = &self.augmentation;
        let mut samples =
            augmentation.samples(indices.len(), rows.clone(), seed, |position, rng| {
                let (bytes, label) = self.cifar.pixels(indices[position])?;
                Ok((augmentation.sample_pixels(bytes, CIFAR_PLANES, rng)?, label))
            })?;
        let normalise = |pixels: Vec<u8>| to_normalized(&pixels, CIFAR_PLANES, &self.cifar.std);
        let made = augmentation.rows(
            &mut samples,
            rows,
            self.num_classes,
            CIFAR_PLANES,
            seed,
            normalise,
        )?;
        Ok(batch_of(made))
    }
}

/// The loader's batch of augmented rows.
fn batch_of(rows: Rows) -> Batch {
    Batch {
        images: rows.values,
        labels: rows.labels,
        targets: rows.targets,
    }
}

/// Training batches of float samples (event frames `[T, 2, H, W]` as `2 T` planes, synthetic
/// images).
struct FloatTrain {
    data: Arc<dyn Dataset>,
    augmentation: Augmentation,
    num_classes: usize,
}

impl BatchSource for FloatTrain {
    fn rows(&self, indices: &[usize], rows: Range<usize>, seed: u64) -> Result<Batch> {
        let shape = self.data.sample_shape();
        let planes = match shape.as_slice() {
            [c, h, w] => Planes::new(*c, *h, *w),
            [t, c, h, w] => Planes::new(t * c, *h, *w),
            _ => {
                return Err(Error::Usage(format!(
                    "training samples must be images [C, H, W] or event frames [T, 2, H, W], \
                     not {shape:?}"
                )));
            }
        };
        let augmentation = &self.augmentation;
        let mut samples =
            augmentation.samples(indices.len(), rows.clone(), seed, |position, rng| {
                let sample = self.data.get(indices[position])?;
                Ok((
                    augmentation.sample_values(sample.values, planes, rng)?,
                    sample.label,
                ))
            })?;
        let made = augmentation.rows(&mut samples, rows, self.num_classes, planes, seed, Ok)?;
        Ok(batch_of(made))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::augment::{Mixup, RandAugment};
    use crate::data::cifar::{Cifar, CifarVariant, Split};

    fn tiny_cifar10(name: &str) -> Arc<Cifar> {
        let dir =
            std::env::temp_dir().join(format!("revsnn-pipeline-{}-{name}", std::process::id()));
        let folder = dir.join("cifar-10-batches-bin");
        std::fs::create_dir_all(&folder).unwrap();
        for k in 1..=5 {
            let mut bytes = Vec::new();
            for i in 0..4usize {
                bytes.push(((i + k) % 10) as u8);
                bytes.extend((0..3072).map(|p| ((p * (i + 3) + k * 11) % 256) as u8));
            }
            std::fs::write(folder.join(format!("data_batch_{k}.bin")), bytes).unwrap();
        }
        let cifar = Cifar::load(&dir, CifarVariant::Cifar10, Split::Train).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        Arc::new(cifar)
    }

    fn train_set(
        cifar: Arc<Cifar>,
        resnet: bool,
        cap: usize,
        augmentation: Augmentation,
        mixup_off_epoch: usize,
    ) -> TrainSet {
        let normalized = Arc::new(CifarNormalized::new(cifar, resnet, cap));
        TrainSet {
            split: OpenedSplit {
                data: normalized.clone(),
                cifar: Some(normalized),
            },
            augmentation,
            mixup_off_epoch,
        }
    }

    #[test]
    fn transformer_batches_are_deterministic_with_soft_targets() {
        let augmentation = Augmentation {
            flip: true,
            rand_augment: Some(RandAugment::cifar()),
            mixup: Some(Mixup::cifar()),
            label_smoothing: 0.1,
            random_erasing: 0.25,
            ..Augmentation::NONE
        };
        let set = train_set(tiny_cifar10("transformer"), false, 20, augmentation, 6);
        let source = set.source(0, 12);
        let indices = [0, 3, 5, 7];
        let a = source.batch(&indices, 9).unwrap();
        assert_eq!(a, source.batch(&indices, 9).unwrap());
        assert_ne!(a.images, source.batch(&indices, 10).unwrap().images);
        let targets = a.targets.expect("soft targets");
        assert_eq!(targets.len(), 4 * 12);
        for row in targets.chunks_exact(12) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        assert_eq!(a.images.len(), 4 * 3072);
        // from mixup_off_epoch on: label smoothing only
        let late = set.source(6, 12).batch(&indices, 9).unwrap();
        let row = &late.targets.unwrap()[..12];
        assert!((row[late.labels[0]] - (0.9 + 0.1 / 12.0)).abs() < 1e-6);
    }

    #[test]
    fn any_rows_of_a_mixed_batch_come_out_alone_as_the_whole_batch_has_them() {
        let augmentation = Augmentation {
            flip: true,
            rand_augment: Some(RandAugment::cifar()),
            mixup: Some(Mixup::cifar()),
            label_smoothing: 0.1,
            random_erasing: 0.5,
            ..Augmentation::NONE
        };
        let set = train_set(tiny_cifar10("rows"), false, 20, augmentation, 6);
        let source = set.source(0, 10);
        let indices = [0, 3, 5, 7, 11, 2];
        let whole = source.batch(&indices, 4).unwrap();
        for (start, end) in [(0, 2), (2, 4), (4, 6), (1, 5), (5, 6), (3, 3)] {
            let part = source.rows(&indices, start..end, 4).unwrap();
            assert_eq!(part.images, whole.images[start * 3072..end * 3072]);
            assert_eq!(part.labels, whole.labels[start..end]);
            assert_eq!(
                part.targets.unwrap(),
                whole.targets.as_ref().unwrap()[start * 10..end * 10]
            );
        }
        assert!(source.rows(&indices, 4..7, 4).is_err());
    }

    #[test]
    fn resnet_batches_use_hard_labels_and_reject_out_of_range_indices() {
        let augmentation = Augmentation {
            crop_padding: 4,
            flip: true,
            ..Augmentation::NONE
        };
        let set = train_set(tiny_cifar10("resnet"), true, 6, augmentation, 0);
        let source = set.source(0, 10);
        let batch = source.batch(&[0, 1], 3).unwrap();
        assert!(batch.targets.is_none());
        assert_eq!(batch.images.len(), 2 * 3072);
        assert!(source.batch(&[6], 3).is_err());
        assert!(set.split.data.get(6).is_err());
    }
}
