//! RandAugment on CIFAR's `u8` pixels as timm 0.6.12 runs it over PIL (docs/recipes.md §5.1):
//! the increasing operation set, and PIL's resampling, lookup tables and filters it uses.

use revsnn_reference::testing::SplitMix64;

use super::{CIFAR_MEAN, Planes, randint};
use crate::error::Result;

/// The operations of timm's increasing RandAugment set (`_RAND_INCREASING_TRANSFORMS`,
/// docs/recipes.md §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RandOp {
    AutoContrast,
    Equalize,
    Invert,
    Rotate,
    PosterizeIncreasing,
    SolarizeIncreasing,
    SolarizeAdd,
    ColorIncreasing,
    ContrastIncreasing,
    BrightnessIncreasing,
    SharpnessIncreasing,
    ShearX,
    ShearY,
    TranslateXRel,
    TranslateYRel,
}

/// All [`RandOp`]s in timm's order.
pub const RAND_INCREASING_OPS: [RandOp; 15] = [
    RandOp::AutoContrast,
    RandOp::Equalize,
    RandOp::Invert,
    RandOp::Rotate,
    RandOp::PosterizeIncreasing,
    RandOp::SolarizeIncreasing,
    RandOp::SolarizeAdd,
    RandOp::ColorIncreasing,
    RandOp::ContrastIncreasing,
    RandOp::BrightnessIncreasing,
    RandOp::SharpnessIncreasing,
    RandOp::ShearX,
    RandOp::ShearY,
    RandOp::TranslateXRel,
    RandOp::TranslateYRel,
];

/// RandAugment `rand-m9-n1-mstd0.4-inc1` as timm 0.6.12 (docs/recipes.md §5.1), on `u8` images; the
/// geometric operations interpolate bicubically, as the recipe's `bicubic` hparam asks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RandAugment {
    /// Operations per image (`n`): 1.
    pub num_ops: usize,
    /// Magnitude (`m`, of 10): 9.
    pub magnitude: f64,
    /// Standard deviation of the Gaussian noise on the magnitude (`mstd`): 0.4.
    pub magnitude_std: f64,
    /// Probability that a chosen operation is applied: 0.5.
    pub prob: f64,
    /// Fill of the pixels that geometric operations uncover: the mean image, `round(255 * mean)`.
    pub fill: [u8; 3],
    /// Largest translation as a fraction of the size: 0.45.
    pub translate_pct: f64,
}

impl RandAugment {
    /// `rand-m9-n1-mstd0.4-inc1` with the CIFAR mean as fill (docs/recipes.md §5.1).
    pub fn cifar() -> Self {
        RandAugment {
            num_ops: 1,
            magnitude: 9.0,
            magnitude_std: 0.4,
            prob: 0.5,
            fill: CIFAR_MEAN.map(|m| (255.0 * m).round() as u8),
            translate_pct: 0.45,
        }
    }

    /// Applies `num_ops` operations drawn uniformly (with replacement), each with probability
    /// `prob` and magnitude `N(magnitude, magnitude_std)` clipped to `[0, 10]`.
    pub fn apply(&self, img: &mut [u8], shape: Planes, rng: &mut SplitMix64) -> Result<()> {
        shape.check(img)?;
        let ops: Vec<RandOp> = (0..self.num_ops)
            .map(|_| RAND_INCREASING_OPS[randint(rng, 0, RAND_INCREASING_OPS.len() - 1)])
            .collect();
        for op in ops {
            if self.prob < 1.0 && rng.next_f64() > self.prob {
                continue;
            }
            let mut m = self.magnitude;
            if self.magnitude_std > 0.0 {
                m += self.magnitude_std * rng.normal();
            }
            let m = m.clamp(0.0, 10.0);
            let negate = rng.next_f64() < 0.5;
            self.apply_op(op, img, shape, m, negate)?;
        }
        Ok(())
    }

