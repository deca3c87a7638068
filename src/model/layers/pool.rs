//! Average and max pooling over `[N, C, H, W]`.

use revsnn_reference::{Backend, Pool2dParams};

use crate::error::Result;
use crate::model::{Layer, Session};

/// `AvgPool2d(kernel, stride, padding)` with `count_include_pad=True` over `[N, C, H, W]`.
#[derive(Clone, Debug)]
pub struct AvgPool {
    pub params: Pool2dParams,
}

impl<B: Backend> Layer<B> for AvgPool {
    type Saved = Vec<usize>;

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        Ok((
            session.backend.avg_pool2d_forward(&x, self.params)?,
            session.backend.shape(&x),
        ))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        Ok(session
            .backend
            .avg_pool2d_backward(&grad_y, &saved, self.params)?)
    }
}

/// `MaxPool2d(kernel, stride, padding)` over `[N, C, H, W]`.
#[derive(Clone, Debug)]
pub struct MaxPool {
    pub params: Pool2dParams,
}

impl<B: Backend> Layer<B> for MaxPool {
    type Saved = B::MaxPoolContext;

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        Ok(session.backend.max_pool2d_forward(&x, self.params)?)
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        Ok(session.backend.max_pool2d_backward(&grad_y, &saved)?)
    }
}
