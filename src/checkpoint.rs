//! Checkpoints in safetensors under the official PyTorch `state_dict` key names, so that
//! `torch.load_state_dict(safetensors.torch.load_file(path))` takes our files and we take theirs.
//!
//! The format: an 8-byte little-endian header length `n`, `n` bytes of JSON mapping each name to
//! `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets into the data that follows), then
//! the data, row-major little-endian. We read F32, F64 and I64 tensors and write F32 or F64
//! (parameters and buffers) and I64 (`num_batches_tracked`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use revsnn_reference::{Backend, DType, Element};
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::files::write_atomic;
use crate::model::params::Entry;
use crate::model::{EntryKind, EntryValue, ParamStore};

/// The elements of one stored tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
}

/// One stored tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl StoredTensor {
    pub fn f64(shape: Vec<usize>, values: Vec<f64>) -> Self {
        StoredTensor {
            shape,
            data: TensorData::F64(values),
        }
    }

    /// A tensor of backend elements, stored in their own type.
    pub fn from_elements<E: Element>(shape: Vec<usize>, values: Vec<E>) -> Self {
        let data = match E::DTYPE {
            DType::F32 => TensorData::F32(values.into_iter().map(|v| v.widen() as f32).collect()),
            DType::F64 => TensorData::F64(values.into_iter().map(Element::widen).collect()),
        };
        StoredTensor { shape, data }
    }

    /// The values widened (or converted, for I64) to f64.
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            TensorData::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::F64(v) => v.clone(),
            TensorData::I64(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    fn dtype_name(&self) -> &'static str {
        match self.data {
            TensorData::F32(_) => "F32",
            TensorData::F64(_) => "F64",
            TensorData::I64(_) => "I64",
        }
    }

    /// The size of the stored elements in bytes.
    fn byte_len(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => 4 * v.len(),
            TensorData::F64(v) => 8 * v.len(),
            TensorData::I64(v) => 8 * v.len(),
        }
    }

    /// Appends the elements to `out`, little-endian.
    fn append_bytes(&self, out: &mut Vec<u8>) {
        match &self.data {
            TensorData::F32(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
            TensorData::F64(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
            TensorData::I64(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        }
    }
}

/// The tensors of a safetensors file, in file order.
pub type TensorFile = Vec<(String, StoredTensor)>;

/// Reads a safetensors file; a truncated or corrupt file, an unsupported dtype or inconsistent
/// offsets is an error naming the file and the problem.
pub fn read(path: &Path) -> Result<TensorFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    parse(&bytes)
        .map_err(|detail| Error::file(path, format!("not a valid safetensors file: {detail}")))
}

/// The tensors of the safetensors file `bytes`, or what is wrong with it.
pub fn parse(bytes: &[u8]) -> std::result::Result<TensorFile, String> {
    let header_len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or("shorter than the 8-byte header length")?;
    let header_end = 8usize
        .checked_add(usize::try_from(header_len).map_err(|_| "header length overflows")?)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| {
            format!(
                "header of {header_len} bytes runs past the end of the {}-byte file",
                bytes.len()
            )
        })?;
    let header: Map<String, Value> = serde_json::from_slice(&bytes[8..header_end])
        .map_err(|e| format!("header is not a JSON object: {e}"))?;
    let data = &bytes[header_end..];
    let mut tensors = Vec::new();
    for (name, info) in header {
        if name != "__metadata__" {
            let (begin, tensor) = parse_tensor(&name, &info, data)?;
            tensors.push((begin, name, tensor));
        }
    }
    tensors.sort_by_key(|(begin, _, _)| *begin);
    Ok(tensors
        .into_iter()
        .map(|(_, name, tensor)| (name, tensor))
        .collect())
}

