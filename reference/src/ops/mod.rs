//! CPU kernels, one file per op family; each has a twin in `gpu/src/ops/` and `gpu/kernels/`.

pub mod batch_norm;
pub mod conv;
pub mod linear;
pub mod loss;
pub mod neuron;
pub mod optim;
pub mod pool;
pub mod tensor;
