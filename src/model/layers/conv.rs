//! The convolution layer, 2-D or the attention's 1-D 1x1, with an optional bias.

use revsnn_reference::{Backend, ConvKind};

use crate::error::Result;
use crate::model::params::ParamId;
use crate::model::{Layer, Session};

/// A convolution with an optional bias, `y = W * x (+ b)`: 2-D, or 1-D 1x1 in the attention
/// (docs/architectures.md §4.0).
#[derive(Clone, Debug)]
pub struct Conv {
    pub weight: ParamId,
    pub bias: Option<ParamId>,
    pub kind: ConvKind,
}

impl<B: Backend> Layer<B> for Conv {
    type Saved = B::Conv2dContext;

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let backend = session.backend;
        let weight = session.store.get(self.weight);
        let bias = self.bias.map(|id| session.store.get(id));
        Ok(backend.conv_forward(&x, weight, bias, self.kind)?)
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        let grads = session.backend.conv_backward(grad_y, &saved, self.kind)?;
        session.accumulate(self.weight, grads.weight)?;
        if let (Some(id), Some(bias)) = (self.bias, grads.bias) {
            session.accumulate(id, bias)?;
        }
        Ok(grads.input)
    }
}