/// The tensor `name` of the header, described by `info`, from `data`, and where its bytes begin.
fn parse_tensor(
    name: &str,
    info: &Value,
    data: &[u8],
) -> std::result::Result<(usize, StoredTensor), String> {
    let dtype = info["dtype"].as_str().ok_or(format!("{name}: no dtype"))?;
    let shape: Vec<usize> = info["shape"]
        .as_array()
        .ok_or(format!("{name}: no shape"))?
        .iter()
        .map(|d| {
            d.as_u64()
                .map(|d| d as usize)
                .ok_or(format!("{name}: bad shape"))
        })
        .collect::<std::result::Result<_, _>>()?;
    let offsets = info["data_offsets"]
        .as_array()
        .ok_or(format!("{name}: no data_offsets"))?;
    let (begin, end) = match offsets.as_slice() {
        [b, e] => (
            b.as_u64().ok_or(format!("{name}: bad offset"))? as usize,
            e.as_u64().ok_or(format!("{name}: bad offset"))? as usize,
        ),
        _ => return Err(format!("{name}: data_offsets must be [begin, end]")),
    };
    if begin > end || end > data.len() {
        return Err(format!(
            "{name}: data [{begin}, {end}) outside the {}-byte data (truncated?)",
            data.len()
        ));
    }
    let raw = &data[begin..end];
    let size = match dtype {
        "F32" => 4,
        "F64" | "I64" => 8,
        other => {
            return Err(format!(
                "{name}: dtype {other} is not supported (use F32, F64 or I64)"
            ));
        }
    };
    let expected = shape
        .iter()
        .try_fold(size, |bytes: usize, &d| bytes.checked_mul(d))
        .ok_or(format!(
            "{name}: shape {shape:?} of {dtype} has more bytes than can exist"
        ))?;
    if raw.len() != expected {
        return Err(format!(
            "{name}: {} bytes for shape {shape:?} of {dtype}",
            raw.len()
        ));
    }
    let data = decode(dtype, raw);
    Ok((begin, StoredTensor { shape, data }))
}

