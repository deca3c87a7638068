//! The floating-point element types the backends compute in.

use std::fmt::{Debug, Display};

/// A tensor element type, as stored in checkpoints and reported by the CLI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
}

impl DType {
    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
        }
    }
}

impl Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
        })
    }
}

/// A float the backends compute in: `f32` for speed, `f64` for truth (docs/design.md principle 6).
pub trait Element:
    num_traits::Float
    + num_traits::FromPrimitive
    + ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + 'static
{
    /// The tag of this type.
    const DTYPE: DType;

    /// Converts an `f64` parameter (a threshold, a time constant) to this type, rounding to nearest.
    fn cast(value: f64) -> Self;

    /// Widens to `f64`, exactly.
    fn widen(self) -> f64;

    /// The element's own bits, zero-extended to 64 (what a fingerprint hashes).
    fn bits(self) -> u64;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;

    fn cast(value: f64) -> Self {
        value as f32
    }

    fn widen(self) -> f64 {
        f64::from(self)
    }

    fn bits(self) -> u64 {
        u64::from(self.to_bits())
    }
}

impl Element for f64 {
    const DTYPE: DType = DType::F64;

    fn cast(value: f64) -> Self {
        value
    }

    fn widen(self) -> f64 {
        self
    }

    fn bits(self) -> u64 {
        self.to_bits()
    }
}
