//! `SNNAugmentWide` on float planes, event frames or synthetic images (docs/data.md §6.3).

use revsnn_reference::testing::SplitMix64;

use super::spatial::erase;
use super::{Planes, randint};
use crate::error::Result;

/// The operations of `SNNAugmentWide` (docs/data.md §6.3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WideOp {
    /// No change.
    Identity,
    /// Shear along x by `F.affine(shear=[degrees(m), 0])`, m in [-0.3, 0.3].
    ShearX(f64),
    /// Shift along x by whole pixels, in [-5, 5].
    TranslateX(i64),
    /// Shift along y by whole pixels, in [-5, 5].
    TranslateY(i64),
    /// Rotation by degrees, in [-30, 30].
    Rotate(f64),
    /// `RandomErasing(p=1, scale=(0.001, 0.11), ratio=(1, 1), value=0)`: a square (top, left,
    /// side) set to 0, or nothing if no square fits.
    Cutout(Option<(usize, usize, usize)>),
}

/// Draws the `SNNAugmentWide` operation for one sample (docs/data.md §6.3): one of 6 uniformly, a
/// magnitude uniformly from 31 evenly spaced values, its sign flipped with probability 0.5.
pub fn draw_wide_op(shape: Planes, rng: &mut SplitMix64) -> WideOp {
    let op = randint(rng, 0, 5);
    let bin = randint(rng, 0, 30) as f64 / 30.0;
    let lin = |lo: f64, hi: f64| lo + (hi - lo) * bin;
    let sign = if rng.next_f64() < 0.5 { -1.0 } else { 1.0 };
    match op {
        0 => WideOp::Identity,
        1 => WideOp::ShearX(sign * lin(-0.3, 0.3)),
        2 => WideOp::TranslateX((sign * lin(-5.0, 5.0)) as i64),
        3 => WideOp::TranslateY((sign * lin(-5.0, 5.0)) as i64),
        4 => WideOp::Rotate(sign * lin(-30.0, 30.0)),
        _ => {
            let area = (shape.h * shape.w) as f64;
            for _ in 0..10 {
                let side = (area * rng.uniform(0.001, 0.11)).sqrt().round_ties_even() as usize;
                if side < shape.h && side < shape.w {
                    let top = randint(rng, 0, shape.h - side);
                    let left = randint(rng, 0, shape.w - side);
                    return WideOp::Cutout(Some((top, left, side)));
                }
            }
            WideOp::Cutout(None)
        }
    }
}

/// Applies one `SNNAugmentWide` operation to all planes alike, as torchvision on tensors:
/// inverse affine about the image centre, NEAREST sampling (ties to even), fill 0.
pub fn apply_wide_op(values: &mut [f32], shape: Planes, op: WideOp) -> Result<()> {
    shape.check(values)?;
    // Inverse matrices in centred pixel coordinates (torchvision `_get_inverse_affine_matrix`).
    let m = match op {
        WideOp::Identity | WideOp::Cutout(None) => return Ok(()),
        WideOp::Cutout(Some((top, left, side))) => {
            erase(values, shape, top, left, side, side);
            return Ok(());
        }
        WideOp::ShearX(s) => [1.0, s.tan(), 0.0, 0.0, 1.0, 0.0],
        WideOp::TranslateX(t) => [1.0, 0.0, -(t as f64), 0.0, 1.0, 0.0],
        WideOp::TranslateY(t) => [1.0, 0.0, 0.0, 0.0, 1.0, -(t as f64)],
        WideOp::Rotate(deg) => {
            let r = (-deg).to_radians();
            [r.cos(), r.sin(), 0.0, -r.sin(), r.cos(), 0.0]
        }
    };
    let Planes { planes, h, w } = shape;
    let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    let mut source = vec![None; h * w];
    for y in 0..h {
        for x in 0..w {
            let (xc, yc) = (x as f64 - cx, y as f64 - cy);
            let xi = (m[0] * xc + m[1] * yc + m[2] + cx).round_ties_even();
            let yi = (m[3] * xc + m[4] * yc + m[5] + cy).round_ties_even();
            if xi >= 0.0 && yi >= 0.0 && xi < w as f64 && yi < h as f64 {
                source[y * w + x] = Some(yi as usize * w + xi as usize);
            }
        }
    }
    let plane = h * w;
    for c in 0..planes {
        let src = values[c * plane..(c + 1) * plane].to_vec();
        for (i, s) in source.iter().enumerate() {
            values[c * plane + i] = s.map_or(0.0, |s| src[s]);
        }
    }
    Ok(())
}

/// `SNNAugmentWide` on event frames `[T, 2, H, W]` as `T * 2` planes (docs/data.md §6.3); returns the
/// operation applied.
pub fn snn_augment_wide(values: &mut [f32], shape: Planes, rng: &mut SplitMix64) -> Result<WideOp> {
    shape.check(values)?;
    let op = draw_wide_op(shape, rng);
    apply_wide_op(values, shape, op)?;
    Ok(op)
}
