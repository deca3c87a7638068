//! `e^x` for the `f32` sigmoid surrogate, in straight-line `f64` arithmetic (docs/neurons.md
//! §2.3.1): no call into libm and no branch, so the neuron loops that use it vectorise, and every
//! CPU, vectorised or not, computes the same bits.
//!
//! With `n = round(x log2(e))` and `t = x - n ln 2` (ln 2 in two parts, so that `n ln2_hi` is
//! exact), `e^x = 2^n e^t` where `|t| <= ln(2) / 2`; `e^t` is its Taylor polynomial of degree 11
//! (remainder below `7e-15` relative) and `2^n` is built from its bits. The `f64` result is within
//! about `2e-15` relative of `e^x`, so rounding it to `f32` gives the correctly rounded `e^x`
//! except where `e^x` lies within that distance of a halfway point between two `f32` values
//! (then it may be one unit in the last place off).

/// `log2(e)`.
const LOG2_E: f64 = std::f64::consts::LOG2_E;
/// `ln 2` to 32 bits: `n LN2_HI` is exact for `|n| < 2^21`.
const LN2_HI: f64 = 6.931_471_803_691_238e-1;
/// `ln 2 - LN2_HI`.
const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
/// `1.5 * 2^52`: `z + SHIFT` rounds `z` to an integer (to nearest, ties to even), which then sits
/// in the low bits of the sum.
const SHIFT: f64 = 6_755_399_441_055_744.0;
/// `1 / k!` for `k = 11` down to `0`, the Taylor coefficients of `e^t` in Horner's order.
const TAYLOR: [f64; 12] = [
    2.505_210_838_544_172e-8,
    2.755_731_922_398_589e-7,
    2.755_731_922_398_589_3e-6,
    2.480_158_730_158_73e-5,
    1.984_126_984_126_984e-4,
    1.388_888_888_888_889e-3,
    8.333_333_333_333_333e-3,
    4.166_666_666_666_666_4e-2,
    1.666_666_666_666_666_6e-1,
    0.5,
    1.0,
    1.0,
];
/// Arguments are clamped to `[LOWEST, HIGHEST]` first: `e^x` rounds to `0` in `f32` below
/// `LOWEST` and overflows to infinity above `HIGHEST`, and `2^n` stays a normal `f64` in between.
const LOWEST: f64 = -104.0;
const HIGHEST: f64 = 89.0;

/// `e^x` rounded to `f32`, evaluated in `f64` as the module describes. NaN gives NaN,
/// `+inf` gives `+inf` and `-inf` gives `+0`.
#[inline(always)]
pub(super) fn exp_f32(x: f32) -> f32 {
    let x = f64::from(x).clamp(LOWEST, HIGHEST);
    let shifted = x * LOG2_E + SHIFT;
    let n = shifted - SHIFT;
    let t = (x - n * LN2_HI) - n * LN2_LO;
    let mut poly = TAYLOR[0];
    for &c in &TAYLOR[1..] {
        poly = poly * t + c;
    }
    let exponent = shifted.to_bits().wrapping_sub(SHIFT.to_bits());
    let scale = f64::from_bits(exponent.wrapping_add(1023) << 52);
    (poly * scale) as f32
}

#[cfg(test)]
mod tests {
    use super::exp_f32;

    /// libm's `f64` exponential rounded to `f32`: correctly rounded except where `e^x` lies within
    /// an `f64` rounding error of an `f32` halfway point.
    fn rounded(x: f32) -> f32 {
        f64::from(x).exp() as f32
    }

    #[test]
    fn agrees_with_the_rounded_f64_exponential_over_the_whole_range() {
        let (mut checked, mut differ) = (0u32, 0u32);
        // Every 31st f32 bit pattern from 2^-31 (where e^x rounds to 1) to 2^7 (beyond both
        // clamps), and every 4099th over all finite magnitudes; each with both signs.
        let dense = (0x3000_0000..0x4300_0000u32).step_by(31);
        for bits in dense.chain((0..0x7f80_0000u32).step_by(4099)) {
            for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                let (ours, expected) = (exp_f32(x), rounded(x));
                checked += 1;
                if ours != expected {
                    differ += 1;
                    let ulps = ours.to_bits().abs_diff(expected.to_bits());
                    assert_eq!(ulps, 1, "exp({x:e}) = {ours:e}, libm rounded {expected:e}");
                }
            }
        }
        assert!(checked > 20_000_000, "{checked} arguments");
        assert!(
            differ * 1_000_000 < checked,
            "{differ} of {checked} differ by one ulp"
        );
    }

    #[test]
    fn special_arguments_give_the_limits() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-0.0), 1.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(f32::NEG_INFINITY).to_bits(), 0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(88.72283), rounded(88.72283));
        assert!(exp_f32(88.72283).is_finite());
        assert_eq!(exp_f32(88.72284), f32::INFINITY);
        assert_eq!(exp_f32(-103.0), rounded(-103.0));
        assert!(exp_f32(-103.0) > 0.0 && exp_f32(-103.0) < f32::MIN_POSITIVE);
        assert_eq!(exp_f32(-104.0), 0.0);
    }
}
