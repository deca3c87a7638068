//! The CPU reference backend: [`Backend`] and [`Compute`] over `ndarray`, every kernel in
//! [`crate::ops`], one impl block per op trait, in the order of [`Backend`]'s supertraits.
//!
//! Deterministic by construction: every reduction runs in a fixed order that does not depend on
//! the number of rayon threads, so outputs and gradients are bitwise identical with 1 or N threads
//! (docs/design.md principle 4). Ops run on the current rayon pool; run them inside
//! `ThreadPool::install` to choose the thread count.
//!
//! A backend holds the [`Precision`] it emulates (docs/precision.md): its GEMM ops (convolution,
//! linear, batched matmul) round their operands with [`ops::tensor::round_to_precision`] and
//! call the same kernels, which accumulate in the element type; under `bf16` and `fp16` the
//! convolutions also round their outputs (`Precision::stores_conv_outputs`); every other op is
//! unaffected. Under `f32` nothing is rounded and no operand is copied.

use std::marker::PhantomData;

use ndarray::{ArcArray, IxDyn};

use crate::contract::{
    AdamWParams, AdamWState, BatchNormGrads, BatchNormParams, BatchNormTrainOutput, BatchStats,
    Conv2dGrads, Conv2dParams, Element, LinearGrads, NeuronConfig, Pool2dParams, Precision, Result,
    RunningStats, SgdParams, SgdState, fingerprint,
};
use crate::prelude::*;
use crate::{memory, ops};

/// A CPU tensor: a shared, row-major `ndarray`; `clone` shares the data.
pub type CpuTensor<E> = ArcArray<E, IxDyn>;

/// The CPU reference backend in element type `E` (`Cpu<f64>` for truth, `Cpu<f32>` for speed),
/// emulating a [`Precision`] in its GEMM ops.
#[derive(Debug)]
pub struct Cpu<E> {
    precision: Precision,
    element: PhantomData<fn() -> E>,
}

impl<E> Cpu<E> {
    /// The backend in full precision: no operand is rounded.
    pub fn new() -> Self {
        Self::with_precision(Precision::F32)
    }

    /// The backend emulating `precision`: convolutions, linear layers and batched matmuls round
    /// their operands to its format, forward and backward (docs/precision.md).
    pub fn with_precision(precision: Precision) -> Self {
        Cpu {
            precision,
            element: PhantomData,
        }
    }
}

impl<E: Element> Cpu<E> {
    /// `x` rounded to this backend's precision (shared when already exact).
    fn operand(&self, x: &CpuTensor<E>) -> CpuTensor<E> {
        ops::tensor::round_to_precision(x, self.precision)
    }
}

impl<E> Default for Cpu<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E> Clone for Cpu<E> {
    fn clone(&self) -> Self {
        Self::with_precision(self.precision)
    }
}

impl<E: Element> TensorOps for Cpu<E> {
    type Elem = E;
    type Tensor = CpuTensor<E>;
    type Kept = CpuTensor<E>;

