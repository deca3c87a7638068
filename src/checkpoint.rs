//! Checkpoints in safetensors under the official PyTorch `state_dict` key names, so that
//! `torch.load_state_dict(safetensors.torch.load_file(path))` takes our files and we take theirs.
//!
//! The file format is Hugging Face's `safetensors` crate's: it parses and validates the header
//! (dtypes, shapes, contiguous offsets, every size overflow-checked) and lays out what we write.
//! This layer converts its F32, F64 and I64 tensors to and from [`StoredTensor`]s, and maps them
//! onto a model's parameter store by key, naming every key that does not fit in one error. It also
//! reads F16 and BF16 tensors (a `state_dict` saved after `model.half()` or in bfloat16), widened
//! to F32 as they are read: each 16-bit value is an `f32` exactly, so a model loads the very
//! values the file holds. Checkpoints are written in the backend's float type, whatever the
//! precision a run computes in.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{ErrorKind, Read};
use std::path::Path;

use half::{bf16, f16};
use revsnn_reference::{Backend, DType, Element};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, View};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result, counted};
use crate::files::write_atomic;
use crate::model::params::Entry;
use crate::model::{EntryKind, EntryValue, ParamStore};
use crate::torch_file::{self, Weights};

/// The elements of one stored tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
}

/// One stored tensor: row-major elements of `shape` (a file read by [`parse`] always holds as
/// many elements as the shape says; [`write()`] refuses a tensor that does not).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl StoredTensor {
    /// An F64 tensor of `shape` holding `values`.
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
}

/// The tensor as the `safetensors` crate writes it: its dtype, shape and little-endian bytes.
impl View for &StoredTensor {
    fn dtype(&self) -> Dtype {
        match self.data {
            TensorData::F32(_) => Dtype::F32,
            TensorData::F64(_) => Dtype::F64,
            TensorData::I64(_) => Dtype::I64,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(match &self.data {
            TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        })
    }

    fn data_len(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => v.len() * 4,
            TensorData::F64(v) => v.len() * 8,
            TensorData::I64(v) => v.len() * 8,
        }
    }
}

/// The tensors of a safetensors file, in file order.
pub type TensorFile = Vec<(String, StoredTensor)>;

/// Reads a safetensors file; a truncated or corrupt file, an unsupported dtype or inconsistent
/// offsets is an error naming the file and the problem.
pub fn read(path: &Path) -> Result<TensorFile> {
    read_with(path, parse)
}

/// Reads weights a user names (`eval --checkpoint`, `train --initial-checkpoint`, `grad
/// --weights`): a safetensors file, or a PyTorch file of `torch.save` holding a `state_dict`
/// ([`torch_file::state_dict`], docs/pytorch-files.md), told apart by their first bytes.
pub fn read_weights(path: &Path) -> Result<TensorFile> {
    read_with(path, |bytes| weights_of(bytes, Weights::Model))
}

/// [`read_weights`] of bytes that `accept` takes by their SHA-256 ([`sha256_hex`]), asked before
/// anything parses them: a pinned file read whole once, so that the tensors are those of the
/// bytes checked. `accept`'s error is the read's, naming the file.
pub fn read_accepted_weights(
    path: &Path,
    accept: impl FnOnce(&str) -> Result<()>,
) -> Result<TensorFile> {
    read_with(path, |bytes| {
        accept(&sha256_hex(bytes))?;
        weights_of(bytes, Weights::Model)
    })
}

/// The moving average of a model's weights that a PyTorch training checkpoint of timm keeps
/// beside them (`eval --use-ema`; [`torch_file::Weights::Ema`]); a safetensors file, which
/// holds one set of weights, is an error saying so.
pub fn read_ema_weights(path: &Path) -> Result<TensorFile> {
    read_with(path, |bytes| weights_of(bytes, Weights::Ema))
}

