//! The CUDA C++ sources of `gpu/kernels/`, embedded in the binary and compiled by NVRTC at run
//! time. Each file is the twin of the `reference/src/ops/` module of the same name, except
//! `precision.cu`, whose twin is `reference/src/contract/precision.rs` (`Precision::round`), and
//! `spike_bits.cu`, a storage format of the CUDA backend's contexts with no twin.

/// One kernel file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSource {
    /// The file name under `gpu/kernels/`.
    pub file: &'static str,
    pub source: &'static str,
    /// Every `extern "C"` kernel the file defines (gpu/tests/nvrtc_kernels.rs checks the list
    /// against the compiled PTX's entries, both ways; the emulator's build, that each is
    /// registered).
    pub functions: &'static [&'static str],
}

/// `gpu/kernels/neuron.cu`: fused multi-step IF/LIF forward and backward (docs/neurons.md §2).
pub const NEURON: KernelSource = KernelSource {
    file: "neuron.cu",
    source: include_str!("../kernels/neuron.cu"),
    functions: &[
        "neuron_backward_f32",
        "neuron_backward_f32_from_bf16",
        "neuron_backward_f32_from_fp16",
        "neuron_backward_f64",
        "neuron_backward_from_input_f32",
        "neuron_backward_from_input_f32_from_bf16",
        "neuron_backward_from_input_f32_from_fp16",
        "neuron_backward_from_input_f64",
        "neuron_backward_from_input_in_place_f32",
        "neuron_backward_from_input_in_place_f64",
        "neuron_backward_from_normalised_f32",
        "neuron_backward_from_normalised_f32_from_bf16",
        "neuron_backward_from_normalised_f32_from_bf16_input_bf16",
        "neuron_backward_from_normalised_f32_from_fp16",
        "neuron_backward_from_normalised_f32_from_fp16_input_fp16",
        "neuron_backward_from_normalised_f32_input_bf16",
        "neuron_backward_from_normalised_f32_input_fp16",
        "neuron_backward_from_normalised_f64",
        "neuron_backward_from_normalised_in_place_f32",
        "neuron_backward_from_normalised_in_place_f32_input_bf16",
        "neuron_backward_from_normalised_in_place_f32_input_fp16",
        "neuron_backward_from_normalised_in_place_f64",
        "neuron_backward_in_place_f32",
        "neuron_backward_in_place_f64",
        "neuron_backward_over_potentials_f32_from_bf16",
        "neuron_backward_over_potentials_f32_from_fp16",
        "neuron_fire_f32",
        "neuron_fire_f64",
        "neuron_fire_from_normalised_f32",
        "neuron_fire_from_normalised_f32_input_bf16",
        "neuron_fire_from_normalised_f32_input_fp16",
        "neuron_fire_from_normalised_f64",
        "neuron_fire_in_place_f32",
        "neuron_fire_in_place_f64",
        "neuron_forward_f32",
        "neuron_forward_f64",
        "neuron_forward_in_place_f32",
        "neuron_forward_in_place_f64",
    ],
};

/// `gpu/kernels/conv.cu`: im2col and the col2im gather of the convolutions (docs/architectures.md §4.0).
pub const CONV: KernelSource = KernelSource {
    file: "conv.cu",
    source: include_str!("../kernels/conv.cu"),
    functions: &["im2col_f32", "im2col_f64", "col2im_f32", "col2im_f64"],
};

/// `gpu/kernels/linear.cu`: the bias broadcast and bias-gradient reduction of the linear layers
/// and convolutions (docs/architectures.md §4.0).
pub const LINEAR: KernelSource = KernelSource {
    file: "linear.cu",
    source: include_str!("../kernels/linear.cu"),
    functions: &[
        "bias_fill_f32",
        "bias_fill_f64",
        "bias_grad_f32",
        "bias_grad_f32_from_bf16",
        "bias_grad_f32_from_fp16",
        "bias_grad_f64",
    ],
};

