//! CIFAR-10 and CIFAR-100 from their standard binary versions (docs/data.md §6.1).
//!
//! Layout: `DIR/cifar-10-batches-bin/{data_batch_1..5.bin, test_batch.bin}`, records of one label
//! byte and 3072 pixel bytes (channel-major, 32x32 per channel); `DIR/cifar-100-binary/{train.bin,
//! test.bin}`, records of two label bytes (coarse, fine) and 3072 pixel bytes, of which the fine
//! label is used. Samples are `[3, 32, 32]` in `[0, 1]` (pixel / 255); normalisation is a transform
//! ([`crate::data::augment`]).

use std::path::{Path, PathBuf};

use super::{Dataset, PixelImages, Sample};
use crate::error::{Error, Result};

/// Pixels in one CIFAR image (`3 * 32 * 32`).
pub const CIFAR_IMAGE_BYTES: usize = 3 * 32 * 32;

/// Which part of a dataset: the official train or test set (docs/recipes.md §5; docs/data.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training set.
    Train,
    /// The test set (also used for evaluation, docs/choices.md §A16).
    Test,
}

impl Split {
    /// `train` or `test`, for names and paths.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Which CIFAR (docs/data.md §6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CifarVariant {
    /// 10 classes, `cifar-10-batches-bin/`.
    Cifar10,
    /// 100 (fine) classes, `cifar-100-binary/`.
    Cifar100,
}

impl CifarVariant {
    fn folder(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "cifar-10-batches-bin",
            CifarVariant::Cifar100 => "cifar-100-binary",
        }
    }

    fn url(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            CifarVariant::Cifar100 => "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        }
    }

    fn label_bytes(self) -> usize {
        match self {
            CifarVariant::Cifar10 => 1,
            CifarVariant::Cifar100 => 2,
        }
    }

    fn files(self, split: Split) -> Vec<&'static str> {
        match (self, split) {
            (CifarVariant::Cifar10, Split::Train) => vec![
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            (CifarVariant::Cifar10, Split::Test) => vec!["test_batch.bin"],
            (CifarVariant::Cifar100, Split::Train) => vec!["train.bin"],
            (CifarVariant::Cifar100, Split::Test) => vec!["test.bin"],
        }
    }

    /// The number of classes (10 or 100).
    pub fn num_classes(self) -> usize {
        match self {
            CifarVariant::Cifar10 => 10,
            CifarVariant::Cifar100 => 100,
        }
    }

    /// `cifar10` or `cifar100`.
    pub fn name(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "cifar10",
            CifarVariant::Cifar100 => "cifar100",
        }
    }
}

/// A CIFAR split held in memory as bytes (docs/data.md §6.1): `[3, 32, 32]` samples in `[0, 1]`.
#[derive(Clone, Debug)]
pub struct Cifar {
    variant: CifarVariant,
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

impl Cifar {
    /// Reads `split` of `variant` from `dir` (the folder that holds `cifar-10-batches-bin/` or
    /// `cifar-100-binary/`). Errors name the missing or malformed file and say what to do.
    pub fn load(dir: &Path, variant: CifarVariant, split: Split) -> Result<Self> {
        let folder = dir.join(variant.folder());
        let mut cifar = Cifar::empty(variant);
        for file in variant.files(split) {
            let path = folder.join(file);
            cifar.append(&read_file(&path, variant)?, &path)?;
        }
        Ok(cifar)
    }

    /// The records of one binary file of `variant` whose contents are `bytes`; `path` only names
    /// it in errors. Errors as [`Cifar::load`]'s.
    pub fn from_bytes(bytes: &[u8], variant: CifarVariant, path: &Path) -> Result<Self> {
        let mut cifar = Cifar::empty(variant);
        cifar.append(bytes, path)?;
        Ok(cifar)
    }

    fn empty(variant: CifarVariant) -> Self {
        Cifar {
            variant,
            pixels: Vec::new(),
            labels: Vec::new(),
        }
    }

    /// Appends the records of the file `path`, whose contents are `bytes`, checking its length
    /// and every label.
    fn append(&mut self, bytes: &[u8], path: &Path) -> Result<()> {
        let variant = self.variant;
        let record = variant.label_bytes() + CIFAR_IMAGE_BYTES;
        if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
            return Err(Error::File {
                path: path.display().to_string(),
                detail: format!(
                    "{} bytes is not a positive multiple of the {record}-byte record of the {} \
                     binary version; the file is truncated or not the binary version: download \
                     it again from {}",
                    bytes.len(),
                    variant.name(),
                    variant.url()
                ),
            });
        }
        for (i, rec) in bytes.chunks_exact(record).enumerate() {
            let label = rec[variant.label_bytes() - 1];
            if usize::from(label) >= variant.num_classes() {
                return Err(Error::File {
                    path: path.display().to_string(),
                    detail: format!(
                        "record {i} has label {label}, outside [0, {}): the file is corrupt or \
                         of the other CIFAR; download it again from {}",
                        variant.num_classes(),
                        variant.url()
                    ),
                });
            }
            self.labels.push(label);
            self.pixels.extend_from_slice(&rec[variant.label_bytes()..]);
        }
        Ok(())
    }