    fn name(&self) -> String {
        format!("cpu-{}", E::DTYPE)
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn tensor_from_vec(&self, shape: &[usize], data: Vec<E>) -> Result<CpuTensor<E>> {
        ops::tensor::from_vec(shape, data)
    }

    fn to_vec(&self, x: &CpuTensor<E>) -> Result<Vec<E>> {
        Ok(ops::tensor::to_vec(x))
    }

    fn shape(&self, x: &CpuTensor<E>) -> Vec<usize> {
        x.shape().to_vec()
    }

    fn zeros(&self, shape: &[usize]) -> Result<CpuTensor<E>> {
        Ok(ops::tensor::zeros(shape))
    }

    fn reshape(&self, x: &CpuTensor<E>, shape: &[usize]) -> Result<CpuTensor<E>> {
        ops::tensor::reshape(x, shape)
    }

    fn permute(&self, x: &CpuTensor<E>, axes: &[usize]) -> Result<CpuTensor<E>> {
        ops::tensor::permute(x, axes)
    }

    fn keep(&self, x: &CpuTensor<E>) -> Result<CpuTensor<E>> {
        Ok(x.clone())
    }

    fn kept(&self, kept: &CpuTensor<E>) -> Result<CpuTensor<E>> {
        Ok(kept.clone())
    }

    fn add(&self, a: &CpuTensor<E>, b: &CpuTensor<E>) -> Result<CpuTensor<E>> {
        ops::tensor::add(a, b)
    }

    fn sub(&self, a: &CpuTensor<E>, b: &CpuTensor<E>) -> Result<CpuTensor<E>> {
        ops::tensor::sub(a, b)
    }

    fn scale(&self, x: &CpuTensor<E>, factor: E) -> Result<CpuTensor<E>> {
        ops::tensor::scale(x, factor)
    }

    fn narrow(
        &self,
        x: &CpuTensor<E>,
        axis: usize,
        start: usize,
        len: usize,
    ) -> Result<CpuTensor<E>> {
        ops::tensor::narrow(x, axis, start, len)
    }

    fn concat(&self, parts: &[&CpuTensor<E>], axis: usize) -> Result<CpuTensor<E>> {
        ops::tensor::concat(parts, axis)
    }

    fn repeat_leading(&self, x: &CpuTensor<E>, times: usize) -> Result<CpuTensor<E>> {
        ops::tensor::repeat_leading(x, times)
    }

    fn quantize(&self, x: &CpuTensor<E>, k: i32) -> Result<CpuTensor<E>> {
        ops::tensor::quantize(x, k)
    }

    fn count_non_finite(&self, tensors: &[&CpuTensor<E>]) -> Result<u64> {
        Ok(ops::tensor::count_non_finite(tensors))
    }

    fn sum_leading(&self, x: &CpuTensor<E>) -> Result<CpuTensor<E>> {
        ops::tensor::sum_leading(x)
    }

    fn mean_axes(&self, x: &CpuTensor<E>, axes: &[usize]) -> Result<CpuTensor<E>> {
        ops::tensor::mean_axes(x, axes)
    }

    fn mean_axes_backward(
        &self,
        grad_y: &CpuTensor<E>,
        input_shape: &[usize],
        axes: &[usize],
    ) -> Result<CpuTensor<E>> {
        ops::tensor::mean_axes_backward(grad_y, input_shape, axes)
    }
}

impl<E: Element> WordOps for Cpu<E> {
    type Word = u64;

    fn fingerprint(&self, x: &CpuTensor<E>) -> Result<u64> {
        Ok(ops::tensor::fingerprint(x))
    }

    fn zero_word(&self) -> Result<u64> {
        Ok(0)
    }

    fn fold_fingerprint(&self, word: &mut u64, x: &CpuTensor<E>) -> Result<()> {
        *word = fingerprint::fold(*word, ops::tensor::fingerprint(x));
        Ok(())
    }

    fn count_unequal(&self, count: &mut u64, a: &u64, b: &u64) -> Result<()> {
        *count += u64::from(a != b);
        Ok(())
    }

    fn read_word(&self, word: &u64) -> Result<u64> {
        Ok(*word)
    }
}

impl<E: Element> NeuronOps for Cpu<E> {
    type NeuronContext = ops::neuron::NeuronContext<E>;

    fn neuron_forward(
        &self,
        x: CpuTensor<E>,
        config: &NeuronConfig,
    ) -> Result<(CpuTensor<E>, Self::NeuronContext)> {
        ops::neuron::forward(&x, config)
    }

    fn neuron_forward_keeping_input(
        &self,
        x: CpuTensor<E>,
        config: &NeuronConfig,
    ) -> Result<(CpuTensor<E>, Self::NeuronContext)> {
        ops::neuron::forward_keeping_input(&x, config)
    }

    fn neuron_backward(
        &self,
        grad_spikes: CpuTensor<E>,
        context: &Self::NeuronContext,
        config: &NeuronConfig,
    ) -> Result<CpuTensor<E>> {
        ops::neuron::backward(&grad_spikes, context, config)
    }
}

impl<E: Element> ConvOps for Cpu<E> {
    type Conv2dContext = ops::conv::Conv2dContext<E>;