/// `gpu/kernels/batch_norm.cu`: BatchNorm statistics, normalisation, backward and running
/// statistics with deterministic two-pass per-channel reductions (docs/conventions.md §1).
pub const BATCH_NORM: KernelSource = KernelSource {
    file: "batch_norm.cu",
    source: include_str!("../kernels/batch_norm.cu"),
    functions: &[
        "bn_backward_input_f32",
        "bn_backward_input_f32_from_bf16",
        "bn_backward_input_f32_from_bf16_to_bf16",
        "bn_backward_input_f32_from_bf16_to_fp16",
        "bn_backward_input_f32_from_fp16",
        "bn_backward_input_f32_from_fp16_to_bf16",
        "bn_backward_input_f32_from_fp16_to_fp16",
        "bn_backward_input_f32_to_bf16",
        "bn_backward_input_f32_to_fp16",
        "bn_backward_input_f64",
        "bn_backward_input_in_place_f32_from_bf16",
        "bn_backward_input_in_place_f32_from_bf16_avg_pooled",
        "bn_backward_input_in_place_f32_from_fp16",
        "bn_backward_input_in_place_f32_from_fp16_avg_pooled",
        "bn_eval_constants_f32",
        "bn_eval_constants_f64",
        "bn_grad_finalize_f32",
        "bn_grad_finalize_f64",
        "bn_grad_partial_f32",
        "bn_grad_partial_f32_from_bf16",
        "bn_grad_partial_f32_from_bf16_avg_pooled",
        "bn_grad_partial_f32_from_fp16",
        "bn_grad_partial_f32_from_fp16_avg_pooled",
        "bn_grad_partial_f64",
        "bn_moments_finalize_f32",
        "bn_moments_finalize_f64",
        "bn_moments_partial_f32",
        "bn_moments_partial_f32_from_bf16",
        "bn_moments_partial_f32_from_fp16",
        "bn_moments_partial_f64",
        "bn_normalise_f32",
        "bn_normalise_f32_from_bf16",
        "bn_normalise_f32_from_fp16",
        "bn_normalise_f64",
        "bn_normalise_onto_f32",
        "bn_normalise_onto_f32_from_bf16",
        "bn_normalise_onto_f32_from_fp16",
        "bn_normalise_onto_f64",
        "bn_update_running_f32",
        "bn_update_running_f64",
    ],
};

/// `gpu/kernels/pool.cu`: average and max pooling forward and backward (docs/conventions.md §1; docs/choices.md §A7).
pub const POOL: KernelSource = KernelSource {
    file: "pool.cu",
    source: include_str!("../kernels/pool.cu"),
    functions: &[
        "avg_pool_forward_f32",
        "avg_pool_forward_f64",
        "avg_pool_forward_from_normalised_f32",
        "avg_pool_forward_from_normalised_f32_input_bf16",
        "avg_pool_forward_from_normalised_f32_input_fp16",
        "avg_pool_forward_from_normalised_f64",
        "avg_pool_backward_f32",
        "avg_pool_backward_f64",
        "max_pool_forward_f32",
        "max_pool_forward_f64",
        "max_pool_backward_f32",
        "max_pool_backward_f64",
    ],
};

/// `gpu/kernels/tensor.cu`: strided copies (permute, narrow, concat, repeat, broadcasts),
/// elementwise arithmetic, quantisation, sums over time and axes, the fingerprint and the folds
/// of a device word, the count of non-finite elements.
pub const TENSOR: KernelSource = KernelSource {
    file: "tensor.cu",
    source: include_str!("../kernels/tensor.cu"),
    functions: &[
        "add_f32",
        "add_f64",
        "add_in_place_f32",
        "add_in_place_f64",
        "count_non_finite_f32",
        "count_non_finite_f64",
        "count_unequal",
        "fingerprint_f32",
        "fingerprint_f64",
        "fold_pending_sums",
        "mean_axes_f32",
        "mean_axes_f64",
        "quantize_f32",
        "quantize_f64",
        "scale_f32",
        "scale_f64",
        "strided_copy_f32",
        "strided_copy_f64",
        "strided_divide_f32",
        "strided_divide_f64",
        "sub_f32",
        "sub_f64",
        "sub_in_place_f32",
        "sub_in_place_f64",
        "sum_leading_f32",
        "sum_leading_f64",
    ],
};

/// `gpu/kernels/loss.cu`: softmax cross-entropy against labels or soft targets, and its backward
/// (docs/recipes.md §5).
pub const LOSS: KernelSource = KernelSource {
    file: "loss.cu",
    source: include_str!("../kernels/loss.cu"),
    functions: &[
        "cross_entropy_labels_f32",
        "cross_entropy_labels_f64",
        "cross_entropy_soft_f32",
        "cross_entropy_soft_f64",
        "cross_entropy_backward_f32",
        "cross_entropy_backward_f64",
        "mean_of_rows_f32",
        "mean_of_rows_f64",
    ],
};

