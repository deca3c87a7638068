//! The datasets a run trains and evaluates on, opened by name and shaped for the model:
//! normalised as evaluation sees them (docs/recipes.md §5), capped at the run's sample counts.

use std::path::Path;
use std::sync::Arc;

use super::pipeline::{Capped, CifarNormalized, OpenedSplit};
use super::recipe::DatasetKind;
use crate::data::cifar::{Cifar, CifarVariant, Split as DataSplit};
use crate::data::synthetic::{Split, Synthetic, SyntheticCifar, SyntheticEvents};
use crate::data::{Dataset, PixelImages};
use crate::error::{Error, Result};
use crate::spec::ModelSpec;

/// The seed the synthetic datasets are generated from: the same data whatever `--seed` trains.
pub const DATA_SEED: u64 = 2024;

/// What `--dataset` says to a model that does not take its samples.
const DVS_MODELS: &str = "use a DVS model (revsresnet24, msresnet20, revsformer-2-256, \
                          spikingformer-2-256 or a *-dvs spec)";

/// Opens `split` of dataset `name` shaped for `spec`, capped at `samples` samples, as evaluation
/// sees it (normalised as the family's recipe says, docs/recipes.md §5).
pub fn open_dataset(
    name: &str,
    data_dir: Option<&Path>,
    spec: &ModelSpec,
    split: Split,
    samples: usize,
) -> Result<Arc<dyn Dataset>> {
    Ok(open_split(name, data_dir, spec, split, samples)?.data)
}

/// Opens `split` of dataset `name` for `spec`, capped at `samples`: the samples as evaluation
/// sees them and, for CIFAR, the pixels the training augmentation starts from.
pub fn open_split(
    name: &str,
    data_dir: Option<&Path>,
    spec: &ModelSpec,
    split: Split,
    samples: usize,
) -> Result<OpenedSplit> {
    let opened = match DatasetKind::from_name(name)? {
        DatasetKind::Synthetic => plain(open_synthetic(spec, split, samples)?),
        DatasetKind::SyntheticCifar => open_synthetic_cifar(spec, split, samples)?,
        DatasetKind::SyntheticEvents => plain(open_synthetic_events(spec, split, samples)?),
        kind @ (DatasetKind::Cifar10 | DatasetKind::Cifar100) => {
            let variant = if kind == DatasetKind::Cifar10 {
                CifarVariant::Cifar10
            } else {
                CifarVariant::Cifar100
            };
            let dir = real_dir(name, data_dir)?;
            let cifar = Cifar::load(dir, variant, data_split(split))?;
            with_pixels(Arc::new(cifar), spec, samples)
        }
        kind @ (DatasetKind::Dvs128Gesture | DatasetKind::Cifar10Dvs) => plain(open_events(
            kind,
            real_dir(name, data_dir)?,
            spec,
            split,
            samples,
        )?),
    };
    check_fits(name, opened.data.as_ref(), spec)?;
    Ok(opened)
}

/// A split without pixels to augment from.
fn plain(data: Arc<dyn Dataset>) -> OpenedSplit {
    OpenedSplit { data, cifar: None }
}

/// The folder a dataset read from disk lives in: `--data-dir`, which it needs.
fn real_dir<'a>(name: &str, data_dir: Option<&'a Path>) -> Result<&'a Path> {
    data_dir.ok_or_else(|| {
        Error::Usage(format!(
            "--dataset {name} reads its files from disk: pass --data-dir DIR (the folder that \
             holds them, see the README's training section)"
        ))
    })
}

fn data_split(split: Split) -> DataSplit {
    match split {
        Split::Train => DataSplit::Train,
        Split::Test => DataSplit::Test,
    }
}

