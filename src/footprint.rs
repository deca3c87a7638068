//! What a run will need in memory, estimated from its spec and batch size before anything is
//! allocated, and the check that refuses a run the machine cannot hold (docs/memory.md §9.5).
//!
//! The estimate is a *lower bound* made of the terms `memory` measures (docs/memory.md §9.3):
//! the parameters and their gradients, the batch, and the activations a step keeps. It counts
//! only the big terms (the 3x3 convolutions of the stages, the transformer blocks' projections,
//! one or two tensors per layer), so a run it refuses cannot fit; a run it lets through that
//! needs more than is available still runs out during the step (on CUDA a typed out-of-memory
//! error, on the CPU an allocation failure). Sizes are multiplied in `u128` with saturation: no
//! spec can overflow them.

use crate::device::Compute;
use crate::error::{Error, Result};
use crate::model::reversible::Storage;
use crate::spec::ModelSpec;

/// The estimated memory of a model and of one training step at a batch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Parameters (elements), at least.
    pub parameters: u128,
    /// The parameters' bytes in the element type.
    pub parameter_bytes: u128,
    /// The bytes of an evaluation forward at its peak, at least: parameters and the batch.
    pub forward_bytes: u128,
    /// The bytes of one training step at its peak, at least: parameters, gradients, the batch
    /// and the activations held for the backward.
    pub step_bytes: u128,
}

/// A product of sizes that saturates instead of wrapping.
fn product(factors: &[u128]) -> u128 {
    factors.iter().fold(1, |p, &f| p.saturating_mul(f))
}

impl Footprint {
    /// The footprint of `spec` with elements of `element_bytes` bytes; a training step on
    /// `batch` samples keeping activations as `storage` says.
    pub fn of(spec: &ModelSpec, batch: usize, element_bytes: usize, storage: Storage) -> Self {
        let reversible = spec.arch.is_reversible() && storage == Storage::Reversible;
        let parameters = parameter_lower_bound(spec);
        let per_sample =
            input_elements(spec).saturating_add(activation_lower_bound(spec, reversible));
        let element = element_bytes as u128;
        let parameter_bytes = parameters.saturating_mul(element);
        let activations = product(&[per_sample, batch as u128, element]);
        Footprint {
            parameters,
            parameter_bytes,
            forward_bytes: parameter_bytes.saturating_add(product(&[
                input_elements(spec),
                batch as u128,
                element,
            ])),
            step_bytes: parameter_bytes
                .saturating_mul(2)
                .saturating_add(activations),
        }
    }
}

impl Footprint {
    /// The bytes a data-parallel replica's gradient all-reduce holds at the backward's peak, at
    /// least: every gradient flattened into its bucket, and the bucket's sum
    /// (docs/distributed.md §4.2).
    pub fn all_reduce_bytes(&self) -> u128 {
        self.parameter_bytes.saturating_mul(2)
    }

    /// The bytes of a training step of `replicas` of the `ranks` replicas of `spec` held by one
    /// device, each on its share of the global `batch` with its own parameters, gradients and,
    /// when there are other ranks, all-reduce buffers, at least.
    pub fn data_parallel_step_bytes(
        spec: &ModelSpec,
        batch: usize,
        ranks: usize,
        replicas: usize,
        element_bytes: usize,
    ) -> u128 {
        let share = batch.div_ceil(ranks.max(1));
        let one = Footprint::of(spec, share, element_bytes, Storage::Reversible);
        let replica = match ranks {
            0 | 1 => one.step_bytes,
            _ => one.step_bytes.saturating_add(one.all_reduce_bytes()),
        };
        replica.saturating_mul(replicas.max(1) as u128)
    }
}