/// `gpu/kernels/optim.cu`: fused SGD-with-momentum and AdamW steps over many tensors per
/// launch (docs/recipes.md §5).
pub const OPTIM: KernelSource = KernelSource {
    file: "optim.cu",
    source: include_str!("../kernels/optim.cu"),
    functions: &[
        "sgd_step_foreach_f32",
        "sgd_step_foreach_f64",
        "adamw_step_foreach_f32",
        "adamw_step_foreach_f64",
    ],
};

/// `gpu/kernels/precision.cu`: the f32 -> bf16 / fp16 conversion of the GEMM operands under
/// `--precision bf16` or `fp16`, the round trips back to f32, and the widening of the
/// convolutions' 16-bit outputs (docs/precision.md).
pub const PRECISION: KernelSource = KernelSource {
    file: "precision.cu",
    source: include_str!("../kernels/precision.cu"),
    functions: &[
        "to_bf16",
        "to_fp16",
        "round_bf16",
        "round_fp16",
        "from_bf16",
        "from_fp16",
        "add_from_bf16",
        "add_from_fp16",
    ],
};

/// `gpu/kernels/spike_bits.cu`: spikes kept one bit each by the convolutions' contexts, and
/// widened back to the element type or to 16-bit patterns (docs/precision.md §"Spike bits").
pub const SPIKE_BITS: KernelSource = KernelSource {
    file: "spike_bits.cu",
    source: include_str!("../kernels/spike_bits.cu"),
    functions: &[
        "to_spike_bits_f32",
        "to_spike_bits_f64",
        "from_spike_bits_f32",
        "from_spike_bits_f64",
        "from_spike_bits_bf16",
        "from_spike_bits_fp16",
    ],
};

/// A header the kernel files include (`#include "name"`), handed to NVRTC with every file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelHeader {
    pub name: &'static str,
    pub source: &'static str,
}

/// `gpu/kernels/batch_norm.cuh`: a BatchNorm's per-channel map, the one expression of its output
/// (included by batch_norm.cu, which writes it, and neuron.cu, which makes it again).
pub const BATCH_NORM_MAP: KernelHeader = KernelHeader {
    name: "batch_norm.cuh",
    source: include_str!("../kernels/batch_norm.cuh"),
};

/// `gpu/kernels/pool.cuh`: a pooling's windows and the average pool's input gradient at one
/// element (included by pool.cu, which writes it, and batch_norm.cu, which makes it again).
pub const POOL_WINDOWS: KernelHeader = KernelHeader {
    name: "pool.cuh",
    source: include_str!("../kernels/pool.cuh"),
};

/// `gpu/kernels/half.cuh`: the bf16 and fp16 bit patterns, and the widening to `double` of an
/// element of any stored type (included by precision.cu, batch_norm.cu, neuron.cu, linear.cu
/// and batch_norm.cuh, so by pool.cu too).
pub const HALF: KernelHeader = KernelHeader {
    name: "half.cuh",
    source: include_str!("../kernels/half.cuh"),
};

/// `gpu/kernels/fingerprint.cuh`: the spike fingerprint's element terms and their sum (included
/// by tensor.cu and neuron.cu).
pub const FINGERPRINT: KernelHeader = KernelHeader {
    name: "fingerprint.cuh",
    source: include_str!("../kernels/fingerprint.cuh"),
};

/// `gpu/kernels/rounding.cuh`: arithmetic through the round-to-nearest intrinsics, never
/// contracted (included by tensor.cu, optim.cu and batch_norm.cu).
pub const ROUNDING: KernelHeader = KernelHeader {
    name: "rounding.cuh",
    source: include_str!("../kernels/rounding.cuh"),
};

/// `gpu/kernels/foreach.cuh`: the chunks of a launch over a table of tensors (included by
/// optim.cu and tensor.cu).
pub const FOREACH: KernelHeader = KernelHeader {
    name: "foreach.cuh",
    source: include_str!("../kernels/foreach.cuh"),
};

/// Every header, handed to NVRTC by name with each kernel file.
pub const HEADERS: &[KernelHeader] = &[
    BATCH_NORM_MAP,
    POOL_WINDOWS,
    HALF,
    FINGERPRINT,
    ROUNDING,
    FOREACH,
];

/// Every kernel file, for the NVRTC compile check.
pub const ALL: &[KernelSource] = &[
    NEURON, CONV, LINEAR, BATCH_NORM, POOL, TENSOR, LOSS, OPTIM, PRECISION, SPIKE_BITS,
];
