//! Layers made of layers, whose backward follows from their parts' (docs/design.md principle 2):
//! a tuple runs its parts in order and their backwards in reverse, as dfdx composes modules; a
//! `Vec` does the same over a repeated part; [`Residual`] adds a shortcut; [`SeqToAnn`] runs a
//! stateless part on the time-flattened batch; [`PerInput`] picks one of two input encodings;
//! `Option` is a part that may be absent; [`Model`] names a whole composition. A model's `Saved`
//! is the nesting of its parts': the tape of plain backpropagation.

use revsnn_reference::{Backend, Onto, OpError};

use super::layers::{flatten_time, unflatten_time};
use super::{Layer, Session};
use crate::error::{Error, Result};

/// A whole model, input to logits: the composition `layers`, under the name of its
/// architecture (e.g. [`super::resnet::RevSResNet`]), which gives it its `build`.
#[derive(Clone, Debug)]
pub struct Model<L> {
    pub layers: L,
}

impl<B: Backend, L: Layer<B>> Layer<B> for Model<L> {
    type Saved = L::Saved;

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        self.layers.forward(session, x)
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        self.layers.backward(session, saved, grad_y)
    }
}

/// The forward of a tuple: each part but the last in order, each taking the previous one's
/// output, which it may free as soon as it is done; then `$run_last` on the last part (index
/// `$last`) as `$part`, with its input as `$y` (a plain forward, or one landing on a residual).
macro_rules! tuple_forward {
    ($self:ident, $session:ident, $x:ident; $($index:tt),*; $last:tt;
     |$part:ident, $y:ident| $run_last:expr) => {{
        let mut y = $x;
        // A tuple expression evaluates left to right.
        let saved = ($({
            let (output, saved) = $self.$index.forward($session, y)?;
            y = output;
            saved
        },)* {
            let ($part, $y) = (&$self.$last, y);
            let (output, saved) = $run_last?;
            y = output;
            saved
        },);
        Ok((y, saved))
    }};
}

/// `Layer` for the tuple of the layers named by the indices, the last one named apart: forward
/// in the order given, backward in the reverse order (the third list). A forward landing on a
/// residual hands it to the last part.
macro_rules! sequential_tuple {
    ($($part:ident . $index:tt),* ; last $lastpart:ident . $last:tt ; reversed $($reversed:tt),+) => {
        impl<B: Backend, $($part: Layer<B>,)* $lastpart: Layer<B>> Layer<B>
            for ($($part,)* $lastpart,)
        {
            type Saved = ($($part::Saved,)* $lastpart::Saved,);

            fn forward(
                &self,
                session: &mut Session<B>,
                x: B::Tensor,
            ) -> Result<(B::Tensor, Self::Saved)> {
                tuple_forward!(self, session, x; $($index),*; $last; |part, y| part.forward(session, y))
            }

            fn forward_onto(
                &self,
                session: &mut Session<B>,
                x: B::Tensor,
                onto: Onto<B::Tensor>,
            ) -> Result<(B::Tensor, Self::Saved)> {
                tuple_forward!(self, session, x; $($index),*; $last;
                    |part, y| part.forward_onto(session, y, onto))
            }

            fn backward(
                &self,
                session: &mut Session<B>,
                saved: Self::Saved,
                grad_y: B::Tensor,
            ) -> Result<B::Tensor> {
                let mut grad = grad_y;
                $(grad = self.$reversed.backward(session, saved.$reversed, grad)?;)+
                Ok(grad)
            }
        }
    };
}

sequential_tuple!(L0.0; last L1.1; reversed 1, 0);
sequential_tuple!(L0.0, L1.1; last L2.2; reversed 2, 1, 0);
sequential_tuple!(L0.0, L1.1, L2.2; last L3.3; reversed 3, 2, 1, 0);
sequential_tuple!(L0.0, L1.1, L2.2, L3.3; last L4.4; reversed 4, 3, 2, 1, 0);

/// The same kind of layer repeated: each runs on the previous one's output.
impl<B: Backend, L: Layer<B>> Layer<B> for Vec<L> {
    type Saved = Vec<L::Saved>;

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let mut y = x;
        let mut saved = Vec::with_capacity(self.len());
        for layer in self {
            let (output, context) = layer.forward(session, y)?;
            saved.push(context);
            y = output;
        }
        Ok((y, saved))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        if self.len() != saved.len() {
            return Err(OpError::shape(
                "layer sequence",
                format!("{} saved contexts for {} layers", saved.len(), self.len()),
            )
            .into());
        }
        let mut grad = grad_y;
        for (layer, context) in self.iter().zip(saved).rev() {
            grad = layer.backward(session, context, grad)?;
        }
        Ok(grad)
    }
}

/// A layer that may be absent: `None` passes its input through.
impl<B: Backend, L: Layer<B>> Layer<B> for Option<L> {
    type Saved = Option<L::Saved>;

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        match self {
            Some(layer) => {
                let (y, saved) = layer.forward(session, x)?;
                Ok((y, Some(saved)))
            }
            None => Ok((x, None)),
        }
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        match (self, saved) {
            (Some(layer), Some(saved)) => layer.backward(session, saved, grad_y),
            (None, None) => Ok(grad_y),
            _ => Err(mismatched("optional layer")),
        }
    }
}

