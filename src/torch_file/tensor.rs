//! Tensors as `torch.save` pickles them (docs/pytorch-files.md §3): a call of
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`, or of
//! `_rebuild_parameter` on one, over a storage named by a persistent id; and their elements,
//! gathered from the storage's bytes into row-major order.

use std::rc::Rc;

use safetensors::Dtype;

use super::pickle::{Node, Pickle, Value};
use super::shown;
use crate::checkpoint;

/// The most dimensions a tensor read may have (the models' have at most 5).
const MAX_RANK: usize = 16;

/// A tensor as `_rebuild_tensor_v2` describes it: a view of a storage.
#[derive(Debug)]
pub(crate) struct TensorView {
    pub storage: Storage,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

/// What a storage's persistent id says: `('storage', torch.<T>Storage, key, location, numel)`.
#[derive(Debug)]
pub(crate) struct Storage {
    pub dtype: Dtype,
    /// The bytes of one element of `dtype`.
    pub width: usize,
    /// The storage's bytes are the archive's entry `data/KEY`.
    pub key: Rc<str>,
    pub elements: usize,
}

impl TensorView {
    /// True when `value` is a call that rebuilds a tensor.
    pub fn is_tensor(pickle: &Pickle, value: &Value) -> bool {
        Self::rebuild_call(pickle, value).is_some()
    }

    /// The arguments of `_rebuild_tensor_v2` that `value` calls, directly or inside
    /// `_rebuild_parameter` (a `torch.nn.Parameter`).
    fn rebuild_call<'p>(pickle: &'p Pickle, value: &'p Value) -> Option<&'p [Value]> {
        let (callable, args) = call(pickle, value)?;
        match callable {
            ("torch._utils", "_rebuild_tensor_v2") => Some(args),
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                match call(pickle, args.first()?)? {
                    (("torch._utils", "_rebuild_tensor_v2"), args) => Some(args),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The view `value` describes, or what keeps it from being one revsnn reads.
    pub fn of(pickle: &Pickle, value: &Value) -> Result<Self, String> {
        let args = Self::rebuild_call(pickle, value).ok_or("not a tensor")?;
        let [storage, offset, size, stride, ..] = args else {
            return Err("_rebuild_tensor_v2 with fewer than 4 arguments".into());
        };
        let dims = |value: &Value, what: &str| -> Result<Vec<usize>, String> {
            let items = pickle
                .tuple(value)
                .ok_or(format!("its {what} is not a tuple"))?;
            if items.len() > MAX_RANK {
                return Err(format!(
                    "{} dimensions (at most {MAX_RANK} are read)",
                    items.len()
                ));
            }
            items.iter().map(|item| count(item, what)).collect()
        };
        let view = TensorView {
            storage: Storage::of(pickle, storage)?,
            offset: count(offset, "storage offset")?,
            size: dims(size, "size")?,
            stride: dims(stride, "stride")?,
        };
        if view.size.len() != view.stride.len() {
            return Err(format!(
                "size {:?} and stride {:?} differ in length",
                view.size, view.stride
            ));
        }
        Ok(view)
    }

    /// The bytes of the view's elements.
    pub fn bytes(&self) -> Option<usize> {
        let count = self.size.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        count?.checked_mul(self.storage.width)
    }

    /// The view's elements in row-major order, as little-endian bytes, from the storage's
    /// `storage`. The view must lie inside the storage and hold no more elements than it (a
    /// broadcast view larger than its storage is refused).
    pub fn gather(&self, storage: &[u8]) -> Result<Vec<u8>, String> {
        let (width, elements) = (self.storage.width, self.storage.elements);
        if storage.len() / width < elements {
            return Err(format!(
                "its storage has {} bytes, fewer than {elements} elements of {}",
                storage.len(),
                self.storage.dtype
            ));
        }
        let count = self.size.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if count == Some(0) {
            return Ok(Vec::new());
        }
        if count.is_none_or(|count| count > elements) {
            return Err(format!(
                "size {:?} holds more elements than its storage's {elements} (a broadcast view; \
                 save tensor.contiguous() instead)",
                self.size
            ));
        }
        let last = self
            .size
            .iter()
            .zip(&self.stride)
            .try_fold(self.offset, |at, (&d, &s)| {
                at.checked_add((d - 1).checked_mul(s)?)
            });
        if last.is_none_or(|last| last >= elements) {
            return Err(format!(
                "size {:?}, stride {:?} and offset {} reach past its storage of {elements} \
                 elements (a corrupt file?)",
                self.size, self.stride, self.offset
            ));
        }
        // within the storage's bytes, as checked above
        let len = count.unwrap_or(0) * width;
        if self.is_row_major() {
            return Ok(storage[self.offset * width..][..len].to_vec());
        }
        let mut raw = Vec::with_capacity(len);
        let mut index = vec![0usize; self.size.len()];
        loop {
            let steps = index.iter().zip(&self.stride).map(|(i, s)| i * s);
            let at = self.offset + steps.sum::<usize>();
            raw.extend_from_slice(&storage[at * width..(at + 1) * width]);
            if !next_index(&mut index, &self.size) {
                return Ok(raw);
            }
        }
    }

    /// True when the view's elements lie in row-major order, one after another (the strides of
    /// its size, those of dimensions of one element aside): a parameter as `torch.save` writes
    /// it, read as one slice.
    fn is_row_major(&self) -> bool {
        let mut expected = 1usize;
        for (&d, &s) in self.size.iter().zip(&self.stride).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected = expected.saturating_mul(d);
        }
        true
    }
}

impl Storage {
    /// The storage a persistent id describes; its element type must be one a checkpoint holds.
    fn of(pickle: &Pickle, value: &Value) -> Result<Self, String> {
        let Some(Node::Persistent(id)) = pickle.node(value) else {
            return Err("its storage is not a persistent id".into());
        };
        let Some([Value::Str(kind), class, Value::Str(key), _location, numel]) = pickle.tuple(id)
        else {
            return Err("its storage's id is not ('storage', type, key, location, numel)".into());
        };
        if &**kind != "storage" {
            return Err(format!("a persistent id of kind '{}'", shown(kind)));
        }
        let dtype = match pickle.global(class) {
            Some(("torch", "FloatStorage")) => Dtype::F32,
            Some(("torch", "DoubleStorage")) => Dtype::F64,
            Some(("torch", "HalfStorage")) => Dtype::F16,
            Some(("torch", "BFloat16Storage")) => Dtype::BF16,
            Some(("torch", "LongStorage")) => Dtype::I64,
            Some((module, name)) => {
                return Err(format!(
                    "storage type {}.{} is not read (float32, float64, float16, bfloat16 and \
                     int64 are)",
                    shown(module),
                    shown(name)
                ));
            }
            None => return Err("its storage type is not a global".into()),
        };
        Ok(Storage {
            dtype,
            width: checkpoint::element_size(dtype).unwrap_or(1),
            key: Rc::clone(key),
            elements: count(numel, "storage size")?,
        })
    }
}

/// `((module, name), args)` when `value` is a call of a global with a tuple of arguments.
fn call<'p>(pickle: &'p Pickle, value: &Value) -> Option<((&'p str, &'p str), &'p [Value])> {
    let Some(Node::Call { callable, args }) = pickle.node(value) else {
        return None;
    };
    Some((pickle.global(callable)?, pickle.tuple(args)?))
}

/// A non-negative integer of the pickle.
fn count(value: &Value, what: &str) -> Result<usize, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A view of an f32 storage of `elements` elements.
    fn view(elements: usize, offset: usize, size: &[usize], stride: &[usize]) -> TensorView {
        TensorView {
            storage: Storage {
                dtype: Dtype::F32,
                width: 4,
                key: "0".into(),
                elements,
            },
            offset,
            size: size.to_vec(),
            stride: stride.to_vec(),
        }
    }

    /// The storage `0.0, 1.0, ...` of `n` f32s.
    fn storage(n: usize) -> Vec<u8> {
        (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
    }

    fn floats(raw: &[u8]) -> Vec<f32> {
        match checkpoint::decode(Dtype::F32, raw) {
            checkpoint::TensorData::F32(values) => values,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn views_gather_by_offset_and_stride() {
        let data = storage(12);
        // the transpose of the row-major 3x4 matrix: a [4, 3] view with stride (1, 4)
        let transposed = view(12, 0, &[4, 3], &[1, 4]).gather(&data).unwrap();
        assert_eq!(
            floats(&transposed),
            [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]
        );
        // the last element alone, a 0-d tensor at the end of the storage
        assert_eq!(
            floats(&view(12, 11, &[], &[]).gather(&data).unwrap()),
            [11.]
        );
        // row-major views, one slice each: a slice of rows, a row with a stride-free dimension
        assert_eq!(
            floats(&view(12, 4, &[2, 4], &[4, 1]).gather(&data).unwrap()),
            [4., 5., 6., 7., 8., 9., 10., 11.]
        );
        assert_eq!(
            floats(&view(12, 2, &[1, 3], &[99, 1]).gather(&data).unwrap()),
            [2., 3., 4.]
        );
        // an empty view with an offset past the end reads nothing
        assert!(
            view(12, 99, &[0, 3], &[3, 1])
                .gather(&data)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn views_outside_their_storage_or_larger_than_it_are_refused() {
        let data = storage(12);
        let past = |offset, size: &[usize], stride: &[usize]| {
            view(12, offset, size, stride).gather(&data).unwrap_err()
        };
        assert!(past(1, &[12], &[1]).contains("reach past"));
        assert!(past(0, &[2, 2], &[usize::MAX, 1]).contains("reach past"));
        assert!(past(12, &[], &[]).contains("reach past"));
        assert!(past(0, &[4, 4], &[0, 1]).contains("broadcast"));
        assert!(past(0, &[usize::MAX, 2], &[0, 0]).contains("broadcast"));
        let short = view(13, 0, &[13], &[1]).gather(&data).unwrap_err();
        assert!(short.contains("fewer than 13 elements"), "{short}");
    }
}
