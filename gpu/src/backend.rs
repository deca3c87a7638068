//! [`Cuda`]: the op contract (`revsnn_reference::contract`: [`Backend`] and [`Compute`]) on one
//! CUDA device. Each op is a thin call into `crate::ops::<family>::<name>`, the twin of the CPU
//! kernel of the same path (`reference/src/ops/<family>`), so a reader who finds an op on one
//! side finds it on the other (docs/design.md). One impl block per op trait, in the order of
//! [`Backend`]'s supertraits.

use std::marker::PhantomData;
use std::sync::Arc;

use revsnn_reference::contract::shapes::time_split;
use revsnn_reference::contract::{
    AdamWParams, AdamWState, AdamWTensors, AttentionGrads, AttentionKept, AvgPoolGrad,
    BackendNeuronSource, BatchNormAffine, BatchNormGrads, BatchNormParams, BatchNormTrainOutput,
    BatchStats, Conv2dGrads, Conv2dParams, ConvBatchNormGrads, ConvKind, LinearGrads,
    NeuronBackward, NeuronConfig, NeuronFire, NeuronSource, Onto, Pool2dParams, Precision, Result,
    RunningStats, SgdParams, SgdState, SgdTensors, TransferCounts, attention_backward_in_turn,
    attention_forward_in_turn, avg_pool_conv_batch_norm_backward_in_turn,
    conv_batch_norm_backward_in_turn, neuron_backward_from_source_in_turn, neuron_context,
    spiking_conv_batch_norm_backward_in_turn,
};
use revsnn_reference::prelude::*;

use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::memory::DeviceMemoryStats;
use crate::ops::batch_norm::BatchNormContext;
use crate::ops::precision::HalfBits;
use crate::ops::saved_input::SavedInput;
use crate::ops::{self, GpuElement};
use crate::tensor::CudaTensor;
use crate::word::DeviceWord;

/// The CUDA backend in element type `E` on one device. Cloning shares the device.
pub struct Cuda<E> {
    device: Arc<GpuDevice>,
    element: PhantomData<fn() -> E>,
}

impl<E: GpuElement> Cuda<E> {
    /// The backend on device 0, or why there is none (no driver, no device: see gpu/README.md).
    pub fn open() -> std::result::Result<Self, GpuError> {
        Ok(Self::on(Arc::new(GpuDevice::open()?)))
    }

    /// The backend on an open device.
    pub fn on(device: Arc<GpuDevice>) -> Self {
        Cuda {
            device,
            element: PhantomData,
        }
    }

    pub fn device(&self) -> &Arc<GpuDevice> {
        &self.device
    }

    /// Live and peak bytes of this device's tensors.
    pub fn memory(&self) -> DeviceMemoryStats {
        self.device.memory()
    }

    /// The backward of the neuron whose spikes a 16-bit spiking convolution read, from that
    /// convolution's `dx` as 16-bit patterns of the flat shape `[T B, ...]`: from a BatchNorm's
    /// output made again inside the kernel where it can be, else from the context `neuron.source`
    /// keeps or makes again (`NeuronOps::neuron_backward_from_source` with 16-bit `dL/ds`).
    fn neuron_backward_from_half(
        &self,
        grad_spikes: HalfBits,
        flat_shape: &[usize],
        neuron: NeuronBackward<'_, BackendNeuronSource<'_, Self>>,
    ) -> std::result::Result<CudaTensor<E>, GpuError> {
        let (device, config, steps) = (&*self.device, neuron.config, neuron.time_steps);
        let shape = time_split(flat_shape, steps)?;
        match charged_in_kernel(neuron.source, steps) {
            Ok((norm, beta)) => ops::neuron::backward_from_half_normalised(
                device,
                grad_spikes,
                &shape,
                (norm, &beta),
                config,
            ),
            Err(source) => {
                let context = neuron_context(self, source, config, steps).map_err(GpuError::Op)?;
                ops::neuron::backward_from_half(device, grad_spikes, &shape, context, config)
            }
        }
    }
}

