//! Errors of the CUDA backend, each saying what happened and what to do. Operand errors are the
//! contract's own [`OpError`]s (found by its shared checks), device failures become the
//! contract's typed [`DeviceError`] on the way out, so out-of-memory stays matchable above the ops.

use std::path::PathBuf;

use revsnn_reference::{DeviceError, OpError, Precision};
use thiserror::Error;

/// A failure of the CUDA backend.
#[derive(Debug, Error)]
pub enum GpuError {
    /// A CUDA library could not be loaded.
    #[error(
        "CUDA library {library} not found: install the NVIDIA driver (libcuda.so.1), the CUDA 13 \
         libraries (NVRTC, cuBLAS) and cuDNN 9, and put their folders on LD_LIBRARY_PATH (the \
         README's \"Running on a GPU\" says how)"
    )]
    LibraryMissing { library: &'static str },
    /// The driver loaded but reports no device.
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    /// A driver call failed (out of memory, a launch failure, ...).
    #[error("CUDA driver error during {during}: {source}")]
    Driver {
        during: &'static str,
        #[source]
        source: cudarc::driver::DriverError,
    },
    /// NVRTC rejected a kernel; the log is NVRTC's.
    #[error("NVRTC could not compile kernel file {file} for {target}:\n{log}")]
    Compile {
        file: &'static str,
        target: String,
        log: String,
    },
    /// A failure in the contract's own terms: the device has no room for an allocation.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A cuBLAS call failed.
    #[error("cuBLAS error during {during}: {detail}")]
    Blas {
        during: &'static str,
        detail: String,
    },
    /// A cuDNN call failed.
    #[error("cuDNN error during {during}: {detail}")]
    Cudnn {
        during: &'static str,
        detail: String,
    },
    /// An environment setting of the backend has a value it does not know.
    #[error("{name}={value:?} is not a known setting: use one of {expected}, or unset it")]
    Setting {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    /// A precision the card cannot run (docs/precision.md): bf16 needs compute capability 8.0
    /// or newer.
    #[error("{}", precision_unsupported(*.precision, .card, *.compute_capability))]
    PrecisionUnsupported {
        precision: Precision,
        card: String,
        compute_capability: (i32, i32),
    },
    /// A 16-bit precision on tensors of another element type than `f32`: cuBLAS's 16-bit GEMMs
    /// accumulate into `f32`.
    #[error(
        "--precision {precision} runs on f32 tensors on CUDA (cuBLAS multiplies 16-bit operands \
         into f32), not on {element}: use f32 tensors, or --device cpu, where the reference \
         emulates {precision} in {element} too"
    )]
    PrecisionElement {
        precision: Precision,
        element: &'static str,
    },
    /// A GPU ordinal past the devices the driver reports.
    #[error(
        "GPU {ordinal} was asked for, and the driver reports {count} GPU(s): use fewer GPUs \
         (--gpus at most {count}), or check CUDA_VISIBLE_DEVICES"
    )]
    NoSuchDevice { ordinal: usize, count: usize },
    /// NCCL could not be loaded (data-parallel training on several GPUs, docs/distributed.md).
    #[error(
        "NCCL not found: training on several GPUs opens libnccl.so at run time; install NCCL \
         (e.g. the nvidia-nccl-cu13 wheel, which ships libnccl.so.2: link it as libnccl.so in \
         a folder of yours) and put that folder on LD_LIBRARY_PATH"
    )]
    NcclMissing,
    /// An NCCL call failed, or a collective did not finish in time (a rank died or hangs).
    #[error("NCCL error on rank {rank} during {during}: {detail}")]
    Nccl {
        rank: usize,
        during: &'static str,
        detail: String,
    },
    /// The kernel cache's folder could not be written where filling it was asked for
    /// (`KernelCache::fill`; a device's own compiles only skip a folder they cannot write).
    #[error(
        "cannot write the kernel cache in {}: {source}; set REVSNN_KERNEL_CACHE to a folder you \
         can write",
        folder.display()
    )]
    KernelCacheWrite {
        folder: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Operands that do not fit the op, as the CPU backend reports them.
    #[error(transparent)]
    Op(#[from] OpError),
}

/// The message of [`GpuError::PrecisionUnsupported`]: what is missing and the alternatives.
fn precision_unsupported(precision: Precision, card: &str, (major, minor): (i32, i32)) -> String {
    format!(
        "--precision {precision} needs compute capability 8.0 or newer, and {card} has compute \
         capability {major}.{minor}: use --precision fp16 or f32 on {card}, or run {precision} with \
         --device cpu, where the reference emulates it"
    )
}

impl GpuError {
    /// Wraps a driver error with the step it happened in.
    pub fn driver(during: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> GpuError {
        move |source| GpuError::Driver { during, source }
    }

    /// Wraps a cuDNN error with the step it happened in.
    pub fn cudnn(during: &'static str) -> impl FnOnce(cudarc::cudnn::CudnnError) -> GpuError {
        move |error| GpuError::Cudnn {
            during,
            detail: format!("{error:?}"),
        }
    }
}

impl From<GpuError> for OpError {
    /// Operand and contract device errors pass through (out of memory stays
    /// [`DeviceError::OutOfMemory`]); a missing library or device, or a bad setting, is
    /// [`DeviceError::Unavailable`]; every other failure is [`DeviceError::Failed`].
    fn from(error: GpuError) -> Self {
        let device = |error| OpError::Device {
            backend: "cuda",
            error,
        };
        match error {
            GpuError::Op(error) => error,
            GpuError::Device(error) => device(error),
            GpuError::LibraryMissing { .. }
            | GpuError::NoDevice(_)
            | GpuError::Setting { .. }
            | GpuError::PrecisionUnsupported { .. }
            | GpuError::PrecisionElement { .. }
            | GpuError::NoSuchDevice { .. }
            | GpuError::NcclMissing => device(DeviceError::Unavailable {
                reason: error.to_string(),
            }),
            GpuError::Driver { .. }
            | GpuError::Compile { .. }
            | GpuError::Blas { .. }
            | GpuError::Cudnn { .. }
            | GpuError::Nccl { .. }
            | GpuError::KernelCacheWrite { .. } => device(DeviceError::Failed {
                detail: error.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_stays_matchable_as_a_device_error() {
        let error = GpuError::Device(DeviceError::OutOfMemory {
            requested_bytes: 1 << 30,
            free_bytes: 1 << 29,
            live_bytes: 3 << 30,
            total_bytes: 4 << 30,
        });
        assert!(error.to_string().contains("--batch"));
        let error = OpError::from(error);
        assert!(
            matches!(
                error,
                OpError::Device {
                    backend: "cuda",
                    error: DeviceError::OutOfMemory {
                        requested_bytes: 1073741824,
                        free_bytes: 536870912,
                        live_bytes: 3221225472,
                        total_bytes: 4294967296,
                    },
                }
            ),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.starts_with("cuda: out of device memory") && message.contains("--batch"));
    }

    #[test]
    fn operand_errors_pass_through_with_their_kind() {
        for error in [
            OpError::shape("conv2d", "bad"),
            OpError::parameter("quantize", "k", 99, "must be within [-60, 60]"),
        ] {
            assert_eq!(OpError::from(GpuError::from(error.clone())), error);
        }
    }

    #[test]
    fn an_unsupported_precision_names_the_card_and_the_alternatives() {
        let message = GpuError::PrecisionUnsupported {
            precision: Precision::Bf16,
            card: "Tesla V100".into(),
            compute_capability: (7, 0),
        }
        .to_string();
        for part in [
            "--precision bf16",
            "Tesla V100",
            "compute capability 7.0",
            "8.0",
            "--device cpu",
        ] {
            assert!(message.contains(part), "{part:?} missing from {message}");
        }
        assert!(message.contains("--precision fp16"), "{message}");
    }

    #[test]
    fn a_16_bit_precision_on_f64_names_the_element_and_the_alternatives() {
        let message = GpuError::PrecisionElement {
            precision: Precision::Fp16,
            element: "f64",
        }
        .to_string();
        for part in ["--precision fp16", "f64", "f32 tensors", "--device cpu"] {
            assert!(message.contains(part), "{part:?} missing from {message}");
        }
    }

    #[test]
    fn a_missing_library_is_unavailable_and_says_what_to_install() {
        let error = OpError::from(GpuError::LibraryMissing {
            library: "libcuda.so.1",
        });
        match error {
            OpError::Device {
                error: DeviceError::Unavailable { reason },
                ..
            } => assert!(reason.contains("LD_LIBRARY_PATH"), "{reason}"),
            other => panic!("expected an unavailable device, got {other:?}"),
        }
    }
}
