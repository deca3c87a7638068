//! The transforms that move or blank pixels alike on every plane: the random crop with zero
//! padding, the horizontal flip and random erasing (docs/recipes.md §5).

use revsnn_reference::testing::SplitMix64;

use super::{Planes, randint};
use crate::error::{Error, Result};

/// The `h x w` window at (`top`, `left`) of the image zero-padded by `padding` on every side
/// (`top`, `left` in `[0, 2 * padding]`), docs/recipes.md §5.2.
pub fn crop_padded<T: Copy + Default>(
    values: &[T],
    shape: Planes,
    padding: usize,
    top: usize,
    left: usize,
) -> Result<Vec<T>> {
    shape.check(values)?;
    if top > 2 * padding || left > 2 * padding {
        return Err(Error::Usage(format!(
            "crop offset ({top}, {left}) is outside [0, {}]",
            2 * padding
        )));
    }
    let Planes { planes, h, w } = shape;
    let mut out = vec![T::default(); values.len()];
    for c in 0..planes {
        for y in 0..h {
            let sy = (y + top).checked_sub(padding).filter(|&s| s < h);
            let Some(sy) = sy else { continue };
            for x in 0..w {
                if let Some(sx) = (x + left).checked_sub(padding).filter(|&s| s < w) {
                    out[(c * h + y) * w + x] = values[(c * h + sy) * w + sx];
                }
            }
        }
    }
    Ok(out)
}

/// torchvision `RandomCrop(size, padding)` with the output as large as the input: a uniform
/// offset in `[0, 2 * padding]` along each axis (docs/recipes.md §5.2).
pub fn random_crop<T: Copy + Default>(
    values: &[T],
    shape: Planes,
    padding: usize,
    rng: &mut SplitMix64,
) -> Result<Vec<T>> {
    let top = randint(rng, 0, 2 * padding);
    let left = randint(rng, 0, 2 * padding);
    crop_padded(values, shape, padding, top, left)
}

/// Mirrors every row of every plane (left-right).
pub fn hflip<T>(values: &mut [T], shape: Planes) -> Result<()> {
    shape.check(values)?;
    if shape.w > 0 {
        for row in values.chunks_mut(shape.w) {
            row.reverse();
        }
    }
    Ok(())
}

/// [`hflip`] with probability 0.5, the same for all planes (docs/recipes.md §5.1-5.3); returns whether
/// it flipped.
pub fn random_hflip<T>(values: &mut [T], shape: Planes, rng: &mut SplitMix64) -> Result<bool> {
    let flip = rng.next_f64() < 0.5;
    if flip {
        hflip(values, shape)?;
    } else {
        shape.check(values)?;
    }
    Ok(flip)
}

/// Sets the box `[top, top + bh) x [left, left + bw)` of every plane to 0.
pub(super) fn erase(
    values: &mut [f32],
    shape: Planes,
    top: usize,
    left: usize,
    bh: usize,
    bw: usize,
) {
    for c in 0..shape.planes {
        for y in top..top + bh {
            let row = (c * shape.h + y) * shape.w;
            values[row + left..row + left + bw].fill(0.0);
        }
    }
}

/// timm `RandomErasing(probability, mode='const', max_count=1)` (docs/recipes.md §5.1): with
/// probability `prob`, one box of area 2%-1/3 of the image and aspect ratio 0.3-3.3 (10 tries)
/// is set to 0 in all channels. Apply after [`normalize`](super::normalize). Returns the box
/// (top, left, h, w) if any.
pub fn random_erasing(
    values: &mut [f32],
    shape: Planes,
    prob: f64,
    rng: &mut SplitMix64,
) -> Result<Option<(usize, usize, usize, usize)>> {
    shape.check(values)?;
    if rng.next_f64() > prob {
        return Ok(None);
    }
    let area = (shape.h * shape.w) as f64;
    let (lo, hi) = (0.3f64.ln(), (1.0f64 / 0.3).ln());
    for _ in 0..10 {
        let target = rng.uniform(0.02, 1.0 / 3.0) * area;
        let aspect = rng.uniform(lo, hi).exp();
        let bh = (target * aspect).sqrt().round() as usize;
        let bw = (target / aspect).sqrt().round() as usize;
        if bw < shape.w && bh < shape.h {
            let top = randint(rng, 0, shape.h - bh);
            let left = randint(rng, 0, shape.w - bw);
            erase(values, shape, top, left, bh, bw);
            return Ok(Some((top, left, bh, bw)));
        }
    }
    Ok(None)
}
