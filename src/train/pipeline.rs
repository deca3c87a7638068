//! The real datasets' input pipelines (SPEC.md 5, 6): what each family trains on and is
//! evaluated on.
//!
//! - CIFAR, ResNets (SPEC.md 5.2): [`cifar_resnet_train`] per sample, hard labels; evaluation
//!   normalised with [`CIFAR_RESNET_STD`].
//! - CIFAR, transformers (SPEC.md 5.1): [`cifar_transformer_sample`] per sample, then
//!   [`cifar_transformer_batch`] (mixup with label smoothing 0.1, random erasing 0.25): soft
//!   targets; mixup stops after 200/310 of the epochs (`mixup_off_epoch`), label smoothing goes on;
//!   evaluation normalised with [`CIFAR_STD`].
//! - Event frames (SPEC.md 5.3): [`dvs_train`] per sample, then [`mixup_batch`] with
//!   [`Mixup::dvs`]: soft targets; mixup stops at epoch 75 of 106 (CIFAR10-DVS) or 202 (DVS128
//!   Gesture), scaled to the run's length.
//!
//! Every random choice comes from the batch's seed, so a seed and an epoch fix the batches.

use std::sync::Arc;

use revsnn_reference::testing::SplitMix64;

use super::loader::{Batch, BatchSource};
use crate::data::augment::{
    CIFAR_RESNET_STD, CIFAR_STD, Mixup, Planes, RandAugment, cifar_resnet_train,
    cifar_transformer_batch, cifar_transformer_sample, dvs_train, mixup_batch, smooth_targets,
    to_normalized,
};
use crate::data::cifar::Cifar;
use crate::data::{Dataset, Sample};
use crate::error::{Error, Result};

/// Label smoothing of the soft-target recipes (SPEC.md 5.1, 5.3).
pub const LABEL_SMOOTHING: f32 = 0.1;
/// Random-erasing probability of the CIFAR transformer recipe (SPEC.md 5.1).
pub const RANDOM_ERASING: f64 = 0.25;

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

/// CIFAR samples normalised for evaluation ([`to_normalized`] with the family's `std`), the first
/// `len` of them.
pub struct CifarNormalized {
    cifar: Arc<Cifar>,
    std: [f32; 3],
    len: usize,
}

impl CifarNormalized {
    /// The first `cap` samples of `cifar`, normalised with [`CIFAR_RESNET_STD`] for ResNets
    /// (`resnet`) and [`CIFAR_STD`] for transformers.
    pub fn new(cifar: Arc<Cifar>, resnet: bool, cap: usize) -> Self {
        let len = cifar.len().min(cap);
        let std = if resnet { CIFAR_RESNET_STD } else { CIFAR_STD };
        CifarNormalized { cifar, std, len }
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
        let bytes = (index < self.len)
            .then(|| self.cifar.bytes(index))
            .flatten();
        let (bytes, label) = bytes.ok_or_else(|| out_of_range(self.name(), index, self.len))?;
        Ok(Sample {
            values: to_normalized(bytes, Planes::new(3, 32, 32), &self.std)?,
            label,
        })
    }
}

/// How a training set is augmented.
#[derive(Clone)]
pub enum Augment {
    /// Nothing (the synthetic datasets).
    None,
    /// The CIFAR ResNet recipe on these images (SPEC.md 5.2).
    CifarResnet(Arc<Cifar>),
    /// The CIFAR transformer recipe on these images (SPEC.md 5.1).
    CifarTransformer(Arc<Cifar>),
    /// The event-frame recipe (SPEC.md 5.3); `mixup_fraction` is the share of the epochs with
    /// mixup (75/106 for CIFAR10-DVS, 75/202 for DVS128 Gesture).
    Dvs { mixup_fraction: (usize, usize) },
}

/// A training set: its samples (normalised as for evaluation) and its augmentation.
pub struct TrainSet {
    /// The samples, capped; also fixes the length, shape and classes.
    pub data: Arc<dyn Dataset>,
    /// The recipe's augmentation.
    pub augment: Augment,
}

/// The first epoch without mixup of a run of `epochs` epochs, scaling `off / total` of the paper.
fn mixup_off_epoch(epochs: usize, (off, total): (usize, usize)) -> usize {
    epochs * off / total
}

impl TrainSet {
    /// Whether training mixes pairs of samples (mixup), which needs an even batch size.
    pub fn mixes(&self) -> bool {
        matches!(
            self.augment,
            Augment::CifarTransformer(_) | Augment::Dvs { .. }
        )
    }

