//! Compiled kernel images kept on disk, so that a process loads what an earlier one compiled
//! instead of running NVRTC again (seconds per kernel file, which every `revsnn --device cuda`
//! command and every GPU test process paid for each file it used). gpu/README.md §"The kernel
//! cache".
//!
//! An image is stored under a digest of everything that decides its bytes: the kernel file's
//! source, every header it may include ([`HEADERS`]), the target, NVRTC's version and the
//! compile options other than the include folders. So a changed kernel, another architecture or
//! another NVRTC never meets an old image. The include folders are left out of the digest:
//! they only locate the CUDA toolkit's own headers, which come with NVRTC's version, and a
//! machine that installs the same NVRTC elsewhere then reuses the images.
//!
//! Each entry carries its digest, its length and a checksum of its bytes, so a truncated or
//! damaged file is a miss (compiled again and written over), never a bad image. Entries are
//! written to a temporary file and renamed into place, so processes compiling at once (the ranks
//! of `train --gpus`) never read half an entry; a temporary file left by a process that died is
//! deleted later. The newest [`VERSIONS_KEPT`] entries of each
//! kernel file and target are kept and older ones deleted, so the folder does not grow with
//! every change to a kernel. A folder that cannot be read or written is no error: the compiled
//! image is used all the same. [`KernelCache::fill`] (`revsnn kernels`) compiles every file for
//! an architecture ahead of a job, on any machine with NVRTC.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::compiler::{self, Target};
use crate::error::GpuError;
use crate::kernels::{HEADERS, KernelSource};

/// The variable that names the cache's folder, or turns it off with `off`.
pub const KERNEL_CACHE_VARIABLE: &str = "REVSNN_KERNEL_CACHE";

/// How many entries of one kernel file and target the folder keeps, newest first: enough for a
/// few builds in use side by side.
pub const VERSIONS_KEPT: usize = 4;

/// How old a partial file must be (one whose process died between writing and renaming it)
/// before a store of the same kernel file and target deletes it; a live one is renamed within
/// moments.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(600);

/// The first bytes of an entry; the number changes with the entry's layout.
const MAGIC: &[u8; 8] = b"RSNNKC1\0";
/// Magic, digest (16 bytes), image length (8), image checksum (16).
const HEADER_BYTES: usize = 8 + 16 + 8 + 16;

/// Where [`KernelCache::fill`] found a kernel file's image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageSource {
    /// The cache held it.
    Cached,
    /// NVRTC compiled it, and the cache stored it.
    Compiled,
}

/// One kernel file's image, in the cache after [`KernelCache::fill`].
#[derive(Clone, Debug, PartialEq)]
pub struct FilledImage {
    pub file: &'static str,
    pub source: ImageSource,
    /// The image's length.
    pub bytes: usize,
    /// What the load, or the compile and the store, took.
    pub seconds: f64,
}

/// A folder of compiled kernel images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelCache {
    folder: PathBuf,
}

/// What identifies one compiled image: the kernel file, the target and the digest of every
/// input of the compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageKey {
    file: &'static str,
    target: Target,
    digest: u128,
}

impl ImageKey {
    /// The key of `kernel` compiled for `target` by NVRTC `nvrtc` (major, minor) with
    /// [`compiler::code_options`].
    pub fn new(kernel: &KernelSource, target: Target, nvrtc: (i32, i32)) -> ImageKey {
        let mut digest = Fnv128::new();
        digest.field(MAGIC);
        digest.field(kernel.file.as_bytes());
        digest.field(kernel.source.as_bytes());
        for header in HEADERS {
            digest.field(header.name.as_bytes());
            digest.field(header.source.as_bytes());
        }
        digest.field(target.to_string().as_bytes());
        digest.field(format!("nvrtc {}.{}", nvrtc.0, nvrtc.1).as_bytes());
        for option in compiler::code_options(target) {
            digest.field(option.as_bytes());
        }
        ImageKey {
            file: kernel.file,
            target,
            digest: digest.finish(),
        }
    }

    /// `neuron.cu` for `sm_90` -> `neuron-sm_90-`: the start of every entry's name of that file
    /// and target.
    fn prefix(&self) -> String {
        let stem = self.file.strip_suffix(".cu").unwrap_or(self.file);
        format!("{stem}-{}-", self.target.architecture())
    }

    fn file_name(&self) -> String {
        format!("{}{:032x}.bin", self.prefix(), self.digest)
    }
}

