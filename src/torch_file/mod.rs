//! PyTorch's own checkpoint files, as `torch.save` writes them (docs/pytorch-files.md): a
//! `state_dict`, or a training checkpoint's dict that holds one (the official code's `'model'`,
//! timm's `'state_dict'`), read into the same [`TensorFile`] as a safetensors checkpoint. No
//! Python runs and nothing in the file is executed: the pickle is read by a restricted
//! unpickler ([`pickle`]) that only builds values, and the tensors are rebuilt from their
//! storages' bytes in the ZIP archive ([`zip`]) by their sizes, strides and offsets.

pub(crate) mod pickle;
pub(crate) mod zip;

use std::collections::HashMap;

use safetensors::Dtype;

use self::pickle::{Node, Pickle, Value};
use self::zip::Entry;
use crate::checkpoint::{self, StoredTensor, TensorFile};
use crate::error::{Error, Result};

pub use self::zip::is_zip;

/// The entries of a checkpoint dict that may hold its `state_dict`, in the order they are
/// tried: timm's `CheckpointSaver`, the official code's `train.py`, a common third.
pub const NESTED_KEYS: [&str; 3] = ["state_dict", "model", "model_state_dict"];

/// The prefix `DistributedDataParallel` puts before every key of a wrapped model's
/// `state_dict`; removed when every key has it.
const DATA_PARALLEL_PREFIX: &str = "module.";

/// The start of a file of `torch.save`'s format before torch 1.6 (a pickled magic number).
const LEGACY_MAGIC: [u8; 14] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
];

/// [`Error::TorchFile`] with `detail`.
fn invalid(detail: impl Into<String>) -> Error {
    Error::TorchFile(detail.into())
}

/// True when `bytes` are a file of `torch.save`'s format before torch 1.6, which is not read.
pub fn is_legacy(bytes: &[u8]) -> bool {
    bytes.starts_with(&LEGACY_MAGIC)
}

/// The `state_dict` in the `torch.save` file `bytes`, in its order: the file's dict itself when
/// every value is a tensor, else the first of [`NESTED_KEYS`] that holds such a dict; with
/// [`DATA_PARALLEL_PREFIX`] removed when every key has it. F32, F64 and I64 tensors as they
/// are, F16 and BF16 widened to F32 exactly.
pub fn state_dict(bytes: &[u8]) -> Result<TensorFile> {
    if is_legacy(bytes) {
        return Err(invalid(
            "saved in the format of torch before 1.6 (or with _use_new_zipfile_serialization=False); \
             load it in Python and save it again with torch.save, or as safetensors",
        ));
    }
    let archive = Archive::open(bytes)?;
    let pickle = Pickle::parse(archive.entry("data.pkl")?)?;
    tensor_views(&pickle)?
        .into_iter()
        .map(|(key, view)| {
            let tensor = archive.tensor(&view, &key)?;
            Ok((key, tensor))
        })
        .collect()
}

/// The tensors of the `state_dict` that the unpickled `data.pkl` holds, by key, as views of
/// their storages.
pub(crate) fn tensor_views(pickle: &Pickle) -> Result<Vec<(String, TensorView)>> {
    let items = find_state_dict(pickle)?;
    let strip = items
        .iter()
        .all(|(key, _)| key.starts_with(DATA_PARALLEL_PREFIX));
    items
        .into_iter()
        .map(|(key, value)| {
            let key = if strip {
                &key[DATA_PARALLEL_PREFIX.len()..]
            } else {
                key
            };
            let view = TensorView::of(pickle, value).map_err(|e| invalid(format!("{key}: {e}")))?;
            Ok((key.to_string(), view))
        })
        .collect()
}

/// The entries of a `torch.save` archive: `PREFIX/data.pkl`, `PREFIX/byteorder` and the storages
/// `PREFIX/data/KEY` (PREFIX is the file's name without its extension when it was saved, or
/// `archive`).
struct Archive<'a> {
    entries: HashMap<String, Entry<'a>>,
    prefix: String,
}

impl<'a> Archive<'a> {
    fn open(bytes: &'a [u8]) -> Result<Self> {
        let entries = zip::entries(bytes)?;
        let prefix = entries
            .keys()
            .filter_map(|name| name.strip_suffix("data.pkl"))
            .filter(|prefix| prefix.ends_with('/') && prefix.matches('/').count() == 1)
            .min()
            .ok_or_else(|| invalid("a ZIP archive without data.pkl, so not a file of torch.save"))?
            .to_string();
        let archive = Archive { entries, prefix };
        if archive.has("constants.pkl") {
            return Err(invalid(
                "a TorchScript archive (torch.jit.save); save the model's state_dict with \
                 torch.save instead",
            ));
        }
        if !archive.has("byteorder") {
            return Ok(archive);
        }
        match archive.entry("byteorder")? {
            b"little" => Ok(archive),
            other => Err(invalid(format!(
                "the tensors are stored in {} byte order; only little-endian files are read",
                String::from_utf8_lossy(other)
            ))),
        }
    }

