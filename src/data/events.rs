//! Event streams: AEDAT decoding, integration into frames by event count, and the on-disk frame
//! cache (docs/data.md §6.2).
//!
//! Two file formats are read, following SpikingJelly 0.0.0.0.12's readers:
//! - AEDAT 3.1 (DVS128 Gesture, [`decode_aedat31`]): ASCII header lines starting with `#` up to
//!   `#!END-HEADER`, then packets of a 28-byte little-endian header and `eventCapacity` events
//!   of `eventSize` bytes; polarity events (type 1) hold `data: u32` (x = bits 17.., y = bits
//!   2.., polarity = bit 1) and `timestamp: u32`, extended by `eventTSOverflow << 31`.
//! - The AEDAT 2 style files of CIFAR10-DVS ([`decode_cifar10_dvs`]): `#` header lines, then
//!   big-endian `(address, timestamp)` `u32` pairs, address bits x = 1..7, y = 8..14,
//!   polarity = 0, mapped as SpikingJelly does to x' = 127 - y, y' = 127 - x, p' = 1 - p.
//!
//! [`integrate_by_number`] cuts the events, in file order, into T slices of equal count (the last
//! slice takes the remainder) and counts events per polarity and pixel, as SpikingJelly's
//! `integrate_events_by_fixed_frames_number(split_by='number')`.

use std::path::{Path, PathBuf};

use super::{Dataset, Sample};
use crate::error::{Error, Result};

/// Decoded events, in file order: one entry per event in each vector (docs/data.md §6.2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Events {
    /// Timestamps in microseconds.
    pub t: Vec<u64>,
    /// Column.
    pub x: Vec<u16>,
    /// Row.
    pub y: Vec<u16>,
    /// Polarity, 0 or 1.
    pub p: Vec<u8>,
}

impl Events {
    /// The number of events.
    pub fn len(&self) -> usize {
        self.t.len()
    }

    /// Whether there is no event.
    pub fn is_empty(&self) -> bool {
        self.t.is_empty()
    }

    fn push(&mut self, t: u64, x: u16, y: u16, p: u8) {
        self.t.push(t);
        self.x.push(x);
        self.y.push(y);
        self.p.push(p);
    }

    /// The events with `start <= t < end`, in order (how SpikingJelly cuts DVS128 Gesture
    /// recordings into samples, docs/data.md §6.2).
    pub fn time_window(&self, start: u64, end: u64) -> Events {
        let mut out = Events::default();
        for i in 0..self.len() {
            if self.t[i] >= start && self.t[i] < end {
                out.push(self.t[i], self.x[i], self.y[i], self.p[i]);
            }
        }
        out
    }
}

fn corrupt(path: &Path, detail: impl Into<String>) -> Error {
    Error::File {
        path: path.display().to_string(),
        detail: format!(
            "{}; the file is corrupt or truncated: download or extract it again",
            detail.into()
        ),
    }
}

/// Reads a whole file, saying what to do when it is missing.
pub fn read_bytes(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::File {
        path: path.display().to_string(),
        detail: if e.kind() == std::io::ErrorKind::NotFound {
            format!("not found: expected {what} here")
        } else {
            format!("cannot read: {e}")
        },
    })
}

/// The line starting at `pos` (including its `\n`, if any).
fn line_at(bytes: &[u8], pos: usize) -> &[u8] {
    let rest = &bytes[pos..];
    match rest.iter().position(|&b| b == b'\n') {
        Some(i) => &rest[..=i],
        None => rest,
    }
}

