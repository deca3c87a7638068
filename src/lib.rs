//! # revsnn
//!
//! Reversible spiking neural networks ("Memory-Efficient Reversible Spiking Neural Networks",
//! Zhang and Zhang, AAAI 2024) in Rust: a deterministic CPU reference on `ndarray` that serves as
//! the test oracle ([`revsnn_reference`]), a CUDA backend on `cudarc` ([`revsnn_gpu`]), and the
//! `revsnn` command line.
//!
//! This crate is what users touch: [`info`] reports the machine; the model zoo, the reversible
//! training algorithm, data, checkpoints and training are built on the op contract
//! [`revsnn_reference::Backend`] (see `docs/ARCHITECTURE.md`).

pub mod checkpoint;
pub mod collective;
pub mod commands;
pub mod data;
pub mod device;
pub mod error;
pub mod files;
pub mod finite;
pub mod footprint;
pub mod fuzzing;
pub mod grad_scaler;
pub mod info;
pub mod model;
pub mod network;
pub mod optim;
pub mod spec;
pub mod torch_file;
pub mod train;

pub use revsnn_gpu as gpu;
pub use revsnn_reference as reference;
