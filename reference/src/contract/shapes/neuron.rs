//! The shape rules of the multi-step neurons (docs/neurons.md §2.2-2.4).

use crate::contract::error::{OpError, Result};
use crate::contract::params::NeuronConfig;

/// `(T, N)` of a neuron input `[T, ...]`: at least one axis and `T >= 1`; `N` is the product of
/// the trailing axes. `what` names the operand in the message.
pub fn time_by_neurons(shape: &[usize], what: &str) -> Result<(usize, usize)> {
    match shape.split_first() {
        Some((&steps, rest)) if steps >= 1 => Ok((steps, rest.iter().product())),
        _ => Err(OpError::shape(
            "neuron",
            format!("{what} must have shape [T, ...] with T >= 1, got {shape:?}"),
        )),
    }
}

/// The checks of a neuron backward against its context: a valid `config` equal to the one the
/// forward ran with, and `grad_spikes` shaped like the forward's `h`. Returns `(T, N)`.
pub fn check_neuron_backward(
    config: &NeuronConfig,
    forward_config: &NeuronConfig,
    grad_spikes: &[usize],
    h: &[usize],
) -> Result<(usize, usize)> {
    const OP: &str = "neuron";
    config.validate()?;
    if config != forward_config {
        return Err(OpError::parameter(
            OP,
            "config",
            format!("{config:?}"),
            "must equal the config the forward ran with (the context's)",
        ));
    }
    if grad_spikes != h {
        return Err(OpError::shape(
            OP,
            format!("grad_spikes has shape {grad_spikes:?}, the forward's input had {h:?}"),
        ));
    }
    time_by_neurons(h, "context h")
}

/// The checks of a neuron backward whose input is made again from a training BatchNorm's input
/// `[T B, ...]` (docs/neurons.md §2.4.2): a valid `config`, and `grad_spikes` shaped like that
/// input split into `T = time_steps` steps, `[T, B, ...]`. Returns `(T, N)`.
pub fn check_normalised_neuron_backward(
    config: &NeuronConfig,
    grad_spikes: &[usize],
    norm_input: &[usize],
    time_steps: usize,
) -> Result<(usize, usize)> {
    config.validate()?;
    let input = super::time_split(norm_input, time_steps)?;
    if grad_spikes != input {
        return Err(OpError::shape(
            "neuron",
            format!(
                "grad_spikes has shape {grad_spikes:?}, the BatchNorm's output split into \
                 {time_steps} steps {input:?}"
            ),
        ));
    }
    time_by_neurons(&input, "the BatchNorm's output")
}