/// The weights `which` in the bytes of a PyTorch file of `torch.save`, or of a safetensors file,
/// which holds only the model's.
fn weights_of(bytes: &[u8], which: Weights) -> Result<TensorFile> {
    match (torch_file::is_torch_file(bytes), which) {
        (true, which) => torch_file::state_dict(bytes, which),
        (false, Weights::Model) => parse(bytes),
        (false, Weights::Ema) => Err(Error::Usage(
            "a safetensors file holds one set of weights, no EMA weights; --use-ema reads the \
             'state_dict_ema' that timm saves in its training checkpoints (.pth.tar): leave it \
             out to read this file's weights"
                .into(),
        )),
    }
}

/// The SHA-256 of the file at `path`, read in chunks, in lowercase hex ([`sha256_hex`]).
pub fn file_sha256(path: &Path) -> Result<String> {
    let cannot = |e: std::io::Error| Error::file(path, format!("cannot read: {e}"));
    let mut file = std::fs::File::open(path).map_err(cannot)?;
    let mut hasher = Sha256::new();
    let mut chunk = vec![0; 1 << 20];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => return Ok(hex(&hasher.finalize())),
            Ok(read) => hasher.update(&chunk[..read]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(cannot(e)),
        }
    }
}

/// The SHA-256 (FIPS 180-4) of `bytes` in lowercase hex, as `sha256sum` prints it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// `bytes` as lowercase hex digits, two per byte.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// What `parse` finds in the bytes of the file at `path`; its errors name the file.
fn read_with<T>(path: &Path, parse: impl FnOnce(&[u8]) -> Result<T>) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    parse(&bytes).map_err(|e| Error::file(path, e.to_string()))
}

/// The tensors of the safetensors file `bytes`, in file order: F32 (F16 and BF16 widened to it
/// exactly), F64 or I64, each holding as many elements as its shape says. Anything else (a
/// truncated or corrupt file, another dtype, offsets that do not tile the data) is an
/// [`Error::Safetensors`] saying what is wrong.
///
/// The crate parses and validates the header. The 8-byte length in front of it is split off
/// here, because safetensors 0.8's `SafeTensors::deserialize` adds the header's data length to
/// it unchecked, which panics (debug builds) on offsets that end near `usize::MAX`.
pub fn parse(bytes: &[u8]) -> Result<TensorFile> {
    let (length, rest) = bytes
        .split_first_chunk::<8>()
        .ok_or_else(|| invalid("shorter than the 8-byte header length"))?;
    let (header, data) = usize::try_from(u64::from_le_bytes(*length))
        .ok()
        .and_then(|length| rest.split_at_checked(length))
        .ok_or_else(|| {
            invalid(format!(
                "the header length {} runs past the end of the {}-byte file (truncated?)",
                u64::from_le_bytes(*length),
                bytes.len()
            ))
        })?;
    let header: Metadata = serde_json::from_slice(header)
        .map_err(|e| invalid(format!("the header is not valid: {e}")))?;
    if header.data_len() != data.len() {
        return Err(invalid(format!(
            "the header describes {} bytes of data, the file holds {} (truncated?)",
            header.data_len(),
            data.len()
        )));
    }
    // In file order; empty tensors share an offset, and go by name among themselves.
    let mut tensors: Vec<(String, &TensorInfo)> = header.tensors().into_iter().collect();
    tensors.sort_by(|(a, a_info), (b, b_info)| {
        (a_info.data_offsets, a).cmp(&(b_info.data_offsets, b))
    });
    tensors
        .into_iter()
        .map(|(name, info)| {
            let tensor = stored_tensor(&name, info, data)?;
            Ok((name, tensor))
        })
        .collect()
}

/// [`Error::Safetensors`] with `detail`.
fn invalid(detail: impl Into<String>) -> Error {
    Error::Safetensors(detail.into())
}

