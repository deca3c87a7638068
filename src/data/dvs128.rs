//! DVS128 Gesture (docs/data.md §6.2): the original AEDAT 3.1 recordings cut into samples by their
//! label CSVs, integrated into `[T, 2, 128, 128]` frames by event count, cached on disk.
//!
//! Layout: `DIR` (or `DIR/DvsGesture`, or `DIR/extract/DvsGesture`) holds `trials_to_train.txt`,
//! `trials_to_test.txt` (one `userXX_lighting.aedat` a line), the `.aedat` files and, for each,
//! `userXX_lighting_labels.csv` (a header line, then `class,startTime_usec,endTime_usec` with
//! class in 1..=11). Sample k of a file holds the events with `start <= t < end` of row k. Its
//! gesture is class - 1 (docs/data.md §6.2), and its label the index SpikingJelly's `DatasetFolder`
//! gives that gesture's folder, `str(gesture)`, among the sorted folder names `0, 1, 10, 2, ...,
//! 9` ([`spikingjelly_label`]): the official models were trained with these indices, so their
//! checkpoints evaluate correctly. Frames are cached as
//! `DIR/frames_T{T}/userXX_lighting_{k}.frames`.

use std::path::{Path, PathBuf};

use super::cifar::Split;
use super::events::{self, FrameDataset};
use crate::error::{Error, Result};

/// The number of gesture classes.
pub const GESTURE_CLASSES: usize = 11;
/// Sensor height and width.
pub const GESTURE_SIZE: usize = 128;

const SOURCE: &str = "download DvsGesture.tar.gz from https://research.ibm.com/interactive/dvsgesture/ \
     and extract it there";

/// The class index SpikingJelly 0.0.0.0.12 trains with for `gesture` (the CSV class minus 1):
/// the rank of the folder name `str(gesture)` among the sorted names `"0", "1", "10", "2", ...,
/// "9"` (torchvision `DatasetFolder`), so 10 maps to 2 and 2..=9 to 3..=10.
pub fn spikingjelly_label(gesture: usize) -> usize {
    match gesture {
        0 | 1 => gesture,
        10 => 2,
        g => g + 1,
    }
}

/// One labelled row of a `_labels.csv`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GestureRow {
    /// Gesture in `[0, 11)` (the CSV's class minus 1).
    pub gesture: usize,
    /// First timestamp (microseconds), included.
    pub start: u64,
    /// Last timestamp, excluded.
    pub end: u64,
}

/// Parses a `_labels.csv` (header line, then `class,start,end` rows; docs/data.md §6.2).
pub fn parse_labels_csv(text: &str, path: &Path) -> Result<Vec<GestureRow>> {
    let bad = |line: usize, detail: String| Error::File {
        path: path.display().to_string(),
        detail: format!(
            "line {line}: {detail}; expected `class,startTime_usec,endTime_usec` with class in \
             1..=11: {SOURCE}"
        ),
    };
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let nums: Option<Vec<u64>> = fields.iter().map(|f| f.parse().ok()).collect();
        let nums = match nums {
            Some(n) if n.len() == 3 => n,
            _ => return Err(bad(i + 1, format!("cannot read `{line}`"))),
        };
        if !(1..=GESTURE_CLASSES as u64).contains(&nums[0]) {
            return Err(bad(i + 1, format!("class {} is out of range", nums[0])));
        }
        rows.push(GestureRow {
            gesture: nums[0] as usize - 1,
            start: nums[1],
            end: nums[2],
        });
    }
    Ok(rows)
}

fn find_root(dir: &Path) -> Result<PathBuf> {
    let candidates = [
        dir.to_path_buf(),
        dir.join("DvsGesture"),
        dir.join("extract").join("DvsGesture"),
    ];
    candidates
        .iter()
        .find(|c| c.join("trials_to_train.txt").is_file())
        .cloned()
        .ok_or_else(|| Error::File {
            path: dir.display().to_string(),
            detail: format!(
                "expected {}/DvsGesture/trials_to_train.txt (or trials_to_train.txt directly in \
                 the data directory): {SOURCE}",
                dir.display()
            ),
        })
}

struct Job {
    aedat: PathBuf,
    rows: Vec<GestureRow>,
    caches: Vec<PathBuf>,
}