    /// True when the archive has the entry `name` under its prefix.
    fn has(&self, name: &str) -> bool {
        self.entries.contains_key(&format!("{}{name}", self.prefix))
    }

    /// The bytes of the entry `name` under the archive's prefix.
    fn entry(&self, name: &str) -> Result<&'a [u8]> {
        let path = format!("{}{name}", self.prefix);
        match self.entries.get(&path) {
            Some(Entry::Stored(data)) => Ok(data),
            Some(Entry::Unread(why)) => Err(invalid(format!(
                "entry {path} is {why} (torch.save stores its entries as they are; save the file \
                 again with torch.save)"
            ))),
            None => Err(invalid(format!("the archive has no entry {path}"))),
        }
    }

    /// The tensor `key` that `view` describes, its elements gathered from its storage into
    /// row-major order.
    fn tensor(&self, view: &TensorView, key: &str) -> Result<StoredTensor> {
        let storage = self.entry(&format!("data/{}", view.storage.key))?;
        let raw = view
            .gather(storage)
            .map_err(|e| invalid(format!("{key}: {e}")))?;
        Ok(StoredTensor {
            data: checkpoint::decode(view.storage.dtype, &raw),
            shape: view.size.clone(),
        })
    }
}

/// The dict of tensors the file holds: the file's dict or one of its [`NESTED_KEYS`].
fn find_state_dict(pickle: &Pickle) -> Result<Vec<(&str, &Value)>> {
    let root = pickle
        .dict(&pickle.root)
        .ok_or_else(|| invalid("the file holds no dict, so no state_dict"))?;
    if let Some(tensors) = tensors_by_name(pickle, &root)? {
        return Ok(tensors);
    }
    for wanted in NESTED_KEYS {
        let nested = root
            .iter()
            .find(|(key, _)| matches!(key, Value::Str(key) if &**key == wanted))
            .and_then(|(_, value)| pickle.dict(value));
        let Some(items) = nested else {
            continue;
        };
        if let Some(tensors) = tensors_by_name(pickle, &items)? {
            return Ok(tensors);
        }
    }
    let keys: Vec<String> = root.iter().take(12).map(|(k, _)| describe(k)).collect();
    Err(invalid(format!(
        "no state_dict: neither the file's dict (keys {}{}) nor its entry {} is a dict of \
         tensors by name",
        keys.join(", "),
        if root.len() > keys.len() { ", ..." } else { "" },
        NESTED_KEYS.join(", ")
    )))
}

/// `items` by name when every key is a string and every value a tensor; `None` when no value is
/// a tensor (not a `state_dict`); an error naming the first other item of a dict that holds
/// tensors.
fn tensors_by_name<'p>(
    pickle: &'p Pickle,
    items: &[(&'p Value, &'p Value)],
) -> Result<Option<Vec<(&'p str, &'p Value)>>> {
    if !items
        .iter()
        .any(|(_, value)| TensorView::is_tensor(pickle, value))
    {
        return Ok(None);
    }
    let tensors = items.iter().map(|&(key, value)| match key {
        Value::Str(name) if TensorView::is_tensor(pickle, value) => Ok((&**name, value)),
        _ => Err(invalid(format!(
            "the state_dict's entry {} is not a tensor of a kind revsnn reads (plain and \
             nn.Parameter tensors are; quantized or subclassed tensors and extra state are not)",
            describe(key)
        ))),
    });
    tensors.collect::<Result<Vec<_>>>().map(Some)
}

/// A key as an error message shows it.
fn describe(key: &Value) -> String {
    match key {
        Value::Str(text) => format!("'{text}'"),
        Value::Int(n) => n.to_string(),
        _ => "(not a string)".to_string(),
    }
}

/// A tensor as `_rebuild_tensor_v2` describes it (a call of it, or of `_rebuild_parameter` on
/// one): a view of a storage.
pub(crate) struct TensorView {
    storage: Storage,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// What a storage's persistent id says: `('storage', torch.<T>Storage, key, location, numel)`.
struct Storage {
    dtype: Dtype,
    key: String,
    elements: usize,
}

impl TensorView {
    /// True when `value` is a call that rebuilds a tensor.
    fn is_tensor(pickle: &Pickle, value: &Value) -> bool {
        Self::rebuild_call(pickle, value).is_some()
    }