    fn conv2d_forward(
        &self,
        x: &CpuTensor<E>,
        weight: &CpuTensor<E>,
        bias: Option<&CpuTensor<E>>,
        params: Conv2dParams,
    ) -> Result<(CpuTensor<E>, Self::Conv2dContext)> {
        let (x, weight) = (self.operand(x), self.operand(weight));
        if self.precision.stores_conv_outputs() {
            ops::conv::forward_stored(&x, &weight, bias, params, self.precision)
        } else {
            ops::conv::forward(&x, &weight, bias, params)
        }
    }

    fn conv2d_backward(
        &self,
        grad_y: CpuTensor<E>,
        context: &Self::Conv2dContext,
    ) -> Result<Conv2dGrads<CpuTensor<E>>> {
        let grads = ops::conv::backward(&self.operand(&grad_y), context)?;
        if !self.precision.stores_conv_outputs() {
            return Ok(grads);
        }
        Ok(Conv2dGrads {
            input: self.operand(&grads.input),
            weight: self.operand(&grads.weight),
            bias: grads.bias,
        })
    }
}

impl<E: Element> BatchNormOps for Cpu<E> {
    type BatchNormContext = ops::batch_norm::BatchNormContext<E>;

    fn batch_norm_train_forward(
        &self,
        x: &CpuTensor<E>,
        gamma: &CpuTensor<E>,
        beta: &CpuTensor<E>,
        params: BatchNormParams,
    ) -> Result<BatchNormTrainOutput<CpuTensor<E>, Self::BatchNormContext>> {
        ops::batch_norm::train_forward(x, gamma, beta, params)
    }

    fn batch_norm_train_output(
        &self,
        context: &Self::BatchNormContext,
        beta: &CpuTensor<E>,
    ) -> Result<CpuTensor<E>> {
        ops::batch_norm::train_output(context, beta)
    }

    fn batch_norm_eval_forward(
        &self,
        x: &CpuTensor<E>,
        gamma: &CpuTensor<E>,
        beta: &CpuTensor<E>,
        running: &RunningStats<CpuTensor<E>>,
        params: BatchNormParams,
    ) -> Result<(CpuTensor<E>, Self::BatchNormContext)> {
        ops::batch_norm::eval_forward(x, gamma, beta, running, params)
    }

    fn batch_norm_backward(
        &self,
        grad_y: &CpuTensor<E>,
        context: &Self::BatchNormContext,
    ) -> Result<BatchNormGrads<CpuTensor<E>>> {
        ops::batch_norm::backward(grad_y, context)
    }

    fn update_running_stats(
        &self,
        running: &RunningStats<CpuTensor<E>>,
        batch: &BatchStats<CpuTensor<E>>,
        params: BatchNormParams,
    ) -> Result<RunningStats<CpuTensor<E>>> {
        ops::batch_norm::update_running_stats(running, batch, params)
    }
}

impl<E: Element> PoolOps for Cpu<E> {
    type MaxPoolContext = ops::pool::MaxPoolContext;

    fn avg_pool2d_forward(&self, x: &CpuTensor<E>, params: Pool2dParams) -> Result<CpuTensor<E>> {
        ops::pool::avg_forward(x, params)
    }

    fn avg_pool2d_backward(
        &self,
        grad_y: &CpuTensor<E>,
        input_shape: &[usize],
        params: Pool2dParams,
    ) -> Result<CpuTensor<E>> {
        ops::pool::avg_backward(grad_y, input_shape, params)
    }

    fn max_pool2d_forward(
        &self,
        x: &CpuTensor<E>,
        params: Pool2dParams,
    ) -> Result<(CpuTensor<E>, Self::MaxPoolContext)> {
        ops::pool::max_forward(x, params)
    }