    /// Applies one operation at magnitude `m` (of 10), negating signed arguments if `negate`.
    pub fn apply_op(
        &self,
        op: RandOp,
        img: &mut [u8],
        shape: Planes,
        m: f64,
        negate: bool,
    ) -> Result<()> {
        shape.check(img)?;
        let level = m / 10.0;
        let sign = if negate { -1.0 } else { 1.0 };
        let enhance = 1.0 + sign * level * 0.9;
        let (w, h) = (shape.w as f64, shape.h as f64);
        match op {
            RandOp::AutoContrast => per_channel(img, shape, autocontrast_lut),
            RandOp::Equalize => per_channel(img, shape, equalize_lut),
            RandOp::Invert => img.iter_mut().for_each(|v| *v = 255 - *v),
            RandOp::PosterizeIncreasing => {
                let bits = 4 - (level * 4.0) as u32;
                let mask = !((1u32 << (8 - bits)) - 1) as u8;
                img.iter_mut().for_each(|v| *v &= mask);
            }
            RandOp::SolarizeIncreasing => {
                let thresh = 256 - (level * 256.0) as i32;
                img.iter_mut().for_each(|v| {
                    if i32::from(*v) >= thresh {
                        *v = 255 - *v
                    }
                });
            }
            RandOp::SolarizeAdd => {
                let add = (level * 110.0) as u32;
                img.iter_mut().for_each(|v| {
                    if *v < 128 {
                        *v = (u32::from(*v) + add).min(255) as u8
                    }
                });
            }
            RandOp::ColorIncreasing => {
                if shape.planes == 3 {
                    let gray = grayscale(img, shape);
                    let plane = shape.h * shape.w;
                    let mut deg = Vec::with_capacity(img.len());
                    for _ in 0..3 {
                        deg.extend_from_slice(&gray[..plane]);
                    }
                    blend(img, &deg, enhance);
                }
            }
            RandOp::ContrastIncreasing => {
                let gray = grayscale(img, shape);
                let mean = gray.iter().map(|&g| f64::from(g)).sum::<f64>() / gray.len() as f64;
                let deg = vec![(mean + 0.5) as u8; img.len()];
                blend(img, &deg, enhance);
            }
            RandOp::BrightnessIncreasing => blend(img, &vec![0; img.len()], enhance),
            RandOp::SharpnessIncreasing => {
                let deg = smooth(img, shape);
                blend(img, &deg, enhance);
            }
            RandOp::Rotate => {
                let theta = -(sign * level * 30.0).to_radians();
                let (cos, sin) = (theta.cos(), theta.sin());
                let (cx, cy) = (w / 2.0, h / 2.0);
                let c = cos * -cx + sin * -cy + cx;
                let f = -sin * -cx + cos * -cy + cy;
                self.affine(img, shape, [cos, sin, c, -sin, cos, f]);
            }
            RandOp::ShearX => {
                self.affine(img, shape, [1.0, sign * level * 0.3, 0.0, 0.0, 1.0, 0.0])
            }
            RandOp::ShearY => {
                self.affine(img, shape, [1.0, 0.0, 0.0, sign * level * 0.3, 1.0, 0.0])
            }
            RandOp::TranslateXRel => {
                let px = sign * level * self.translate_pct * w;
                self.affine(img, shape, [1.0, 0.0, px, 0.0, 1.0, 0.0]);
            }
            RandOp::TranslateYRel => {
                let px = sign * level * self.translate_pct * h;
                self.affine(img, shape, [1.0, 0.0, 0.0, 0.0, 1.0, px]);
            }
        }
        Ok(())
    }

    /// PIL `Image.transform(AFFINE, (a, b, c, d, e, f), BICUBIC)`: output pixel centre (x, y)
    /// samples the input at (a x + b y + c, d x + e y + f) with PIL's transform cubic (a = -1,
    /// neighbours clamped to the edge, result clipped and truncated); outside the image, `fill`.
    fn affine(&self, img: &mut [u8], shape: Planes, m: [f64; 6]) {
        let Planes { planes, h, w } = shape;
        let src = img.to_vec();
        for y in 0..h {
            for x in 0..w {
                let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                let xin = m[0] * px + m[1] * py + m[2];
                let yin = m[3] * px + m[4] * py + m[5];
                let inside = xin >= 0.0 && yin >= 0.0 && xin < w as f64 && yin < h as f64;
                for c in 0..planes {
                    let v = if inside {
                        bicubic(&src[c * h * w..(c + 1) * h * w], h, w, xin - 0.5, yin - 0.5)
                            .clamp(0.0, 255.0)
                    } else {
                        f64::from(self.fill[c.min(2)])
                    };
                    img[(c * h + y) * w + x] = v as u8;
                }
            }
        }
    }
}

/// PIL's transform cubic through four samples at offset `d` in `[0, 1)` from the second.
fn cubic(v1: f64, v2: f64, v3: f64, v4: f64, d: f64) -> f64 {
    let p2 = -v1 + v3;
    let p3 = 2.0 * (v1 - v2) + v3 - v4;
    let p4 = -v1 + v2 - v3 + v4;
    v2 + d * (p2 + d * (p3 + d * p4))
}

