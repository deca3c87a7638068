//! Data augmentation of docs/recipes.md §5; docs/data.md §6.3, each transform a deterministic function of a
//! [`SplitMix64`] generator (the same seed gives the same output).
//!
//! Images are channel-major (`[C, H, W]`); event frames `[T, 2, H, W]` are treated as `T * 2`
//! planes. [`Augmentation`] strings the steps together as a run's settings choose them:
//! - per sample, on CIFAR's `u8` pixels ([`Augmentation::sample_pixels`]): [`random_crop`] →
//!   [`random_hflip`] → [`RandAugment::apply`]; on float planes, event frames or synthetic
//!   images ([`Augmentation::sample_values`]): [`random_crop`] → [`random_hflip`] →
//!   [`snn_augment_wide`];
//! - per batch ([`Augmentation::rows`], [`super::batch_rows`]): mixup of each sample with its
//!   partner (the `u8` pixels for CIFAR) with label smoothing (soft targets), or
//!   [`smooth_targets`] alone → for pixels `/255` and [`normalize`] with [`CIFAR_MEAN`] and
//!   [`CIFAR_STD`] (transformers) or [`CIFAR_RESNET_STD`] (ResNets, docs/choices.md §A18) →
//!   [`random_erasing`], as timm's prefetching loader orders them.

use revsnn_reference::testing::SplitMix64;

use crate::error::{Error, Result};

/// CIFAR channel means (docs/recipes.md §5.1, 5.2).
pub const CIFAR_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// CIFAR channel standard deviations of the transformer recipe (docs/recipes.md §5.1).
pub const CIFAR_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];
/// The non-standard standard deviations of the CIFAR ResNet recipe, also for CIFAR-100
/// (docs/recipes.md §5.2; docs/choices.md §A18).
pub const CIFAR_RESNET_STD: [f32; 3] = [0.557, 0.549, 0.5534];

/// The shape of one image or stack of planes: `planes` channels (or `T * C` frame planes) of
/// `h x w`, channel-major (docs/conventions.md §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planes {
    /// Number of planes (channels, or time steps x channels).
    pub planes: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl Planes {
    /// `planes x h x w`.
    pub fn new(planes: usize, h: usize, w: usize) -> Self {
        Planes { planes, h, w }
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.planes * self.h * self.w
    }

    /// Whether there is no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check<T>(&self, values: &[T]) -> Result<()> {
        if values.len() == self.len() {
            Ok(())
        } else {
            Err(Error::Usage(format!(
                "augmentation of a {}x{}x{} image got {} values: pass the sample's own shape",
                self.planes,
                self.h,
                self.w,
                values.len()
            )))
        }
    }
}

/// Uniform integer in `[lo, hi]` (both included).
fn randint(rng: &mut SplitMix64, lo: usize, hi: usize) -> usize {
    lo + (rng.next_u64() % (hi - lo + 1) as u64) as usize
}

/// `(x - mean[c]) / std[c]` per channel `c` of a `[C, H, W]` image (docs/recipes.md §5.1, 5.2; `mean` and
/// `std` have `C` entries).
pub fn normalize(values: &mut [f32], shape: Planes, mean: &[f32], std: &[f32]) -> Result<()> {
    shape.check(values)?;
    if mean.len() != shape.planes || std.len() != shape.planes {
        return Err(Error::Usage(format!(
            "normalisation needs one mean and std per channel ({}), got {} and {}",
            shape.planes,
            mean.len(),
            std.len()
        )));
    }
    let plane = shape.h * shape.w;
    for (c, chunk) in values.chunks_mut(plane.max(1)).enumerate() {
        for v in chunk {
            *v = (*v - mean[c]) / std[c];
        }
    }
    Ok(())
}

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

/// Sets the box `[top, top + bh) x [left, left + bw)` of every plane to `value`.
fn erase(values: &mut [f32], shape: Planes, top: usize, left: usize, bh: usize, bw: usize) {
    for c in 0..shape.planes {
        for y in top..top + bh {
            let row = (c * shape.h + y) * shape.w;
            values[row + left..row + left + bw].fill(0.0);
        }
    }
}

/// timm `RandomErasing(probability, mode='const', max_count=1)` (docs/recipes.md §5.1): with probability
/// `prob`, one box of area 2%-1/3 of the image and aspect ratio 0.3-3.3 (10 tries) is set to 0
/// in all channels. Apply after [`normalize`]. Returns the box (top, left, h, w) if any.
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