impl KernelCache {
    /// The cache in `folder` (created when the first entry is stored).
    pub fn at(folder: impl Into<PathBuf>) -> KernelCache {
        KernelCache {
            folder: folder.into(),
        }
    }

    /// The cache the environment names: the folder in `REVSNN_KERNEL_CACHE`, none when it says
    /// `off`; else `$XDG_CACHE_HOME/revsnn/kernels`, else `$HOME/.cache/revsnn/kernels`, else
    /// none.
    pub fn from_env() -> Option<KernelCache> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(folder) = var(KERNEL_CACHE_VARIABLE) {
            return (folder != "off").then(|| KernelCache::at(folder));
        }
        let base = var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| var("HOME").map(|home| Path::new(&home).join(".cache")))?;
        Some(KernelCache::at(base.join("revsnn").join("kernels")))
    }

    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// The image stored under `key`, or `None` when there is none or the entry is damaged.
    pub fn load(&self, key: &ImageKey) -> Option<Vec<u8>> {
        let entry = fs::read(self.folder.join(key.file_name())).ok()?;
        let (header, image) = entry.split_at_checked(HEADER_BYTES)?;
        let length = u64::from_le_bytes(header[24..32].try_into().ok()?);
        let intact = &header[..8] == MAGIC
            && header[8..24] == key.digest.to_le_bytes()
            && length == image.len() as u64
            && header[32..48] == checksum(image).to_le_bytes();
        intact.then(|| image.to_vec())
    }

    /// Stores `image` under `key`, then deletes the entries of the same file and target beyond
    /// the newest [`VERSIONS_KEPT`].
    pub fn store(&self, key: &ImageKey, image: &[u8]) -> io::Result<()> {
        fs::create_dir_all(&self.folder)?;
        let mut entry = Vec::with_capacity(HEADER_BYTES + image.len());
        entry.extend_from_slice(MAGIC);
        entry.extend_from_slice(&key.digest.to_le_bytes());
        entry.extend_from_slice(&(image.len() as u64).to_le_bytes());
        entry.extend_from_slice(&checksum(image).to_le_bytes());
        entry.extend_from_slice(image);
        let name = key.file_name();
        let unique = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let partial = self
            .folder
            .join(format!(".{name}.{}.{unique}", std::process::id()));
        let placed = fs::write(&partial, &entry)
            .and_then(|()| fs::rename(&partial, self.folder.join(&name)));
        if placed.is_err() {
            // a full disk may have left part of it
            let _ = fs::remove_file(&partial);
        }
        placed?;
        self.prune(&key.prefix())
    }

    /// Makes the cache hold each of `kernels` compiled for `target`, compiling and storing the
    /// ones it lacks: what a machine without that GPU can do before a job runs there, which then
    /// starts without NVRTC compiles (gpu/README.md §"The kernel cache"). Errors: NVRTC missing,
    /// a compile failing, or a store failing ([`GpuError::KernelCacheWrite`]: a folder that
    /// cannot be written is the failure of a fill, where a device's compile only skips it).
    pub fn fill(
        &self,
        kernels: &[KernelSource],
        target: Target,
    ) -> Result<Vec<FilledImage>, GpuError> {
        let nvrtc = compiler::nvrtc_version()?;
        kernels
            .iter()
            .map(|kernel| self.fill_one(kernel, target, nvrtc))
            .collect()
    }

    fn fill_one(
        &self,
        kernel: &KernelSource,
        target: Target,
        nvrtc: (i32, i32),
    ) -> Result<FilledImage, GpuError> {
        let start = Instant::now();
        let (image, source, stored) = self.load_or_compile(kernel, target, nvrtc)?;
        stored.map_err(|source| GpuError::KernelCacheWrite {
            folder: self.folder.clone(),
            source,
        })?;
        Ok(FilledImage {
            file: kernel.file,
            source,
            bytes: image.len(),
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// `kernel` compiled for `target` by NVRTC `nvrtc`: the image stored here, else compiled
    /// and stored; with where it came from and how its store went (`Ok` for a stored image).
    fn load_or_compile(
        &self,
        kernel: &KernelSource,
        target: Target,
        nvrtc: (i32, i32),
    ) -> Result<(Vec<u8>, ImageSource, io::Result<()>), GpuError> {
        let key = ImageKey::new(kernel, target, nvrtc);
        if let Some(image) = self.load(&key) {
            return Ok((image, ImageSource::Cached, Ok(())));
        }
        let image = compiler::compile(kernel, target)?;
        let stored = self.store(&key, &image);
        Ok((image, ImageSource::Compiled, stored))
    }

    /// Deletes the entries named `prefix...` beyond the newest [`VERSIONS_KEPT`], and the partial
    /// files of that file and target older than [`ABANDONED_AFTER`].
    fn prune(&self, prefix: &str) -> io::Result<()> {
        let partial_prefix = format!(".{prefix}");
        let now = SystemTime::now();
        let mut entries: Vec<(SystemTime, PathBuf)> = Vec::new();
        for entry in fs::read_dir(&self.folder)?.filter_map(|entry| entry.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(modified) = entry.metadata().and_then(|m| m.modified()).ok() else {
                continue;
            };
            if name.starts_with(prefix) {
                entries.push((modified, entry.path()));
            } else if name.starts_with(&partial_prefix)
                && now
                    .duration_since(modified)
                    .is_ok_and(|age| age > ABANDONED_AFTER)
            {
                let _ = fs::remove_file(entry.path());
            }
        }
        entries.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
        for (_, stale) in entries.into_iter().skip(VERSIONS_KEPT) {
            // another process may have deleted it first
            let _ = fs::remove_file(stale);
        }
        Ok(())
    }
}

/// `kernel` compiled for `target`: from `cache` when it holds the image, else compiled by NVRTC
/// and stored there (a failure to store is ignored: the image is used all the same). Errors as
/// [`compiler::compile`] does.
pub fn compiled(
    cache: Option<&KernelCache>,
    kernel: &KernelSource,
    target: Target,
) -> Result<Vec<u8>, GpuError> {
    let Some(cache) = cache else {
        return compiler::compile(kernel, target);
    };
    let (image, _, _) = cache.load_or_compile(kernel, target, compiler::nvrtc_version()?)?;
    Ok(image)
}

/// FNV-1a over 128 bits, each field preceded by its length so that fields cannot run into each
/// other.
struct Fnv128(u128);

impl Fnv128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;

    fn new() -> Fnv128 {
        Fnv128(Fnv128::OFFSET)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ byte as u128).wrapping_mul(Fnv128::PRIME);
        }
    }

    fn field(&mut self, bytes: &[u8]) {
        self.bytes(&(bytes.len() as u64).to_le_bytes());
        self.bytes(bytes);
    }

    fn finish(&self) -> u128 {
        self.0
    }
}

