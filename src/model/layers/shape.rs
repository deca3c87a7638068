//! The layers that move or check values without weights: means, repetition over time, the
//! batch-time swap, the doubled stream and the input check.

use revsnn_reference::Backend;

use crate::error::Result;
use crate::model::{Layer, Session};

/// The mean over `axes`: `y = mean_{axes} x`, those axes removed (`AdaptiveAvgPool2d(1)` over
/// `H, W`, or a mean over time).
#[derive(Clone, Debug)]
pub struct MeanOver {
    pub axes: Vec<usize>,
}

impl<B: Backend> Layer<B> for MeanOver {
    /// The input's shape.
    type Saved = Vec<usize>;

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let backend = session.backend;
        Ok((backend.mean_axes(&x, &self.axes)?, backend.shape(&x)))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        Ok(session
            .backend
            .mean_axes_backward(&grad_y, &saved, &self.axes)?)
    }
}

/// `[B, ...] -> [T, B, ...]`: the same static input at every one of `time_steps` steps
/// (docs/choices.md §A25); the backward sums the gradient over time.
#[derive(Clone, Debug)]
pub struct RepeatOverTime {
    pub time_steps: usize,
}

impl<B: Backend> Layer<B> for RepeatOverTime {
    type Saved = ();

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        Ok((session.backend.repeat_leading(&x, self.time_steps)?, ()))
    }

    fn backward(&self, session: &mut Session<B>, _: (), grad_y: B::Tensor) -> Result<B::Tensor> {
        Ok(session.backend.sum_leading(&grad_y)?)
    }
}

/// `[B, T, C, H, W] <-> [T, B, C, H, W]`: event frames as a sequence (its own inverse).
#[derive(Clone, Debug)]
pub struct SwapBatchTime;

const SWAP_BATCH_TIME: [usize; 5] = [1, 0, 2, 3, 4];

impl<B: Backend> Layer<B> for SwapBatchTime {
    type Saved = ();

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        Ok((session.backend.permute(&x, &SWAP_BATCH_TIME)?, ()))
    }

    fn backward(&self, session: &mut Session<B>, _: (), grad_y: B::Tensor) -> Result<B::Tensor> {
        Ok(session.backend.permute(&grad_y, &SWAP_BATCH_TIME)?)
    }
}

/// `[T, B, C, ...] -> [T, B, 2C, ...]`, `cat([x, x], 2)`: the two equal halves a reversible
/// stream starts from (docs/architectures.md §4.4); the backward adds the halves' gradients.
#[derive(Clone, Debug)]
pub struct DuplicateChannels;

impl<B: Backend> Layer<B> for DuplicateChannels {
    type Saved = ();

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        Ok((session.backend.concat(&[&x, &x], 2)?, ()))
    }

    fn backward(&self, session: &mut Session<B>, _: (), grad_y: B::Tensor) -> Result<B::Tensor> {
        let backend = session.backend;
        let half = backend.shape(&grad_y)[2] / 2;
        Ok(backend.add(
            &backend.narrow(&grad_y, 2, 0, half)?,
            &backend.narrow(&grad_y, 2, half, half)?,
        )?)
    }
}

/// Checks a model's input, `[B, ...]` with every size >= 1 and, where `sizes` names one, the
/// size it must have; passes the input through.
#[derive(Clone, Debug)]
pub struct InputShape {
    /// What the input is, for the error: e.g. `images [B, C, H, W]`.
    pub layout: &'static str,
    /// The sizes after `B`: `Some(n)` must be `n`, `None` any.
    pub sizes: Vec<Option<usize>>,
}

impl<B: Backend> Layer<B> for InputShape {
    type Saved = ();

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let shape = session.backend.shape(&x);
        let fits = shape.len() == self.sizes.len() + 1
            && !shape.contains(&0)
            && (shape[1..].iter().zip(&self.sizes)).all(|(&n, size)| size.is_none_or(|s| s == n));
        if !fits {
            let sizes: Vec<String> = (self.sizes.iter())
                .map(|size| size.map_or("_".to_string(), |n| n.to_string()))
                .collect();
            return Err(revsnn_reference::OpError::shape(
                "model input",
                format!(
                    "expected {} = [_, {}] with every size >= 1, got {shape:?}",
                    self.layout,
                    sizes.join(", ")
                ),
            )
            .into());
        }
        Ok((x, ()))
    }

    fn backward(&self, _: &mut Session<B>, _: (), grad_y: B::Tensor) -> Result<B::Tensor> {
        Ok(grad_y)
    }
}