/// Label-smoothed one-hot rows `[B, num_classes]`: `1 - s + s/K` on the label, `s/K` elsewhere
/// (timm, docs/recipes.md §5.1, 5.3).
pub fn smooth_targets(labels: &[usize], num_classes: usize, smoothing: f32) -> Result<Vec<f32>> {
    let off = smoothing / num_classes as f32;
    let on = 1.0 - smoothing + off;
    let mut out = vec![off; labels.len() * num_classes];
    for (i, &l) in labels.iter().enumerate() {
        if l >= num_classes {
            return Err(Error::Usage(format!(
                "label {l} is outside [0, {num_classes})"
            )));
        }
        out[i * num_classes + l] = on;
    }
    Ok(out)
}

/// Mixup settings (timm `Mixup` with `cutmix_alpha=0`, mode `batch`; docs/recipes.md §5.1, 5.3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mixup {
    /// Beta(alpha, alpha) for the mixing weight: 0.5 in all recipes.
    pub alpha: f64,
    /// Probability that a batch is mixed: 1.0 (CIFAR transformers), 0.5 (DVS).
    pub prob: f64,
    /// Label smoothing folded into the targets: 0.1.
    pub label_smoothing: f64,
}

impl Mixup {
    /// The CIFAR transformer setting (docs/recipes.md §5.1): alpha 0.5, prob 1.0, smoothing 0.1.
    pub fn cifar() -> Self {
        Mixup {
            alpha: 0.5,
            prob: 1.0,
            label_smoothing: 0.1,
        }
    }

    /// The DVS setting (docs/recipes.md §5.3): alpha 0.5, prob 0.5, smoothing 0.1.
    pub fn dvs() -> Self {
        Mixup {
            prob: 0.5,
            ..Mixup::cifar()
        }
    }
}

/// A standard gamma variate (Marsaglia and Tsang; boosted for shape < 1).
fn gamma(rng: &mut SplitMix64, shape: f64) -> f64 {
    if shape < 1.0 {
        let u = rng.next_f64().max(f64::MIN_POSITIVE);
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = rng.normal();
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = rng.next_f64().max(f64::MIN_POSITIVE);
        if u < 1.0 - 0.0331 * x.powi(4) || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
            return d * v;
        }
    }
}

/// A Beta(a, b) variate.
pub fn beta(rng: &mut SplitMix64, a: f64, b: f64) -> f64 {
    let x = gamma(rng, a);
    let y = gamma(rng, b);
    if x + y > 0.0 { x / (x + y) } else { 0.5 }
}

/// Draws timm's batch mixing weight: with probability `cfg.prob`, `lam ~ Beta(alpha, alpha)`,
/// else 1 (docs/recipes.md §5.1, 5.3).
pub fn mixup_lambda(cfg: &Mixup, rng: &mut SplitMix64) -> f64 {
    if rng.next_f64() < cfg.prob {
        beta(rng, cfg.alpha, cfg.alpha)
    } else {
        1.0
    }
}

/// The evaluation transform of both CIFAR recipes (docs/recipes.md §5.1, 5.2): `/255` and normalisation
/// with [`CIFAR_MEAN`] and `std` ([`CIFAR_STD`] or [`CIFAR_RESNET_STD`]).
pub fn to_normalized(image: &[u8], shape: Planes, std: &[f32]) -> Result<Vec<f32>> {
    let mut v: Vec<f32> = image.iter().map(|&b| f32::from(b) / 255.0).collect();
    normalize(&mut v, shape, &CIFAR_MEAN, std)?;
    Ok(v)
}