    /// The batches of epoch `epoch` of `epochs` for a head of `num_classes` classes.
    pub fn source(&self, epoch: usize, epochs: usize, num_classes: usize) -> Arc<dyn BatchSource> {
        let len = self.data.len();
        match &self.augment {
            Augment::None => Arc::new(super::loader::Plain(self.data.clone())),
            Augment::CifarResnet(cifar) => Arc::new(CifarTrain {
                cifar: cifar.clone(),
                len,
                transformer: None,
            }),
            Augment::CifarTransformer(cifar) => Arc::new(CifarTrain {
                cifar: cifar.clone(),
                len,
                transformer: Some(TransformerAug {
                    rand_augment: RandAugment::cifar(),
                    mixup: (epoch < mixup_off_epoch(epochs, (200, 310))).then(Mixup::cifar),
                    num_classes,
                }),
            }),
            Augment::Dvs { mixup_fraction } => Arc::new(DvsTrain {
                data: self.data.clone(),
                mixup: (epoch < mixup_off_epoch(epochs, *mixup_fraction)).then(Mixup::dvs),
                num_classes,
            }),
        }
    }
}

struct TransformerAug {
    rand_augment: RandAugment,
    mixup: Option<Mixup>,
    num_classes: usize,
}

struct CifarTrain {
    cifar: Arc<Cifar>,
    len: usize,
    transformer: Option<TransformerAug>,
}

impl BatchSource for CifarTrain {
    fn batch(&self, indices: &[usize], seed: u64) -> Result<Batch> {
        let mut rng = SplitMix64::new(seed);
        let mut labels = Vec::with_capacity(indices.len());
        let mut pixels = Vec::new();
        let mut images = Vec::new();
        for &index in indices {
            let bytes = (index < self.len)
                .then(|| self.cifar.bytes(index))
                .flatten();
            let (bytes, label) =
                bytes.ok_or_else(|| out_of_range(self.cifar.name(), index, self.len))?;
            labels.push(label);
            match &self.transformer {
                None => images.extend(cifar_resnet_train(bytes, &mut rng)?),
                Some(aug) => pixels.extend(cifar_transformer_sample(
                    bytes,
                    &aug.rand_augment,
                    &mut rng,
                )?),
            }
        }
        let targets = match &self.transformer {
            None => None,
            Some(aug) => {
                let (values, targets) = cifar_transformer_batch(
                    &mut pixels,
                    &labels,
                    aug.num_classes,
                    aug.mixup.as_ref(),
                    LABEL_SMOOTHING,
                    RANDOM_ERASING,
                    &mut rng,
                )?;
                images = values;
                Some(targets)
            }
        };
        Ok(Batch {
            images,
            labels,
            targets,
        })
    }
}

struct DvsTrain {
    data: Arc<dyn Dataset>,
    mixup: Option<Mixup>,
    num_classes: usize,
}

impl BatchSource for DvsTrain {
    fn batch(&self, indices: &[usize], seed: u64) -> Result<Batch> {
        let mut rng = SplitMix64::new(seed);
        let shape = self.data.sample_shape();
        let planes = match shape.as_slice() {
            [t, c, h, w] => Planes::new(t * c, *h, *w),
            _ => {
                return Err(Error::Usage(format!(
                    "event frames must be [T, 2, H, W], not {shape:?}"
                )));
            }
        };
        let mut labels = Vec::with_capacity(indices.len());
        let mut images = Vec::with_capacity(indices.len() * planes.len());
        for &index in indices {
            let mut sample = self.data.get(index)?;
            dvs_train(&mut sample.values, planes, &mut rng)?;
            images.extend(sample.values);
            labels.push(sample.label);
        }
        let targets = match &self.mixup {
            Some(cfg) => mixup_batch(&mut images, &labels, self.num_classes, cfg, &mut rng)?.0,
            None => smooth_targets(&labels, self.num_classes, LABEL_SMOOTHING)?,
        };
        Ok(Batch {
            images,
            labels,
            targets: Some(targets),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::cifar::{CifarVariant, Split};

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

    #[test]
    fn transformer_batches_are_deterministic_with_soft_targets() {
        let cifar = tiny_cifar10("transformer");
        let set = TrainSet {
            data: Arc::new(CifarNormalized::new(cifar.clone(), false, 20)),
            augment: Augment::CifarTransformer(cifar),
        };
        assert!(set.mixes());
        let source = set.source(0, 10, 12);
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
        // after mixup_off_epoch: label smoothing only
        let late = set.source(9, 10, 12).batch(&indices, 9).unwrap();
        let row = &late.targets.unwrap()[..12];
        assert!((row[late.labels[0]] - (0.9 + 0.1 / 12.0)).abs() < 1e-6);
    }

    #[test]
    fn resnet_batches_use_hard_labels_and_reject_out_of_range_indices() {
        let cifar = tiny_cifar10("resnet");
        let set = TrainSet {
            data: Arc::new(CifarNormalized::new(cifar.clone(), true, 6)),
            augment: Augment::CifarResnet(cifar),
        };
        assert!(!set.mixes());
        let source = set.source(0, 4, 10);
        let batch = source.batch(&[0, 1], 3).unwrap();
        assert!(batch.targets.is_none());
        assert_eq!(batch.images.len(), 2 * 3072);
        assert!(source.batch(&[6], 3).is_err());
        assert!(set.data.get(6).is_err());
    }
}
