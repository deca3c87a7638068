//! PyTorch's own checkpoint files, as `torch.save` writes them (docs/pytorch-files.md): a
//! `state_dict`, or a training checkpoint's dict that holds one (the official code's `'model'`,
//! timm's `'state_dict'`), read into the same [`TensorFile`] as a safetensors checkpoint. No
//! Python runs and nothing in the file is executed: the pickle is read by a restricted
//! unpickler ([`pickle`]) that only builds values, and the tensors are rebuilt from their
//! storages' bytes in the ZIP archive ([`zip`]) by their sizes, strides and offsets.

pub(crate) mod pickle;
mod tensor;
mod zip;

use std::collections::HashMap;

use self::pickle::{Node, Pickle, Value};
pub(crate) use self::tensor::TensorView;
use self::zip::Entry;
use crate::checkpoint::{self, StoredTensor, TensorFile};
use crate::error::{Error, Result};

/// The entries of a checkpoint dict that may hold its `state_dict`, in the order they are
/// tried: timm's `CheckpointSaver`, the official code's `train.py`, a common third.
const NESTED_KEYS: [&str; 3] = ["state_dict", "model", "model_state_dict"];

/// The entries of a checkpoint dict that may hold the moving average of its weights, in the
/// order timm's `load_state_dict(use_ema=True)` tries them: its `CheckpointSaver`'s, DeiT's.
const EMA_KEYS: [&str; 2] = ["state_dict_ema", "model_ema"];

/// Which weights of a checkpoint to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weights {
    /// The model's `state_dict`.
    Model,
    /// The exponential moving average of the model's weights that timm keeps beside them when
    /// it trains with `--model-ema` (`ModelEmaV2`), under one of [`EMA_KEYS`].
    Ema,
}

/// The most bytes the tensors of a file may hold, as a multiple of the file's: room for
/// tensors that share a storage (tied weights), not for a pickle that names one storage a
/// million times.
const GATHERED_PER_FILE_BYTE: usize = 4;

/// The most characters of a name from the file that an error message shows.
const SHOWN_CHARS: usize = 80;

/// The prefix `DistributedDataParallel` puts before every key of a wrapped model's
/// `state_dict`; removed when every key has it.
const DATA_PARALLEL_PREFIX: &str = "module.";

/// The pickled magic number that starts a file of `torch.save`'s format before torch 1.6:
/// `LONG1` of 10 bytes, `0x1950A86A20F9469CFC6C` (`serialization.py`'s `MAGIC_NUMBER`).
const LEGACY_MAGIC: [u8; 12] = [
    0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
];

/// [`Error::TorchFile`] with `detail`.
fn invalid(detail: impl Into<String>) -> Error {
    Error::TorchFile(detail.into())
}

/// True when `bytes` start as a file of `torch.save` does, of either format ([`state_dict`]
/// reads the one and refuses the other with what to do).
pub fn is_torch_file(bytes: &[u8]) -> bool {
    zip::is_zip(bytes) || is_legacy(bytes)
}

/// True when `bytes` are a file of `torch.save`'s format before torch 1.6, which is not read:
/// `PROTO` 2 to 5, a `FRAME` from protocol 4 on, then the magic number.
fn is_legacy(bytes: &[u8]) -> bool {
    match bytes {
        [0x80, 2 | 3, rest @ ..] => rest.starts_with(&LEGACY_MAGIC),
        [0x80, 4 | 5, 0x95, rest @ ..] => {
            rest.get(8..).is_some_and(|r| r.starts_with(&LEGACY_MAGIC))
        }
        _ => false,
    }
}

/// The unsigned integer whose little-endian bytes are `bytes` (at most 8).
fn little_endian(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0, |value, &b| value << 8 | u64::from(b))
}

