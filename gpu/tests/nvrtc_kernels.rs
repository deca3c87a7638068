//! Every kernel file compiles with NVRTC, to PTX and to an sm_90 CUBIN (which runs ptxas too), on
//! any machine with NVRTC installed, GPU or not (docs/toolchain.md), and defines exactly the
//! kernels gpu/src/kernels.rs lists for it. Skips when NVRTC is absent unless
//! `REVSNN_REQUIRE_NVRTC=1`, which `.ci/run` sets after installing NVRTC 13.0.

use std::collections::BTreeSet;

use revsnn_gpu::GpuError;
use revsnn_gpu::compiler::{self, Target};
use revsnn_gpu::kernel_cache::{self, ImageSource, KernelCache};
use revsnn_gpu::kernels;

/// The CUBIN target every test compiles for (H100, H200).
const SM90: Target = Target::Cubin { major: 9, minor: 0 };

fn nvrtc_or_skip() -> bool {
    if compiler::nvrtc_present() {
        return true;
    }
    assert!(
        std::env::var("REVSNN_REQUIRE_NVRTC").map_or(true, |v| v != "1"),
        "REVSNN_REQUIRE_NVRTC=1 but libnvrtc.so cannot be loaded: put NVRTC 13.0 on LD_LIBRARY_PATH (.ci/run shows how)"
    );
    println!("SKIP: NVRTC not found");
    false
}

/// The kernel names a PTX module defines: its `.entry NAME(` lines.
fn entries(ptx: &str) -> BTreeSet<&str> {
    ptx.lines()
        .filter_map(|line| line.trim_start().split(".entry ").nth(1))
        .filter_map(|rest| rest.split('(').next())
        .map(str::trim)
        .collect()
}

/// Every kernel file compiles, and defines exactly the kernels its `functions` list names.
#[test]
fn every_kernel_compiles_to_ptx_and_to_an_sm90_cubin() {
    if !nvrtc_or_skip() {
        return;
    }
    let (major, minor) = compiler::nvrtc_version().expect("NVRTC version");
    println!("NVRTC {major}.{minor}");
    let mut mismatches = Vec::new();
    for kernel in kernels::ALL {
        let ptx = compiler::compile(kernel, Target::Ptx { major: 9, minor: 0 })
            .unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8_lossy(&ptx);
        let entries = entries(&text);
        let listed: BTreeSet<&str> = kernel.functions.iter().copied().collect();
        let unlisted: Vec<_> = entries.difference(&listed).collect();
        let missing: Vec<_> = listed.difference(&entries).collect();
        if !unlisted.is_empty() || !missing.is_empty() {
            mismatches.push(format!(
                "{}: kernels the PTX defines but gpu/src/kernels.rs does not list: {unlisted:?}; \
                 listed but not defined: {missing:?}",
                kernel.file
            ));
        }
        let cubin = compiler::compile(kernel, SM90).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            &cubin[..4],
            b"\x7fELF",
            "{}: an sm_90 CUBIN is an ELF image",
            kernel.file
        );
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn a_kernel_with_a_syntax_error_is_a_compile_error_with_the_log() {
    if !nvrtc_or_skip() {
        return;
    }
    let broken = kernels::KernelSource {
        file: "broken.cu",
        source: "extern \"C\" __global__ void broken(float* x) { x[0] = undefined_name; }",
        functions: &["broken"],
    };
    let error = compiler::compile(&broken, Target::Ptx { major: 9, minor: 0 }).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("broken.cu") && message.contains("undefined_name"),
        "{message}"
    );
}

/// A kernel cache over an empty folder of this process under the system's temporary one (the
/// test removes it at the end).
fn empty_cache(name: &str) -> (std::path::PathBuf, KernelCache) {
    let folder = std::env::temp_dir().join(format!("revsnn-nvrtc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&folder);
    let cache = KernelCache::at(&folder);
    (folder, cache)
}

/// A compile through the kernel cache stores its image, a second one loads those bytes instead of
/// compiling, and a damaged entry is compiled again and mended (gpu/README.md §"The kernel
/// cache").
#[test]
fn the_kernel_cache_gives_back_what_nvrtc_compiled_and_mends_a_damaged_entry() {
    if !nvrtc_or_skip() {
        return;
    }
    let (folder, cache) = empty_cache("cache");
    let kernel = &kernels::LOSS;
    let compiled = kernel_cache::compiled(Some(&cache), kernel, SM90).unwrap();
    assert_eq!(&compiled[..4], b"\x7fELF");
    let entries = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&folder)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect()
    };
    let stored = entries();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(
        kernel_cache::compiled(Some(&cache), kernel, SM90).unwrap(),
        compiled
    );
    // a damaged image: the same length, one byte changed
    let mut entry = std::fs::read(&stored[0]).unwrap();
    *entry.last_mut().unwrap() ^= 0xff;
    std::fs::write(&stored[0], &entry).unwrap();
    assert_eq!(
        kernel_cache::compiled(Some(&cache), kernel, SM90).unwrap(),
        compiled
    );
    assert_eq!(entries(), stored);
    assert_ne!(std::fs::read(&stored[0]).unwrap(), entry, "not mended");
    assert_eq!(
        kernel_cache::compiled(None, kernel, SM90).unwrap(),
        compiled
    );
    std::fs::remove_dir_all(&folder).unwrap();
}

/// A fill compiles and stores what the cache lacks, finds what it holds, and the images it
/// stored are the ones a device's compile then loads; a folder it cannot write is its error.
#[test]
fn a_fill_compiles_what_the_cache_lacks_and_finds_what_it_holds() {
    if !nvrtc_or_skip() {
        return;
    }
    let (folder, cache) = empty_cache("fill");
    let (loss, spike_bits) = (kernels::LOSS, kernels::SPIKE_BITS);
    let first = cache.fill(&[loss], SM90).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].source, ImageSource::Compiled);
    let second = cache.fill(&[loss, spike_bits], SM90).unwrap();
    let sources: Vec<_> = second
        .iter()
        .map(|image| (image.file, image.source))
        .collect();
    assert_eq!(
        sources,
        [
            ("loss.cu", ImageSource::Cached),
            ("spike_bits.cu", ImageSource::Compiled)
        ]
    );
    assert_eq!(second[0].bytes, first[0].bytes);
    for (kernel, filled) in [loss, spike_bits].iter().zip(&second) {
        let image = compiler::compile(kernel, SM90).unwrap();
        assert_eq!(filled.bytes, image.len(), "{}", kernel.file);
        // what a device loads through the cache is what NVRTC compiles
        assert_eq!(
            kernel_cache::compiled(Some(&cache), kernel, SM90).unwrap(),
            image
        );
    }
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 2);
    // a file where the folder would be
    let blocked = folder.join("blocker");
    std::fs::write(&blocked, b"").unwrap();
    let error = KernelCache::at(blocked.join("kernels"))
        .fill(&[loss], SM90)
        .unwrap_err();
    assert!(
        matches!(error, GpuError::KernelCacheWrite { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("REVSNN_KERNEL_CACHE"), "{error}");
    std::fs::remove_dir_all(&folder).unwrap();
}