/// Opens `split` of DVS128 Gesture under `dir` as `[frames, 2, 128, 128]` event counts, decoding
/// and integrating (in parallel) the recordings whose frames are not yet cached under
/// `cache_dir` (default `dir/frames_T{frames}`).
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
    let root = find_root(dir)?;
    let cache = cache_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join(format!("frames_T{frames}")));
    let list_path = root.join(format!("trials_to_{}.txt", split.as_str()));
    let list = std::fs::read_to_string(&list_path).map_err(|e| Error::File {
        path: list_path.display().to_string(),
        detail: format!("cannot read the trial list ({e}): {SOURCE}"),
    })?;
    let mut jobs = Vec::new();
    for name in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let stem = name.strip_suffix(".aedat").unwrap_or(name);
        let csv_path = root.join(format!("{stem}_labels.csv"));
        let csv = std::fs::read_to_string(&csv_path).map_err(|e| Error::File {
            path: csv_path.display().to_string(),
            detail: format!("cannot read the labels of {name} ({e}): {SOURCE}"),
        })?;
        let rows = parse_labels_csv(&csv, &csv_path)?;
        let caches = (0..rows.len())
            .map(|k| cache.join(format!("{stem}_{k}.frames")))
            .collect();
        jobs.push(Job {
            aedat: root.join(format!("{stem}.aedat")),
            rows,
            caches,
        });
    }
    let shape = vec![frames, 2, GESTURE_SIZE, GESTURE_SIZE];
    events::build_missing(
        &jobs,
        |job| job.caches.clone(),
        |job| {
            let bytes = events::read_bytes(&job.aedat, "a DVS128 Gesture recording")?;
            let all = events::decode_aedat31(&bytes, &job.aedat)?;
            job.rows
                .iter()
                .map(|row| {
                    let sample = all.time_window(row.start, row.end);
                    events::integrate_by_number(
                        &sample,
                        frames,
                        GESTURE_SIZE,
                        GESTURE_SIZE,
                        &job.aedat,
                    )
                })
                .collect()
        },
        &shape,
    )?;
    let items = jobs
        .iter()
        .flat_map(|job| {
            job.caches
                .iter()
                .cloned()
                .zip(job.rows.iter().map(|r| spikingjelly_label(r.gesture)))
        })
        .collect();
    Ok(FrameDataset::new(
        "dvs128-gesture",
        GESTURE_CLASSES,
        shape,
        items,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;
    use crate::data::events::tests::{TempDir, aedat31};

    #[test]
    fn labels_follow_spikingjelly_folder_order() {
        let mut names: Vec<String> = (0..GESTURE_CLASSES).map(|g| g.to_string()).collect();
        names.sort();
        for g in 0..GESTURE_CLASSES {
            let rank = names.iter().position(|n| *n == g.to_string()).unwrap();
            assert_eq!(spikingjelly_label(g), rank);
        }
    }

    fn write_gesture(dir: &Path) {
        let root = dir.join("DvsGesture");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("trials_to_train.txt"), "user01_led.aedat\n\n").unwrap();
        std::fs::write(root.join("trials_to_test.txt"), "user02_led.aedat\n").unwrap();
        // user01: events at t = 0..8; sample 0 = [1, 5) -> 4 events, sample 1 = [5, 100).
        let evs: Vec<(u16, u16, u8, u32)> = (0..8)
            .map(|t| (t as u16, 2 * t as u16, (t % 2) as u8, t))
            .collect();
        std::fs::write(root.join("user01_led.aedat"), aedat31(&[(1, 0, evs)])).unwrap();
        std::fs::write(
            root.join("user01_led_labels.csv"),
            "class,startTime_usec,endTime_usec\n3,1,5\n11,5,100\n",
        )
        .unwrap();
        std::fs::write(root.join("user02_led.aedat"), aedat31(&[(1, 0, vec![])])).unwrap();
        std::fs::write(
            root.join("user02_led_labels.csv"),
            "class,startTime_usec,endTime_usec\n1,0,10\n",
        )
        .unwrap();
    }

    fn at(c: usize, p: usize, y: usize, x: usize) -> usize {
        ((c * 2 + p) * GESTURE_SIZE + y) * GESTURE_SIZE + x
    }

    #[test]
    fn samples_are_cut_by_label_rows_and_integrated() {
        let dir = TempDir::new("gesture");
        write_gesture(dir.path());
        let train = load(dir.path(), Split::Train, 2, None).unwrap();
        assert_eq!(train.len(), 2);
        assert_eq!(train.sample_shape(), vec![2, 2, 128, 128]);
        let s0 = train.get(0).unwrap();
        // CSV class 3 is gesture 2, folder "2", the fourth of the sorted folder names.
        assert_eq!(s0.label, 3);
        // Events t = 1, 2 go to frame 0 and t = 3, 4 to frame 1; (x, y, p) = (t, 2t, t % 2).
        let mut want = vec![0f32; 2 * 2 * 128 * 128];
        want[at(0, 1, 2, 1)] = 1.0;
        want[at(0, 0, 4, 2)] = 1.0;
        want[at(1, 1, 6, 3)] = 1.0;
        want[at(1, 0, 8, 4)] = 1.0;
        assert_eq!(s0.values, want);
        let s1 = train.get(1).unwrap();
        // CSV class 11 is gesture 10, folder "10", the third folder name.
        assert_eq!(s1.label, 2);
        assert_eq!(s1.values.iter().sum::<f32>(), 3.0);
        assert!(dir.path().join("frames_T2/user01_led_1.frames").is_file());
        // The second open reads the cache, even with the recording gone.
        std::fs::remove_file(dir.path().join("DvsGesture/user01_led.aedat")).unwrap();
        let again = load(dir.path(), Split::Train, 2, None).unwrap();
        assert_eq!(again.get(0).unwrap(), s0);
        let test = load(dir.path(), Split::Test, 2, None).unwrap();
        assert_eq!(test.len(), 1);
        assert_eq!(test.get(0).unwrap().values.iter().sum::<f32>(), 0.0);
    }

    #[test]
    fn bad_layouts_and_files_are_clear_errors() {
        let dir = TempDir::new("gesture-bad");
        let err = load(dir.path(), Split::Train, 4, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("trials_to_train.txt"), "{err}");
        write_gesture(dir.path());
        let root = dir.path().join("DvsGesture");
        std::fs::write(root.join("user02_led_labels.csv"), "h\n12,0,10\n").unwrap();
        let err = load(dir.path(), Split::Test, 4, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("class 12"), "{err}");
        std::fs::write(root.join("user02_led_labels.csv"), "h\n1,0,10\n").unwrap();
        let bytes = std::fs::read(root.join("user01_led.aedat")).unwrap();
        std::fs::write(root.join("user01_led.aedat"), &bytes[..bytes.len() - 5]).unwrap();
        let err = load(dir.path(), Split::Train, 4, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("corrupt"), "{err}");
        assert!(load(dir.path(), Split::Train, 0, None).is_err());
    }
}