/// `text` from the file as an error message shows it: at most [`SHOWN_CHARS`] characters.
fn shown(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// The `state_dict` in the `torch.save` file `bytes`, in its order: for [`Weights::Model`] the
/// file's dict itself when every value is a tensor, else the first of [`NESTED_KEYS`] that
/// holds such a dict; for [`Weights::Ema`] the first of [`EMA_KEYS`] that does. With
/// [`DATA_PARALLEL_PREFIX`] removed when every key has it. F32, F64 and I64 tensors as they
/// are, F16 and BF16 widened to F32 exactly.
pub fn state_dict(bytes: &[u8], which: Weights) -> Result<TensorFile> {
    if is_legacy(bytes) {
        return Err(invalid(
            "saved in the format of torch before 1.6 (or with _use_new_zipfile_serialization=False); \
             load it in Python and save it again with torch.save, or as safetensors",
        ));
    }
    let archive = Archive::open(bytes)?;
    let pickle = Pickle::parse(archive.entry("data.pkl")?)?;
    let views = tensor_views(&pickle, which)?;
    let budget = bytes.len().saturating_mul(GATHERED_PER_FILE_BYTE);
    let total = views
        .iter()
        .try_fold(0usize, |sum, (_, view)| sum.checked_add(view.bytes()?));
    if total.is_none_or(|total| total > budget) {
        return Err(invalid(format!(
            "its tensors would hold more than {GATHERED_PER_FILE_BYTE} times the file's {} bytes \
             (views that name the same storage many times)",
            bytes.len()
        )));
    }
    views
        .into_iter()
        .map(|(key, view)| {
            let tensor = archive.tensor(&view, &key)?;
            Ok((key, tensor))
        })
        .collect()
}

/// The tensors of the `state_dict` that the unpickled `data.pkl` holds, by key, as views of
/// their storages.
pub(crate) fn tensor_views(pickle: &Pickle, which: Weights) -> Result<Vec<(String, TensorView)>> {
    let items = find_state_dict(pickle, which)?;
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
            let view = TensorView::of(pickle, value)
                .map_err(|e| invalid(format!("{}: {e}", shown(key))))?;
            Ok((key.to_string(), view))
        })
        .collect()
}

/// The entries of a `torch.save` archive: `PREFIX/data.pkl`, `PREFIX/byteorder` and the storages
/// `PREFIX/data/KEY` (PREFIX is the file's name without its extension when it was saved, or
/// `archive`).
pub(crate) struct Archive<'a> {
    entries: HashMap<String, Entry<'a>>,
    prefix: String,
}

impl<'a> Archive<'a> {
    /// The archive `bytes`, refused when it is not one of `torch.save` (no `data.pkl`), is a
    /// TorchScript archive or holds big-endian storages.
    pub(crate) fn open(bytes: &'a [u8]) -> Result<Self> {
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
    pub(crate) fn entry(&self, name: &str) -> Result<&'a [u8]> {
        let path = format!("{}{name}", self.prefix);
        match self.entries.get(&path) {
            Some(Entry::Stored(data)) => Ok(data),
            Some(Entry::Unread(why)) => Err(invalid(format!(
                "entry {} is {why} (torch.save stores its entries as they are; save the file \
                 again with torch.save)",
                shown(&path)
            ))),
            None => Err(invalid(format!(
                "the archive has no entry {}",
                shown(&path)
            ))),
        }
    }

    /// The tensor `key` that `view` describes, its elements gathered from its storage into
    /// row-major order.
    fn tensor(&self, view: &TensorView, key: &str) -> Result<StoredTensor> {
        let storage = self.entry(&format!("data/{}", view.storage.key))?;
        let raw = view
            .gather(storage)
            .map_err(|e| invalid(format!("{}: {e}", shown(key))))?;
        Ok(StoredTensor {
            data: checkpoint::decode(view.storage.dtype, &raw),
            shape: view.size.clone(),
        })
    }
}

/// The dict of tensors by name that the file holds as the weights `which`: the model's
/// ([`model_state_dict`]) or their moving average ([`ema_state_dict`]).
fn find_state_dict(pickle: &Pickle, which: Weights) -> Result<Vec<(&str, &Value)>> {
    let root = pickle.dict(&pickle.root).ok_or_else(|| {
        invalid(format!(
            "the file holds {}, not a dict, so no state_dict",
            what_it_is(pickle, &pickle.root)
        ))
    })?;
    match which {
        Weights::Model => model_state_dict(pickle, &root),
        Weights::Ema => ema_state_dict(pickle, &root),
    }
}

/// The model's weights: the file's dict `root`, else the first of its [`NESTED_KEYS`] that
/// holds a dict of tensors; a file's dict that mixes tensors with other values is an error only
/// when no nested key holds a `state_dict` (a checkpoint may keep a metric as a tensor beside
/// one).
fn model_state_dict<'p>(
    pickle: &'p Pickle,
    root: &[(&'p Value, &'p Value)],
) -> Result<Vec<(&'p str, &'p Value)>> {
    let own = tensors_by_name(pickle, root);
    if let Ok(Some(tensors)) = own {
        return Ok(tensors);
    }
    if let Some(tensors) = nested_state_dict(pickle, root, &NESTED_KEYS)? {
        return Ok(tensors);
    }
    own?;
    Err(invalid(no_state_dict(pickle, root)))
}

