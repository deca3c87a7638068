//! Errors of the CUDA backend, each saying what happened and what to do.

use thiserror::Error;

/// A failure of the CUDA backend.
#[derive(Debug, Error)]
pub enum GpuError {
    /// A CUDA library could not be loaded.
    #[error(
        "CUDA library {library} not found: install the NVIDIA driver (libcuda.so.1), the CUDA 13 \
         libraries (NVRTC, cuBLAS) and cuDNN 9, and put their folders on LD_LIBRARY_PATH (see \
         gpu/README.md)"
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
    /// The device has no room for an allocation.
    #[error(
        "out of GPU memory: {requested_bytes} more bytes requested with {live_bytes} in live \
         tensors on a {total_bytes}-byte device; use a smaller --batch, fewer time steps, or a \
         reversible model (it keeps no activations for the backward)"
    )]
    OutOfMemory {
        requested_bytes: usize,
        live_bytes: usize,
        total_bytes: usize,
    },
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
    /// Operands that do not fit the kernel.
    #[error("{op}: {detail}")]
    Shape { op: &'static str, detail: String },
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

impl From<GpuError> for revsnn_reference::OpError {
    /// Shape errors keep their kind; every other failure is the device's.
    fn from(error: GpuError) -> Self {
        match error {
            GpuError::Shape { op, detail } => revsnn_reference::OpError::shape(op, detail),
            other => revsnn_reference::OpError::Device {
                backend: "cuda",
                detail: other.to_string(),
            },
        }
    }
}

impl From<revsnn_reference::OpError> for GpuError {
    /// An operand error found by one of the reference's shared checks (shapes, parameters): a
    /// shape error of the same op, so it reaches the caller as the CPU backend reports it.
    fn from(error: revsnn_reference::OpError) -> Self {
        match error {
            revsnn_reference::OpError::ShapeMismatch { op, detail } => {
                GpuError::Shape { op, detail }
            }
            revsnn_reference::OpError::InvalidParameter { op, .. } => GpuError::Shape {
                op,
                detail: error.to_string(),
            },
            revsnn_reference::OpError::Device { .. } => GpuError::Shape {
                op: "cuda",
                detail: error.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_says_what_to_do_and_becomes_a_device_error() {
        let error = GpuError::OutOfMemory {
            requested_bytes: 1 << 30,
            live_bytes: 3 << 30,
            total_bytes: 4 << 30,
        };
        let message = error.to_string();
        assert!(message.contains("out of GPU memory") && message.contains("--batch"));
        match revsnn_reference::OpError::from(error) {
            revsnn_reference::OpError::Device { backend, detail } => {
                assert_eq!(backend, "cuda");
                assert_eq!(detail, message);
            }
            other => panic!("expected a device error, got {other:?}"),
        }
    }

    #[test]
    fn shape_errors_stay_shape_errors() {
        let error = GpuError::Shape {
            op: "conv2d",
            detail: "bad".into(),
        };
        assert_eq!(
            revsnn_reference::OpError::from(error),
            revsnn_reference::OpError::shape("conv2d", "bad")
        );
    }
}
