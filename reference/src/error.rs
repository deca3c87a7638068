//! Typed errors of the op contract. Every op validates its inputs and reports a bad shape or an
//! invalid parameter as an [`OpError`], never as a panic.

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
    #[error("{backend}: {detail}")]
    Device {
        backend: &'static str,
        detail: String,
    },
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