/// The stages of a ResNet spec: `(blocks, width, side)` with the side of its square feature maps.
fn resnet_stages(spec: &ModelSpec) -> Vec<(u128, u128, u128)> {
    let (Some(layers), Some(planes)) = (&spec.layers, &spec.planes) else {
        return Vec::new();
    };
    let first_side = if spec.arch.is_dvs() {
        spec.img_size / 4
    } else {
        spec.img_size
    };
    let width = |p: usize| {
        if spec.arch.is_reversible() {
            2 * p as u128
        } else {
            p as u128
        }
    };
    layers
        .iter()
        .zip(planes)
        .enumerate()
        .map(|(i, (&blocks, &p))| (blocks as u128, width(p), (first_side >> i).max(1) as u128))
        .collect()
}

/// The weights of the stages' 3x3 convolutions (ResNets: two per MS-ResNet block, four per
/// reversible block, each `planes x planes`), or of the transformer blocks' attention and MLP
/// projections (`(4 + 2 mlp_ratio) dim^2` per block).
pub fn parameter_lower_bound(spec: &ModelSpec) -> u128 {
    if spec.arch.is_resnet() {
        let convs = if spec.arch.is_reversible() { 4 } else { 2 };
        let planes = spec.planes.iter().flatten();
        let layers = spec.layers.iter().flatten();
        layers
            .zip(planes)
            .map(|(&blocks, &p)| product(&[blocks as u128, convs, 9, p as u128, p as u128]))
            .fold(0, u128::saturating_add)
    } else {
        let (depth, dim, ratio) = (
            spec.depth.unwrap_or(0) as u128,
            spec.dim.unwrap_or(0) as u128,
            spec.mlp_ratio.unwrap_or(0) as u128,
        );
        product(&[
            depth,
            4u128.saturating_add(ratio.saturating_mul(2)),
            dim,
            dim,
        ])
    }
}

/// The elements of one input sample.
fn input_elements(spec: &ModelSpec) -> u128 {
    product(
        &spec
            .sample_shape()
            .iter()
            .map(|&d| d as u128)
            .collect::<Vec<_>>(),
    )
}

/// The activation elements one sample keeps for the backward, at least: per time step, one
/// tensor per convolution of a stored-activation ResNet stage (a reversible stage keeps only its
/// output), and for transformers the tokenizer's first map plus per block the `q, k, v` and MLP
/// tensors (a reversible sequence: its output).
fn activation_lower_bound(spec: &ModelSpec, reversible: bool) -> u128 {
    let steps = spec.time_steps as u128;
    let per_step = if spec.arch.is_resnet() {
        resnet_stages(spec)
            .into_iter()
            .map(|(blocks, width, side)| {
                let kept = if reversible {
                    1
                } else {
                    blocks.saturating_mul(2)
                };
                product(&[kept, width, side, side])
            })
            .fold(0, u128::saturating_add)
    } else {
        let dim = spec.dim.unwrap_or(0) as u128;
        let side = spec.img_size as u128;
        let tokens = (side / spec.patch_size.unwrap_or(1).max(1) as u128).saturating_pow(2);
        let tokenizer = product(&[dim / 8, side, side]);
        let per_block = 3u128.saturating_add(spec.mlp_ratio.unwrap_or(0) as u128);
        let blocks = if reversible {
            1
        } else {
            spec.depth.unwrap_or(0) as u128
        };
        tokenizer.saturating_add(product(&[blocks, per_block, tokens, dim]))
    };
    steps.saturating_mul(per_step)
}

/// The memory a command compares its estimate with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Available {
    /// The bytes new allocations can still get.
    pub bytes: u64,
    /// Whose memory: the backend's name (`cpu-f32`: the RAM's `MemAvailable`; `cuda-f32`: the
    /// device's free memory).
    pub backend: String,
}

impl Available {
    /// What `backend` can still allocate; `None` where the system does not say (then no run is
    /// refused).
    pub fn on<B: Compute>(backend: &B) -> Result<Option<Available>> {
        Ok(backend.available_memory_bytes()?.map(|bytes| Available {
            bytes,
            backend: backend.name(),
        }))
    }
}