/// A BatchNorm's context and shift, from which a neuron's input is made again.
type NormalisedSource<'a, E> = (&'a BatchNormContext<E>, CudaTensor<E>);

/// The BatchNorm context and shift from which a neuron's backward kernel makes its input again
/// and charges `h` in each thread's own memory (docs/neurons.md §2.4.2): `source`'s, when it is
/// a BatchNorm's output and `time_steps` fits that memory
/// ([`ops::neuron::charges_from_normalised`]); else `source` back, whose context is kept or
/// made again in turn.
fn charged_in_kernel<'a, E: GpuElement>(
    source: BackendNeuronSource<'a, Cuda<E>>,
    time_steps: usize,
) -> std::result::Result<NormalisedSource<'a, E>, BackendNeuronSource<'a, Cuda<E>>> {
    match source {
        NeuronSource::Normalised { norm, beta }
            if ops::neuron::charges_from_normalised(time_steps) =>
        {
            Ok((norm, beta))
        }
        source => Err(source),
    }
}

impl<E> Clone for Cuda<E> {
    fn clone(&self) -> Self {
        Cuda {
            device: self.device.clone(),
            element: PhantomData,
        }
    }
}

impl<E> std::fmt::Debug for Cuda<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Cuda<{}>({})",
            std::any::type_name::<E>(),
            self.device.info.name
        )
    }
}

impl<E: GpuElement> TensorOps for Cuda<E> {
    type Elem = E;
    type Tensor = CudaTensor<E>;
    type Kept = SavedInput<E>;

    fn name(&self) -> String {
        format!("cuda-{}", E::DTYPE)
    }

    fn precision(&self) -> Precision {
        self.device.precision()
    }

    fn tensor_from_vec(&self, shape: &[usize], data: Vec<E>) -> Result<CudaTensor<E>> {
        Ok(ops::tensor::from_vec(&self.device, shape, &data)?)
    }

    fn to_vec(&self, x: &CudaTensor<E>) -> Result<Vec<E>> {
        Ok(ops::tensor::to_vec(&self.device, x)?)
    }

    fn shape(&self, x: &CudaTensor<E>) -> Vec<usize> {
        x.shape().to_vec()
    }

    fn zeros(&self, shape: &[usize]) -> Result<CudaTensor<E>> {
        Ok(ops::tensor::zeros(&self.device, shape)?)
    }

    fn reshape(&self, x: &CudaTensor<E>, shape: &[usize]) -> Result<CudaTensor<E>> {
        Ok(ops::tensor::reshape(x, shape)?)
    }

    fn permute(&self, x: &CudaTensor<E>, axes: &[usize]) -> Result<CudaTensor<E>> {
        Ok(ops::tensor::permute(&self.device, x, axes)?)
    }

    fn keep(&self, x: &CudaTensor<E>) -> Result<SavedInput<E>> {
        Ok(SavedInput::compact(&self.device, x)?)
    }

    fn kept(&self, kept: &SavedInput<E>) -> Result<CudaTensor<E>> {
        Ok(kept.full(&self.device)?)
    }

    fn add(&self, a: &CudaTensor<E>, b: &CudaTensor<E>) -> Result<CudaTensor<E>> {
        Ok(ops::tensor::add(&self.device, a, b)?)
    }

    fn sub(&self, a: &CudaTensor<E>, b: &CudaTensor<E>) -> Result<CudaTensor<E>> {
        Ok(ops::tensor::sub(&self.device, a, b)?)
    }

    fn add_reusing(&self, a: &CudaTensor<E>, b: CudaTensor<E>) -> Result<CudaTensor<E>> {
        Ok(ops::tensor::add_reusing(&self.device, a, b)?)
    }

    fn sub_reusing(&self, a: &CudaTensor<E>, b: CudaTensor<E>) -> Result<CudaTensor<E>> {
        Ok(ops::tensor::sub_reusing(&self.device, a, b)?)
    }

