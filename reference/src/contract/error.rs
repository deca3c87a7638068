//! Typed errors of the op contract. Every op validates its inputs and reports a bad shape or an
//! invalid parameter as an [`OpError`], never as a panic; a failure of the device a backend runs
//! on is a typed [`DeviceError`] inside it, so a caller can match out-of-memory above the ops.

use thiserror::Error;

/// What went wrong in an op, with a message that says what to do.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum OpError {
    /// Input shapes that do not fit the op.
    #[error("{op}: shape mismatch: {detail}")]
    ShapeMismatch { op: &'static str, detail: String },
    /// A parameter outside its valid range.
    #[error("{op}: invalid parameter {name} = {value}: {requirement}")]
    InvalidParameter {
        op: &'static str,
        name: &'static str,
        value: String,
        requirement: &'static str,
    },
    /// A failure of the device a backend runs on (no device, out of memory, a kernel error).
    #[error("{backend}: {error}")]
    Device {
        backend: &'static str,
        error: DeviceError,
    },
}

/// What went wrong on a device, with a message that says what to do.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DeviceError {
    /// The device has no room for an allocation.
    #[error(
        "out of device memory: {requested_bytes} more bytes requested with {free_bytes} free \
         ({live_bytes} in live tensors on a {total_bytes}-byte device); use a smaller --batch, \
         fewer time steps, or a reversible model (it keeps no activations for the backward)"
    )]
    OutOfMemory {
        /// The bytes of the allocation that failed.
        requested_bytes: usize,
        /// The bytes the driver reports free right after the failure (`cuMemGetInfo`), once a
        /// caching pool has released the blocks it could (free ranges between live buffers in
        /// the blocks it keeps count as used), or where the driver cannot say, the device's
        /// bytes less this process's live tensors.
        free_bytes: usize,
        /// The bytes of this process's live tensors on the device.
        live_bytes: usize,
        /// The device's memory.
        total_bytes: usize,
    },
    /// The device cannot be used: a library or the device itself is missing, or a setting of the
    /// backend is wrong. The reason says what to install or change.
    #[error("{reason}")]
    Unavailable { reason: String },
    /// The host waited for the device past the limit that a rank of a run on GPUs (`--gpus`, or
    /// under torchrun) sets on every wait (`--rank-timeout`): its queue waits on a collective
    /// that another rank never joined. Every later wait of that device fails with the first
    /// one's error.
    #[error(
        "the device did not finish its queued work within {limit:?} ({during}): it waits for a \
         collective that another rank never joined, so that rank died or hangs (its own output \
         says why); if the ranks are only slow, raise --rank-timeout, which sets this limit"
    )]
    Stalled {
        /// What the host waited for when the limit ran out.
        during: &'static str,
        /// The limit.
        limit: std::time::Duration,
    },
    /// A call on the device failed: a kernel that did not compile or launch, a library call, an
    /// asynchronous error surfacing at a synchronisation.
    #[error(
        "{detail}; a failure of the device or its libraries, not of the op's inputs: check that \
         `revsnn info` finds the device (the README's \"Running on a GPU\" lists the libraries it \
         needs), and report this message if it does"
    )]
    Failed { detail: String },
}

impl OpError {
    /// A [`OpError::ShapeMismatch`] of `op`.
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        OpError::ShapeMismatch {
            op,
            detail: detail.into(),
        }
    }

    /// An [`OpError::InvalidParameter`] of `op`.
    pub fn parameter(
        op: &'static str,
        name: &'static str,
        value: impl ToString,
        requirement: &'static str,
    ) -> Self {
        OpError::InvalidParameter {
            op,
            name,
            value: value.to_string(),
            requirement,
        }
    }
}

/// The result of an op.
pub type Result<T> = std::result::Result<T, OpError>;
