//! `eval --versus-cpu`: the same checkpoint and test samples evaluated on the chosen device and on
//! the CPU reference in the same precision, batch by batch, and where the two part: the samples
//! whose prediction differs, the spikes that differ ("flips": a membrane potential within
//! rounding of the threshold crosses it on one side only), and whether every differing
//! prediction lies in a sample with a flipped spike (docs/precision.md, "Two devices").
//!
//! Without a flip, a spiking ResNet's logits agree to the rounding of its head (its input is the
//! mean of spikes), so its top-1 can differ only on a near-tie; with flips, the spikes downstream
//! of the flip differ and so can the prediction. A differing prediction in a sample without any
//! flip is reported as unexplained.

use std::sync::Arc;

use revsnn_reference::Backend;
use serde_json::{Value, json};

use super::loaded_network;
use crate::checkpoint::TensorFile;
use crate::data::Dataset;
use crate::error::Result;
use crate::model::Mode;
use crate::network::PassOptions;
use crate::spec::ModelSpec;
use crate::train::EvalResult;
use crate::train::evaluate::{Score, batch_tensor, widened};

/// The sample indices listed in a report, at most.
const LISTED: usize = 10;

/// Where two devices' evaluations of one checkpoint part.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Agreement {
    /// Samples evaluated.
    pub samples: usize,
    /// Top-1 hits on the device and on the CPU.
    pub top1: [usize; 2],
    /// Samples whose predicted class differs.
    pub predictions_differ: usize,
    /// Of those, the ones without any flipped spike.
    pub unexplained: usize,
    /// The first differing samples' indices.
    pub differing_samples: Vec<usize>,
    /// Spikes that differ, and spikes compared.
    pub spike_flips: u64,
    pub spikes_compared: u64,
    /// Samples with at least one flipped spike.
    pub samples_with_flips: usize,
    /// `max |z - z_cpu|` over every logit.
    pub logits_max_abs_diff: f64,
}

impl Agreement {
    /// The `versus_cpu` object of `eval --json`.
    pub fn to_json(&self) -> Value {
        json!({
            "samples": self.samples,
            "acc1_cpu": self.top1[1] as f64 / self.samples.max(1) as f64,
            "predictions_differ": self.predictions_differ,
            "unexplained": self.unexplained,
            "differing_samples": self.differing_samples,
            "spike_flips": self.spike_flips,
            "spikes_compared": self.spikes_compared,
            "samples_with_flips": self.samples_with_flips,
            "logits_max_abs_diff": self.logits_max_abs_diff,
        })
    }

    /// The report as text lines.
    pub fn print(&self) {
        println!(
            "versus the CPU: top-1 hits {} vs {}; {} of {} predictions differ ({} without a \
             flipped spike){}",
            self.top1[0],
            self.top1[1],
            self.predictions_differ,
            self.samples,
            self.unexplained,
            match self.differing_samples.as_slice() {
                [] => String::new(),
                listed => format!(", samples {listed:?}"),
            }
        );
        println!(
            "versus the CPU: {} of {} spikes differ, in {} samples; logits differ by at most {:.3e}",
            self.spike_flips,
            self.spikes_compared,
            self.samples_with_flips,
            self.logits_max_abs_diff
        );
    }

    /// Adds one batch of `count` samples starting at sample `first`.
    fn add(&mut self, first: usize, labels: &[usize], logits: [&[f64]; 2], flips: &[u64]) {
        let classes = logits[0].len() / labels.len().max(1);
        for (i, &label) in labels.iter().enumerate() {
            let rows = logits.map(|z| &z[i * classes..(i + 1) * classes]);
            let predicted = rows.map(argmax);
            for (hits, class) in self.top1.iter_mut().zip(predicted) {
                *hits += usize::from(class == label);
            }
            if predicted[0] != predicted[1] {
                self.predictions_differ += 1;
                self.unexplained += usize::from(flips[i] == 0);
                if self.differing_samples.len() < LISTED {
                    self.differing_samples.push(first + i);
                }
            }
        }
        self.samples_with_flips += flips.iter().filter(|&&f| f > 0).count();
        self.spike_flips += flips.iter().sum::<u64>();
        self.samples += labels.len();
        let diff = logits[0].iter().zip(logits[1]).map(|(a, b)| (a - b).abs());
        self.logits_max_abs_diff = diff.fold(self.logits_max_abs_diff, f64::max);
    }
}

