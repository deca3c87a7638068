//! The arithmetic precisions of a step, and the rounding the reference uses to emulate them
//! (docs/precision.md).
//!
//! Under a low precision, convolutions, linear layers and attention matmuls take operands rounded
//! to a narrower format and accumulate in `f32`; everything else (BatchNorm statistics, membrane
//! potentials, losses, reductions, the optimizer and the reversible stream) stays in the element
//! type. The reference is to emulate a precision by rounding each GEMM operand with
//! [`Precision::round`] before an `f32` (or `f64`) accumulation, the casts the CUDA path makes,
//! so that a low-precision GPU run is compared against this emulation rather than against a
//! full-precision run with a loose tolerance. The CPU backend holds a precision
//! (`crate::Cpu::with_precision`) and rounds the operands of its GEMM ops with it. TF32 rounds to nearest
//! even here; what cuBLAS's and cuDNN's TF32 conversion does is not documented, so TF32 is
//! compared in a tolerance class, never bitwise.

use std::fmt::{self, Display};
use std::str::FromStr;

/// The format GEMM operands are rounded to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// No rounding: every operand as it is.
    #[default]
    F32,
    /// TensorFloat-32: 8 exponent bits and 10 mantissa bits (a 19-bit float in a 32-bit word).
    Tf32,
    /// bfloat16: 8 exponent bits, 7 mantissa bits; the range of `f32`.
    Bf16,
    /// IEEE binary16: 5 exponent bits, 10 mantissa bits, subnormals below 2^-14, largest 65504.
    /// Gradients need loss scaling to stay inside its range.
    Fp16,
}

impl Precision {
    /// Every precision, in the order help texts list them.
    pub const ALL: [Precision; 4] = [
        Precision::F32,
        Precision::Tf32,
        Precision::Bf16,
        Precision::Fp16,
    ];

    /// The precision's name, as it parses back.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }

    /// Whether a convolution stores its outputs (`y`, `dx` and `dW`) in the operand format, read
    /// back as exact widenings: `bf16` and `fp16`, whose cuDNN configurations write 16-bit
    /// outputs, as autocast's convolutions return them (docs/precision.md §"Convolution
    /// outputs"). Linear layers, batched matmuls and every `f32`/`tf32` op keep the `f32` sum.
    pub fn stores_conv_outputs(self) -> bool {
        matches!(self, Precision::Bf16 | Precision::Fp16)
    }

    /// The unit roundoff `u = 2^-(p+1)` of the operand format (`p` its explicit mantissa bits):
    /// the largest relative error of one rounding of a normal value. For `f32` it is `f32`'s own,
    /// 2^-24, the rounding every `f32` product and sum makes anyway.
    pub fn unit_roundoff(self) -> f64 {
        let mantissa_bits = self.format().map_or(23, |format| format.mantissa_bits);
        0.5f64.powi(mantissa_bits + 1)
    }

    /// `x` rounded to this precision's operand format, to nearest with ties to even, and widened
    /// back exactly. Overflow becomes an infinity of the same sign, NaN stays NaN, and fp16 keeps
    /// its subnormals (values of magnitude at most 2^-25 become zero). TF32 keeps the top 10
    /// mantissa bits, in the range of `f32`.
    pub fn round(self, x: f32) -> f32 {
        match self.format() {
            None => x,
            Some(format) => format.round(f64::from(x)) as f32,
        }
    }

    /// [`Precision::round`] for an `f64` operand: rounded once, straight to the format (never
    /// through `f32`, which could round twice).
    pub fn round_f64(self, x: f64) -> f64 {
        match self.format() {
            None => x,
            Some(format) => format.round(x),
        }
    }

    /// Rounds every element of `values` in place ([`Precision::round`]).
    pub fn round_slice(self, values: &mut [f32]) {
        if let Some(format) = self.format() {
            values
                .iter_mut()
                .for_each(|v| *v = format.round(f64::from(*v)) as f32);
        }
    }

    fn format(self) -> Option<Format> {
        match self {
            Precision::F32 => None,
            Precision::Tf32 => Some(Format::TF32),
            Precision::Bf16 => Some(Format::BF16),
            Precision::Fp16 => Some(Format::FP16),
        }
    }
}

/// A binary floating-point format narrower than `f32`: its explicit mantissa bits, its smallest
/// normal exponent (below it the spacing stays fixed: subnormals) and its largest finite value.
#[derive(Clone, Copy, Debug)]
struct Format {
    mantissa_bits: i32,
    min_exponent: i32,
    max_finite: f64,
}

/// 2^127: the scale of the largest binade of `f32`, TF32 and bf16.
const TWO_POW_127: f64 = f64::from_bits((1023 + 127) << 52);

impl Format {
    const TF32: Format = Format {
        mantissa_bits: 10,
        min_exponent: -126,
        max_finite: (2.0 - 1.0 / 1024.0) * TWO_POW_127,
    };
    const BF16: Format = Format {
        mantissa_bits: 7,
        min_exponent: -126,
        max_finite: (2.0 - 1.0 / 128.0) * TWO_POW_127,
    };
    const FP16: Format = Format {
        mantissa_bits: 10,
        min_exponent: -14,
        max_finite: 65504.0,
    };

