//! The shape rules of the optimizer steps.

use crate::contract::error::{OpError, Result};

/// Errors unless an optimizer operand `what` (a gradient, a moment) has the parameter's shape.
pub fn check_like_param(
    op: &'static str,
    what: &str,
    param: &[usize],
    other: &[usize],
) -> Result<()> {
    if param != other {
        return Err(OpError::shape(
            op,
            format!("{what} has shape {other:?} but the parameter {param:?}"),
        ));
    }
    Ok(())
}
