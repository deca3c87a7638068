//! Multi-step IF/LIF neurons with hard reset and surrogate gradients (SPEC.md 2.2-2.4).

use crate::cpu::CpuTensor;
use crate::element::Element;
use crate::error::Result;
use crate::params::NeuronConfig;

/// What the neuron backward needs.
#[derive(Debug)]
pub struct NeuronContext<E> {
    pub h: CpuTensor<E>,
    pub spikes: CpuTensor<E>,
}

pub fn forward<E: Element>(
    x: &CpuTensor<E>,
    config: &NeuronConfig,
) -> Result<(CpuTensor<E>, NeuronContext<E>)> {
    todo!("neuron forward {x:?} {config:?}")
}

pub fn backward<E: Element>(
    grad_spikes: &CpuTensor<E>,
    context: &NeuronContext<E>,
    config: &NeuronConfig,
) -> Result<CpuTensor<E>> {
    todo!("neuron backward {grad_spikes:?} {context:?} {config:?}")
}