    /// The nearest value of the format to `x` (ties to even), or an infinity past the rounding
    /// boundary of the largest finite value. `x` is divided by the spacing of the format at its
    /// magnitude, a power of two, so the division and the product are exact and the only rounding
    /// is `round_ties_even`.
    fn round(self, x: f64) -> f64 {
        if x == 0.0 || !x.is_finite() {
            return x;
        }
        let exponent = ((x.to_bits() >> 52) & 0x7ff) as i32 - 1023;
        let spacing = 2f64.powi(exponent.max(self.min_exponent) - self.mantissa_bits);
        let rounded = (x / spacing).round_ties_even() * spacing;
        if rounded.abs() > self.max_finite {
            f64::INFINITY.copysign(x)
        } else {
            rounded
        }
    }
}

impl Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A precision name that is none of [`Precision::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown precision `{0}`: expected one of f32, tf32, bf16, fp16")]
pub struct UnknownPrecision(pub String);

impl FromStr for Precision {
    type Err = UnknownPrecision;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| UnknownPrecision(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};

    use super::*;

    /// TF32 rounding on the bit pattern, independent of [`Format::round`]: add half an ulp of the
    /// kept mantissa (minus one unless the lowest kept bit is odd) and clear the dropped bits.
    /// A carry runs into the exponent, which is how overflow reaches infinity.
    fn tf32_by_bits(x: f32) -> f32 {
        let word = x.to_bits();
        let bias = (1u32 << 12) - 1 + ((word >> 13) & 1);
        f32::from_bits(((word + bias) >> 13) << 13)
    }

    /// Every 997th f32 bit pattern of both signs: normals, subnormals, ties and overflow.
    fn sweep() -> impl Iterator<Item = f32> {
        (0..=u32::MAX)
            .step_by(997)
            .map(f32::from_bits)
            .filter(|x| x.is_finite())
    }

    #[test]
    fn bf16_matches_the_half_crate() {
        for x in sweep() {
            let expected = bf16::from_f32(x).to_f32();
            assert_eq!(
                Precision::Bf16.round(x).to_bits(),
                expected.to_bits(),
                "x = {x:e}"
            );
        }
    }

    #[test]
    fn fp16_matches_the_half_crate_subnormals_included() {
        for x in sweep() {
            let expected = f16::from_f32(x).to_f32();
            assert_eq!(
                Precision::Fp16.round(x).to_bits(),
                expected.to_bits(),
                "x = {x:e}"
            );
        }
    }

    #[test]
    fn tf32_matches_rounding_on_the_bit_pattern() {
        for x in sweep() {
            assert_eq!(
                Precision::Tf32.round(x).to_bits(),
                tf32_by_bits(x).to_bits(),
                "x = {x:e}"
            );
        }
    }

    #[test]
    fn fp16_edges() {
        let p = Precision::Fp16;
        assert_eq!(p.round(65504.0), 65504.0);
        assert_eq!(p.round(65519.0), 65504.0);
        assert_eq!(
            p.round(65520.0),
            f32::INFINITY,
            "the tie above the largest rounds up"
        );
        assert_eq!(p.round(-1e6), f32::NEG_INFINITY);
        let smallest = 2f32.powi(-24);
        assert_eq!(p.round(smallest), smallest);
        assert_eq!(
            p.round(smallest / 2.0),
            0.0,
            "the tie with zero rounds to even: zero"
        );
        assert_eq!(p.round(smallest * 0.75), smallest);
        assert!(p.round(f32::NAN).is_nan());
    }

    #[test]
    fn spikes_are_exact_in_every_precision() {
        for p in Precision::ALL {
            for spike in [0.0f32, 1.0] {
                assert_eq!(p.round(spike), spike, "{p}");
                assert_eq!(p.round_f64(f64::from(spike)), f64::from(spike), "{p}");
            }
        }
    }

    #[test]
    fn f64_operands_round_once() {
        // Just above the bf16 midpoint between 1 and 1 + 2^-7: f64 rounds up; through f32 (which
        // drops the 2^-40 part, leaving an exact tie that goes to even) it would round down.
        let x = 1.0 + 2f64.powi(-8) + 2f64.powi(-40);
        assert_eq!(Precision::Bf16.round_f64(x), 1.0 + 2f64.powi(-7));
        assert_eq!(f64::from(Precision::Bf16.round(x as f32)), 1.0);
    }

    #[test]
    fn names_parse_back_and_unknown_ones_list_the_choices() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>(), Ok(p));
        }
        let error = "fp8".parse::<Precision>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown precision `fp8`: expected one of f32, tf32, bf16, fp16"
        );
    }

    #[test]
    fn unit_roundoff_bounds_one_rounding() {
        for p in Precision::ALL {
            let u = p.unit_roundoff();
            for x in sweep().filter(|x| x.is_normal() && x.abs() < 60000.0 && x.abs() > 1e-4) {
                let error = (f64::from(p.round(x)) - f64::from(x)).abs() / f64::from(x).abs();
                assert!(error <= u, "{p} rounds {x} by {error} > u = {u}");
            }
        }
        assert_eq!(Precision::Bf16.unit_roundoff(), 2f64.powi(-8));
        assert_eq!(Precision::Fp16.unit_roundoff(), 2f64.powi(-11));
    }

    #[test]
    fn round_slice_rounds_each_element() {
        let mut values = [1.0f32 + 2f32.powi(-9), 3.0, 1e-9];
        Precision::Bf16.round_slice(&mut values);
        assert_eq!(values, [1.0, 3.0, Precision::Bf16.round(1e-9)]);
    }
}