/// `synthetic`: 3-channel images, for the image models.
fn open_synthetic(spec: &ModelSpec, split: Split, samples: usize) -> Result<Arc<dyn Dataset>> {
    if spec.arch.is_dvs() || spec.in_channels != 3 {
        return Err(Error::Usage(format!(
            "--dataset synthetic gives 3-channel images, but the model ({}, {} input channels) \
             wants {}; use --dataset synthetic-events for DVS models",
            spec.arch,
            spec.in_channels,
            if spec.arch.is_dvs() {
                "event frames"
            } else {
                "other channels"
            }
        )));
    }
    Ok(Arc::new(Synthetic::new(
        DATA_SEED,
        split,
        samples,
        spec.img_size,
    )?))
}

/// `synthetic-events`: 2-channel event frames, for the DVS models.
fn open_synthetic_events(
    spec: &ModelSpec,
    split: Split,
    samples: usize,
) -> Result<Arc<dyn Dataset>> {
    if !spec.arch.is_dvs() || spec.in_channels != 2 {
        return Err(Error::Usage(format!(
            "--dataset synthetic-events gives 2-channel event frames [T, 2, H, W]: {DVS_MODELS}"
        )));
    }
    Ok(Arc::new(SyntheticEvents::new(
        DATA_SEED,
        split,
        samples,
        spec.time_steps,
        spec.img_size,
    )?))
}

/// `synthetic-cifar`: CIFAR's 3x32x32 `u8` images, for the image models, with their pixels.
fn open_synthetic_cifar(spec: &ModelSpec, split: Split, samples: usize) -> Result<OpenedSplit> {
    if spec.arch.is_dvs() || spec.in_channels != 3 || spec.img_size != 32 {
        return Err(Error::Usage(format!(
            "--dataset synthetic-cifar gives CIFAR's 3x32x32 images, but the model takes {} \
             channels at {}x{}; use --dataset synthetic for other image sizes, synthetic-events \
             for DVS models",
            spec.in_channels, spec.img_size, spec.img_size
        )));
    }
    let images = SyntheticCifar::new(DATA_SEED, split, samples)?;
    Ok(with_pixels(Arc::new(images), spec, samples))
}

/// CIFAR-layout `images`, normalised for the model's family and capped at `samples`, with their
/// pixels for the training augmentation.
fn with_pixels(images: Arc<dyn PixelImages>, spec: &ModelSpec, samples: usize) -> OpenedSplit {
    let normalized = Arc::new(CifarNormalized::new(images, spec.arch.is_resnet(), samples));
    OpenedSplit {
        data: normalized.clone(),
        cifar: Some(normalized),
    }
}

/// DVS128 Gesture or CIFAR10-DVS, integrated into the model's time steps.
fn open_events(
    kind: DatasetKind,
    dir: &Path,
    spec: &ModelSpec,
    split: Split,
    samples: usize,
) -> Result<Arc<dyn Dataset>> {
    if !spec.arch.is_dvs() {
        return Err(Error::Usage(format!(
            "--dataset {} gives event frames [T, 2, 128, 128]: {DVS_MODELS}",
            kind.name()
        )));
    }
    let (split, steps) = (data_split(split), spec.time_steps);
    let frames: Arc<dyn Dataset> = if kind == DatasetKind::Dvs128Gesture {
        Arc::new(crate::data::dvs128::load(dir, split, steps, None)?)
    } else {
        Arc::new(crate::data::cifar10_dvs::load(dir, split, steps, None)?)
    };
    Ok(Arc::new(Capped::new(frames, samples)))
}

/// Checks that dataset `name`'s classes fit the model's head and its samples the model's input.
fn check_fits(name: &str, data: &dyn Dataset, spec: &ModelSpec) -> Result<()> {
    if data.num_classes() > spec.num_classes {
        return Err(Error::Usage(format!(
            "{name} has {} classes but the model's head has {}; pass --num-classes {}",
            data.num_classes(),
            spec.num_classes,
            data.num_classes()
        )));
    }
    if data.sample_shape() != spec.sample_shape() {
        return Err(Error::Usage(format!(
            "{name} gives samples of shape {:?} but the model wants {:?}",
            data.sample_shape(),
            spec.sample_shape()
        )));
    }
    Ok(())
}