/// Decodes an AEDAT 3.1 file (DVS128 Gesture, docs/data.md §6.2); `path` only names it in errors.
///
/// As SpikingJelly's `load_aedat_v3`: every event slot of a polarity packet (its capacity) is
/// read, other packet types are skipped, x and y are 15-bit fields.
pub fn decode_aedat31(bytes: &[u8], path: &Path) -> Result<Events> {
    let mut pos = 0;
    while pos < bytes.len() {
        let line = line_at(bytes, pos);
        if !line.starts_with(b"#") {
            break;
        }
        pos += line.len();
        if line.trim_ascii_end() == b"#!END-HEADER" {
            break;
        }
    }
    let mut events = Events::default();
    while pos < bytes.len() {
        let header = bytes
            .get(pos..pos + 28)
            .ok_or_else(|| corrupt(path, format!("packet header at byte {pos} is cut short")))?;
        let u16_at = |o: usize| u16::from_le_bytes([header[o], header[o + 1]]);
        let u32_at =
            |o: usize| u32::from_le_bytes([header[o], header[o + 1], header[o + 2], header[o + 3]]);
        let (e_type, e_size, overflow, capacity) = (u16_at(0), u32_at(4), u32_at(12), u32_at(16));
        let length = (e_size as usize)
            .checked_mul(capacity as usize)
            .ok_or_else(|| corrupt(path, format!("packet at byte {pos} is impossibly large")))?;
        pos += 28;
        let data = pos.checked_add(length).and_then(|end| bytes.get(pos..end));
        let data = data.ok_or_else(|| {
            corrupt(
                path,
                format!(
                    "packet at byte {} announces {length} bytes of events",
                    pos - 28
                ),
            )
        })?;
        pos += length;
        if e_type != 1 || capacity == 0 {
            continue;
        }
        if e_size < 8 {
            return Err(corrupt(
                path,
                format!("polarity packet with {e_size}-byte events (at least 8 expected)"),
            ));
        }
        for ev in data.chunks_exact(e_size as usize) {
            let d = u32::from_le_bytes([ev[0], ev[1], ev[2], ev[3]]);
            let ts = u32::from_le_bytes([ev[4], ev[5], ev[6], ev[7]]);
            let t = u64::from(ts) | (u64::from(overflow) << 31);
            let x = ((d >> 17) & 0x7FFF) as u16;
            let y = ((d >> 2) & 0x7FFF) as u16;
            let p = ((d >> 1) & 1) as u8;
            events.push(t, x, y, p);
        }
    }
    Ok(events)
}

/// Decodes a CIFAR10-DVS AEDAT file (docs/data.md §6.2) as SpikingJelly's `CIFAR10DVS` does: header
/// lines whose stripped text starts with `#`, then big-endian `(address, timestamp)` pairs;
/// x = (a & 0xFE) >> 1, y = (a & 0x7F00) >> 8, p = a & 1, returned as (127 - y, 127 - x, 1 - p).
pub fn decode_cifar10_dvs(bytes: &[u8], path: &Path) -> Result<Events> {
    let mut pos = 0;
    while pos < bytes.len() {
        let line = line_at(bytes, pos);
        match std::str::from_utf8(line) {
            Ok(text) if text.trim().starts_with('#') => pos += line.len(),
            _ => break,
        }
    }
    let data = &bytes[pos..];
    if !data.len().is_multiple_of(8) {
        return Err(corrupt(
            path,
            format!(
                "{} bytes of events after the header is not a multiple of 8 (address and \
                 timestamp, 4 bytes each)",
                data.len()
            ),
        ));
    }
    let mut events = Events::default();
    for pair in data.chunks_exact(8) {
        let a = u32::from_be_bytes([pair[0], pair[1], pair[2], pair[3]]);
        let t = u32::from_be_bytes([pair[4], pair[5], pair[6], pair[7]]);
        let x = ((a & 0xFE) >> 1) as u16;
        let y = ((a & 0x7F00) >> 8) as u16;
        let p = (a & 1) as u8;
        events.push(u64::from(t), 127 - y, 127 - x, 1 - p);
    }
    Ok(events)
}

/// The event index ranges of the `frames` slices of `n` events, `split_by='number'`
/// (docs/data.md §6.2): slice j is `[j * (n / frames), (j + 1) * (n / frames))`, the last one ends at `n`.
pub fn number_slices(n: usize, frames: usize) -> Vec<std::ops::Range<usize>> {
    let di = n / frames.max(1);
    (0..frames)
        .map(|j| {
            let end = if j + 1 == frames { n } else { (j + 1) * di };
            j * di..end
        })
        .collect()
}