fn mismatched(layer: &'static str) -> Error {
    OpError::shape(layer, "the saved context belongs to another kind of layer").into()
}

/// `y = x`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Identity;

impl<B: Backend> Layer<B> for Identity {
    type Saved = ();

    fn forward(&self, _: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        Ok((x, ()))
    }

    fn backward(&self, _: &mut Session<B>, _: (), grad_y: B::Tensor) -> Result<B::Tensor> {
        Ok(grad_y)
    }
}

/// `y = main(x) + shortcut(x)`, the shortcut [`Identity`] unless given; the backward adds the
/// two branches' input gradients. The shortcut runs first, and the main branch's output lands on
/// it ([`Layer::forward_onto`]): `shortcut + main` has the bits of `main + shortcut`, and no
/// output of the main branch is allocated beside the shortcut's where its last op writes over it.
#[derive(Clone, Debug)]
pub struct Residual<M, S = Identity> {
    pub main: M,
    pub shortcut: S,
}

impl<M> Residual<M> {
    /// `y = main(x) + x`.
    pub fn around(main: M) -> Self {
        Residual {
            main,
            shortcut: Identity,
        }
    }
}

impl<B: Backend, M: Layer<B>, S: Layer<B>> Layer<B> for Residual<M, S> {
    type Saved = (M::Saved, S::Saved);

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let (shortcut, shortcut_saved) = self.shortcut.forward(session, x.clone())?;
        let (y, main_saved) = self.main.forward_onto(session, x, Onto::add(shortcut))?;
        Ok((y, (main_saved, shortcut_saved)))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        let grad_main = self.main.backward(session, saved.0, grad_y.clone())?;
        let grad_shortcut = self.shortcut.backward(session, saved.1, grad_y)?;
        Ok(session.backend.add_reusing(&grad_shortcut, grad_main)?)
    }
}

/// `SeqToANNContainer(layer)`: `layer` applied to a sequence `[T, B, ...]` as the time-flattened
/// batch `[T B, ...]` and reshaped back, so BatchNorm statistics cover `T B H W`
/// (docs/conventions.md §1).
#[derive(Clone, Debug)]
pub struct SeqToAnn<L> {
    pub layer: L,
}

impl<B: Backend, L: Layer<B>> Layer<B> for SeqToAnn<L> {
    /// The inner layer's context and `T`.
    type Saved = (L::Saved, usize);

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        self.over_flat(session, x, |layer, session, x| layer.forward(session, x))
    }

    /// The inner layer's output lands on the residual flattened the same way.
    fn forward_onto(
        &self,
        session: &mut Session<B>,
        x: B::Tensor,
        onto: Onto<B::Tensor>,
    ) -> Result<(B::Tensor, Self::Saved)> {
        let onto = onto.map(|residual| handed_on_flat(session.backend, residual))?;
        self.over_flat(session, x, |layer, session, x| {
            layer.forward_onto(session, x, onto)
        })
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        let backend = session.backend;
        let (inner, time_steps) = saved;
        let grad = (self.layer).backward(session, inner, handed_on_flat(backend, grad_y)?)?;
        Ok(unflatten_time(backend, &grad, time_steps)?)
    }
}

impl<L> SeqToAnn<L> {
    /// `run` of the inner layer over the time-flattened `x`, its output unflattened again, with
    /// the inner context and `T`.
    fn over_flat<B: Backend>(
        &self,
        session: &mut Session<B>,
        x: B::Tensor,
        run: impl FnOnce(&L, &mut Session<B>, B::Tensor) -> Result<(B::Tensor, L::Saved)>,
    ) -> Result<(B::Tensor, <Self as Layer<B>>::Saved)>
    where
        L: Layer<B>,
    {
        let backend = session.backend;
        let time_steps = backend.shape(&x)[0];
        let (y, saved) = run(&self.layer, session, handed_on_flat(backend, x)?)?;
        Ok((
            unflatten_time(backend, &y, time_steps)?,
            (saved, time_steps),
        ))
    }
}

/// [`flatten_time`] of a tensor given up: the result is the only handle on its storage, so the
/// inner layer can free it.
pub(super) fn handed_on_flat<B: Backend>(backend: &B, x: B::Tensor) -> Result<B::Tensor> {
    Ok(flatten_time(backend, &x)?)
}

/// The part of a model that depends on its input kind, chosen when the model is built: static
/// images `[B, C, H, W]` or event frames `[B, T, C, H, W]`.
#[derive(Clone, Debug)]
pub enum PerInput<S, E> {
    Static(S),
    Events(E),
}

impl<B: Backend, S: Layer<B>, E: Layer<B>> Layer<B> for PerInput<S, E> {
    type Saved = PerInput<S::Saved, E::Saved>;

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        Ok(match self {
            PerInput::Static(layer) => {
                let (y, saved) = layer.forward(session, x)?;
                (y, PerInput::Static(saved))
            }
            PerInput::Events(layer) => {
                let (y, saved) = layer.forward(session, x)?;
                (y, PerInput::Events(saved))
            }
        })
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        match (self, saved) {
            (PerInput::Static(layer), PerInput::Static(saved)) => {
                layer.backward(session, saved, grad_y)
            }
            (PerInput::Events(layer), PerInput::Events(saved)) => {
                layer.backward(session, saved, grad_y)
            }
            _ => Err(mismatched("per-input layer")),
        }
    }
}