/// The little-endian elements `raw` of `dtype` (F32, F64 or I64, checked).
fn decode(dtype: &str, raw: &[u8]) -> TensorData {
    match dtype {
        "F32" => TensorData::F32(
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        "F64" => TensorData::F64(
            raw.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        _ => TensorData::I64(
            raw.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
    }
}

/// Writes `tensors` as a safetensors file, atomically ([`write_atomic`]).
pub fn write(path: &Path, tensors: &[(String, StoredTensor)]) -> Result<()> {
    write_atomic(path, &encode(tensors))
}

/// `tensors` in the safetensors format: the header, padded with spaces to a multiple of 8 bytes,
/// then each tensor's bytes in order.
fn encode(tensors: &[(String, StoredTensor)]) -> Vec<u8> {
    let mut header = Map::new();
    let mut offset = 0usize;
    for (name, tensor) in tensors {
        let end = offset + tensor.byte_len();
        header.insert(
            name.clone(),
            json!({"dtype": tensor.dtype_name(), "shape": tensor.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&Value::Object(header)).expect("a JSON object serialises");
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut bytes = Vec::with_capacity(8 + header.len() + offset);
    bytes.extend((header.len() as u64).to_le_bytes());
    bytes.extend(header);
    for (_, tensor) in tensors {
        tensor.append_bytes(&mut bytes);
    }
    bytes
}

/// The store as a state_dict: parameters and running statistics in the backend's float type
/// (downloaded from the device), `num_batches_tracked` as I64 scalars, in `state_dict` order.
pub fn state_dict<B: Backend>(backend: &B, store: &ParamStore<B>) -> Result<TensorFile> {
    store
        .entries()
        .iter()
        .map(|entry| {
            let tensor = match &entry.value {
                EntryValue::Count(count) => StoredTensor {
                    shape: vec![],
                    data: TensorData::I64(vec![i64::try_from(*count).unwrap_or(i64::MAX)]),
                },
                EntryValue::Tensor(tensor) => {
                    StoredTensor::from_elements(entry.shape.clone(), backend.to_vec(tensor)?)
                }
            };
            Ok((entry.name.clone(), tensor))
        })
        .collect()
}

/// Loads a state_dict into `store`. `num_batches_tracked` may be present or absent; F32, F64 and
/// (for counters) I64 tensors are accepted. Missing keys, unexpected keys and shape mismatches
/// are reported together in one error.
pub fn load_state_dict<B: Backend>(
    backend: &B,
    store: &mut ParamStore<B>,
    tensors: &TensorFile,
) -> Result<()> {
    let by_name: HashMap<&str, &StoredTensor> =
        tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    let mut updates = Vec::new();
    for (index, entry) in store.entries().iter().enumerate() {
        match by_name.get(entry.name.as_str()) {
            None if entry.kind == EntryKind::BatchesTracked => {}
            None => missing.push(entry.name.clone()),
            Some(tensor) if tensor.shape != entry.shape => mismatched.push(format!(
                "{} (file {:?}, model {:?})",
                entry.name, tensor.shape, entry.shape
            )),
            Some(tensor) => match loaded_value(backend, entry, tensor)? {
                Ok(value) => updates.push((index, value)),
                Err(mismatch) => mismatched.push(mismatch),
            },
        }
    }
    let known: BTreeMap<&str, ()> = store
        .entries()
        .iter()
        .map(|e| (e.name.as_str(), ()))
        .collect();
    let unexpected: Vec<String> = tensors
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| !known.contains_key(n.as_str()))
        .collect();
    if let Some(error) = misfit(&missing, &unexpected, &mismatched) {
        return Err(error);
    }
    for (index, value) in updates {
        let id = crate::model::ParamId(index);
        match value {
            EntryValue::Tensor(tensor) => store.set(id, tensor),
            EntryValue::Count(count) => store.set_count(id, count),
        }
    }
    Ok(())
}

/// The value `tensor` (of `entry`'s shape) gives `entry`, or the mismatch to report: a float
/// tensor for a parameter or statistic, one non-negative integer for a count.
fn loaded_value<B: Backend>(
    backend: &B,
    entry: &Entry<B::Tensor>,
    tensor: &StoredTensor,
) -> Result<std::result::Result<EntryValue<B::Tensor>, String>> {
    if entry.kind == EntryKind::BatchesTracked {
        return Ok(count_of(tensor)
            .map(EntryValue::Count)
            .ok_or_else(|| format!("{} (a count must be one non-negative integer)", entry.name)));
    }
    if matches!(tensor.data, TensorData::I64(_)) {
        return Ok(Err(format!(
            "{} (file I64, model floating point)",
            entry.name
        )));
    }
    let values = tensor.to_f64().into_iter().map(B::Elem::cast).collect();
    Ok(Ok(EntryValue::Tensor(
        backend.tensor_from_vec(&entry.shape, values)?,
    )))
}

/// The error of a checkpoint that does not fit the model, naming every key that is missing,
/// unexpected or of another shape; `None` when it fits.
fn misfit(missing: &[String], unexpected: &[String], mismatched: &[String]) -> Option<Error> {
    let parts: Vec<String> = [
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", mismatched),
    ]
    .into_iter()
    .filter(|(_, keys)| !keys.is_empty())
    .map(|(what, keys)| format!("{what}: {}", keys.join(", ")))
    .collect();
    (!parts.is_empty()).then(|| {
        Error::Spec(format!(
            "the checkpoint does not fit the model: {}",
            parts.join("; ")
        ))
    })
}

/// The value of a stored `num_batches_tracked`: one non-negative integer (I64, or a float that
/// holds an integer).
fn count_of(tensor: &StoredTensor) -> Option<u64> {
    match &tensor.data {
        TensorData::I64(values) => match values.as_slice() {
            [count] => u64::try_from(*count).ok(),
            _ => None,
        },
        _ => match tensor.to_f64().as_slice() {
            [count] if *count >= 0.0 && count.fract() == 0.0 && *count < 2f64.powi(63) => {
                Some(*count as u64)
            }
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14: a shape whose byte count overflows `usize` was multiplied unchecked (a panic
    /// with overflow checks, a wrapped count without, which an empty data range matched).
    #[test]
    fn a_shape_whose_byte_count_overflows_is_an_error() {
        for shape in ["[4294967296, 4294967296]", "[4611686018427387904]"] {
            let header =
                format!(r#"{{"w": {{"dtype": "F32", "shape": {shape}, "data_offsets": [0, 0]}}}}"#);
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend(header.as_bytes());
            let error = parse(&bytes).unwrap_err();
            assert!(
                error.contains("more bytes than can exist"),
                "{shape}: {error}"
            );
        }
    }
}
