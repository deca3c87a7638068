//! The linear layer, the models' classifier head.

use revsnn_reference::Backend;

use crate::error::Result;
use crate::model::params::ParamId;
use crate::model::{Layer, Session};

/// `y = x w^T + b` over `[N, in]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: ParamId,
    pub bias: ParamId,
}

impl<B: Backend> Layer<B> for Linear {
    type Saved = B::Tensor;

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let weight = session.store.get(self.weight);
        let bias = session.store.get(self.bias);
        Ok((session.backend.linear_forward(&x, weight, Some(bias))?, x))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        let weight = session.store.get(self.weight).clone();
        let grads = session
            .backend
            .linear_backward(&grad_y, &saved, &weight, true)?;
        session.accumulate(self.weight, grads.weight)?;
        if let Some(bias) = grads.bias {
            session.accumulate(self.bias, bias)?;
        }
        Ok(grads.input)
    }
}