    fn scale(&self, x: &CudaTensor<E>, factor: E) -> Result<CudaTensor<E>> {
        Ok(ops::tensor::scale(&self.device, x, factor)?)
    }

    fn narrow(
        &self,
        x: &CudaTensor<E>,
        axis: usize,
        start: usize,
        len: usize,
    ) -> Result<CudaTensor<E>> {
        Ok(ops::tensor::narrow(&self.device, x, axis, start, len)?)
    }

    fn concat(&self, parts: &[&CudaTensor<E>], axis: usize) -> Result<CudaTensor<E>> {
        Ok(ops::tensor::concat(&self.device, parts, axis)?)
    }

    fn repeat_leading(&self, x: &CudaTensor<E>, times: usize) -> Result<CudaTensor<E>> {
        Ok(ops::tensor::repeat_leading(&self.device, x, times)?)
    }

    fn quantize(&self, x: &CudaTensor<E>, k: i32) -> Result<CudaTensor<E>> {
        Ok(ops::tensor::quantize(&self.device, x, k)?)
    }

    fn count_non_finite(&self, tensors: &[&CudaTensor<E>]) -> Result<u64> {
        Ok(ops::tensor::count_non_finite(&self.device, tensors)?)
    }

    fn sum_leading(&self, x: &CudaTensor<E>) -> Result<CudaTensor<E>> {
        Ok(ops::tensor::sum_leading(&self.device, x)?)
    }

    fn mean_axes(&self, x: &CudaTensor<E>, axes: &[usize]) -> Result<CudaTensor<E>> {
        Ok(ops::tensor::mean_axes(&self.device, x, axes)?)
    }

    fn mean_axes_backward(
        &self,
        grad_y: &CudaTensor<E>,
        input_shape: &[usize],
        axes: &[usize],
    ) -> Result<CudaTensor<E>> {
        Ok(ops::tensor::mean_axes_backward(
            &self.device,
            grad_y,
            input_shape,
            axes,
        )?)
    }
}

impl<E: GpuElement> WordOps for Cuda<E> {
    type Word = DeviceWord;

    fn fingerprint(&self, x: &CudaTensor<E>) -> Result<u64> {
        Ok(ops::tensor::fingerprint(&self.device, x)?)
    }

    fn zero_word(&self) -> Result<DeviceWord> {
        Ok(DeviceWord::zero(&self.device)?)
    }

    fn fold_fingerprint(&self, word: &mut DeviceWord, x: &CudaTensor<E>) -> Result<()> {
        Ok(ops::tensor::fold_fingerprint(&self.device, word, x)?)
    }

    fn count_unequal(&self, count: &mut DeviceWord, a: &DeviceWord, b: &DeviceWord) -> Result<()> {
        Ok(DeviceWord::count_unequal(&self.device, count, a, b)?)
    }

    fn read_word(&self, word: &DeviceWord) -> Result<u64> {
        Ok(word.read(&self.device)?)
    }
}

impl<E: GpuElement> NeuronOps for Cuda<E> {
    type NeuronContext = ops::neuron::NeuronContext<E>;

    fn neuron_forward(
        &self,
        x: CudaTensor<E>,
        config: &NeuronConfig,
    ) -> Result<(CudaTensor<E>, Self::NeuronContext)> {
        Ok(ops::neuron::forward(&self.device, x, config)?)
    }

    fn neuron_forward_keeping_input(
        &self,
        x: CudaTensor<E>,
        config: &NeuronConfig,
    ) -> Result<(CudaTensor<E>, Self::NeuronContext)> {
        Ok(ops::neuron::forward_keeping_input(&self.device, x, config)?)
    }

    fn neuron_forward_fingerprinted(
        &self,
        x: CudaTensor<E>,
        config: &NeuronConfig,
        keeps_input: bool,
        word: &mut DeviceWord,
    ) -> Result<(CudaTensor<E>, Self::NeuronContext)> {
        Ok(ops::neuron::forward_fingerprinted(
            &self.device,
            x,
            config,
            keeps_input,
            word,
        )?)
    }