/// `bytes` for messages, in the largest of GiB, MiB and KiB it fills with one decimal, or in
/// bytes below 1 KiB.
pub fn human(bytes: u128) -> String {
    const UNITS: [(&str, u32); 3] = [("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in UNITS {
        if bytes >= 1 << shift {
            return format!("{:.1} {unit}", bytes as f64 / (1u64 << shift) as f64);
        }
    }
    format!("{bytes} bytes")
}

/// An [`Error::TooLarge`] unless `needed` bytes (what: e.g. "one training step") fit in
/// `available`; `setting` names what the user set (e.g. `--batch 100000000`) and `advice` what
/// to do instead.
pub fn check_fits(
    needed: u128,
    what: &'static str,
    setting: &str,
    available: &Option<Available>,
    advice: &'static str,
) -> Result<()> {
    let Some(available) = available else {
        return Ok(());
    };
    if needed <= u128::from(available.bytes) {
        return Ok(());
    }
    Err(Error::TooLarge {
        setting: setting.into(),
        what,
        needed,
        available: available.bytes,
        backend: available.backend.clone(),
        advice,
    })
}

/// Checks that the parameters of `spec` fit in what `backend` has available.
pub fn check_parameters<B: Compute>(backend: &B, spec: &ModelSpec) -> Result<()> {
    let footprint = Footprint::of(spec, 0, std::mem::size_of::<B::Elem>(), Storage::Reversible);
    check_fits(
        footprint.parameter_bytes,
        "storing the model's parameters",
        &format!("the model (at least {} parameters)", footprint.parameters),
        &Available::on(backend)?,
        "Choose a smaller model: fewer or narrower layers",
    )
}

/// Checks that the parameters of `spec` and a training step at `batch` keeping activations as
/// `storage` says fit in what `backend` has available; `setting` names the flags that chose the
/// sizes (e.g. `--batch 64`).
pub fn check_step<B: Compute>(
    backend: &B,
    spec: &ModelSpec,
    batch: usize,
    storage: Storage,
    setting: &str,
) -> Result<()> {
    check_parameters(backend, spec)?;
    let footprint = Footprint::of(spec, batch, std::mem::size_of::<B::Elem>(), storage);
    check_fits(
        footprint.step_bytes,
        "one training step",
        setting,
        &Available::on(backend)?,
        "Lower --batch or --time-steps, or choose a smaller model or image size",
    )
}

/// [`check_step`] for `replicas` of the `ranks` replicas of a data-parallel run on this device
/// (docs/distributed.md §4): all of them when the ranks are threads of this process (`train
/// --ranks`), one when each rank is a process with its own GPU. Each replica holds its
/// parameters, gradients and all-reduce buffers and trains on its share of the global `batch`.
pub fn check_data_parallel_step<B: Compute>(
    backend: &B,
    spec: &ModelSpec,
    batch: usize,
    ranks: usize,
    replicas: usize,
    setting: &str,
) -> Result<()> {
    check_parameters(backend, spec)?;
    let element = std::mem::size_of::<B::Elem>();
    check_fits(
        Footprint::data_parallel_step_bytes(spec, batch, ranks, replicas, element),
        "one training step",
        setting,
        &Available::on(backend)?,
        match replicas {
            0 | 1 => "Lower --batch or --time-steps, or choose a smaller model or image size",
            _ => "Lower --batch, --ranks or --time-steps, or choose a smaller model or image size",
        },
    )
}

/// Checks that the parameters of `spec` and an evaluation forward at `batch` fit in what
/// `backend` has available; a refusal names `setting` and gives `advice`.
pub fn check_forward<B: Compute>(
    backend: &B,
    spec: &ModelSpec,
    batch: usize,
    setting: &str,
    advice: &'static str,
) -> Result<()> {
    check_parameters(backend, spec)?;
    let footprint = Footprint::of(
        spec,
        batch,
        std::mem::size_of::<B::Elem>(),
        Storage::Reversible,
    );
    check_fits(
        footprint.forward_bytes,
        "one evaluation batch",
        setting,
        &Available::on(backend)?,
        advice,
    )
}

/// What retried allocations (`allocations`, counted: "1 allocation in the epoch") mean: the
/// device's memory pool had to release the blocks it kept to fit them, so the batch barely fits
/// and each retry makes the host wait for the device.
pub fn retry_note(allocations: &str) -> String {
    format!(
        "{allocations} found the device full and got memory once its pool had released the \
         blocks it kept: the batch barely fits, and each such retry makes the host wait for the \
         device"
    )
}

/// The `setting` of a step's check: the batch and the time steps that sized it.
pub fn batch_setting(batch: usize, spec: &ModelSpec) -> String {
    format!("--batch {batch} (time steps {})", spec.time_steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_in_the_largest_unit_they_fill() {
        for (bytes, shown) in [
            (0, "0 bytes"),
            (1023, "1023 bytes"),
            (1024, "1.0 KiB"),
            (114_688, "112.0 KiB"),
            (3 << 20, "3.0 MiB"),
            ((1 << 30) - 1, "1024.0 MiB"),
            (80 << 30, "80.0 GiB"),
        ] {
            assert_eq!(human(bytes), shown);
        }
    }

    #[test]
    fn ranks_add_a_replica_of_the_parameters_and_gradients_each_and_the_all_reduce_buffers() {
        let spec = ModelSpec::preset("revsresnet21").unwrap();
        let one = Footprint::of(&spec, 64, 4, Storage::Reversible);
        assert_eq!(
            Footprint::data_parallel_step_bytes(&spec, 64, 1, 1, 4),
            one.step_bytes
        );
        let replicas = 3 * 2 * one.parameter_bytes;
        let all_reduce = 4 * 2 * one.parameter_bytes;
        assert_eq!(
            Footprint::data_parallel_step_bytes(&spec, 64, 4, 4, 4),
            one.step_bytes + replicas + all_reduce
        );
        let share = Footprint::of(&spec, 16, 4, Storage::Reversible);
        assert_eq!(
            Footprint::data_parallel_step_bytes(&spec, 64, 4, 1, 4),
            share.step_bytes + 2 * share.parameter_bytes
        );
    }

    fn available(bytes: u64) -> Option<Available> {
        Some(Available {
            bytes,
            backend: "cpu-f32".into(),
        })
    }

    #[test]
    fn a_need_above_what_is_available_is_refused_with_both_figures() {
        assert!(check_fits(100, "one step", "--batch 2", &available(100), "lower it").is_ok());
        assert!(check_fits(u128::MAX, "one step", "--batch 2", &None, "lower it").is_ok());
        let message = check_fits(
            3 << 30,
            "one step",
            "--batch 9",
            &available(1 << 30),
            "Lower it",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            message,
            "--batch 9: one step needs at least 3.0 GiB (3221225472 bytes, a lower bound), but \
             1.0 GiB is available on cpu-f32 (the RAM's MemAvailable on the CPU, free device \
             memory on CUDA). Lower it"
        );
    }

    #[test]
    fn the_estimate_grows_with_the_batch_and_saturates_instead_of_wrapping() {
        let spec = ModelSpec::preset("revsresnet21").unwrap();
        let one = Footprint::of(&spec, 1, 4, Storage::Reversible);
        let two = Footprint::of(&spec, 2, 4, Storage::Reversible);
        assert!(two.step_bytes > one.step_bytes && one.step_bytes > one.parameter_bytes);
        let stored = Footprint::of(&spec, 1, 4, Storage::StoredActivations);
        assert!(
            stored.step_bytes > one.step_bytes,
            "stored activations keep more"
        );
        let mut huge = spec.clone();
        huge.planes = Some(vec![usize::MAX; 4]);
        huge.img_size = usize::MAX;
        let footprint = Footprint::of(&huge, usize::MAX, 8, Storage::StoredActivations);
        assert_eq!(footprint.step_bytes, u128::MAX);
    }
}
