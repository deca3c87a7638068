//! Every kernel file compiles with NVRTC, to PTX and to an sm_90 CUBIN (which runs ptxas too), on
//! any machine with NVRTC installed, GPU or not (docs/toolchain.md), and defines exactly the
//! kernels gpu/src/kernels.rs lists for it. Skips when NVRTC is absent unless
//! `REVSNN_REQUIRE_NVRTC=1`, which `.ci/run` sets after installing NVRTC 13.0.

use std::collections::BTreeSet;

use revsnn_gpu::compiler::{self, Target};
use revsnn_gpu::kernels;

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
        let cubin = compiler::compile(kernel, Target::Cubin { major: 9, minor: 0 })
            .unwrap_or_else(|e| panic!("{e}"));
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
