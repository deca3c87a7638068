//! The embedded datasets: procedurally generated, deterministic from a seed, nothing to download.
//!
//! - [`Synthetic`] (`synthetic`): 10-class RGB images of shapes (disc, ring, square, triangle,
//!   plus, X, stripes, checkerboard, two discs, star) at random positions, sizes, orientations (+-25
//!   degrees) and colours on a random background, with Gaussian noise, normalised to roughly zero mean and unit
//!   variance.
//! - [`SyntheticCifar`] (`synthetic-cifar`): the same images at 32x32 as CIFAR's `u8` pixels, so
//!   that the whole CIFAR training pipeline (RandAugment, the `u8` mixup, the family's
//!   normalisation) runs without the download.
//! - [`SyntheticEvents`] (`synthetic-events`): `[T, 2, H, W]` event-count frames (ON and OFF
//!   polarity) of a moving disc (8 directions) or a growing or shrinking square (10 classes), with
//!   background noise events.
//!
//! Sample `i` of a split is generated from `(seed, split, i)` alone, so any sample can be produced
//! on any thread in any order with the same result; train and test are disjoint streams.

use revsnn_reference::testing::SplitMix64;

use rayon::prelude::*;

use super::cifar::CIFAR_IMAGE_BYTES;
use super::{Dataset, PixelImages, Sample};
use crate::error::{Error, Result};

/// The number of classes of both synthetic datasets.
pub const CLASSES: usize = 10;

/// Which part of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