/// Bicubic sample of one `h x w` plane at (x, y) in pixel coordinates, neighbours clamped.
fn bicubic(plane: &[u8], h: usize, w: usize, x: f64, y: f64) -> f64 {
    let (fx, fy) = (x.floor(), y.floor());
    let (dx, dy) = (x - fx, y - fy);
    let clip = |i: f64, n: usize| i.clamp(0.0, (n - 1) as f64) as usize;
    let xs = [-1.0, 0.0, 1.0, 2.0].map(|o| clip(fx + o, w));
    let rows = [-1.0, 0.0, 1.0, 2.0].map(|o| {
        let r = clip(fy + o, h) * w;
        let at = |i: usize| f64::from(plane[r + xs[i]]);
        cubic(at(0), at(1), at(2), at(3), dx)
    });
    cubic(rows[0], rows[1], rows[2], rows[3], dy)
}

fn per_channel(img: &mut [u8], shape: Planes, lut_of: fn(&[u64; 256]) -> [u8; 256]) {
    let plane = (shape.h * shape.w).max(1);
    for chunk in img.chunks_mut(plane) {
        let mut hist = [0u64; 256];
        chunk.iter().for_each(|&v| hist[usize::from(v)] += 1);
        let lut = lut_of(&hist);
        chunk.iter_mut().for_each(|v| *v = lut[usize::from(*v)]);
    }
}

/// PIL `ImageOps.autocontrast` (cutoff 0) of one channel.
fn autocontrast_lut(hist: &[u64; 256]) -> [u8; 256] {
    let mut lut = [0u8; 256];
    for (i, l) in lut.iter_mut().enumerate() {
        *l = i as u8;
    }
    let lo = hist.iter().position(|&n| n > 0);
    let hi = hist.iter().rposition(|&n| n > 0);
    if let (Some(lo), Some(hi)) = (lo, hi)
        && hi > lo
    {
        let scale = 255.0 / (hi - lo) as f64;
        let offset = -(lo as f64) * scale;
        for (i, l) in lut.iter_mut().enumerate() {
            *l = ((i as f64 * scale + offset) as i64).clamp(0, 255) as u8;
        }
    }
    lut
}

/// PIL `ImageOps.equalize` of one channel.
fn equalize_lut(hist: &[u64; 256]) -> [u8; 256] {
    let mut lut = [0u8; 256];
    for (i, l) in lut.iter_mut().enumerate() {
        *l = i as u8;
    }
    let used: Vec<u64> = hist.iter().copied().filter(|&n| n > 0).collect();
    if used.len() <= 1 {
        return lut;
    }
    let step = (used.iter().sum::<u64>() - used[used.len() - 1]) / 255;
    if step == 0 {
        return lut;
    }
    let mut n = step / 2;
    for (i, l) in lut.iter_mut().enumerate() {
        *l = (n / step).min(255) as u8;
        n += hist[i];
    }
    lut
}

/// PIL's RGB to L: `(19595 R + 38470 G + 7471 B + 0x8000) >> 16`; the first plane otherwise.
fn grayscale(img: &[u8], shape: Planes) -> Vec<u8> {
    let plane = shape.h * shape.w;
    if shape.planes != 3 {
        return img[..plane].to_vec();
    }
    (0..plane)
        .map(|i| {
            let (r, g, b) = (
                u32::from(img[i]),
                u32::from(img[plane + i]),
                u32::from(img[2 * plane + i]),
            );
            ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
        })
        .collect()
}

/// PIL `ImageFilter.SMOOTH` (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, divided by 13), border pixels
/// unchanged.
fn smooth(img: &[u8], shape: Planes) -> Vec<u8> {
    let Planes { planes, h, w } = shape;
    let mut out = img.to_vec();
    for c in 0..planes {
        for y in 1..h.saturating_sub(1) {
            for x in 1..w.saturating_sub(1) {
                let mut s = 0u32;
                for dy in 0..3 {
                    for dx in 0..3 {
                        let k = if dy == 1 && dx == 1 { 5 } else { 1 };
                        s += k * u32::from(img[(c * h + y + dy - 1) * w + x + dx - 1]);
                    }
                }
                out[(c * h + y) * w + x] = ((f64::from(s) / 13.0) + 0.5) as u8;
            }
        }
    }
    out
}

/// PIL `Image.blend(degenerate, img, factor)`, truncated and clipped to `[0, 255]`.
fn blend(img: &mut [u8], degenerate: &[u8], factor: f64) {
    for (v, &d) in img.iter_mut().zip(degenerate) {
        let t = f64::from(d) + factor * (f64::from(*v) - f64::from(d));
        *v = t.clamp(0.0, 255.0) as u8;
    }
}
