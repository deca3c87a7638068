//! [`DeviceWord`], the CUDA backend's `WordOps::Word`: a fingerprint chain or a count that lives
//! on the device, so that folding a fingerprint into it and comparing two of them never wait for
//! the stream (docs/ARCHITECTURE.md, host-device round trips).
//!
//! A fold launches nothing of its own. The kernel that sums a tensor's fingerprint terms (a
//! neuron's forward as it fires, or `fingerprint_<E>`) adds them into a free slot of the word, and
//! the chain `word = rotl(word, 5) ^ feed(shape_hash, sum)` of the contract's fingerprint
//! (`fingerprint::fold` of `fingerprint::from_hashed_sum`) runs over those pending sums later, in
//! the order they were taken: in `count_unequal` as it compares, on the host in
//! [`DeviceWord::read`], and in `fold_pending_sums` when every slot is taken. Where each fold once cost a zeroed
//! one-element buffer and a one-thread launch, a recorded F or G run of a reversible block now
//! costs its word's one zeroed buffer.

use cudarc::driver::{CudaViewMut, DeviceRepr, PushKernelArg};

use revsnn_reference::contract::fingerprint;

use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::kernels::TENSOR;
use crate::memory::DeviceBuffer;
use crate::ops::ONE_THREAD;

/// The most element sums a word holds before it folds them (`WORD_PENDING_SLOTS` in tensor.cu).
pub const PENDING_SLOTS: usize = 32;

/// The shape hashes of a word's pending sums, in the order they were taken, and how many there
/// are: `struct PendingSums` of tensor.cu, passed by value.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct PendingSums {
    shape_hash: [u64; PENDING_SLOTS],
    count: i64,
}

// SAFETY: plain integers in `#[repr(C)]` order, the layout of `struct PendingSums` in tensor.cu
// (33 64-bit integers, no padding).
unsafe impl DeviceRepr for PendingSums {}

/// A 64-bit word on the device: slot 0 holds the folded chain (or a count), slots `1..=n` the
/// element sums of the `n` tensors fed since the last fold, each zero until its kernel adds to
/// it; the host keeps their shapes' hashes.
#[derive(Debug)]
pub struct DeviceWord {
    slots: DeviceBuffer<u64>,
    pending: Vec<u64>,
}

impl DeviceWord {
    /// A word holding 0, with every slot zeroed (one memset).
    pub fn zero(device: &GpuDevice) -> Result<Self, GpuError> {
        Ok(DeviceWord {
            slots: device.alloc_zeros::<u64>(1 + PENDING_SLOTS)?,
            pending: Vec::with_capacity(PENDING_SLOTS),
        })
    }

    /// The zeroed slot into which a kernel adds the fingerprint terms of a tensor of `shape`,
    /// which the word folds after the sums taken before it. When every slot is taken, the
    /// pending sums are folded first (one `fold_pending_sums` launch).
    pub fn sum_slot(
        &mut self,
        device: &GpuDevice,
        shape: &[usize],
    ) -> Result<CudaViewMut<'_, u64>, GpuError> {
        if self.pending.len() == PENDING_SLOTS {
            self.fold_pending(device)?;
        }
        self.pending.push(fingerprint::shape_hash(shape));
        let slot = self.pending.len();
        Ok(self.slots.slice_mut().slice_mut(slot..slot + 1))
    }

    /// `count += (a != b)`, each word with its pending sums folded (neither changes): one
    /// thread, no wait. A count that has pending sums of its own folds them first.
    pub fn count_unequal(
        device: &GpuDevice,
        count: &mut DeviceWord,
        a: &DeviceWord,
        b: &DeviceWord,
    ) -> Result<(), GpuError> {
        count.fold_pending(device)?;
        let function = device.function(&TENSOR, "count_unequal")?;
        let (a_pending, b_pending) = (a.pending_sums(), b.pending_sums());
        let mut launch = device.stream().launch_builder(&function);
        launch
            .arg(count.slots.slice_mut())
            .arg(a.slots.slice())
            .arg(&a_pending)
            .arg(b.slots.slice())
            .arg(&b_pending);
        // SAFETY: the arguments match `count_unequal(unsigned long long* count, const unsigned
        // long long* a, PendingSums a_pending, const unsigned long long* b, PendingSums
        // b_pending)`; each word holds 1 + PENDING_SLOTS elements and at most PENDING_SLOTS are
        // pending.
        unsafe { launch.launch(ONE_THREAD) }
            .map_err(GpuError::driver("launching count_unequal"))?;
        Ok(())
    }

    /// The word's value on the host, its pending sums folded there: one download (waits for the
    /// stream).
    pub fn read(&self, device: &GpuDevice) -> Result<u64, GpuError> {
        let slots = device.download(&self.slots)?;
        let sums = slots[1..].iter().copied();
        Ok(self
            .pending
            .iter()
            .zip(sums)
            .fold(slots[0], |word, (&hash, sum)| {
                fingerprint::fold(word, fingerprint::from_hashed_sum(hash, sum))
            }))
    }

    /// Folds the pending sums into slot 0 and zeroes their slots (`fold_pending_sums`, one
    /// thread); nothing when none is pending.
    fn fold_pending(&mut self, device: &GpuDevice) -> Result<(), GpuError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let function = device.function(&TENSOR, "fold_pending_sums")?;
        let pending = self.pending_sums();
        let mut launch = device.stream().launch_builder(&function);
        launch.arg(self.slots.slice_mut()).arg(&pending);
        // SAFETY: the arguments match `fold_pending_sums(unsigned long long* word, PendingSums
        // pending)`; the word holds 1 + PENDING_SLOTS elements and at most PENDING_SLOTS are
        // pending.
        unsafe { launch.launch(ONE_THREAD) }
            .map_err(GpuError::driver("launching fold_pending_sums"))?;
        self.pending.clear();
        Ok(())
    }

    /// The kernels' description of the pending sums.
    fn pending_sums(&self) -> PendingSums {
        let mut shape_hash = [0; PENDING_SLOTS];
        shape_hash[..self.pending.len()].copy_from_slice(&self.pending);
        PendingSums {
            shape_hash,
            count: self.pending.len() as i64,
        }
    }
}
