//! The per-batch steps of an [`Augmentation`], made for any rows of a batch without the others:
//! mixup of each row with its partner (timm pairs sample `i` with `B - 1 - i`), else label
//! smoothing; then each row finished (CIFAR: normalised) and randomly erased.
//!
//! Every random choice of a batch comes from streams that are functions of the batch's seed alone
//! (`sample_rng` per sample position, one more for the batch's mixup weight), so rows `a..b` of
//! a batch come out the same whether the whole batch is made or only those rows and their
//! partners: how a data-parallel rank in a process of its own makes just its share
//! (docs/distributed.md §7).

use std::ops::Range;

use revsnn_reference::testing::SplitMix64;

use super::augment::{Augmentation, Planes, mixup_lambda, random_erasing, smooth_targets};
use crate::error::{Error, Result};

/// The random stream of the sample at `position` of the batch whose seed is `batch_seed`: every
/// choice of that sample's own steps (crop, flip, RandAugment or SNNAugmentWide, then random
/// erasing), independent of the other positions'.
fn sample_rng(batch_seed: u64, position: usize) -> SplitMix64 {
    let key = (position as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    SplitMix64::new(SplitMix64::new(batch_seed ^ key).next_u64())
}

/// A sample type mixup blends: `u8` pixels, rounded back to bytes as timm's `FastCollateMixup`
/// (half to even, as `np.rint`), or floats, as timm's `Mixup`.
pub trait Mixable: Copy {
    /// `lam * a + (1 - lam) * b`, element by element, in `f32`.
    fn mix(a: &[Self], b: &[Self], lam: f64) -> Vec<Self>;
}

impl Mixable for u8 {
    fn mix(a: &[u8], b: &[u8], lam: f64) -> Vec<u8> {
        let (l32, r32) = (lam as f32, (1.0 - lam) as f32);
        let blend = |(&x, &y): (&u8, &u8)| f32::from(x) * l32 + f32::from(y) * r32;
        let round = |v: f32| v.round_ties_even().clamp(0.0, 255.0) as u8;
        a.iter().zip(b).map(|pair| round(blend(pair))).collect()
    }
}

impl Mixable for f32 {
    fn mix(a: &[f32], b: &[f32], lam: f64) -> Vec<f32> {
        let lam = lam as f32;
        a.iter()
            .zip(b)
            .map(|(&x, &y)| x * lam + y * (1.0 - lam))
            .collect()
    }
}

/// timm's `mixup_target` for one row: the label-smoothed one-hot row of the row's own `label`
/// times `lam`, plus that of its partner's label `partner` times `1 - lam`; the row sums to 1.
pub fn mixup_target_row(
    label: usize,
    partner: usize,
    num_classes: usize,
    smoothing: f32,
    lam: f64,
) -> Result<Vec<f32>> {
    let both = smooth_targets(&[label, partner], num_classes, smoothing)?;
    let (own, other) = both.split_at(num_classes);
    Ok(f32::mix(own, other, lam))
}

/// One sample after its own steps, with its stream for the steps still to come.
struct Made<T> {
    values: Vec<T>,
    label: usize,
    rng: SplitMix64,
}

/// The samples of one batch of `count`, made at the positions its wanted rows need
/// ([`Augmentation::samples`]).
pub struct BatchSamples<T> {
    slots: Vec<Option<Made<T>>>,
}

impl<T> BatchSamples<T> {
    /// A batch of `count` samples, none made yet.
    fn new(count: usize) -> Self {
        BatchSamples {
            slots: (0..count).map(|_| None).collect(),
        }
    }

    /// The sample at `position`, after its own steps drew from `rng` (its [`sample_rng`]).
    fn put(&mut self, position: usize, values: Vec<T>, label: usize, rng: SplitMix64) {
        self.slots[position] = Some(Made { values, label, rng });
    }

    fn count(&self) -> usize {
        self.slots.len()
    }

    /// The sample at `position`, or an error when it was not made (or is past the batch).
    fn made(&self, position: usize) -> Result<&Made<T>> {
        let count = self.count();
        self.slots
            .get(position)
            .and_then(Option::as_ref)
            .ok_or_else(|| not_made(position, count))
    }

    /// The values of the sample at `position`, moved out (its label and stream stay): for a row
    /// that no other row reads.
    fn take_values(&mut self, position: usize) -> Result<Vec<T>> {
        let count = self.count();
        let made = self.slots.get_mut(position).and_then(Option::as_mut);
        let made = made.ok_or_else(|| not_made(position, count))?;
        Ok(std::mem::take(&mut made.values))
    }
}

/// The error of a row whose sample at `position` of a batch of `count` was not made.
fn not_made(position: usize, count: usize) -> Error {
    Error::Usage(format!(
        "sample {position} of a batch of {count} was not made; make every position \
         Augmentation::positions lists"
    ))
}

/// Rows of an augmented batch: their values (row-major), labels and soft targets (`None` for
/// hard labels).
#[derive(Clone, Debug, PartialEq)]
pub struct Rows {
    /// The rows' values, one sample after another.
    pub values: Vec<f32>,
    /// Each row's own label.
    pub labels: Vec<usize>,
    /// The rows' soft targets `[rows, num_classes]`; `None` for hard labels.
    pub targets: Option<Vec<f32>>,
}

impl Augmentation {
    /// The positions of a batch of `count` samples that its rows `rows` are made from, ascending:
    /// the rows, and under mixup each row's partner `count - 1 - i`. Mixup needs an even batch,
    /// as timm's does.
    pub fn positions(&self, count: usize, rows: Range<usize>) -> Result<Vec<usize>> {
        if rows.end > count || rows.start > rows.end {
            return Err(Error::Usage(format!(
                "rows {rows:?} of a batch of {count} samples"
            )));
        }
        if self.mixup.is_none() {
            return Ok(rows.collect());
        }
        if count == 0 || !count.is_multiple_of(2) {
            return Err(Error::Usage(format!(
                "mixup needs an even, non-empty batch, got {count} samples (use an even batch \
                 size)"
            )));
        }
        let mut positions: Vec<usize> = rows.clone().chain(rows.map(|i| count - 1 - i)).collect();
        positions.sort_unstable();
        positions.dedup();
        Ok(positions)
    }

    /// The samples that rows `rows` of a batch of `count` (made with seed `batch_seed`) are made
    /// from ([`Augmentation::positions`]): `make(position, rng)` gives each sample's values after
    /// its own steps, and its label, drawing from the position's own stream ([`sample_rng`]).
    pub fn samples<T>(
        &self,
        count: usize,
        rows: Range<usize>,
        batch_seed: u64,
        mut make: impl FnMut(usize, &mut SplitMix64) -> Result<(Vec<T>, usize)>,
    ) -> Result<BatchSamples<T>> {
        let mut samples = BatchSamples::new(count);
        for position in self.positions(count, rows)? {
            let mut rng = sample_rng(batch_seed, position);
            let (values, label) = make(position, &mut rng)?;
            samples.put(position, values, label, rng);
        }
        Ok(samples)
    }

    /// The per-batch steps for rows `rows` of `samples` (a batch made with seed `batch_seed`),
    /// in the order timm's loaders run them (docs/recipes.md §5.1, 5.3): mixup of each row with
    /// its partner by the batch's weight ([`mixup_lambda`], drawn first from the batch's own
    /// stream), else label smoothing; `finish` (CIFAR: `/255` and normalisation); then random
    /// erasing from the row's own stream. The same rows come out whichever other rows are made.
    /// An unmixed row's values are moved out of `samples`, not copied.
    pub fn rows<T: Mixable>(
        &self,
        samples: &mut BatchSamples<T>,
        rows: Range<usize>,
        num_classes: usize,
        shape: Planes,
        batch_seed: u64,
        finish: impl Fn(Vec<T>) -> Result<Vec<f32>>,
    ) -> Result<Rows> {
        let count = samples.count();
        let lam = self
            .mixup
            .map(|mixup| mixup_lambda(&mixup, &mut SplitMix64::new(batch_seed)));
        let mut made = Rows {
            values: Vec::with_capacity(rows.len() * shape.len()),
            labels: Vec::with_capacity(rows.len()),
            targets: None,
        };
        let mut targets = Vec::new();
        for i in rows {
            let values = match lam {
                Some(lam) if lam != 1.0 => {
                    let partner = &samples.made(count - 1 - i)?.values;
                    T::mix(&samples.made(i)?.values, partner, lam)
                }
                // unmixed: no other row reads this one's values
                _ => samples.take_values(i)?,
            };
            targets.extend(self.target_row(samples, i, num_classes, lam)?);
            let own = samples.made(i)?;
            let mut values = finish(values)?;
            if self.random_erasing > 0.0 {
                random_erasing(
                    &mut values,
                    shape,
                    self.random_erasing,
                    &mut own.rng.clone(),
                )?;
            }
            made.values.extend(values);
            made.labels.push(own.label);
        }
        made.targets = (lam.is_some() || self.label_smoothing > 0.0).then_some(targets);
        Ok(made)
    }

    /// The soft target of row `i`: mixed with its partner's under mixup (weight `lam`), else
    /// label-smoothed; empty for hard labels.
    fn target_row<T>(
        &self,
        samples: &BatchSamples<T>,
        i: usize,
        num_classes: usize,
        lam: Option<f64>,
    ) -> Result<Vec<f32>> {
        let label = samples.made(i)?.label;
        match (self.mixup, lam) {
            (Some(mixup), Some(lam)) => {
                let partner = samples.made(samples.count() - 1 - i)?.label;
                let smoothing = mixup.label_smoothing as f32;
                mixup_target_row(label, partner, num_classes, smoothing, lam)
            }
            _ if self.label_smoothing > 0.0 => {
                smooth_targets(&[label], num_classes, self.label_smoothing as f32)
            }
            _ => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::augment::{Mixup, RandAugment, mixup_lambda, to_normalized};

    #[test]
    fn mixup_targets_are_soft_rows_that_sum_to_one() {
        let lam = 0.3;
        let row = mixup_target_row(0, 9, 10, 0.1, lam).unwrap();
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((row[0] - (0.91 * 0.3 + 0.01 * 0.7)).abs() < 1e-6);
        assert!((row[9] - (0.01 * 0.3 + 0.91 * 0.7)).abs() < 1e-6);
        assert_eq!(
            mixup_target_row(3, 5, 10, 0.1, 1.0).unwrap(),
            smooth_targets(&[3], 10, 0.1).unwrap()
        );
        assert!(mixup_target_row(10, 0, 10, 0.1, lam).is_err());
    }

    #[test]
    fn u8_mixup_rounds_half_to_even_and_floats_mix_in_f32() {
        // 0.5 * 5 + 0.5 * 0 = 2.5 -> 2, 0.5 * 7 = 3.5 -> 4, as np.rint
        assert_eq!(u8::mix(&[5, 7, 255], &[0, 0, 255], 0.5), [2, 4, 255]);
        assert_eq!(f32::mix(&[1.0, 2.0], &[3.0, 4.0], 0.25), [2.5, 3.5]);
    }

    /// The transformer recipe's steps on `u8` images (every random step on, mixup included), or
    /// the event recipe's on floats.
    fn recipe(pixels: bool) -> Augmentation {
        Augmentation {
            crop_padding: usize::from(pixels) * 2,
            flip: true,
            rand_augment: pixels.then(RandAugment::cifar),
            snn_augment_wide: !pixels,
            mixup: Some(Mixup::cifar()),
            label_smoothing: 0.1,
            random_erasing: 0.5,
        }
    }

    /// Rows `rows` of a batch of `count` made from sample `p`'s own steps on image `p`.
    fn made_rows<T: Mixable>(
        augmentation: &Augmentation,
        count: usize,
        rows: Range<usize>,
        seed: u64,
        sample: impl Fn(usize, &mut SplitMix64) -> Vec<T>,
        finish: impl Fn(Vec<T>) -> Result<Vec<f32>>,
    ) -> Result<Rows> {
        let shape = Planes::new(3, 8, 8);
        let mut samples = augmentation.samples(count, rows.clone(), seed, |position, rng| {
            Ok((sample(position, rng), position % 10))
        })?;
        augmentation.rows(&mut samples, rows, 10, shape, seed, finish)
    }

    #[test]
    fn any_rows_alone_are_those_rows_of_the_whole_batch() {
        let shape = Planes::new(3, 8, 8);
        let pixels = |p: usize| -> Vec<u8> {
            (0..shape.len())
                .map(|i| ((i * 7 + p * 31) % 256) as u8)
                .collect()
        };
        let u8_sample = |aug: Augmentation| {
            move |p: usize, rng: &mut SplitMix64| aug.sample_pixels(&pixels(p), shape, rng).unwrap()
        };
        let f32_sample = |aug: Augmentation| {
            move |p: usize, rng: &mut SplitMix64| {
                let values = pixels(p).into_iter().map(f32::from).collect();
                aug.sample_values(values, shape, rng).unwrap()
            }
        };
        let normalise = |image: Vec<u8>| to_normalized(&image, shape, &[0.25; 3]);
        let (count, seed) = (6, 0x5EED);
        for pixels_first in [true, false] {
            let aug = recipe(pixels_first);
            let whole = if pixels_first {
                made_rows(&aug, count, 0..count, seed, u8_sample(aug), normalise)
            } else {
                made_rows(&aug, count, 0..count, seed, f32_sample(aug), Ok)
            }
            .unwrap();
            let width = shape.len();
            for start in 0..count {
                for end in start..=count {
                    let part = if pixels_first {
                        made_rows(&aug, count, start..end, seed, u8_sample(aug), normalise)
                    } else {
                        made_rows(&aug, count, start..end, seed, f32_sample(aug), Ok)
                    }
                    .unwrap();
                    assert_eq!(part.values, whole.values[start * width..end * width]);
                    assert_eq!(part.labels, whole.labels[start..end]);
                    let targets = whole.targets.as_ref().unwrap();
                    assert_eq!(part.targets.unwrap(), targets[start * 10..end * 10]);
                }
            }
        }
    }

    #[test]
    fn a_mixed_row_blends_its_sample_with_its_partners_by_the_batch_weight() {
        let augmentation = Augmentation {
            mixup: Some(Mixup::cifar()),
            ..Augmentation::NONE
        };
        let (shape, count, seed) = (Planes::new(3, 8, 8), 4, 77);
        let mut samples = BatchSamples::new(count);
        for p in 0..count {
            samples.put(
                p,
                vec![p as f32 * 10.0; shape.len()],
                p,
                sample_rng(seed, p),
            );
        }
        let made = augmentation
            .rows(&mut samples, 0..count, 10, shape, seed, Ok)
            .unwrap();
        let lam = mixup_lambda(&Mixup::cifar(), &mut SplitMix64::new(seed));
        let l32 = lam as f32;
        // row 1 with row 2, row 3 with row 0
        assert_eq!(made.values[shape.len()], 10.0 * l32 + 20.0 * (1.0 - l32));
        assert_eq!(made.values[3 * shape.len()], 30.0 * l32);
        let targets = made.targets.unwrap();
        let smoothing = Mixup::cifar().label_smoothing as f32;
        assert_eq!(
            targets[10..20],
            mixup_target_row(1, 2, 10, smoothing, lam).unwrap()
        );
        assert_eq!(made.labels, [0, 1, 2, 3]);
    }

    #[test]
    fn positions_are_the_rows_and_their_partners() {
        let mixed = recipe(true);
        assert_eq!(mixed.positions(6, 0..2).unwrap(), [0, 1, 4, 5]);
        assert_eq!(mixed.positions(6, 2..4).unwrap(), [2, 3]);
        assert_eq!(Augmentation::NONE.positions(5, 1..3).unwrap(), [1, 2]);
        let odd = mixed.positions(5, 0..5).unwrap_err().to_string();
        assert!(odd.contains("even"), "{odd}");
        assert!(Augmentation::NONE.positions(4, 2..5).is_err());
    }

    #[test]
    fn a_row_whose_partner_was_not_made_is_an_error() {
        let mixed = recipe(false);
        let mut samples = BatchSamples::new(4);
        samples.put(0, vec![0.0f32; 192], 1, sample_rng(1, 0));
        let error = mixed
            .rows(&mut samples, 0..1, 10, Planes::new(3, 8, 8), 1, Ok)
            .unwrap_err();
        assert!(
            error.to_string().contains("sample 3 of a batch of 4"),
            "{error}"
        );
        for position in 1..4 {
            samples.put(position, vec![0.0f32; 192], 1, sample_rng(1, position));
        }
        let past = Augmentation::NONE.rows(&mut samples, 2..5, 10, Planes::new(3, 8, 8), 1, Ok);
        assert!(
            past.unwrap_err()
                .to_string()
                .contains("sample 4 of a batch of 4")
        );
    }
}