    /// The arguments of `_rebuild_tensor_v2` that `value` calls, directly or inside
    /// `_rebuild_parameter` (a `torch.nn.Parameter`).
    fn rebuild_call<'p>(pickle: &'p Pickle, value: &'p Value) -> Option<&'p [Value]> {
        let Some(Node::Call { callable, args }) = pickle.node(value) else {
            return None;
        };
        let args = pickle.tuple(args)?;
        match pickle.global(callable)? {
            ("torch._utils", "_rebuild_tensor_v2") => Some(args),
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                match pickle.node(args.first()?) {
                    Some(Node::Call { callable, args }) => {
                        let rebuild = pickle.global(callable)?;
                        (rebuild == ("torch._utils", "_rebuild_tensor_v2"))
                            .then(|| pickle.tuple(args))
                            .flatten()
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    fn of(pickle: &Pickle, value: &Value) -> std::result::Result<Self, String> {
        let args = Self::rebuild_call(pickle, value).ok_or("not a tensor")?;
        let [storage, offset, size, stride, ..] = args else {
            return Err("_rebuild_tensor_v2 with fewer than 4 arguments".into());
        };
        let numbers = |value: &Value, what: &str| -> std::result::Result<Vec<usize>, String> {
            let items = pickle
                .tuple(value)
                .ok_or(format!("its {what} is not a tuple"))?;
            items.iter().map(|item| count(item, what)).collect()
        };
        let view = TensorView {
            storage: Storage::of(pickle, storage)?,
            offset: count(offset, "storage offset")?,
            size: numbers(size, "size")?,
            stride: numbers(stride, "stride")?,
        };
        if view.size.len() != view.stride.len() {
            return Err(format!(
                "size {:?} and stride {:?} differ in length",
                view.size, view.stride
            ));
        }
        Ok(view)
    }

    /// The view's elements in row-major order, as little-endian bytes. The view must lie inside
    /// the storage and hold no more elements than it (a broadcast view is refused).
    fn gather(&self, storage: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let width = checkpoint::element_size(self.storage.dtype).ok_or("no element size")?;
        let elements = self.storage.elements;
        if storage.len() / width < elements {
            return Err(format!(
                "its storage has {} bytes, fewer than {elements} elements of {}",
                storage.len(),
                self.storage.dtype
            ));
        }
        let count = self.size.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let last = self
            .size
            .iter()
            .zip(&self.stride)
            .try_fold(self.offset, |at, (&d, &s)| {
                at.checked_add(d.saturating_sub(1).checked_mul(s)?)
            });
        match (count, last) {
            (Some(0), _) => return Ok(Vec::new()),
            (Some(count), Some(last)) if count <= elements && last < elements => {}
            _ => {
                return Err(format!(
                    "size {:?}, stride {:?} and offset {} reach past its storage of {elements} \
                     elements, or hold more than it (save tensor.contiguous() instead)",
                    self.size, self.stride, self.offset
                ));
            }
        }
        let mut raw = Vec::with_capacity(count.unwrap_or(0) * width);
        let mut index = vec![0usize; self.size.len()];
        loop {
            let at: usize = self.offset
                + index
                    .iter()
                    .zip(&self.stride)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            raw.extend_from_slice(&storage[at * width..(at + 1) * width]);
            if !next_index(&mut index, &self.size) {
                return Ok(raw);
            }
        }
    }
}

impl Storage {
    fn of(pickle: &Pickle, value: &Value) -> std::result::Result<Self, String> {
        let Some(Node::Persistent(id)) = pickle.node(value) else {
            return Err("its storage is not a persistent id".into());
        };
        let Some([Value::Str(kind), class, Value::Str(key), _location, numel]) = pickle.tuple(id)
        else {
            return Err("its storage's id is not ('storage', type, key, location, numel)".into());
        };
        if &**kind != "storage" {
            return Err(format!("a persistent id of kind '{kind}'"));
        }
        let dtype = match pickle.global(class) {
            Some(("torch", "FloatStorage")) => Dtype::F32,
            Some(("torch", "DoubleStorage")) => Dtype::F64,
            Some(("torch", "HalfStorage")) => Dtype::F16,
            Some(("torch", "BFloat16Storage")) => Dtype::BF16,
            Some(("torch", "LongStorage")) => Dtype::I64,
            Some((module, name)) => {
                return Err(format!(
                    "storage type {module}.{name} is not read (float32, float64, float16, \
                     bfloat16 and int64 are)"
                ));
            }
            None => return Err("its storage type is not a global".into()),
        };
        Ok(Storage {
            dtype,
            key: key.to_string(),
            elements: count(numel, "storage size")?,
        })
    }
}

/// A non-negative integer of the pickle.
fn count(value: &Value, what: &str) -> std::result::Result<usize, String> {
    match value {
        Value::Int(n) => usize::try_from(*n).map_err(|_| format!("its {what} {n} is negative")),
        _ => Err(format!("its {what} is not an integer")),
    }
}

/// Steps `index` to the next row-major position within `size`; false after the last.
fn next_index(index: &mut [usize], size: &[usize]) -> bool {
    for (i, &extent) in index.iter_mut().zip(size).rev() {
        *i += 1;
        if *i < extent {
            return true;
        }
        *i = 0;
    }
    false
}
