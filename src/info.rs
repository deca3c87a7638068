//! `revsnn info`: version, CPU threads and the availability of CUDA and its libraries (NVRTC,
//! cuDNN, NCCL), with the reason when absent, and where compiled kernels are kept.
//! Never panics and needs no GPU.

use std::path::PathBuf;

use revsnn_gpu::compiler;
use revsnn_gpu::kernel_cache::KernelCache;
use revsnn_gpu::probe::{CudaStatus, probe};
use serde_json::json;

/// What `revsnn info` reports.
#[derive(Debug)]
pub struct MachineInfo {
    pub version: &'static str,
    /// Threads of the rayon pool the CPU backend runs on.
    pub cpu_threads: usize,
    pub cuda: CudaStatus,
    /// NVRTC's version, or why it cannot be loaded.
    pub nvrtc: Result<(i32, i32), String>,
    /// cuDNN's version, or why it cannot be loaded (convolutions then run on im2col + cuBLAS).
    pub cudnn: Result<(usize, usize, usize), String>,
    /// NCCL's version, or why it cannot be loaded (training on several GPUs needs it).
    pub nccl: Result<(i32, i32, i32), String>,
    /// The folder of compiled kernels (`REVSNN_KERNEL_CACHE`), `None` when it is off.
    pub kernel_cache: Option<PathBuf>,
}

/// Reads the machine.
pub fn machine_info() -> MachineInfo {
    MachineInfo {
        version: env!("CARGO_PKG_VERSION"),
        cpu_threads: rayon::current_num_threads(),
        cuda: probe(),
        nvrtc: compiler::nvrtc_version().map_err(|e| e.to_string()),
        cudnn: revsnn_gpu::ops::conv::cudnn::version().map_err(|e| e.to_string()),
        nccl: revsnn_gpu::nccl::version().map_err(|e| e.to_string()),
        kernel_cache: KernelCache::from_env().map(|cache| cache.folder().to_path_buf()),
    }
}

impl MachineInfo {
    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let cuda = match &self.cuda {
            CudaStatus::Available(d) => json!({
                "available": true,
                "device": d.name,
                "compute_capability": format!("{}.{}", d.compute_capability.0, d.compute_capability.1),
                "total_memory_bytes": d.total_memory_bytes,
                "driver_cuda_version": format!("{}.{}", d.driver_version / 1000, (d.driver_version % 1000) / 10),
                "device_count": d.device_count,
            }),
            CudaStatus::Unavailable(reason) => {
                json!({"available": false, "reason": reason.to_string()})
            }
        };
        let nvrtc = match &self.nvrtc {
            Ok((major, minor)) => json!({"available": true, "version": format!("{major}.{minor}")}),
            Err(reason) => json!({"available": false, "reason": reason}),
        };
        let cudnn = match &self.cudnn {
            Ok((major, minor, patch)) => {
                json!({"available": true, "version": format!("{major}.{minor}.{patch}")})
            }
            Err(reason) => json!({"available": false, "reason": reason}),
        };
        let nccl = match &self.nccl {
            Ok((major, minor, patch)) => {
                json!({"available": true, "version": format!("{major}.{minor}.{patch}")})
            }
            Err(reason) => json!({"available": false, "reason": reason}),
        };
        json!({"version": self.version, "cpu_threads": self.cpu_threads, "cuda": cuda, "nvrtc": nvrtc, "cudnn": cudnn, "nccl": nccl, "kernel_cache": self.kernel_cache})
    }
}

impl std::fmt::Display for MachineInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "revsnn {}", self.version)?;
        writeln!(f, "CPU threads: {}", self.cpu_threads)?;
        match &self.cuda {
            CudaStatus::Available(d) => writeln!(
                f,
                "CUDA: {} (compute capability {}.{}, {:.1} GiB, {} device(s), driver CUDA {}.{})",
                d.name,
                d.compute_capability.0,
                d.compute_capability.1,
                d.total_memory_bytes as f64 / (1u64 << 30) as f64,
                d.device_count,
                d.driver_version / 1000,
                (d.driver_version % 1000) / 10
            )?,
            CudaStatus::Unavailable(reason) => writeln!(f, "CUDA: unavailable: {reason}")?,
        }
        match &self.nvrtc {
            Ok((major, minor)) => writeln!(f, "NVRTC: {major}.{minor}")?,
            Err(reason) => writeln!(f, "NVRTC: unavailable: {reason}")?,
        }
        match &self.cudnn {
            Ok((major, minor, patch)) => writeln!(f, "cuDNN: {major}.{minor}.{patch}")?,
            Err(reason) => writeln!(
                f,
                "cuDNN: unavailable (convolutions run on im2col + cuBLAS): {reason}"
            )?,
        }
        match &self.nccl {
            Ok((major, minor, patch)) => writeln!(f, "NCCL: {major}.{minor}.{patch}")?,
            Err(reason) => writeln!(f, "NCCL: unavailable (training on one GPU only): {reason}")?,
        }
        match &self.kernel_cache {
            Some(folder) => write!(f, "kernel cache: {}", folder.display()),
            None => write!(
                f,
                "kernel cache: off (REVSNN_KERNEL_CACHE=off, or no home folder)"
            ),
        }
    }
}