/// Integrates `events` into `frames` frames `[frames, 2, h, w]` of event counts, split by number
/// (docs/data.md §6.2): channel 0 counts polarity 0, channel 1 polarity 1. An event outside the
/// `h x w` sensor is a corrupt file (`path` names it).
pub fn integrate_by_number(
    events: &Events,
    frames: usize,
    h: usize,
    w: usize,
    path: &Path,
) -> Result<Vec<f32>> {
    if frames == 0 {
        return Err(Error::Usage(
            "the number of frames T must be at least 1".into(),
        ));
    }
    let mut out = vec![0f32; frames * 2 * h * w];
    for (j, range) in number_slices(events.len(), frames).into_iter().enumerate() {
        for i in range {
            let (x, y, p) = (
                usize::from(events.x[i]),
                usize::from(events.y[i]),
                usize::from(events.p[i]),
            );
            if x >= w || y >= h || p > 1 {
                return Err(corrupt(
                    path,
                    format!("event {i} at (x {x}, y {y}, p {p}) lies outside the {w}x{h} sensor"),
                ));
            }
            out[((j * 2 + p) * h + y) * w + x] += 1.0;
        }
    }
    Ok(out)
}

const CACHE_MAGIC: &[u8; 8] = b"RSNNFRM1";
const CACHE_U8: u8 = 0;
const CACHE_U16: u8 = 1;
const CACHE_F32: u8 = 2;

/// Writes frames (event counts) to the cache file `path` atomically (temporary file, then
/// rename): a header (`RSNNFRM1`, rank, dims as little-endian `u32`, a dtype byte), then the
/// values as `u8` or little-endian `u16` when all counts fit, else `f32` (docs/data.md §6.2).
pub fn write_frame_cache(path: &Path, shape: &[usize], values: &[f32]) -> Result<()> {
    let file_err = |e: std::io::Error| Error::File {
        path: path.display().to_string(),
        detail: format!("cannot write the frame cache: {e}; check the disk space and permissions"),
    };
    let mut bytes = CACHE_MAGIC.to_vec();
    bytes.extend((shape.len() as u32).to_le_bytes());
    for &d in shape {
        bytes.extend((d as u32).to_le_bytes());
    }
    let counts = values.iter().all(|&v| v >= 0.0 && v.fract() == 0.0);
    let max = values.iter().fold(0f32, |m, &v| m.max(v));
    if counts && max <= f32::from(u8::MAX) {
        bytes.push(CACHE_U8);
        bytes.extend(values.iter().map(|&v| v as u8));
    } else if counts && max <= f32::from(u16::MAX) {
        bytes.push(CACHE_U16);
        for &v in values {
            bytes.extend((v as u16).to_le_bytes());
        }
    } else {
        bytes.push(CACHE_F32);
        for &v in values {
            bytes.extend(v.to_le_bytes());
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(file_err)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        file_err(e)
    })?;
    std::fs::rename(&tmp, path).map_err(file_err)
}

/// Reads a cache file written by [`write_frame_cache`], checking that it holds `shape`.
pub fn read_frame_cache(path: &Path, shape: &[usize]) -> Result<Vec<f32>> {
    let bytes = read_bytes(path, "a frame cache file")?;
    let bad = |what: &str| Error::File {
        path: path.display().to_string(),
        detail: format!(
            "{what}: not a frame cache file of shape {shape:?}; delete it (or its frames_T* \
             folder) and the frames are rebuilt from the events"
        ),
    };
    let header = 8 + 4 + 4 * shape.len() + 1;
    if bytes.len() < header || &bytes[..8] != CACHE_MAGIC {
        return Err(bad("bad header"));
    }
    let word = |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    if word(8) as usize != shape.len()
        || shape
            .iter()
            .enumerate()
            .any(|(i, &d)| word(12 + 4 * i) as usize != d)
    {
        return Err(bad("other shape"));
    }
    let n: usize = shape.iter().product();
    let body = &bytes[header..];
    match bytes[header - 1] {
        CACHE_U8 if body.len() == n => Ok(body.iter().map(|&b| f32::from(b)).collect()),
        CACHE_U16 if body.len() == 2 * n => Ok(body
            .chunks_exact(2)
            .map(|c| f32::from(u16::from_le_bytes([c[0], c[1]])))
            .collect()),
        CACHE_F32 if body.len() == 4 * n => Ok(body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()),
        _ => Err(bad("bad length or dtype")),
    }
}

/// A dataset of event frames `[T, 2, H, W]` read from the frame cache (docs/data.md §6.2), built by
/// [`crate::data::dvs128`] and [`crate::data::cifar10_dvs`].
#[derive(Clone, Debug)]
pub struct FrameDataset {
    name: String,
    num_classes: usize,
    shape: Vec<usize>,
    items: Vec<(PathBuf, usize)>,
}