fn sample_rng(seed: u64, split: Split, index: usize, salt: u64) -> SplitMix64 {
    let split = match split {
        Split::Train => 0x5452_4149_4e00_0000u64,
        Split::Test => 0x5445_5354_0000_0000u64,
    };
    let mut mixer = SplitMix64::new(seed ^ salt);
    let a = mixer.next_u64();
    SplitMix64::new(a ^ split ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn check_size(size: usize, len: usize) -> Result<()> {
    if size < 8 {
        return Err(Error::Usage(format!(
            "the synthetic datasets need images of at least 8x8 pixels, not {size}x{size}; use a spec with img_size >= 8"
        )));
    }
    if len == 0 {
        return Err(Error::Usage(
            "a synthetic split needs at least one sample: give --train-samples and \
             --test-samples (eval: --test-samples) of 1 or more"
                .into(),
        ));
    }
    Ok(())
}

/// Shape-classification images: `[3, size, size]`, 10 classes.
#[derive(Clone, Debug)]
pub struct Synthetic {
    seed: u64,
    split: Split,
    len: usize,
    size: usize,
}

impl Synthetic {
    /// `len` samples of `split`, `size x size` pixels, from `seed`.
    pub fn new(seed: u64, split: Split, len: usize, size: usize) -> Result<Self> {
        check_size(size, len)?;
        Ok(Synthetic {
            seed,
            split,
            len,
            size,
        })
    }

    /// Whether the point `(u, v)` (shape coordinates: centred, rotated, in units of the radius)
    /// lies inside the shape of `class`.
    fn inside(class: usize, u: f64, v: f64, param: f64) -> bool {
        let r = (u * u + v * v).sqrt();
        match class {
            0 => r <= 1.0,
            1 => (0.6..=1.0).contains(&r),
            2 => u.abs() <= 0.8 && v.abs() <= 0.8,
            3 => {
                // equilateral triangle, vertex up
                (-0.5..=1.0).contains(&v) && u.abs() <= (1.0 - v) / 3f64.sqrt()
            }
            4 => (u.abs() <= 0.25 && v.abs() <= 1.0) || (v.abs() <= 0.25 && u.abs() <= 1.0),
            5 => {
                let (a, b) = ((u + v) / 2f64.sqrt(), (u - v) / 2f64.sqrt());
                (a.abs() <= 0.2 && b.abs() <= 1.0) || (b.abs() <= 0.2 && a.abs() <= 1.0)
            }
            6 => {
                u.abs() <= 1.0
                    && v.abs() <= 1.0
                    && ((v + 1.0 + param) * 2.0).floor() as i64 % 2 == 0
            }
            7 => {
                u.abs() <= 1.0
                    && v.abs() <= 1.0
                    && (((u + 1.0) * 2.0).floor() as i64 + ((v + 1.0) * 2.0).floor() as i64) % 2
                        == 0
            }
            8 => {
                let d1 = ((u - 0.55).powi(2) + v * v).sqrt();
                let d2 = ((u + 0.55).powi(2) + v * v).sqrt();
                d1 <= 0.42 || d2 <= 0.42
            }
            _ => {
                let theta = v.atan2(u);
                r <= 0.5 + 0.5 * (5.0 * theta).cos().max(0.0)
            }
        }
    }

    /// Sample `index` as `[3, size, size]` values: each pixel's colour plus noise (about 0 to
    /// 1) mapped by `value`.
    fn render<T: Default + Clone>(
        &self,
        index: usize,
        value: impl Fn(f64) -> T,
    ) -> (Vec<T>, usize) {
        let mut rng = sample_rng(self.seed, self.split, index, 0x1111);
        let label = (rng.next_u64() % CLASSES as u64) as usize;
        let n = self.size as f64;
        let radius = rng.uniform(0.28, 0.42) * n;
        let cx = rng.uniform(radius * 0.8, n - radius * 0.8);
        let cy = rng.uniform(radius * 0.8, n - radius * 0.8);
        // orientation jitter of +-25 degrees: a plus and an X stay distinct classes
        let angle = rng.uniform(-0.44, 0.44);
        let param = rng.next_f64();
        let background: [f64; 3] = [rng.next_f64(), rng.next_f64(), rng.next_f64()];
        // a foreground colour whose brightness differs from the background's by at least 0.3
        let brightness = |c: &[f64; 3]| c.iter().sum::<f64>() / 3.0;
        let foreground = loop {
            let c = [rng.next_f64(), rng.next_f64(), rng.next_f64()];
            if (brightness(&c) - brightness(&background)).abs() >= 0.3 {
                break c;
            }
        };
        let (sin, cos) = angle.sin_cos();
        let pixels = self.size * self.size;
        let mut values = vec![T::default(); 3 * pixels];
        for y in 0..self.size {
            for x in 0..self.size {
                let (dx, dy) = (
                    (x as f64 + 0.5 - cx) / radius,
                    (y as f64 + 0.5 - cy) / radius,
                );
                let (u, v) = (cos * dx + sin * dy, -sin * dx + cos * dy);
                let colour = if Self::inside(label, u, v, param) {
                    &foreground
                } else {
                    &background
                };
                for c in 0..3 {
                    values[c * pixels + y * self.size + x] = value(colour[c] + 0.06 * rng.normal());
                }
            }
        }
        (values, label)
    }

    /// Sample `index` normalised to roughly zero mean and unit variance.
    fn normalized(&self, index: usize) -> Sample {
        let (values, label) = self.render(index, |v| ((v - 0.5) / 0.3) as f32);
        Sample { values, label }
    }

    /// Sample `index` as `u8` pixels, the colour scaled to 0-255 (clamped, rounded).
    fn pixels(&self, index: usize) -> (Vec<u8>, usize) {
        self.render(index, |v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
    }
}

impl Dataset for Synthetic {
    fn name(&self) -> &str {
        "synthetic"
    }
    fn len(&self) -> usize {
        self.len
    }
    fn num_classes(&self) -> usize {
        CLASSES
    }
    fn sample_shape(&self) -> Vec<usize> {
        vec![3, self.size, self.size]
    }
    fn get(&self, index: usize) -> Result<Sample> {
        if index >= self.len {
            return Err(Error::Usage(format!(
                "sample {index} is out of range: synthetic has {} samples",
                self.len
            )));
        }
        Ok(self.normalized(index))
    }
}

/// [`Synthetic`]'s images at CIFAR's 32x32 as `u8` pixels in CIFAR's layout, rendered once when
/// opened: a stand-in for CIFAR-10 that the CIFAR pipeline takes as it is.
#[derive(Clone, Debug)]
pub struct SyntheticCifar {
    pixels: Vec<u8>,
    labels: Vec<usize>,
}

impl SyntheticCifar {
    /// `len` images of `split` from `seed` (the same shapes as [`Synthetic::new`] at size 32).
    pub fn new(seed: u64, split: Split, len: usize) -> Result<Self> {
        let images = Synthetic::new(seed, split, len, 32)?;
        let rendered: Vec<(Vec<u8>, usize)> =
            (0..len).into_par_iter().map(|i| images.pixels(i)).collect();
        let mut pixels = Vec::with_capacity(len * CIFAR_IMAGE_BYTES);
        let mut labels = Vec::with_capacity(len);
        for (image, label) in rendered {
            pixels.extend(image);
            labels.push(label);
        }
        Ok(SyntheticCifar { pixels, labels })
    }
}

impl PixelImages for SyntheticCifar {
    fn image(&self, index: usize) -> Option<(&[u8], usize)> {
        let label = *self.labels.get(index)?;
        let start = index * CIFAR_IMAGE_BYTES;
        Some((&self.pixels[start..start + CIFAR_IMAGE_BYTES], label))
    }
}

impl Dataset for SyntheticCifar {
    fn name(&self) -> &str {
        "synthetic-cifar"
    }
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn num_classes(&self) -> usize {
        CLASSES
    }
    fn sample_shape(&self) -> Vec<usize> {
        vec![3, 32, 32]
    }
    fn get(&self, index: usize) -> Result<Sample> {
        let (bytes, label) = self.image(index).ok_or_else(|| {
            Error::Usage(format!(
                "sample {index} is out of range: synthetic-cifar has {} samples",
                self.len()
            ))
        })?;
        Ok(Sample {
            values: bytes.iter().map(|&b| f32::from(b) / 255.0).collect(),
            label,
        })
    }
}

/// Event-count frames of moving patterns: `[T, 2, size, size]`, 10 classes (a disc moving in one
/// of 8 directions, a square growing, a square shrinking).
#[derive(Clone, Debug)]
pub struct SyntheticEvents {
    seed: u64,
    split: Split,
    len: usize,
    frames: usize,
    size: usize,
}

impl SyntheticEvents {
    /// `len` samples of `split` with `frames` frames of `size x size`, from `seed`.
    pub fn new(seed: u64, split: Split, len: usize, frames: usize, size: usize) -> Result<Self> {
        check_size(size, len)?;
        if frames == 0 {
            return Err(Error::Usage(
                "synthetic-events needs at least one time step".into(),
            ));
        }
        Ok(SyntheticEvents {
            seed,
            split,
            len,
            frames,
            size,
        })
    }

    /// The intensity image at time `t` in `[0, 1]` (`frames + 1` instants; events are their
    /// differences).
    fn intensity(&self, label: usize, t: f64, start: (f64, f64), radius: f64) -> Vec<f64> {
        let n = self.size as f64;
        let (mut cx, mut cy) = start;
        let mut half = radius;
        if label < 8 {
            let angle = label as f64 * std::f64::consts::FRAC_PI_4;
            let travel = 0.45 * n;
            cx += angle.cos() * travel * (t - 0.5);
            cy += angle.sin() * travel * (t - 0.5);
        } else {
            let grow = if label == 8 { t } else { 1.0 - t };
            half = radius * (0.4 + 0.9 * grow);
        }
        let mut image = vec![0.0; self.size * self.size];
        for y in 0..self.size {
            for x in 0..self.size {
                let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
                let inside = if label < 8 {
                    dx * dx + dy * dy <= radius * radius
                } else {
                    dx.abs() <= half && dy.abs() <= half
                };
                image[y * self.size + x] = if inside { 1.0 } else { 0.0 };
            }
        }
        image
    }

    fn render(&self, index: usize) -> Sample {
        let mut rng = sample_rng(self.seed, self.split, index, 0x2222);
        let label = (rng.next_u64() % CLASSES as u64) as usize;
        let n = self.size as f64;
        let radius = rng.uniform(0.1, 0.18) * n;
        let start = (rng.uniform(0.35, 0.65) * n, rng.uniform(0.35, 0.65) * n);
        let pixels = self.size * self.size;
        let substeps = 3;
        let mut values = vec![0f32; self.frames * 2 * pixels];
        let mut previous = self.intensity(label, 0.0, start, radius);
        for frame in 0..self.frames {
            for sub in 1..=substeps {
                let t = (frame * substeps + sub) as f64 / (self.frames * substeps) as f64;
                let current = self.intensity(label, t, start, radius);
                for p in 0..pixels {
                    let delta = current[p] - previous[p];
                    if delta > 0.0 {
                        values[(frame * 2) * pixels + p] += 1.0;
                    } else if delta < 0.0 {
                        values[(frame * 2 + 1) * pixels + p] += 1.0;
                    }
                }
                previous = current;
            }
            // background noise events
            for channel in 0..2 {
                for p in 0..pixels {
                    if rng.next_f64() < 0.02 {
                        values[(frame * 2 + channel) * pixels + p] += 1.0;
                    }
                }
            }
        }
        Sample { values, label }
    }
}

impl Dataset for SyntheticEvents {
    fn name(&self) -> &str {
        "synthetic-events"
    }
    fn len(&self) -> usize {
        self.len
    }
    fn num_classes(&self) -> usize {
        CLASSES
    }
    fn sample_shape(&self) -> Vec<usize> {
        vec![self.frames, 2, self.size, self.size]
    }
    fn get(&self, index: usize) -> Result<Sample> {
        if index >= self.len {
            return Err(Error::Usage(format!(
                "sample {index} is out of range: synthetic-events has {} samples",
                self.len
            )));
        }
        Ok(self.render(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_deterministic_normalised_and_cover_every_class() {
        let data = Synthetic::new(7, Split::Train, 200, 32).unwrap();
        assert_eq!(data.get(3).unwrap(), data.get(3).unwrap());
        let test = Synthetic::new(7, Split::Test, 200, 32).unwrap();
        assert_ne!(data.get(3).unwrap(), test.get(3).unwrap());
        let mut seen = [false; CLASSES];
        let (mut sum, mut squares, mut count) = (0.0, 0.0, 0.0);
        for i in 0..200 {
            let sample = data.get(i).unwrap();
            seen[sample.label] = true;
            for &v in &sample.values {
                sum += f64::from(v);
                squares += f64::from(v) * f64::from(v);
                count += 1.0;
            }
        }
        assert!(seen.iter().all(|&s| s));
        let mean = sum / count;
        let std = (squares / count - mean * mean).sqrt();
        assert!(
            mean.abs() < 0.3 && (0.6..1.4).contains(&std),
            "{mean} {std}"
        );
        assert!(data.get(200).is_err());
    }

    #[test]
    fn the_cifar_pixels_are_the_same_images_quantised() {
        let (seed, len) = (7, 24);
        let floats = Synthetic::new(seed, Split::Train, len, 32).unwrap();
        let bytes = SyntheticCifar::new(seed, Split::Train, len).unwrap();
        assert_eq!((bytes.len(), bytes.sample_shape()), (len, vec![3, 32, 32]));
        for i in 0..len {
            let (normalized, pixels) = (floats.get(i).unwrap(), bytes.get(i).unwrap());
            assert_eq!(normalized.label, pixels.label);
            for (&v, &p) in normalized.values.iter().zip(&pixels.values) {
                // the float sample is (colour - 0.5) / 0.3; the byte is the colour, clamped
                let colour = (f64::from(v) * 0.3 + 0.5).clamp(0.0, 1.0);
                assert!(
                    (colour - f64::from(p)).abs() <= 0.5 / 255.0 + 1e-6,
                    "{colour} {p}"
                );
            }
        }
        assert!(bytes.image(len).is_none() && bytes.get(len).is_err());
    }

    #[test]
    fn event_frames_are_counts_with_events() {
        let data = SyntheticEvents::new(1, Split::Train, 20, 4, 16).unwrap();
        assert_eq!(data.sample_shape(), vec![4, 2, 16, 16]);
        let sample = data.get(0).unwrap();
        assert_eq!(sample.values.len(), 4 * 2 * 16 * 16);
        assert!(sample.values.iter().all(|&v| v >= 0.0 && v.fract() == 0.0));
        assert!(sample.values.iter().sum::<f32>() > 0.0);
    }
}
