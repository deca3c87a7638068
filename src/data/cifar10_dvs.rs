//! CIFAR10-DVS (docs/data.md §6.2): the distributed AEDAT recordings, 10 classes x 1000, decoded as
//! SpikingJelly does, integrated into `[T, 2, 128, 128]` frames by event count, cached on disk,
//! and split deterministically (docs/choices.md §A24): within each class, file names sorted, the first
//! `ceil(0.9 n)` are the training set and the rest the test set.
//!
//! Layout: `DIR/<class>/*.aedat` (or `DIR/extract/<class>/`) for the classes `airplane`,
//! `automobile`, `bird`, `cat`, `deer`, `dog`, `frog`, `horse`, `ship`, `truck` (labels 0..9 in
//! this order). Frames are cached as `DIR/frames_T{T}/<class>/<name>.frames`.

use std::path::{Path, PathBuf};

use super::cifar::Split;
use super::events::{self, FrameDataset};
use crate::error::{Error, Result};

/// The class folders, in label order (alphabetical, as SpikingJelly's `DatasetFolder`).
pub const CIFAR10_DVS_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
/// Sensor height and width.
pub const CIFAR10_DVS_SIZE: usize = 128;

const SOURCE: &str = "download the class archives (airplane.zip, ...) of CIFAR10-DVS from \
     https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671 and extract each into a folder \
     named after its class";

/// How many of `n` recordings of a class go to the training set: `ceil(0.9 n)` (docs/choices.md §A24).
pub fn train_count(n: usize) -> usize {
    (9 * n).div_ceil(10)
}

fn find_root(dir: &Path) -> PathBuf {
    let extract = dir.join("extract");
    if extract.join(CIFAR10_DVS_CLASSES[0]).is_dir() {
        extract
    } else {
        dir.to_path_buf()
    }
}

/// The sorted `.aedat` file names of one class folder.
fn class_files(folder: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(folder).map_err(|e| Error::File {
        path: folder.display().to_string(),
        detail: format!("cannot list the class folder ({e}): {SOURCE}"),
    })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::File {
            path: folder.display().to_string(),
            detail: format!("cannot list the class folder: {e}"),
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".aedat") {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Err(Error::File {
            path: folder.display().to_string(),
            detail: format!("no .aedat file in the class folder: {SOURCE}"),
        });
    }
    names.sort();
    Ok(names)
}