    fn neuron_forward_keeping_nothing(
        &self,
        x: CudaTensor<E>,
        config: &NeuronConfig,
        fingerprint: Option<&mut DeviceWord>,
    ) -> Result<CudaTensor<E>> {
        let device = &self.device;
        Ok(ops::neuron::forward_keeping_nothing(
            device,
            x,
            config,
            fingerprint,
        )?)
    }

    fn neuron_charge(
        &self,
        x: CudaTensor<E>,
        config: &NeuronConfig,
    ) -> Result<Self::NeuronContext> {
        Ok(ops::neuron::charge(&self.device, x, config)?)
    }

    fn neuron_backward(
        &self,
        grad_spikes: CudaTensor<E>,
        context: &Self::NeuronContext,
        config: &NeuronConfig,
    ) -> Result<CudaTensor<E>> {
        Ok(ops::neuron::backward(
            &self.device,
            grad_spikes,
            context,
            config,
        )?)
    }

    fn neuron_backward_from_source(
        &self,
        grad_spikes: CudaTensor<E>,
        neuron: NeuronBackward<'_, BackendNeuronSource<'_, Self>>,
    ) -> Result<CudaTensor<E>> {
        let steps = neuron.time_steps;
        match charged_in_kernel(neuron.source, steps) {
            Ok((norm, beta)) => Ok(ops::neuron::backward_from_normalised(
                &self.device,
                grad_spikes,
                (norm, &beta),
                steps,
                neuron.config,
            )?),
            Err(source) => {
                let neuron = NeuronBackward { source, ..neuron };
                neuron_backward_from_source_in_turn(self, grad_spikes, neuron)
            }
        }
    }
}

impl<E: GpuElement> ConvOps for Cuda<E> {
    type Conv2dContext = ops::conv::Conv2dContext<E>;

    fn conv2d_forward(
        &self,
        x: &CudaTensor<E>,
        weight: &CudaTensor<E>,
        bias: Option<&CudaTensor<E>>,
        params: Conv2dParams,
    ) -> Result<(CudaTensor<E>, Self::Conv2dContext)> {
        Ok(ops::conv::forward(&self.device, x, weight, bias, params)?)
    }

    fn conv2d_backward(
        &self,
        grad_y: CudaTensor<E>,
        context: &Self::Conv2dContext,
    ) -> Result<Conv2dGrads<CudaTensor<E>>> {
        Ok(ops::conv::backward(&self.device, grad_y, context)?)
    }
}

impl<E: GpuElement> BatchNormOps for Cuda<E> {
    type BatchNormContext = ops::batch_norm::BatchNormContext<E>;

    fn batch_norm_train_forward(
        &self,
        x: &CudaTensor<E>,
        gamma: &CudaTensor<E>,
        beta: &CudaTensor<E>,
        params: BatchNormParams,
    ) -> Result<BatchNormTrainOutput<CudaTensor<E>, Self::BatchNormContext>> {
        Ok(ops::batch_norm::train_forward(
            &self.device,
            x,
            gamma,
            beta,
            params,
        )?)
    }

    fn batch_norm_train_output(
        &self,
        context: &Self::BatchNormContext,
        beta: &CudaTensor<E>,
    ) -> Result<CudaTensor<E>> {
        Ok(ops::batch_norm::train_output(&self.device, context, beta)?)
    }

    fn batch_norm_eval_forward(
        &self,
        x: &CudaTensor<E>,
        gamma: &CudaTensor<E>,
        beta: &CudaTensor<E>,
        running: &RunningStats<CudaTensor<E>>,
        params: BatchNormParams,
    ) -> Result<(CudaTensor<E>, Self::BatchNormContext)> {
        Ok(ops::batch_norm::eval_forward(
            &self.device,
            x,
            gamma,
            beta,
            running,
            params,
        )?)
    }

    fn batch_norm_backward(
        &self,
        grad_y: &CudaTensor<E>,
        context: &Self::BatchNormContext,
    ) -> Result<BatchNormGrads<CudaTensor<E>>> {
        Ok(ops::batch_norm::backward(&self.device, grad_y, context)?)
    }