fn checksum(image: &[u8]) -> u128 {
    let mut sum = Fnv128::new();
    sum.bytes(image);
    sum.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{NEURON, TENSOR};

    const SM90: Target = Target::Cubin { major: 9, minor: 0 };

    /// A fresh folder under the system's temporary one, removed when dropped.
    struct Folder(PathBuf);

    impl Folder {
        fn new(name: &str) -> Folder {
            let path = std::env::temp_dir()
                .join(format!("revsnn-kernel-cache-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            Folder(path)
        }
    }

    impl Drop for Folder {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_stored_image_loads_back_and_nothing_else_does() {
        let folder = Folder::new("round-trip");
        let cache = KernelCache::at(&folder.0);
        let key = ImageKey::new(&NEURON, SM90, (13, 0));
        assert_eq!(cache.load(&key), None);
        cache.store(&key, b"image bytes").unwrap();
        assert_eq!(cache.load(&key).as_deref(), Some(&b"image bytes"[..]));
        for other in [
            ImageKey::new(&TENSOR, SM90, (13, 0)),
            ImageKey::new(&NEURON, Target::Cubin { major: 8, minor: 0 }, (13, 0)),
            ImageKey::new(&NEURON, Target::Ptx { major: 9, minor: 0 }, (13, 0)),
            ImageKey::new(&NEURON, SM90, (13, 1)),
        ] {
            assert_ne!(other.digest, key.digest);
            assert_eq!(cache.load(&other), None);
        }
    }

    /// The published FNV-1a 128-bit values of "" and "a".
    #[test]
    fn the_digest_is_fnv_1a_128() {
        let mut empty = Fnv128::new();
        empty.bytes(b"");
        assert_eq!(empty.finish(), 0x6c62272e07bb014262b821756295c58d);
        let mut a = Fnv128::new();
        a.bytes(b"a");
        assert_eq!(a.finish(), 0xd228cb696f1a8caf78912b704e4a8964);
    }

    #[test]
    fn a_changed_source_changes_the_digest_and_fields_do_not_run_together() {
        let key = ImageKey::new(&NEURON, SM90, (13, 0));
        let edited = KernelSource {
            source: "// one more line\n",
            ..NEURON
        };
        assert_ne!(ImageKey::new(&edited, SM90, (13, 0)).digest, key.digest);
        // every input goes in as a field of its own: moving a byte across a boundary changes
        // the digest
        let mut a = Fnv128::new();
        a.field(b"ab");
        a.field(b"c");
        let mut b = Fnv128::new();
        b.field(b"a");
        b.field(b"bc");
        assert_ne!(a.finish(), b.finish());
    }

    #[test]
    fn a_damaged_entry_is_a_miss_and_a_store_mends_it() {
        let folder = Folder::new("damaged");
        let cache = KernelCache::at(&folder.0);
        let key = ImageKey::new(&NEURON, SM90, (13, 0));
        let path = folder.0.join(key.file_name());
        let image = vec![7u8; 1000];
        cache.store(&key, &image).unwrap();
        let whole = fs::read(&path).unwrap();
        let mut flipped = whole.clone();
        flipped[HEADER_BYTES + 500] ^= 1;
        for damaged in [
            &whole[..whole.len() - 1],
            &whole[..10],
            &flipped[..],
            &[][..],
        ] {
            fs::write(&path, damaged).unwrap();
            assert_eq!(cache.load(&key), None, "{} bytes", damaged.len());
        }
        // an entry of another key renamed into this one's name
        let other = ImageKey::new(&TENSOR, SM90, (13, 0));
        cache.store(&other, &image).unwrap();
        fs::copy(folder.0.join(other.file_name()), &path).unwrap();
        assert_eq!(cache.load(&key), None);
        cache.store(&key, &image).unwrap();
        assert_eq!(cache.load(&key), Some(image));
    }

    #[test]
    fn only_the_newest_versions_of_a_file_and_target_are_kept() {
        let folder = Folder::new("prune");
        let cache = KernelCache::at(&folder.0);
        let other_file = ImageKey::new(&TENSOR, SM90, (13, 0));
        cache.store(&other_file, b"tensor").unwrap();
        let keys: Vec<ImageKey> = (0..VERSIONS_KEPT + 2)
            .map(|minor| ImageKey::new(&NEURON, SM90, (13, minor as i32)))
            .collect();
        let past = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for (age, key) in keys.iter().enumerate() {
            cache.store(key, b"neuron").unwrap();
            // modification times in the order of the stores, whatever the clock's resolution
            let stored = fs::File::options()
                .write(true)
                .open(folder.0.join(key.file_name()));
            let when = past + Duration::from_secs(age as u64);
            stored.unwrap().set_modified(when).unwrap();
        }
        let (dropped, kept) = keys.split_at(2);
        assert!(dropped.iter().all(|key| cache.load(key).is_none()));
        assert!(kept.iter().all(|key| cache.load(key).is_some()));
        assert!(cache.load(&other_file).is_some());
        let names: Vec<String> = fs::read_dir(&folder.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), VERSIONS_KEPT + 1, "{names:?}");
    }

    #[test]
    fn a_partial_file_left_long_ago_is_deleted_and_a_recent_one_kept() {
        let folder = Folder::new("partial");
        let cache = KernelCache::at(&folder.0);
        let key = ImageKey::new(&NEURON, SM90, (13, 0));
        fs::create_dir_all(&folder.0).unwrap();
        let (old, recent) = (
            folder.0.join(format!(".{}.1.1", key.file_name())),
            folder.0.join(format!(".{}.2.2", key.file_name())),
        );
        fs::write(&old, b"part").unwrap();
        fs::write(&recent, b"part").unwrap();
        let long_ago = SystemTime::now() - ABANDONED_AFTER - Duration::from_secs(60);
        let file = fs::File::options().write(true).open(&old).unwrap();
        file.set_modified(long_ago).unwrap();
        cache.store(&key, b"image").unwrap();
        assert!(!old.exists());
        assert!(recent.exists());
        assert_eq!(cache.load(&key).as_deref(), Some(&b"image"[..]));
    }

    #[test]
    fn a_folder_that_cannot_be_made_is_an_error_of_store_only() {
        let folder = Folder::new("blocked");
        fs::create_dir_all(&folder.0).unwrap();
        // a file where the cache's folder would be
        let blocked = folder.0.join("file");
        fs::write(&blocked, b"").unwrap();
        let cache = KernelCache::at(blocked.join("kernels"));
        let key = ImageKey::new(&NEURON, SM90, (13, 0));
        assert!(cache.store(&key, b"image").is_err());
        assert_eq!(cache.load(&key), None);
    }
}