    /// The raw bytes of sample `index` (`[3, 32, 32]`, channel-major), as the augmentations of
    /// docs/recipes.md §5.1 (which act on `u8` images) want them.
    pub fn bytes(&self, index: usize) -> Option<(&[u8], usize)> {
        let label = *self.labels.get(index)?;
        let start = index * CIFAR_IMAGE_BYTES;
        Some((
            &self.pixels[start..start + CIFAR_IMAGE_BYTES],
            usize::from(label),
        ))
    }
}

fn read_file(path: &PathBuf, variant: CifarVariant) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::File {
        path: path.display().to_string(),
        detail: if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "not found: expected {}; download the binary version from {} and unpack it in \
                 the data directory",
                path.display(),
                variant.url()
            )
        } else {
            format!("cannot read: {e}")
        },
    })
}

impl PixelImages for Cifar {
    fn image(&self, index: usize) -> Option<(&[u8], usize)> {
        self.bytes(index)
    }
}

impl Dataset for Cifar {
    fn name(&self) -> &str {
        self.variant.name()
    }

    fn len(&self) -> usize {
        self.labels.len()
    }

    fn num_classes(&self) -> usize {
        self.variant.num_classes()
    }

    fn sample_shape(&self) -> Vec<usize> {
        vec![3, 32, 32]
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let (bytes, label) = self.bytes(index).ok_or_else(|| {
            Error::Usage(format!(
                "sample {index} is out of range: {} has {} samples",
                self.variant.name(),
                self.len()
            ))
        })?;
        Ok(Sample {
            values: bytes.iter().map(|&b| f32::from(b) / 255.0).collect(),
            label,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::events::tests::TempDir;

    fn record(label: &[u8], fill: u8) -> Vec<u8> {
        let mut r = label.to_vec();
        r.extend((0..CIFAR_IMAGE_BYTES).map(|i| fill.wrapping_add(i as u8)));
        r
    }

    #[test]
    fn cifar10_reads_all_batches_in_order() {
        let dir = TempDir::new("cifar10");
        let folder = dir.path().join("cifar-10-batches-bin");
        std::fs::create_dir_all(&folder).unwrap();
        for b in 1..=5u8 {
            let mut bytes = record(&[b], b);
            bytes.extend(record(&[9], 200));
            std::fs::write(folder.join(format!("data_batch_{b}.bin")), bytes).unwrap();
        }
        std::fs::write(folder.join("test_batch.bin"), record(&[3], 7)).unwrap();
        let train = Cifar::load(dir.path(), CifarVariant::Cifar10, Split::Train).unwrap();
        assert_eq!(train.len(), 10);
        assert_eq!(train.num_classes(), 10);
        assert_eq!(train.sample_shape(), vec![3, 32, 32]);
        let s = train.get(2).unwrap();
        assert_eq!(s.label, 2);
        assert_eq!(s.values[0], 2.0 / 255.0);
        assert_eq!(s.values[1], 3.0 / 255.0);
        assert_eq!(train.get(9).unwrap().label, 9);
        assert!(train.get(10).is_err());
        let test = Cifar::load(dir.path(), CifarVariant::Cifar10, Split::Test).unwrap();
        assert_eq!(test.len(), 1);
        assert_eq!(test.get(0).unwrap().label, 3);
        assert_eq!(
            test.get(0).unwrap().values[CIFAR_IMAGE_BYTES - 1],
            6.0 / 255.0
        );
    }

    #[test]
    fn cifar100_uses_the_fine_label() {
        let dir = TempDir::new("cifar100");
        let folder = dir.path().join("cifar-100-binary");
        std::fs::create_dir_all(&folder).unwrap();
        let mut bytes = record(&[4, 77], 0);
        bytes.extend(record(&[19, 99], 1));
        std::fs::write(folder.join("train.bin"), bytes).unwrap();
        let train = Cifar::load(dir.path(), CifarVariant::Cifar100, Split::Train).unwrap();
        assert_eq!(train.len(), 2);
        assert_eq!(train.get(0).unwrap().label, 77);
        assert_eq!(train.get(1).unwrap().label, 99);
        assert_eq!(train.num_classes(), 100);
    }

    #[test]
    fn missing_and_truncated_files_are_clear_errors() {
        let dir = TempDir::new("cifar-bad");
        let err = Cifar::load(dir.path(), CifarVariant::Cifar10, Split::Train)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cifar-10-batches-bin/data_batch_1.bin"),
            "{err}"
        );
        assert!(err.contains("download the binary version"), "{err}");
        let folder = dir.path().join("cifar-100-binary");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("test.bin"), vec![0u8; 3075]).unwrap();
        let err = Cifar::load(dir.path(), CifarVariant::Cifar100, Split::Test)
            .unwrap_err()
            .to_string();
        assert!(err.contains("3074-byte record"), "{err}");
        // A CIFAR-100 file read as CIFAR-10 has labels out of range only by chance; a label of
        // 200 in the first byte is caught.
        let folder10 = dir.path().join("cifar-10-batches-bin");
        std::fs::create_dir_all(&folder10).unwrap();
        std::fs::write(folder10.join("test_batch.bin"), record(&[200], 0)).unwrap();
        let err = Cifar::load(dir.path(), CifarVariant::Cifar10, Split::Test)
            .unwrap_err()
            .to_string();
        assert!(err.contains("label 200"), "{err}");
    }
}