/// A training run's augmentation (docs/recipes.md §5; docs/data.md §6.3): each step optional, and a step that is off
/// draws nothing from the generator. The recipes' pipelines are these steps with the others off:
/// - CIFAR ResNets (docs/recipes.md §5.2): crop with padding 4, flip; hard labels;
/// - CIFAR transformers (docs/recipes.md §5.1): flip, RandAugment; per batch mixup of the `u8` pixels
///   with label smoothing 0.1, normalisation, random erasing 0.25;
/// - event frames (docs/recipes.md §5.3): flip, SNNAugmentWide; per batch mixup with label smoothing 0.1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augmentation {
    /// A crop of the sample's own size from the sample zero-padded by this much on every side
    /// ([`random_crop`]); 0: no crop.
    pub crop_padding: usize,
    /// A horizontal flip with probability 0.5 ([`random_hflip`]).
    pub flip: bool,
    /// RandAugment ([`RandAugment::apply`]); works on `u8` pixels only.
    pub rand_augment: Option<RandAugment>,
    /// `SNNAugmentWide` ([`snn_augment_wide`]); works on float planes only.
    pub snn_augment_wide: bool,
    /// Mixup of each batch (each sample with its partner, [`super::batch_rows`]), its targets
    /// smoothed by [`Mixup::label_smoothing`].
    pub mixup: Option<Mixup>,
    /// Label smoothing of the targets of a batch that is not mixed; with no mixup and 0, the
    /// batch trains on hard labels.
    pub label_smoothing: f64,
    /// The probability of [`random_erasing`] per sample, after normalisation; 0: none.
    pub random_erasing: f64,
}

impl Augmentation {
    /// No augmentation at all: samples as they are, hard labels.
    pub const NONE: Augmentation = Augmentation {
        crop_padding: 0,
        flip: false,
        rand_augment: None,
        snn_augment_wide: false,
        mixup: None,
        label_smoothing: 0.0,
        random_erasing: 0.0,
    };

    /// Crop and flip, shared by both sample types.
    fn crop_and_flip<T: Copy + Default>(
        &self,
        values: Vec<T>,
        shape: Planes,
        rng: &mut SplitMix64,
    ) -> Result<Vec<T>> {
        let mut values = if self.crop_padding > 0 {
            random_crop(&values, shape, self.crop_padding, rng)?
        } else {
            shape.check(&values)?;
            values
        };
        if self.flip {
            random_hflip(&mut values, shape, rng)?;
        }
        Ok(values)
    }

    /// The per-sample steps on `u8` pixels (CIFAR): crop, flip, RandAugment.
    pub fn sample_pixels(
        &self,
        image: &[u8],
        shape: Planes,
        rng: &mut SplitMix64,
    ) -> Result<Vec<u8>> {
        if self.snn_augment_wide {
            return Err(Error::Usage(
                "SNNAugmentWide works on float planes (event frames, synthetic images), not on \
                 u8 pixels: turn it off for CIFAR"
                    .into(),
            ));
        }
        let mut image = self.crop_and_flip(image.to_vec(), shape, rng)?;
        if let Some(rand_augment) = &self.rand_augment {
            rand_augment.apply(&mut image, shape, rng)?;
        }
        Ok(image)
    }

