//! Non-finite values (NaN, infinities) in loaded tensors. A spiking neuron turns a NaN input into
//! no spike (`h >= V_th` is false), so a NaN in a checkpoint would vanish silently and the
//! metrics would look plausible: loading refuses it unless the user allows it explicitly.

use std::path::Path;

use crate::checkpoint::{StoredTensor, TensorData, TensorFile};
use crate::error::{Error, Result};

/// An [`Error::NonFinite`] for the first tensor of `tensors` (read from `origin`) that holds a
/// NaN or an infinity, naming the tensor and the element's index; `Ok` when every value is
/// finite or `allow_non_finite` (`--allow-non-finite`, for deliberate experiments).
pub fn check_loaded(origin: &Path, tensors: &TensorFile, allow_non_finite: bool) -> Result<()> {
    if allow_non_finite {
        return Ok(());
    }
    for (name, tensor) in tensors {
        if let Some((flat, value)) = first_non_finite(tensor) {
            return Err(Error::NonFinite {
                origin: origin.display().to_string(),
                tensor: name.clone(),
                index: unravel(flat, &tensor.shape),
                value,
            });
        }
    }
    Ok(())
}

/// The row-major position and value of the first NaN or infinity of `tensor` (integer tensors
/// have none).
pub fn first_non_finite(tensor: &StoredTensor) -> Option<(usize, f64)> {
    match &tensor.data {
        TensorData::F32(values) => values
            .iter()
            .position(|v| !v.is_finite())
            .map(|i| (i, f64::from(values[i]))),
        TensorData::F64(values) => values
            .iter()
            .position(|v| !v.is_finite())
            .map(|i| (i, values[i])),
        TensorData::I64(_) => None,
    }
}

/// The multi-dimensional index of row-major position `flat` in `shape` (`[flat]` for a shape
/// whose product does not cover it, which a parsed file never has).
fn unravel(flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    let mut rest = flat;
    for (slot, &dim) in index.iter_mut().zip(shape).rev() {
        if dim == 0 {
            return vec![flat];
        }
        *slot = rest % dim;
        rest /= dim;
    }
    if rest == 0 { index } else { vec![flat] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_non_finite_value_is_named_with_its_index() {
        let mut values = vec![0.5f32; 24];
        values[13] = f32::NAN;
        values[20] = f32::INFINITY;
        let tensors: TensorFile = vec![
            ("ok".into(), StoredTensor::f64(vec![2], vec![1.0, 2.0])),
            (
                "layer.weight".into(),
                StoredTensor {
                    shape: vec![2, 3, 4],
                    data: TensorData::F32(values),
                },
            ),
        ];
        let message = check_loaded(Path::new("w.safetensors"), &tensors, false)
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("w.safetensors: tensor layer.weight holds NaN at index [1, 0, 1]")
                && message.contains("--allow-non-finite"),
            "{message}"
        );
        assert!(check_loaded(Path::new("w"), &tensors, true).is_ok());
        let infinite = StoredTensor::f64(vec![3], vec![0.0, f64::NEG_INFINITY, f64::NAN]);
        assert_eq!(first_non_finite(&infinite), Some((1, f64::NEG_INFINITY)));
        assert_eq!(first_non_finite(&tensors[0].1), None);
    }
}
