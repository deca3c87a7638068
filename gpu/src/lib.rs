//! The CUDA backend of revsnn (placeholder until the probe lands).