    /// The per-sample steps on float planes (event frames `[T, 2, H, W]` as `2 T` planes,
    /// synthetic images): crop, flip, SNNAugmentWide.
    pub fn sample_values(
        &self,
        values: Vec<f32>,
        shape: Planes,
        rng: &mut SplitMix64,
    ) -> Result<Vec<f32>> {
        if self.rand_augment.is_some() {
            return Err(Error::Usage(
                "RandAugment works on u8 pixels (CIFAR), not on float planes: turn it off for \
                 this dataset"
                    .into(),
            ));
        }
        let mut values = self.crop_and_flip(values, shape, rng)?;
        if self.snn_augment_wide {
            snn_augment_wide(&mut values, shape, rng)?;
        }
        Ok(values)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(shape: Planes) -> Vec<f32> {
        (0..shape.len()).map(|i| i as f32).collect()
    }

    #[test]
    fn normalize_uses_per_channel_constants() {
        let shape = Planes::new(3, 1, 2);
        let mut v = vec![0.4914, 1.0, 0.4822, 0.0, 0.0, 0.4465];
        normalize(&mut v, shape, &CIFAR_MEAN, &CIFAR_RESNET_STD).unwrap();
        assert_eq!(v[0], 0.0);
        assert!((v[1] - (1.0 - 0.4914) / 0.557).abs() < 1e-6);
        assert!((v[3] + 0.4822 / 0.549).abs() < 1e-6);
        assert_eq!(v[5], 0.0);
        assert!(normalize(&mut v, shape, &CIFAR_MEAN[..2], &CIFAR_STD).is_err());
    }

    #[test]
    fn crop_with_padding_is_exact() {
        let shape = Planes::new(1, 3, 3);
        let v = ramp(shape); // 0 1 2 / 3 4 5 / 6 7 8
        assert_eq!(crop_padded(&v, shape, 1, 1, 1).unwrap(), v);
        assert_eq!(
            crop_padded(&v, shape, 1, 0, 0).unwrap(),
            vec![0., 0., 0., 0., 0., 1., 0., 3., 4.]
        );
        assert_eq!(
            crop_padded(&v, shape, 1, 2, 1).unwrap(),
            vec![3., 4., 5., 6., 7., 8., 0., 0., 0.]
        );
        assert!(crop_padded(&v, shape, 1, 3, 0).is_err());
        let mut rng = SplitMix64::new(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let c = random_crop(&v, shape, 1, &mut rng).unwrap();
            assert_eq!(c.len(), 9);
            seen.insert(c.iter().map(|x| *x as i32).collect::<Vec<_>>());
        }
        assert_eq!(seen.len(), 9, "all 9 offsets occur");
    }

    #[test]
    fn flip_mirrors_rows_of_every_plane() {
        let shape = Planes::new(2, 2, 3);
        let mut v = ramp(shape);
        hflip(&mut v, shape).unwrap();
        assert_eq!(v, vec![2., 1., 0., 5., 4., 3., 8., 7., 6., 11., 10., 9.]);
        let mut rng = SplitMix64::new(3);
        let flips = (0..1000)
            .filter(|_| random_hflip(&mut v, shape, &mut rng).unwrap())
            .count();
        assert!((400..600).contains(&flips), "{flips}");
    }

    #[test]
    fn random_erasing_sets_a_box_to_zero_with_the_given_probability() {
        let shape = Planes::new(3, 32, 32);
        let mut rng = SplitMix64::new(5);
        let mut erased = 0;
        for _ in 0..400 {
            let mut v = vec![1.0f32; shape.len()];
            if let Some((t, l, bh, bw)) = random_erasing(&mut v, shape, 0.25, &mut rng).unwrap() {
                erased += 1;
                let zeros = v.iter().filter(|&&x| x == 0.0).count();
                assert_eq!(zeros, 3 * bh * bw);
                assert_eq!(v[(32 + t) * 32 + l], 0.0);
                let area = (bh * bw) as f64 / 1024.0;
                assert!((0.01..0.36).contains(&area), "{area}");
            } else {
                assert!(v.iter().all(|&x| x == 1.0));
            }
        }
        assert!((60..140).contains(&erased), "{erased}");
    }

    #[test]
    fn pipelines_keep_shapes_and_refuse_the_other_sample_type() {
        let mut rng = SplitMix64::new(13);
        let image: Vec<u8> = (0..3072).map(|i| (i % 251) as u8).collect();
        let shape = Planes::new(3, 32, 32);
        let resnet = Augmentation {
            crop_padding: 4,
            flip: true,
            ..Augmentation::NONE
        };
        let a = resnet
            .sample_pixels(&image, shape, &mut SplitMix64::new(1))
            .unwrap();
        let b = resnet
            .sample_pixels(&image, shape, &mut SplitMix64::new(1))
            .unwrap();
        assert_eq!(a.len(), 3072);
        assert_eq!(a, b);
        let eval = to_normalized(&image, shape, &CIFAR_RESNET_STD).unwrap();
        assert!((eval[1] - (1.0 / 255.0 - 0.4914) / 0.557).abs() < 1e-6);
        let transformer = Augmentation {
            flip: true,
            rand_augment: Some(RandAugment::cifar()),
            label_smoothing: 0.1,
            random_erasing: 0.25,
            ..Augmentation::NONE
        };
        // RandAugment needs pixels, SNNAugmentWide float planes
        assert!(
            transformer
                .sample_values(vec![0.0; 3072], shape, &mut rng)
                .is_err()
        );
        let events = Augmentation {
            flip: true,
            snn_augment_wide: true,
            ..Augmentation::NONE
        };
        assert!(events.sample_pixels(&image, shape, &mut rng).is_err());
        let frames_shape = Planes::new(2 * 3, 8, 8);
        let frames = events
            .sample_values(vec![1.0f32; frames_shape.len()], frames_shape, &mut rng)
            .unwrap();
        assert_eq!(frames.len(), frames_shape.len());
    }

    #[test]
    fn steps_that_are_off_draw_nothing_and_change_nothing() {
        let shape = Planes::new(3, 8, 8);
        let values: Vec<f32> = (0..shape.len()).map(|i| i as f32).collect();
        let mut rng = SplitMix64::new(4);
        let same = Augmentation::NONE
            .sample_values(values.clone(), shape, &mut rng)
            .unwrap();
        assert_eq!(same, values);
        assert_eq!(rng.next_u64(), SplitMix64::new(4).next_u64());
    }

    #[test]
    fn beta_half_half_has_mean_one_half_and_mass_at_the_ends() {
        let mut rng = SplitMix64::new(11);
        let xs: Vec<f64> = (0..20000).map(|_| beta(&mut rng, 0.5, 0.5)).collect();
        assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        // Beta(0.5, 0.5) has variance 1/8 (arcsine law).
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!((var - 0.125).abs() < 0.005, "{var}");
    }

    fn image(seed: u64, shape: Planes) -> Vec<u8> {
        let mut rng = SplitMix64::new(seed);
        (0..shape.len())
            .map(|_| (rng.next_u64() % 256) as u8)
            .collect()
    }

    #[test]
    fn rand_augment_is_deterministic_for_a_seed_and_keeps_the_shape() {
        let shape = Planes::new(3, 32, 32);
        let ra = RandAugment::cifar();
        assert_eq!(ra.fill, [125, 123, 114]);
        let mut changed = 0;
        for seed in 0..40 {
            let img = image(seed, shape);
            let (mut a, mut b) = (img.clone(), img.clone());
            ra.apply(&mut a, shape, &mut SplitMix64::new(seed)).unwrap();
            ra.apply(&mut b, shape, &mut SplitMix64::new(seed)).unwrap();
            assert_eq!(a, b);
            changed += usize::from(a != img);
        }
        // Each op is applied with p = 0.5 (and a few ops can be no-ops).
        assert!((10..35).contains(&changed), "{changed}");
        assert!(
            ra.apply(&mut [0u8; 5], shape, &mut SplitMix64::new(0))
                .is_err()
        );
    }

    #[test]
    fn rand_augment_ops_on_hand_made_images() {
        let shape = Planes::new(1, 2, 2);
        let ra = RandAugment::cifar();
        let run = |op, px: [u8; 4], m: f64, neg: bool| {
            let mut v = px.to_vec();
            ra.apply_op(op, &mut v, shape, m, neg).unwrap();
            v
        };
        assert_eq!(
            run(RandOp::Invert, [0, 1, 254, 255], 9.0, false),
            [255, 254, 1, 0]
        );
        assert_eq!(
            run(RandOp::AutoContrast, [10, 20, 30, 10], 9.0, false),
            [0, 127, 255, 0]
        );
        // m = 9: keep 4 - int(3.6) = 1 bit.
        assert_eq!(
            run(RandOp::PosterizeIncreasing, [0, 127, 128, 255], 9.0, false),
            [0, 0, 128, 128]
        );
        // m = 5: threshold 256 - 128 = 128.
        assert_eq!(
            run(RandOp::SolarizeIncreasing, [0, 127, 128, 255], 5.0, false),
            [0, 127, 127, 0]
        );
        // m = 10: add 110 below 128.
        assert_eq!(
            run(RandOp::SolarizeAdd, [0, 127, 128, 200], 10.0, false),
            [110, 237, 128, 200]
        );
        // factor 1 + 0.45 = 1.45 against black.
        assert_eq!(
            run(RandOp::BrightnessIncreasing, [0, 10, 100, 200], 5.0, false),
            [0, 14, 145, 255]
        );
        assert_eq!(
            run(RandOp::BrightnessIncreasing, [0, 10, 100, 200], 5.0, true),
            [0, 5, 55, 110]
        );
        // Equalize: too few pixels (step = (4 - 2) / 255 = 0) leave the image unchanged...
        assert_eq!(
            run(RandOp::Equalize, [5, 5, 9, 9], 9.0, false),
            [5, 5, 9, 9]
        );
        // ...while 256 + 256 pixels give step 1 and map 100 to 256, clipped to 255.
        let big = Planes::new(1, 16, 32);
        let mut v: Vec<u8> = (0..512).map(|i| if i < 256 { 0 } else { 100 }).collect();
        ra.apply_op(RandOp::Equalize, &mut v, big, 9.0, false)
            .unwrap();
        assert!(v[..256].iter().all(|&x| x == 0) && v[256..].iter().all(|&x| x == 255));
        // Integer translation is an exact shift with the mean filled in.
        let shape3 = Planes::new(1, 1, 4);
        let mut v = vec![1u8, 2, 3, 4];
        // translate_pct 0.25 of width 4 at m = 10 is a 1-pixel shift.
        let one_px = RandAugment {
            translate_pct: 0.25,
            ..ra
        };
        one_px
            .apply_op(RandOp::TranslateXRel, &mut v, shape3, 10.0, false)
            .unwrap();
        assert_eq!(v, vec![2, 3, 4, 125]);
        // Rotation: magnitude 0 is the identity; a constant image stays constant inside and
        // takes the fill in the corners that the rotation uncovers.
        let shape8 = Planes::new(3, 8, 8);
        let img = image(3, shape8);
        let mut v = img.clone();
        ra.apply_op(RandOp::Rotate, &mut v, shape8, 0.0, false)
            .unwrap();
        assert_eq!(v, img);
        let mut v = vec![77u8; shape8.len()];
        ra.apply_op(RandOp::Rotate, &mut v, shape8, 10.0, false)
            .unwrap();
        assert_eq!(v[3 * 8 + 3], 77);
        assert_eq!(v[0], 125);
        assert_eq!(v[64], 123);
    }

    #[test]
    fn wide_ops_translate_shear_rotate_and_cut_exactly() {
        let shape = Planes::new(2, 3, 3);
        let v = ramp(shape);
        let apply = |op| {
            let mut x = v.clone();
            apply_wide_op(&mut x, shape, op).unwrap();
            x
        };
        assert_eq!(apply(WideOp::Identity), v);
        assert_eq!(
            apply(WideOp::TranslateX(1))[..9],
            [0., 0., 1., 0., 3., 4., 0., 6., 7.]
        );
        assert_eq!(
            apply(WideOp::TranslateY(-1))[9..],
            [12., 13., 14., 15., 16., 17., 0., 0., 0.]
        );
        // 90 degrees maps the ramp's rows to columns (on every plane alike).
        let r = apply(WideOp::Rotate(90.0));
        assert_eq!(r[..9], [2., 5., 8., 1., 4., 7., 0., 3., 6.]);
        assert_eq!(r[9..], [11., 14., 17., 10., 13., 16., 9., 12., 15.]);
        // Shear m: the row at centred y reads x + tan(m) y. tan(0.3) = 0.31 rounds back to x.
        assert_eq!(apply(WideOp::ShearX(0.3)), v);
        // tan(1) = 1.56: the top row reads x - 1.56, the bottom row x + 1.56.
        let s = apply(WideOp::ShearX(1.0));
        assert_eq!(s[..9], [0., 0., 0., 3., 4., 5., 8., 0., 0.]);
        let c = apply(WideOp::Cutout(Some((1, 0, 2))));
        assert_eq!(c[..9], [0., 1., 2., 0., 0., 5., 0., 0., 8.]);
        assert_eq!(c[9 + 3], 0.0);
    }

    #[test]
    fn snn_augment_wide_is_deterministic_and_draws_every_op() {
        let shape = Planes::new(4, 16, 16);
        let v: Vec<f32> = (0..shape.len()).map(|i| (i % 7) as f32).collect();
        let mut kinds = std::collections::HashSet::new();
        for seed in 0..200 {
            let (mut a, mut b) = (v.clone(), v.clone());
            let oa = snn_augment_wide(&mut a, shape, &mut SplitMix64::new(seed)).unwrap();
            let ob = snn_augment_wide(&mut b, shape, &mut SplitMix64::new(seed)).unwrap();
            assert_eq!((oa, &a), (ob, &b));
            kinds.insert(std::mem::discriminant(&oa));
            match oa {
                WideOp::TranslateX(t) | WideOp::TranslateY(t) => assert!(t.abs() <= 5),
                WideOp::ShearX(s) => assert!(s.abs() <= 0.3 + 1e-12),
                WideOp::Rotate(d) => assert!(d.abs() <= 30.0 + 1e-9),
                WideOp::Cutout(Some((_, _, side))) => assert!((1..=6).contains(&side)),
                _ => {}
            }
        }
        assert_eq!(kinds.len(), 6);
    }
}