    fn update_running_stats(
        &self,
        running: &RunningStats<CudaTensor<E>>,
        batch: &BatchStats<CudaTensor<E>>,
        params: BatchNormParams,
    ) -> Result<RunningStats<CudaTensor<E>>> {
        Ok(ops::batch_norm::update_running_stats(
            &self.device,
            running,
            batch,
            params,
        )?)
    }
}

impl<E: GpuElement> PoolOps for Cuda<E> {
    type MaxPoolContext = ops::pool::MaxPoolContext;

    fn avg_pool2d_forward(&self, x: &CudaTensor<E>, params: Pool2dParams) -> Result<CudaTensor<E>> {
        Ok(ops::pool::avg_forward(&self.device, x, params)?)
    }

    fn avg_pool2d_backward(
        &self,
        grad_y: &CudaTensor<E>,
        input_shape: &[usize],
        params: Pool2dParams,
    ) -> Result<CudaTensor<E>> {
        Ok(ops::pool::avg_backward(
            &self.device,
            grad_y,
            input_shape,
            params,
        )?)
    }

    fn max_pool2d_forward(
        &self,
        x: &CudaTensor<E>,
        params: Pool2dParams,
    ) -> Result<(CudaTensor<E>, Self::MaxPoolContext)> {
        Ok(ops::pool::max_forward(&self.device, x, params)?)
    }

    fn max_pool2d_backward(
        &self,
        grad_y: &CudaTensor<E>,
        context: &Self::MaxPoolContext,
    ) -> Result<CudaTensor<E>> {
        Ok(ops::pool::max_backward(&self.device, grad_y, context)?)
    }
}

impl<E: GpuElement> ConvBatchNormOps for Cuda<E> {
    fn conv_batch_norm_train_forward(
        &self,
        x: CudaTensor<E>,
        weight: &CudaTensor<E>,
        bias: Option<&CudaTensor<E>>,
        kind: ConvKind,
        norm: BatchNormAffine<'_, CudaTensor<E>>,
    ) -> Result<ops::conv_batch_norm::ConvBatchNormOutput<E>> {
        Ok(ops::conv_batch_norm::train_forward(
            &self.device,
            x,
            weight,
            bias,
            kind,
            norm,
            None,
        )?)
    }

    fn conv_batch_norm_train_forward_onto(
        &self,
        x: CudaTensor<E>,
        weight: &CudaTensor<E>,
        bias: Option<&CudaTensor<E>>,
        kind: ConvKind,
        norm: BatchNormAffine<'_, CudaTensor<E>>,
        onto: Onto<CudaTensor<E>>,
    ) -> Result<ops::conv_batch_norm::ConvBatchNormOutput<E>> {
        Ok(ops::conv_batch_norm::train_forward(
            &self.device,
            x,
            weight,
            bias,
            kind,
            norm,
            Some(onto),
        )?)
    }

    fn conv_batch_norm_train_avg_pool(
        &self,
        x: CudaTensor<E>,
        weight: &CudaTensor<E>,
        bias: Option<&CudaTensor<E>>,
        kind: ConvKind,
        norm: BatchNormAffine<'_, CudaTensor<E>>,
        pool: Pool2dParams,
    ) -> Result<ops::conv_batch_norm::ConvBatchNormOutput<E>> {
        let device = &self.device;
        Ok(ops::conv_batch_norm::train_avg_pool(
            device, x, weight, bias, kind, norm, pool,
        )?)
    }

    fn conv_batch_norm_train_fire(
        &self,
        x: CudaTensor<E>,
        weight: &CudaTensor<E>,
        bias: Option<&CudaTensor<E>>,
        kind: ConvKind,
        norm: BatchNormAffine<'_, CudaTensor<E>>,
        neuron: NeuronFire<'_, DeviceWord>,
    ) -> Result<ops::conv_batch_norm::ConvBatchNormOutput<E>> {
        let device = &self.device;
        Ok(ops::conv_batch_norm::train_fire(
            device, x, weight, bias, kind, norm, neuron,
        )?)
    }

