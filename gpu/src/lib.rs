//! # revsnn-gpu
//!
//! The CUDA backend of revsnn on `cudarc`: CUDA libraries are loaded at run time (dlopen), so
//! this crate builds and its callers run on machines without CUDA; every entry point checks for
//! the libraries first and reports their absence as a [`GpuError`], never as a panic.
//!
//! - [`probe`](mod@probe): is there a usable GPU, and if not, why not.
//! - [`compiler`]: NVRTC compilation of `gpu/kernels/*.cu` to PTX or to a CUBIN for one
//!   architecture; [`kernels`] lists the sources.
//! - [`device`]: a CUDA context and stream with the kernels compiled for its own architecture on
//!   first use and cached for the process.
//! - [`kernel_cache`]: the compiled kernels kept on disk, so that a later process loads them
//!   instead of compiling them again.
//! - [`memory`]: counted device buffers from a caching pool (live and peak bytes); the private
//!   `memory_pool` sets that pool up, reads its sizes and empties its cache.
//! - [`nccl`]: one rank's NCCL communicator, for data-parallel training on several GPUs; the
//!   private `stream_wait` bounds the host's waits for a rank's stream by its timeout.
//! - [`tensor`]: [`CudaTensor`], a shape over a shared device buffer.
//! - [`ops`]: the kernels' host sides, twins of the CPU kernels (`reference/src/ops/`), checking
//!   their operands with the contract's shape rules.
//! - [`word`]: [`DeviceWord`], a fingerprint chain or a count kept on the device.
//! - [`backend`]: [`Cuda`], the contract's `Backend` and `Compute` over those ops.
//!
//! Of the reference crate this crate uses the contract (`revsnn_reference::contract`) and
//! nothing else: no CPU kernel. The CPU backend is the oracle of its tests only.

pub mod backend;
pub mod compiler;
pub mod device;
pub mod error;
pub mod kernel_cache;
pub mod kernels;
pub mod memory;
mod memory_pool;
pub mod nccl;
pub mod ops;
mod peak_trace;
pub mod probe;
mod stream_wait;
pub mod tensor;
pub mod testing;
pub mod word;

pub use backend::Cuda;
pub use device::GpuDevice;
pub use error::GpuError;
pub use memory::DeviceMemoryStats;
pub use ops::conv::ConvEngine;
pub use probe::{CudaStatus, DeviceInfo, probe};
pub use tensor::CudaTensor;
pub use word::DeviceWord;