/// The moving average of the weights: the first of [`EMA_KEYS`] that holds a dict of tensors,
/// an entry that holds `None` (timm's for a run without one) passed over as timm passes it. A
/// file without one is an error saying what its entries hold: the file is readable, the flag
/// asks for what it has not.
fn ema_state_dict<'p>(
    pickle: &'p Pickle,
    root: &[(&'p Value, &'p Value)],
) -> Result<Vec<(&'p str, &'p Value)>> {
    nested_state_dict(pickle, root, &EMA_KEYS)?.ok_or_else(|| {
        Error::Usage(format!(
            "no EMA weights: neither 'state_dict_ema' (timm's) nor 'model_ema' (DeiT's) is a \
             dict of tensors by name (the file's keys: {}{}); leave out --use-ema to read the \
             model's own state_dict",
            keys_of(root),
            entries_held(pickle, root, &EMA_KEYS, |_| true)
        ))
    })
}

/// The first of the entries `keys` of the dict `root` that is a dict of tensors by name.
fn nested_state_dict<'p>(
    pickle: &'p Pickle,
    root: &[(&'p Value, &'p Value)],
    keys: &[&str],
) -> Result<Option<Vec<(&'p str, &'p Value)>>> {
    for wanted in keys {
        let Some(value) = entry(root, wanted) else {
            continue;
        };
        if let Some(tensors) = pickle
            .dict(value)
            .map(|items| tensors_by_name(pickle, &items))
            .transpose()?
            .flatten()
        {
            return Ok(Some(tensors));
        }
    }
    Ok(None)
}

/// The first keys of the dict `root`, as an error message lists them.
fn keys_of(root: &[(&Value, &Value)]) -> String {
    let keys: Vec<String> = root.iter().take(12).map(|(k, _)| describe(k)).collect();
    let more = if root.len() > keys.len() { ", ..." } else { "" };
    format!("{}{more}", keys.join(", "))
}

/// Why a dict holds no `state_dict`: its keys, and what its nested keys hold instead.
fn no_state_dict(pickle: &Pickle, root: &[(&Value, &Value)]) -> String {
    let object = |value: &Value| matches!(pickle.node(value), Some(Node::Call { .. }));
    format!(
        "no state_dict: neither the file's dict (keys {}) nor its entries 'state_dict', \
         'model' or 'model_state_dict' is a dict of tensors by name{}",
        keys_of(root),
        entries_held(pickle, root, &NESTED_KEYS, object)
    )
}

/// What the entries `keys` of the dict `root` hold, those that `worth_saying` picks, as the tail
/// of a message: "; its 'model' holds an object of ...".
fn entries_held(
    pickle: &Pickle,
    root: &[(&Value, &Value)],
    keys: &[&str],
    worth_saying: impl Fn(&Value) -> bool,
) -> String {
    let held = keys.iter().filter_map(|wanted| {
        let value = entry(root, wanted).filter(|value| worth_saying(value))?;
        Some(format!(
            "; its '{wanted}' holds {}",
            what_it_is(pickle, value)
        ))
    });
    held.collect()
}

/// The value of the string key `wanted` among `items`.
fn entry<'p>(items: &[(&'p Value, &'p Value)], wanted: &str) -> Option<&'p Value> {
    let (_, value) = items
        .iter()
        .find(|(key, _)| matches!(key, Value::Str(key) if &**key == wanted))?;
    Some(value)
}

/// What a value that is not a dict is, for a message: an object of a class (a whole model saved
/// with `torch.save(model)`, which needs its code to load) or something else.
fn what_it_is(pickle: &Pickle, value: &Value) -> String {
    match pickle.node(value) {
        Some(Node::Call { callable, .. }) => match pickle.global(callable) {
            Some((module, name)) => format!(
                "an object of {}.{} (a whole model? save model.state_dict() with torch.save \
                 instead)",
                shown(module),
                shown(name)
            ),
            None => "an object".to_string(),
        },
        Some(Node::List(_)) => "a list".to_string(),
        Some(Node::Tuple(_)) => "a tuple".to_string(),
        None if matches!(value, Value::None) => "None".to_string(),
        _ => "a single value".to_string(),
    }
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
        Value::Str(text) => format!("'{}'", shown(text)),
        Value::Int(n) => n.to_string(),
        _ => "(not a string)".to_string(),
    }
}