    fn max_pool2d_backward(
        &self,
        grad_y: &CpuTensor<E>,
        context: &Self::MaxPoolContext,
    ) -> Result<CpuTensor<E>> {
        ops::pool::max_backward(grad_y, context)
    }
}

/// The chains run their ops in turn (the defaults).
impl<E: Element> ConvBatchNormOps for Cpu<E> {}

impl<E: Element> LinearOps for Cpu<E> {
    fn linear_forward(
        &self,
        x: &CpuTensor<E>,
        weight: &CpuTensor<E>,
        bias: Option<&CpuTensor<E>>,
    ) -> Result<CpuTensor<E>> {
        ops::linear::forward(&self.operand(x), &self.operand(weight), bias)
    }

    fn linear_backward(
        &self,
        grad_y: &CpuTensor<E>,
        x: &CpuTensor<E>,
        weight: &CpuTensor<E>,
        has_bias: bool,
    ) -> Result<LinearGrads<CpuTensor<E>>> {
        ops::linear::backward(
            &self.operand(grad_y),
            &self.operand(x),
            &self.operand(weight),
            has_bias,
        )
    }

    fn batched_matmul(
        &self,
        a: &CpuTensor<E>,
        b: &CpuTensor<E>,
        transpose_a: bool,
        transpose_b: bool,
    ) -> Result<CpuTensor<E>> {
        ops::linear::batched_matmul(&self.operand(a), &self.operand(b), transpose_a, transpose_b)
    }
}

/// The products run in turn (the defaults).
impl<E: Element> AttentionOps for Cpu<E> {}

impl<E: Element> LossOps for Cpu<E> {
    type CrossEntropyContext = ops::loss::CrossEntropyContext<E>;

    fn cross_entropy_loss(
        &self,
        logits: &CpuTensor<E>,
        labels: &[usize],
    ) -> Result<(CpuTensor<E>, Self::CrossEntropyContext)> {
        let (loss, context) = ops::loss::cross_entropy_forward(logits, labels)?;
        Ok((self.tensor_from_vec(&[1], vec![loss])?, context))
    }

    fn soft_cross_entropy_loss(
        &self,
        logits: &CpuTensor<E>,
        targets: &CpuTensor<E>,
    ) -> Result<(CpuTensor<E>, Self::CrossEntropyContext)> {
        let (loss, context) = ops::loss::soft_cross_entropy_forward(logits, targets)?;
        Ok((self.tensor_from_vec(&[1], vec![loss])?, context))
    }

    fn cross_entropy_backward(
        &self,
        context: &Self::CrossEntropyContext,
        grad_loss: E,
    ) -> Result<CpuTensor<E>> {
        ops::loss::backward(context, grad_loss)
    }
}

impl<E: Element> OptimOps for Cpu<E> {
    fn sgd_step(
        &self,
        param: &CpuTensor<E>,
        grad: &CpuTensor<E>,
        momentum_buffer: Option<&CpuTensor<E>>,
        params: SgdParams,
    ) -> Result<SgdState<CpuTensor<E>>> {
        ops::optim::sgd_step(param, grad, momentum_buffer, params)
    }

    fn adamw_step(
        &self,
        param: &CpuTensor<E>,
        grad: &CpuTensor<E>,
        first_moment: &CpuTensor<E>,
        second_moment: &CpuTensor<E>,
        params: AdamWParams,
        step: u64,
    ) -> Result<AdamWState<CpuTensor<E>>> {
        ops::optim::adamw_step(param, grad, first_moment, second_moment, params, step)
    }
}

/// The CPU's ops return when done; its memory is the process's heap, counted when the
/// [`memory::CountingAllocator`] is installed.
impl<E: Element> Compute for Cpu<E> {
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn memory_is_counted(&self) -> bool {
        memory::stats().is_counting
    }

    fn reset_peak_memory(&self) {
        memory::reset_peak();
    }

    fn peak_memory_bytes(&self) -> usize {
        memory::stats().peak_bytes
    }

    fn available_memory_bytes(&self) -> Result<Option<u64>> {
        Ok(memory::available_ram_bytes())
    }

    fn transfer_counts(&self) -> Option<crate::contract::TransferCounts> {
        None
    }
}