    fn conv_batch_norm_backward(
        &self,
        grad_y: CudaTensor<E>,
        conv: Self::Conv2dContext,
        norm: Self::BatchNormContext,
        kind: ConvKind,
    ) -> Result<ConvBatchNormGrads<CudaTensor<E>>> {
        match self.device.half_format() {
            Some(format) => Ok(ops::conv_batch_norm::backward(
                &self.device,
                format,
                grad_y,
                conv,
                norm,
                kind,
            )?),
            None => conv_batch_norm_backward_in_turn(self, grad_y, conv, norm, kind),
        }
    }

    fn avg_pool_conv_batch_norm_backward(
        &self,
        pool: AvgPoolGrad<'_, CudaTensor<E>>,
        conv: Self::Conv2dContext,
        norm: Self::BatchNormContext,
        kind: ConvKind,
    ) -> Result<ConvBatchNormGrads<CudaTensor<E>>> {
        match self.device.half_format() {
            Some(format) => Ok(ops::conv_batch_norm::avg_pool_backward(
                &self.device,
                format,
                pool,
                conv,
                norm,
                kind,
            )?),
            None => avg_pool_conv_batch_norm_backward_in_turn(self, pool, conv, norm, kind),
        }
    }

    fn spiking_conv_batch_norm_backward(
        &self,
        grad_y: CudaTensor<E>,
        conv: Self::Conv2dContext,
        norm: Self::BatchNormContext,
        kind: ConvKind,
        neuron: NeuronBackward<'_, BackendNeuronSource<'_, Self>>,
    ) -> Result<ConvBatchNormGrads<CudaTensor<E>>> {
        let Some(format) = self.device.half_format() else {
            return spiking_conv_batch_norm_backward_in_turn(
                self, grad_y, conv, norm, kind, neuron,
            );
        };
        let device = &self.device;
        let neuron_backward =
            |dx, shape: &[usize]| self.neuron_backward_from_half(dx, shape, neuron);
        let grads = ops::conv_batch_norm::spiking_backward(
            device,
            format,
            grad_y,
            conv,
            norm,
            kind,
            neuron_backward,
        )?;
        Ok(grads)
    }
}

impl<E: GpuElement> LinearOps for Cuda<E> {
    fn linear_forward(
        &self,
        x: &CudaTensor<E>,
        weight: &CudaTensor<E>,
        bias: Option<&CudaTensor<E>>,
    ) -> Result<CudaTensor<E>> {
        Ok(ops::linear::forward(&self.device, x, weight, bias)?)
    }

    fn linear_backward(
        &self,
        grad_y: &CudaTensor<E>,
        x: &CudaTensor<E>,
        weight: &CudaTensor<E>,
        has_bias: bool,
    ) -> Result<LinearGrads<CudaTensor<E>>> {
        Ok(ops::linear::backward(
            &self.device,
            grad_y,
            x,
            weight,
            has_bias,
        )?)
    }

    fn batched_matmul(
        &self,
        a: &CudaTensor<E>,
        b: &CudaTensor<E>,
        transpose_a: bool,
        transpose_b: bool,
    ) -> Result<CudaTensor<E>> {
        Ok(ops::linear::batched_matmul(
            &self.device,
            a,
            b,
            transpose_a,
            transpose_b,
        )?)
    }
}

impl<E: GpuElement> AttentionOps for Cuda<E> {
    fn attention_forward(
        &self,
        q_t: CudaTensor<E>,
        k_t: CudaTensor<E>,
        v_t: CudaTensor<E>,
    ) -> Result<(CudaTensor<E>, AttentionKept<SavedInput<E>>)> {
        match self.device.half_format() {
            Some(format) => Ok(ops::attention::forward(
                &self.device,
                format,
                q_t,
                k_t,
                v_t,
            )?),
            None => attention_forward_in_turn(self, q_t, k_t, v_t),
        }
    }