impl FrameDataset {
    /// A dataset over cache files `items` (path, label) of frames of `shape`.
    pub fn new(
        name: &str,
        num_classes: usize,
        shape: Vec<usize>,
        items: Vec<(PathBuf, usize)>,
    ) -> Self {
        FrameDataset {
            name: name.to_string(),
            num_classes,
            shape,
            items,
        }
    }

    /// The cache file and label of each sample, in order.
    pub fn items(&self) -> &[(PathBuf, usize)] {
        &self.items
    }
}

impl Dataset for FrameDataset {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn sample_shape(&self) -> Vec<usize> {
        self.shape.clone()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let (path, label) = self.items.get(index).ok_or_else(|| {
            Error::Usage(format!(
                "sample {index} is out of range: {} has {} samples",
                self.name,
                self.items.len()
            ))
        })?;
        Ok(Sample {
            values: read_frame_cache(path, &self.shape)?,
            label: *label,
        })
    }
}

/// Builds the cache files that are missing, one job per source (in parallel), where `build`
/// returns the frames of each (cache path) it is responsible for.
pub(crate) fn build_missing<J: Sync>(
    jobs: &[J],
    targets: impl Fn(&J) -> Vec<PathBuf> + Sync,
    build: impl Fn(&J) -> Result<Vec<Vec<f32>>> + Sync,
    shape: &[usize],
) -> Result<()> {
    use rayon::prelude::*;
    jobs.par_iter().try_for_each(|job| {
        let paths = targets(job);
        if paths.iter().all(|p| p.is_file()) {
            return Ok(());
        }
        let frames = build(job)?;
        for (path, values) in paths.iter().zip(&frames) {
            write_frame_cache(path, shape, values)?;
        }
        Ok(())
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A temporary folder removed on drop.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "revsnn-data-{tag}-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A test event: (x, y, p, t).
    pub(crate) type RawEvent = (u16, u16, u8, u32);

    /// An AEDAT 3.1 file: header, then one packet per entry of `packets` (type, overflow,
    /// events).
    pub(crate) fn aedat31(packets: &[(u16, u32, Vec<RawEvent>)]) -> Vec<u8> {
        let mut b = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#!END-HEADER\r\n".to_vec();
        for (ty, overflow, evs) in packets {
            let n = evs.len() as u32;
            for v in [u32::from(*ty) | (1 << 16), 8, 4, *overflow, n, n, n] {
                b.extend(v.to_le_bytes());
            }
            for &(x, y, p, t) in evs {
                let d = (u32::from(x) << 17) | (u32::from(y) << 2) | (u32::from(p) << 1) | 1;
                b.extend(d.to_le_bytes());
                b.extend(t.to_le_bytes());
            }
        }
        b
    }

    /// A CIFAR10-DVS style file of raw (x, y, p, t) in sensor coordinates before the mapping.
    pub(crate) fn cifar_dvs(evs: &[(u32, u32, u32, u32)]) -> Vec<u8> {
        let mut b = b"#!AER-DAT2.0\r\n# This is a raw AE data file\r\n".to_vec();
        for &(x, y, p, t) in evs {
            b.extend(((y << 8) | (x << 1) | p).to_be_bytes());
            b.extend(t.to_be_bytes());
        }
        b
    }

    #[test]
    fn aedat31_decodes_polarity_packets_and_skips_others() {
        let bytes = aedat31(&[
            (1, 0, vec![(3, 5, 1, 10), (127, 0, 0, 20)]),
            (2, 0, vec![(1, 1, 1, 1)]),
            (1, 1, vec![(0, 127, 1, 7)]),
        ]);
        let ev = decode_aedat31(&bytes, Path::new("a")).unwrap();
        assert_eq!(ev.x, vec![3, 127, 0]);
        assert_eq!(ev.y, vec![5, 0, 127]);
        assert_eq!(ev.p, vec![1, 0, 1]);
        assert_eq!(ev.t, vec![10, 20, 7 + (1u64 << 31)]);
        // Truncation anywhere in the packets is an error, never a panic.
        let h = 42; // three header lines of 14 bytes
        assert_eq!(bytes.len(), h + 28 + 16 + 28 + 8 + 28 + 8);
        for cut in h..bytes.len() {
            // Only packet boundaries decode.
            let boundary = [h, h + 28 + 16, h + 28 + 16 + 28 + 8].contains(&cut);
            assert_eq!(
                decode_aedat31(&bytes[..cut], Path::new("a")).is_ok(),
                boundary,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn cifar10_dvs_decoding_maps_coordinates_and_polarity() {
        let bytes = cifar_dvs(&[(0, 0, 0, 5), (10, 20, 1, 6), (127, 3, 0, 9)]);
        let ev = decode_cifar10_dvs(&bytes, Path::new("c")).unwrap();
        assert_eq!(ev.x, vec![127, 107, 124]);
        assert_eq!(ev.y, vec![127, 117, 0]);
        assert_eq!(ev.p, vec![1, 0, 1]);
        assert_eq!(ev.t, vec![5, 6, 9]);
        assert!(decode_cifar10_dvs(&bytes[..bytes.len() - 3], Path::new("c")).is_err());
    }

    #[test]
    fn slices_by_number_match_spikingjelly() {
        assert_eq!(number_slices(10, 3), vec![0..3, 3..6, 6..10]);
        assert_eq!(number_slices(2, 3), vec![0..0, 0..0, 0..2]);
        assert_eq!(number_slices(6, 2), vec![0..3, 3..6]);
    }

    #[test]
    fn integration_counts_per_polarity_and_pixel() {
        let mut ev = Events::default();
        // 5 events, T = 2: frame 0 gets events 0..2, frame 1 events 2..5.
        for (t, x, y, p) in [
            (0, 1, 0, 0),
            (1, 1, 0, 0),
            (2, 2, 1, 1),
            (3, 2, 1, 1),
            (4, 0, 2, 0),
        ] {
            ev.push(t, x, y, p);
        }
        let f = integrate_by_number(&ev, 2, 3, 3, Path::new("e")).unwrap();
        let mut want = vec![0f32; 2 * 2 * 3 * 3];
        want[1] = 2.0; // frame 0, p 0, (y 0, x 1)
        want[18 + 9 + 3 + 2] = 2.0; // frame 1, p 1, (y 1, x 2)
        want[18 + 6] = 1.0; // frame 1, p 0, (y 2, x 0)
        assert_eq!(f, want);
        ev.push(5, 3, 0, 0);
        assert!(integrate_by_number(&ev, 2, 3, 3, Path::new("e")).is_err());
        assert!(integrate_by_number(&ev, 0, 3, 3, Path::new("e")).is_err());
    }

    #[test]
    fn time_window_is_half_open() {
        let mut ev = Events::default();
        for t in 0..6 {
            ev.push(t, t as u16, 0, 0);
        }
        assert_eq!(ev.time_window(2, 4).x, vec![2, 3]);
    }

    #[test]
    fn frame_cache_round_trips_and_rejects_bad_files() {
        let dir = TempDir::new("cache");
        let path = dir.path().join("a/b.frames");
        let shape = [2, 2, 1, 2];
        let small: Vec<f32> = (0..8).map(|i| i as f32).collect();
        write_frame_cache(&path, &shape, &small).unwrap();
        assert_eq!(read_frame_cache(&path, &shape).unwrap(), small);
        let size = || std::fs::metadata(&path).unwrap().len() as usize;
        assert_eq!(size(), 8 + 4 + 16 + 1 + 8);
        let mid: Vec<f32> = (0..8).map(|i| 250.0 + i as f32).collect();
        write_frame_cache(&path, &shape, &mid).unwrap();
        assert_eq!(read_frame_cache(&path, &shape).unwrap(), mid);
        assert_eq!(size(), 8 + 4 + 16 + 1 + 16);
        let big: Vec<f32> = (0..8).map(|i| 70000.0 + i as f32).collect();
        write_frame_cache(&path, &shape, &big).unwrap();
        assert_eq!(read_frame_cache(&path, &shape).unwrap(), big);
        assert_eq!(size(), 8 + 4 + 16 + 1 + 32);
        assert!(read_frame_cache(&path, &[2, 2, 2, 1]).is_err());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.pop();
        std::fs::write(&path, &bytes).unwrap();
        let err = read_frame_cache(&path, &shape).unwrap_err().to_string();
        assert!(err.contains("delete it"), "{err}");
    }
}