/// Opens `split` of CIFAR10-DVS under `dir` as `[frames, 2, 128, 128]` event counts, decoding
/// and integrating (in parallel) the recordings of that split whose frames are not yet cached
/// under `cache_dir` (default `dir/frames_T{frames}`).
pub fn load(
    dir: &Path,
    split: Split,
    frames: usize,
    cache_dir: Option<&Path>,
) -> Result<FrameDataset> {
    if frames == 0 {
        return Err(Error::Usage(
            "the number of frames T must be at least 1".into(),
        ));
    }
    let root = find_root(dir);
    let cache = cache_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join(format!("frames_T{frames}")));
    let mut jobs: Vec<(PathBuf, PathBuf, usize)> = Vec::new();
    for (label, class) in CIFAR10_DVS_CLASSES.iter().enumerate() {
        let folder = root.join(class);
        if !folder.is_dir() {
            return Err(Error::File {
                path: folder.display().to_string(),
                detail: format!(
                    "expected the class folder {} with the .aedat recordings: {SOURCE}",
                    folder.display()
                ),
            });
        }
        let names = class_files(&folder)?;
        let cut = train_count(names.len());
        let chosen = match split {
            Split::Train => &names[..cut],
            Split::Test => &names[cut..],
        };
        for name in chosen {
            let stem = name.strip_suffix(".aedat").unwrap_or(name);
            jobs.push((
                folder.join(name),
                cache.join(class).join(format!("{stem}.frames")),
                label,
            ));
        }
    }
    let shape = vec![frames, 2, CIFAR10_DVS_SIZE, CIFAR10_DVS_SIZE];
    events::build_missing(
        &jobs,
        |(_, cache, _)| vec![cache.clone()],
        |(aedat, _, _)| {
            let bytes = events::read_bytes(aedat, "a CIFAR10-DVS recording")?;
            let ev = events::decode_cifar10_dvs(&bytes, aedat)?;
            Ok(vec![events::integrate_by_number(
                &ev,
                frames,
                CIFAR10_DVS_SIZE,
                CIFAR10_DVS_SIZE,
                aedat,
            )?])
        },
        &shape,
    )?;
    let items = jobs.into_iter().map(|(_, c, l)| (c, l)).collect();
    Ok(FrameDataset::new("cifar10-dvs", 10, shape, items))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;
    use crate::data::events::tests::{TempDir, cifar_dvs};

    #[test]
    fn train_count_is_the_ceiling_of_nine_tenths() {
        assert_eq!(train_count(1000), 900);
        assert_eq!(train_count(11), 10);
        assert_eq!(train_count(3), 3);
        assert_eq!(train_count(20), 18);
        assert_eq!(train_count(21), 19);
    }

    #[test]
    fn split_is_per_class_in_sorted_name_order() {
        let dir = TempDir::new("c10dvs");
        for class in CIFAR10_DVS_CLASSES {
            let folder = dir.path().join("extract").join(class);
            std::fs::create_dir_all(&folder).unwrap();
            // 12 files: ceil(10.8) = 11 train, 1 test. Lexicographic order puts `_9` last.
            for i in 0..12u32 {
                let evs: Vec<_> = (0..=i).map(|k| (i, 0, k % 2, k)).collect();
                std::fs::write(
                    folder.join(format!("cifar10_{class}_{}.aedat", i + 1)),
                    cifar_dvs(&evs),
                )
                .unwrap();
            }
            std::fs::write(folder.join("readme.txt"), "not events").unwrap();
        }
        let test = load(dir.path(), Split::Test, 3, None).unwrap();
        assert_eq!(test.len(), 10);
        assert_eq!(test.sample_shape(), vec![3, 2, 128, 128]);
        for (label, class) in CIFAR10_DVS_CLASSES.iter().enumerate() {
            let s = test.get(label).unwrap();
            assert_eq!(s.label, label);
            // `_9` has 9 events (raw x = 8): mapped to y' = 127 - 8, x' = 127 - 0, p' = 1 - p.
            assert_eq!(s.values.iter().sum::<f32>(), 9.0);
            let at = |t: usize, p: usize| ((t * 2 + p) * 128 + 119) * 128 + 127;
            // Frames of 3, 3, 3 events with raw p = 0,1,0 | 1,0,1 | 0,1,0.
            assert_eq!(s.values[at(0, 1)], 2.0);
            assert_eq!(s.values[at(0, 0)], 1.0);
            assert_eq!(s.values[at(1, 0)], 2.0);
            assert_eq!(s.values[at(2, 1)], 2.0);
            assert!(
                test.items()[label]
                    .0
                    .ends_with(format!("frames_T3/{class}/cifar10_{class}_9.frames"))
            );
        }
        let train = load(dir.path(), Split::Train, 3, None).unwrap();
        assert_eq!(train.len(), 110);
        assert_eq!(train.get(11).unwrap().label, 1);
    }

    #[test]
    fn missing_class_folder_is_a_clear_error() {
        let dir = TempDir::new("c10dvs-bad");
        std::fs::create_dir_all(dir.path().join("airplane")).unwrap();
        let err = load(dir.path(), Split::Train, 4, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no .aedat file"), "{err}");
        std::fs::write(dir.path().join("airplane/a.aedat"), b"#h\n\x01").unwrap();
        let err = load(dir.path(), Split::Train, 4, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("automobile"), "{err}");
    }
}