    fn attention_backward(
        &self,
        grad_o_t: CudaTensor<E>,
        kept: AttentionKept<SavedInput<E>>,
    ) -> Result<AttentionGrads<CudaTensor<E>>> {
        match self.device.half_format() {
            Some(format) => Ok(ops::attention::backward(
                &self.device,
                format,
                grad_o_t,
                kept,
            )?),
            None => attention_backward_in_turn(self, grad_o_t, kept),
        }
    }
}

impl<E: GpuElement> LossOps for Cuda<E> {
    type CrossEntropyContext = ops::loss::CrossEntropyContext<E>;

    fn cross_entropy_loss(
        &self,
        logits: &CudaTensor<E>,
        labels: &[usize],
    ) -> Result<(CudaTensor<E>, Self::CrossEntropyContext)> {
        Ok(ops::loss::cross_entropy_forward(
            &self.device,
            logits,
            labels,
        )?)
    }

    fn soft_cross_entropy_loss(
        &self,
        logits: &CudaTensor<E>,
        targets: &CudaTensor<E>,
    ) -> Result<(CudaTensor<E>, Self::CrossEntropyContext)> {
        Ok(ops::loss::soft_cross_entropy_forward(
            &self.device,
            logits,
            targets,
        )?)
    }

    fn cross_entropy_backward(
        &self,
        context: &Self::CrossEntropyContext,
        grad_loss: E,
    ) -> Result<CudaTensor<E>> {
        Ok(ops::loss::backward(&self.device, context, grad_loss)?)
    }
}

impl<E: GpuElement> OptimOps for Cuda<E> {
    fn sgd_step(
        &self,
        param: &CudaTensor<E>,
        grad: &CudaTensor<E>,
        momentum_buffer: Option<&CudaTensor<E>>,
        params: SgdParams,
    ) -> Result<SgdState<CudaTensor<E>>> {
        Ok(ops::optim::sgd_step(
            &self.device,
            param,
            grad,
            momentum_buffer,
            params,
        )?)
    }

    fn adamw_step(
        &self,
        param: &CudaTensor<E>,
        grad: &CudaTensor<E>,
        first_moment: &CudaTensor<E>,
        second_moment: &CudaTensor<E>,
        params: AdamWParams,
        step: u64,
    ) -> Result<AdamWState<CudaTensor<E>>> {
        Ok(ops::optim::adamw_step(
            &self.device,
            param,
            grad,
            first_moment,
            second_moment,
            params,
            step,
        )?)
    }

    fn sgd_step_foreach(
        &self,
        tensors: &[SgdTensors<'_, CudaTensor<E>>],
        params: SgdParams,
    ) -> Result<Vec<SgdState<CudaTensor<E>>>> {
        Ok(ops::optim::sgd_step_foreach(&self.device, tensors, params)?)
    }

    fn adamw_step_foreach(
        &self,
        tensors: &[AdamWTensors<'_, CudaTensor<E>>],
        params: AdamWParams,
        step: u64,
    ) -> Result<Vec<AdamWState<CudaTensor<E>>>> {
        Ok(ops::optim::adamw_step_foreach(
            &self.device,
            tensors,
            params,
            step,
        )?)
    }
}

/// Synchronising waits for the device's one stream; memory is the bytes of live device tensors,
/// always counted.
impl<E: GpuElement> Compute for Cuda<E> {
    fn synchronize(&self) -> Result<()> {
        Ok(self.device.synchronize()?)
    }

    fn memory_is_counted(&self) -> bool {
        true
    }

    fn reset_peak_memory(&self) {
        self.device.reset_peak_memory();
    }

    fn peak_memory_bytes(&self) -> usize {
        self.memory().peak_bytes
    }

    fn available_memory_bytes(&self) -> Result<Option<u64>> {
        Ok(Some(self.device.free_memory_bytes()? as u64))
    }

    fn transfer_counts(&self) -> Option<TransferCounts> {
        Some(self.device.transfer_counts())
    }
}
