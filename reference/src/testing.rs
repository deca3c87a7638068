//! Tools for checking ops: relative errors, central finite differences and a small deterministic
//! random generator. Public so that the workspace's tests and the `verify` command share them.
//!
//! Relative error is `||a - b||_2 / max(||b||_2, tiny)` over the whole tensor (docs/design.md).

/// `||a - b||_2 / max(||b||_2, f64::MIN_POSITIVE)`, computed in `f64`; `b` is the reference.
/// Slices of different lengths compare as infinitely far apart.
pub fn relative_error<A: Copy + Into<f64>, B: Copy + Into<f64>>(a: &[A], b: &[B]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x.into(), y.into());
        diff += (x - y) * (x - y);
        norm += y * y;
    }
    diff.sqrt() / norm.sqrt().max(f64::MIN_POSITIVE)
}

/// The gradient of the scalar function `f` at `x` by central differences,
/// `(f(x + step e_i) - f(x - step e_i)) / (2 step)` for every coordinate `i`.
pub fn central_difference(mut f: impl FnMut(&[f64]) -> f64, x: &[f64], step: f64) -> Vec<f64> {
    let mut point = x.to_vec();
    (0..x.len())
        .map(|i| {
            point[i] = x[i] + step;
            let plus = f(&point);
            point[i] = x[i] - step;
            let minus = f(&point);
            point[i] = x[i];
            (plus - minus) / (2.0 * step)
        })
        .collect()
}

/// The gradient of `f` at `x` by the five-point stencil
/// `(8 (f(x + h) - f(x - h)) - (f(x + 2h) - f(x - 2h))) / (12 h)`, whose truncation error is
/// `O(h^4)` instead of the central difference's `O(h^2)`: for steep functions (smooth spiking
/// neurons) a step of `1e-4` then gives about 1e-12 rounding error and negligible truncation.
pub fn five_point_difference(mut f: impl FnMut(&[f64]) -> f64, x: &[f64], step: f64) -> Vec<f64> {
    let mut point = x.to_vec();
    (0..x.len())
        .map(|i| {
            let mut at = |offset: f64| {
                point[i] = x[i] + offset;
                let value = f(&point);
                point[i] = x[i];
                value
            };
            let near = at(step) - at(-step);
            let far = at(2.0 * step) - at(-2.0 * step);
            (8.0 * near - far) / (12.0 * step)
        })
        .collect()
}

/// `sum_i a_i b_i` in `f64`: turns a tensor output into the scalar loss `L = <dy, y>` whose
/// gradient with respect to the output is `dy`.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// SplitMix64: a tiny, fast, reproducible generator for test data and random weights, with the
/// same stream on every platform and thread count.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[low, high)`.
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.next_f64()
    }

    /// Standard normal, by Box-Muller.
    pub fn normal(&mut self) -> f64 {
        let u1 = self.next_f64().max(f64::MIN_POSITIVE);
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// `len` normal values scaled by `std`.
    pub fn normal_vec(&mut self, len: usize, std: f64) -> Vec<f64> {
        (0..len).map(|_| std * self.normal()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn central_difference_of_a_cubic_is_exact_to_rounding() {
        let grad = central_difference(|x| x[0].powi(3) + 2.0 * x[0] * x[1], &[1.5, -0.5], 1e-5);
        assert!(relative_error(&grad, &[3.0 * 1.5f64.powi(2) - 1.0, 3.0]) < 1e-9);
    }

    #[test]
    fn five_point_difference_is_exact_for_quartics() {
        let f = |x: &[f64]| x[0].powi(4) - 3.0 * x[0].powi(3);
        let grad = five_point_difference(f, &[0.7], 1e-2);
        assert!(
            (grad[0] - (4.0 * 0.7f64.powi(3) - 9.0 * 0.49)).abs() < 1e-12,
            "{grad:?}"
        );
    }

    #[test]
    fn relative_error_is_zero_for_equal_and_infinite_for_mismatched_lengths() {
        assert_eq!(relative_error(&[1.0f32, 2.0], &[1.0f32, 2.0]), 0.0);
        assert_eq!(relative_error(&[1.0f64], &[1.0f64, 2.0]), f64::INFINITY);
    }

    #[test]
    fn split_mix_is_reproducible_and_roughly_standard_normal() {
        let a = SplitMix64::new(7).normal_vec(20_000, 1.0);
        assert_eq!(a, SplitMix64::new(7).normal_vec(20_000, 1.0));
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "mean {mean}, var {var}"
        );
    }
}