/// The tensor `name`, described by `info`, from the file's `data`: its byte range and size
/// checked against the shape again, so that no size taken from the file goes unchecked here.
fn stored_tensor(name: &str, info: &TensorInfo, data: &[u8]) -> Result<StoredTensor> {
    let (begin, end) = info.data_offsets;
    let raw = data.get(begin..end).ok_or_else(|| {
        invalid(format!(
            "{name}: data [{begin}, {end}) outside the {}-byte data",
            data.len()
        ))
    })?;
    let element_size = element_size(info.dtype).ok_or_else(|| {
        invalid(format!(
            "{name}: dtype {} is not supported (use F32, F64, F16, BF16 or I64)",
            info.dtype
        ))
    })?;
    let size = info
        .shape
        .iter()
        .try_fold(element_size, |size, &dim| size.checked_mul(dim));
    if size != Some(raw.len()) {
        return Err(invalid(format!(
            "{name}: {} bytes for shape {:?} of {}",
            raw.len(),
            info.shape,
            info.dtype
        )));
    }
    Ok(StoredTensor {
        shape: info.shape.clone(),
        data: decode(info.dtype, raw),
    })
}

/// The bytes of one element of `dtype`, for the dtypes a checkpoint may hold: F32, F64, F16,
/// BF16 and I64 (`None` for any other).
pub(crate) fn element_size(dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::F16 | Dtype::BF16 => Some(2),
        Dtype::F32 => Some(4),
        Dtype::F64 | Dtype::I64 => Some(8),
        _ => None,
    }
}

/// The little-endian elements `raw` of `dtype` ([`element_size`] is `Some`), F16 and BF16
/// widened to F32 exactly. A partial element at the end is dropped.
pub(crate) fn decode(dtype: Dtype, raw: &[u8]) -> TensorData {
    match dtype {
        Dtype::F16 => TensorData::F32(decode_le(raw, |bytes| f16::from_le_bytes(bytes).to_f32())),
        Dtype::BF16 => TensorData::F32(decode_le(raw, |bytes| bf16::from_le_bytes(bytes).to_f32())),
        Dtype::F32 => TensorData::F32(decode_le(raw, f32::from_le_bytes)),
        Dtype::F64 => TensorData::F64(decode_le(raw, f64::from_le_bytes)),
        _ => TensorData::I64(decode_le(raw, i64::from_le_bytes)),
    }
}

/// The little-endian elements of `raw`, `N` bytes each.
fn decode_le<const N: usize, T>(raw: &[u8], from_le_bytes: fn([u8; N]) -> T) -> Vec<T> {
    raw.chunks_exact(N)
        .map(|chunk| from_le_bytes(std::array::from_fn(|i| chunk[i])))
        .collect()
}

/// Writes `tensors` as a safetensors file (laid out by the crate: by dtype, then by name),
/// atomically ([`write_atomic`]). Two tensors of one name, or a tensor whose elements do not fill
/// its shape, are an error and nothing is written.
pub fn write(path: &Path, tensors: &[(String, StoredTensor)]) -> Result<()> {
    let bytes = encode(tensors)
        .map_err(|detail| Error::file(path, format!("cannot write as safetensors: {detail}")))?;
    write_atomic(path, &bytes)
}