/// The first index of the largest value.
fn argmax(row: &[f64]) -> usize {
    (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}

/// Evaluates `weights` (of `spec`) on `data` in batches of `batch`, on `device` and on `cpu`
/// (eval mode, running statistics), and compares the two batch by batch. Returns the device's
/// evaluation (the plain `eval`'s, from the same forward passes) and the comparison.
pub fn versus_cpu<D: Backend, C: Backend>(
    device: &D,
    cpu: &C,
    spec: &ModelSpec,
    weights: &TensorFile,
    data: Arc<dyn Dataset>,
    batch: usize,
) -> Result<(EvalResult, Agreement)> {
    let mut on_device = loaded_network(device, spec, weights)?;
    let mut on_cpu = loaded_network(cpu, spec, weights)?;
    let eval = PassOptions {
        mode: Mode::Eval,
        update_running_stats: false,
        ..PassOptions::default()
    };
    let mut agreement = Agreement::default();
    let mut on_device_score = Score::default();
    for first in (0..data.len()).step_by(batch.max(1)) {
        let indices = first..(first + batch).min(data.len());
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        for index in indices.clone() {
            let sample = data.get(index)?;
            images.extend(sample.values);
            labels.push(sample.label);
        }
        let count = labels.len();
        let x = batch_tensor(device, data.as_ref(), images.clone(), count)?;
        let (z, spikes) = on_device.forward_with_spikes(device, &x, eval)?;
        let x = batch_tensor(cpu, data.as_ref(), images, count)?;
        let (z_cpu, spikes_cpu) = on_cpu.forward_with_spikes(cpu, &x, eval)?;
        let mut flips = vec![0u64; count];
        for (a, b) in spikes.iter().zip(&spikes_cpu) {
            let (a, b) = (widened(device, a)?, widened(cpu, b)?);
            agreement.spikes_compared += a.len() as u64;
            count_flips_per_sample(&a, &b, spec.time_steps, &mut flips);
        }
        let (z, z_cpu) = (widened(device, &z)?, widened(cpu, &z_cpu)?);
        on_device_score += Score::of(&z, &labels);
        agreement.add(first, &labels, [&z, &z_cpu], &flips);
    }
    Ok((EvalResult::of(on_device_score, data.len())?, agreement))
}

/// Adds to `flips[b]` the spikes of sample `b` that differ between `a` and `b_spikes`, two
/// spike tensors of one neuron layer laid out `[T, B, ...]` (`flips.len()` = B).
fn count_flips_per_sample(a: &[f64], b: &[f64], time_steps: usize, flips: &mut [u64]) {
    let per_row = a.len() / (time_steps * flips.len()).max(1);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x != y {
            flips[(i / per_row.max(1)) % flips.len()] += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_are_attributed_to_their_sample_in_t_major_layout() {
        // T = 2, B = 3, 2 values per sample and step
        let a = vec![0.0; 12];
        let mut b = a.clone();
        b[2] = 1.0; // t 0, sample 1
        b[7] = 1.0; // t 1, sample 0
        b[10] = 1.0; // t 1, sample 2
        b[11] = 1.0; // t 1, sample 2
        let mut flips = vec![0; 3];
        count_flips_per_sample(&a, &b, 2, &mut flips);
        assert_eq!(flips, vec![1, 1, 2]);
    }

    #[test]
    fn a_differing_prediction_without_a_flip_is_unexplained() {
        let mut agreement = Agreement::default();
        let device = [0.9, 0.1, 0.2, 0.8, 0.5, 0.4];
        let cpu = [0.9, 0.1, 0.8, 0.2, 0.4, 0.5];
        agreement.add(10, &[0, 1, 0], [&device, &cpu], &[0, 3, 0]);
        assert_eq!(agreement.top1, [3, 1]);
        assert_eq!(agreement.predictions_differ, 2);
        assert_eq!(agreement.unexplained, 1);
        assert_eq!(agreement.differing_samples, vec![11, 12]);
        assert_eq!(
            (agreement.spike_flips, agreement.samples_with_flips),
            (3, 1)
        );
        assert!((agreement.logits_max_abs_diff - 0.6).abs() < 1e-12);
    }
}
