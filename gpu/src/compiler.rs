//! NVRTC compilation of the kernel files. A kernel is compiled for the device's own architecture
//! on first use ([`crate::GpuDevice`]); CI compiles every file to PTX and to an `sm_90` CUBIN on
//! a machine without a GPU, so a kernel that does not compile fails there too (docs/toolchain.md).

use std::ffi::{CStr, CString, c_char};

use cudarc::nvrtc::{result, sys};

use crate::error::GpuError;
use crate::kernels::{HEADERS, KernelSource};

/// What to compile to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// PTX for a virtual architecture, e.g. `Ptx { major: 9, minor: 0 }` -> `compute_90`.
    Ptx { major: i32, minor: i32 },
    /// Machine code for one real architecture, e.g. `sm_90`; runs ptxas, so register and
    /// shared-memory overflows show up here too.
    Cubin { major: i32, minor: i32 },
}

impl Target {
    /// NVRTC's name of the architecture: `compute_90` (PTX) or `sm_90` (CUBIN).
    pub fn architecture(&self) -> String {
        match self {
            Target::Ptx { major, minor } => format!("compute_{major}{minor}"),
            Target::Cubin { major, minor } => format!("sm_{major}{minor}"),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Target::Ptx { .. } => "PTX",
            Target::Cubin { .. } => "CUBIN",
        };
        write!(f, "{} ({kind})", self.architecture())
    }
}

/// Whether NVRTC (`libnvrtc.so.13` or `.12`) can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the NVRTC library.
    unsafe { sys::is_culib_present() }
}

/// NVRTC's version `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32), GpuError> {
    if !nvrtc_present() {
        return Err(GpuError::LibraryMissing {
            library: "libnvrtc.so (NVRTC)",
        });
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is loaded and both pointers are to live i32s.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| GpuError::Compile {
            file: "-",
            target: "-".into(),
            log: e.to_string(),
        })?;
    Ok((major, minor))
}

/// The options of a compile for `target` other than the include folders: what, with the
/// sources and NVRTC's version, decides the compiled bytes ([`crate::kernel_cache`]).
pub fn code_options(target: Target) -> Vec<String> {
    vec![
        format!("--gpu-architecture={}", target.architecture()),
        "--std=c++17".to_string(),
    ]
}

/// Compiles `kernel` for `target` and returns the PTX text or CUBIN image, ready for
/// `cudarc::nvrtc::Ptx::from_binary` (a PTX is NUL-terminated). The files of
/// [`HEADERS`] are included by name; other headers are searched in the folders of the
/// `REVSNN_CUDA_INCLUDE` variable (`:`-separated), when set.
pub fn compile(kernel: &KernelSource, target: Target) -> Result<Vec<u8>, GpuError> {
    if !nvrtc_present() {
        return Err(GpuError::LibraryMissing {
            library: "libnvrtc.so (NVRTC)",
        });
    }
    let fail = |log: String| GpuError::Compile {
        file: kernel.file,
        target: target.to_string(),
        log,
    };
    let mut options = code_options(target);
    if let Ok(folders) = std::env::var("REVSNN_CUDA_INCLUDE") {
        options.extend(
            folders
                .split(':')
                .filter(|f| !f.is_empty())
                .map(|f| format!("--include-path={f}")),
        );
    }
    let source =
        CString::new(kernel.source).map_err(|_| fail("the source contains a NUL byte".into()))?;
    let name =
        CString::new(kernel.file).map_err(|_| fail("the file name contains a NUL byte".into()))?;
    let headers = HEADERS
        .iter()
        .map(|h| Ok((CString::new(h.name)?, CString::new(h.source)?)))
        .collect::<Result<Vec<_>, std::ffi::NulError>>()
        .map_err(|_| fail("a header contains a NUL byte".into()))?;
    let program = create_program(&source, &name, &headers).map_err(|e| fail(e.to_string()))?;
    // SAFETY: `program` was just created and is destroyed exactly once below.
    let compiled = unsafe { result::compile_program(program, &options) };
    let output = match compiled {
        // SAFETY: as above; the program compiled, so its log and code are available.
        Ok(()) => unsafe { code(program, target) }.map_err(|e| fail(e.to_string())),
        // SAFETY: as above.
        Err(error) => Err(fail(match unsafe { result::get_program_log(program) } {
            Ok(log) => c_chars_to_string(&log),
            Err(_) => error.to_string(),
        })),
    };
    // SAFETY: `program` is live and not used after this.
    unsafe { result::destroy_program(program) }.map_err(|e| fail(e.to_string()))?;
    output
}

/// An NVRTC program of `source` named `name`, with `headers` (name, text) to include by name.
fn create_program(
    source: &CStr,
    name: &CStr,
    headers: &[(CString, CString)],
) -> Result<sys::nvrtcProgram, result::NvrtcError> {
    let names: Vec<*const c_char> = headers.iter().map(|(n, _)| n.as_ptr()).collect();
    let texts: Vec<*const c_char> = headers.iter().map(|(_, t)| t.as_ptr()).collect();
    let mut program = std::mem::MaybeUninit::uninit();
    // SAFETY: every pointer is to a live NUL-terminated string, the two arrays hold
    // `headers.len()` of them, and NVRTC copies them before returning.
    unsafe {
        sys::nvrtcCreateProgram(
            program.as_mut_ptr(),
            source.as_ptr(),
            name.as_ptr(),
            headers.len() as i32,
            texts.as_ptr(),
            names.as_ptr(),
        )
        .result()?;
        Ok(program.assume_init())
    }
}

/// # Safety
/// `program` must be a live, successfully compiled NVRTC program.
unsafe fn code(program: sys::nvrtcProgram, target: Target) -> Result<Vec<u8>, result::NvrtcError> {
    match target {
        // SAFETY: guaranteed by the caller.
        Target::Ptx { .. } => Ok(unsafe { result::get_ptx(program) }?
            .into_iter()
            .map(|c| c as u8)
            .collect()),
        Target::Cubin { .. } => {
            let mut size = 0usize;
            // SAFETY: guaranteed by the caller; `size` is a live usize.
            unsafe { sys::nvrtcGetCUBINSize(program, &mut size) }.result()?;
            let mut image = vec![0u8; size];
            // SAFETY: `image` holds exactly the `size` bytes NVRTC reported.
            unsafe { sys::nvrtcGetCUBIN(program, image.as_mut_ptr() as *mut c_char) }.result()?;
            Ok(image)
        }
    }
}

fn c_chars_to_string(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars.iter().map(|&c| c as u8).collect();
    CStr::from_bytes_until_nul(&bytes)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned())
}