/// `tensors` in the safetensors format, or what keeps them from it.
fn encode(tensors: &[(String, StoredTensor)]) -> std::result::Result<Vec<u8>, String> {
    let mut names = BTreeSet::new();
    if let Some((name, _)) = tensors.iter().find(|(name, _)| !names.insert(name)) {
        // Checked here: safetensors 0.8 panics on a repeated name.
        return Err(format!("two tensors are named {name}"));
    }
    safetensors::serialize(tensors.iter().map(|(name, tensor)| (name, tensor)), None)
        .map_err(|e| format!("{e} (does every tensor hold as many elements as its shape says?)"))
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

/// Loads a state_dict into `store`. `num_batches_tracked` may be present or absent; F32, F64,
/// F16 and BF16 (read as F32) and, for counters, I64 tensors are accepted. Missing keys,
/// unexpected keys and shape mismatches are reported together in one error.
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

/// The keys a misfit names of each kind; the rest are counted.
const MISFIT_KEYS_NAMED: usize = 4;

/// The error of a checkpoint that does not fit the model: how many keys are missing, unexpected
/// or of another shape, naming the first few of each; `None` when it fits.
fn misfit(missing: &[String], unexpected: &[String], mismatched: &[String]) -> Option<Error> {
    let parts: Vec<String> = [
        (("missing key", "missing keys"), missing),
        (("unexpected key", "unexpected keys"), unexpected),
        (("shape mismatch", "shape mismatches"), mismatched),
    ]
    .into_iter()
    .filter(|(_, keys)| !keys.is_empty())
    .map(|((one, many), keys)| {
        let what = counted(keys.len(), one, many);
        let named = keys[..keys.len().min(MISFIT_KEYS_NAMED)].join(", ");
        match keys.len().saturating_sub(MISFIT_KEYS_NAMED) {
            0 => format!("{what}: {named}"),
            more => format!("{what}: {named} and {more} more"),
        }
    })
    .collect();
    (!parts.is_empty()).then(|| {
        Error::Usage(format!(
            "the checkpoint does not fit the model ({}): it holds another model's weights; \
             give the command the model they were trained as",
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

    #[test]
    fn sha256_is_fips_180_4s_and_a_file_is_hashed_across_its_chunks() {
        // FIPS 180-4's example "abc" (NIST's SHA256.pdf)
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // two whole chunks and a part of a third
        let bytes: Vec<u8> = (0..(5usize << 19) + 3)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &bytes).unwrap();
        assert_eq!(file_sha256(file.path()).unwrap(), sha256_hex(&bytes));
    }

    /// A safetensors file of `header` (JSON) followed by `data`.
    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend(data);
        bytes
    }

    fn rejected(bytes: &[u8]) -> String {
        match parse(bytes) {
            Ok(tensors) => panic!("parsed {tensors:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn what_we_write_parses_back_in_file_order() {
        let tensors: TensorFile = vec![
            (
                "w".into(),
                StoredTensor::from_elements(vec![2], vec![1.5f32, -2.0]),
            ),
            (
                "count".into(),
                StoredTensor {
                    shape: vec![],
                    data: TensorData::I64(vec![7]),
                },
            ),
            ("b".into(), StoredTensor::f64(vec![1, 1], vec![0.1])),
            ("empty".into(), StoredTensor::f64(vec![0, 4], vec![])),
        ];
        let parsed = parse(&encode(&tensors).unwrap()).unwrap();
        // The crate lays tensors out by dtype (widest first), then by name.
        let order: Vec<&str> = parsed.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(order, ["count", "b", "empty", "w"]);
        for (name, tensor) in &tensors {
            assert_eq!(
                parsed.iter().find(|(n, _)| n == name).map(|(_, t)| t),
                Some(tensor)
            );
        }
    }

    #[test]
    fn a_file_cut_short_is_an_error_saying_so() {
        let bytes = encode(&[("w".into(), StoredTensor::f64(vec![4], vec![1.0; 4]))]).unwrap();
        assert!(rejected(&bytes[..5]).contains("8-byte header length"));
        assert!(rejected(&bytes[..20]).contains("runs past the end"));
        let error = rejected(&bytes[..bytes.len() - 8]);
        assert!(
            error.contains("describes 32 bytes of data, the file holds 24"),
            "{error}"
        );
    }

    /// F16 and BF16 values, as `model.half()` or a bfloat16 `state_dict` store them: normals,
    /// subnormals, signed zeros, the extremes and infinities, each read as the `f32` it equals.
    #[test]
    fn half_precision_tensors_are_read_as_the_f32_values_they_hold() {
        let values = [
            1.0f32,
            -2.5,
            0.1,
            65504.0,
            6.0e-8,
            -0.0,
            3.0e-39,
            f32::NEG_INFINITY,
        ];
        let f16s: Vec<u16> = values.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
        let bf16s: Vec<u16> = values
            .iter()
            .map(|&v| bf16::from_f32(v).to_bits())
            .collect();
        let data: Vec<u8> = f16s
            .iter()
            .chain(&bf16s)
            .flat_map(|b| b.to_le_bytes())
            .collect();
        let header = r#"{"h":{"dtype":"F16","shape":[2,4],"data_offsets":[0,16]},
                         "b":{"dtype":"BF16","shape":[8],"data_offsets":[16,32]}}"#;
        let parsed = parse(&file(header, &data)).unwrap();
        let read = |index: usize| -> &Vec<f32> {
            match &parsed[index].1.data {
                TensorData::F32(values) => values,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            (parsed[0].1.shape.clone(), parsed[1].1.shape.clone()),
            (vec![2, 4], vec![8])
        );
        // Exact: each value goes back to its 16 bits, signed zero, subnormals and infinity
        // included.
        let back_f16: Vec<u16> = read(0)
            .iter()
            .map(|&v| f16::from_f32(v).to_bits())
            .collect();
        let back_bf16: Vec<u16> = read(1)
            .iter()
            .map(|&v| bf16::from_f32(v).to_bits())
            .collect();
        assert_eq!((back_f16, back_bf16), (f16s, bf16s.clone()));
        assert_eq!(read(0)[5].to_bits(), (-0.0f32).to_bits());
        assert!(
            read(0)[4] > 0.0 && read(0)[4] < 6.2e-8,
            "an f16 subnormal: {}",
            read(0)[4]
        );
        assert!(
            read(1)[6] > 0.0 && read(1)[6] < f32::MIN_POSITIVE,
            "a bf16 subnormal"
        );
        assert_eq!(read(1)[7], f32::NEG_INFINITY);
        // The widening is the half crate's, value for value.
        let widened: Vec<f32> = bf16s.iter().map(|&b| bf16::from_bits(b).to_f32()).collect();
        assert_eq!(
            read(1).iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            widened.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn headers_that_do_not_describe_their_data_are_errors() {
        let cases = [
            (
                r#"{"w":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}}"#,
                4,
                "dtype I32 is not supported (use F32, F64, F16, BF16 or I64)",
            ),
            (
                r#"{"w":{"dtype":"F16","shape":[3],"data_offsets":[0,4]}}"#,
                4,
                "invalid shape",
            ),
            (
                r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
                4,
                "invalid shape",
            ),
            (
                r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                8,
                "invalid offset",
            ),
            (
                r#"{"w":{"dtype":"F32","shape":[4611686018427387904, 8],"data_offsets":[0,0]}}"#,
                0,
                "overflow",
            ),
            (
                r#"{"w":{"dtype":"F32","shape":[4294967296, 4294967296],"data_offsets":[0,0]}}"#,
                0,
                "overflow",
            ),
            (r#"{"w":{"dtype":"F32"}}"#, 0, "missing field"),
            ("[1, 2]", 0, "header is not valid"),
        ];
        for (header, data_len, expected) in cases {
            let error = rejected(&file(header, &vec![0; data_len]));
            assert!(error.contains(expected), "{header}: {error}");
        }
    }

    #[test]
    fn offsets_that_end_near_the_top_of_usize_are_an_error_not_a_panic() {
        // Sixteen contiguous U8 tensors of almost 2^60 bytes each end 3 bytes below usize::MAX,
        // where safetensors 0.8's own length check would overflow.
        let size = 1usize << 60;
        let tensors: Vec<String> = (0..16)
            .map(|i| {
                let length = if i == 15 { size - 4 } else { size };
                let begin = i * size;
                format!(
                    r#""t{i:02}":{{"dtype":"U8","shape":[{length}],"data_offsets":[{begin},{}]}}"#,
                    begin + length
                )
            })
            .collect();
        let error = rejected(&file(&format!("{{{}}}", tensors.join(",")), &[]));
        assert!(
            error.contains("describes 18446744073709551612 bytes"),
            "{error}"
        );
    }

    #[test]
    fn repeated_names_and_tensors_short_of_their_shape_are_not_written() {
        let one = || StoredTensor::f64(vec![1], vec![1.0]);
        let error = encode(&[("w".into(), one()), ("w".into(), one())]).unwrap_err();
        assert!(error.contains("two tensors are named w"), "{error}");
        let error = encode(&[("w".into(), StoredTensor::f64(vec![3], vec![1.0]))]).unwrap_err();
        assert!(error.contains("as many elements as its shape"), "{error}");
    }
}
