//! The GEMM ops of the contract (linear layer, batched matmul, convolution), forward and
//! backward, run on any backend through `f64` vectors, so one op case serves an `f32` GPU and
//! the `f64` reference: for the tests that hold a GPU precision against the reference
//! (tests/gpu_tf32.rs, tests/gpu_precision.rs).

use revsnn_reference::{Backend, Conv2dParams, Element};

/// What a GEMM op case computes.
#[derive(Clone, Copy, Debug)]
pub enum GemmOp {
    /// `y = x w^T + b` with `dx`, `dw`, `db`, from `x`, `w`, `b`, `dy`.
    Linear,
    /// `c = op(a) op(b)` with these transposes, from `a`, `b`.
    Batched(bool, bool),
    /// A convolution `y` with `dx`, `dw`, `db`, from `x`, `w`, `b`, `dy`.
    Conv(Conv2dParams),
}

impl GemmOp {
    /// The outputs of this op on `backend` from `inputs` (shape, values), widened:
    /// `[y, dx, dw, db]`, or `[c]` for a batched matmul.
    pub fn run<'a, B: Backend>(
        self,
        backend: &B,
        inputs: impl IntoIterator<Item = (&'a [usize], &'a [f64])>,
    ) -> Vec<Vec<f64>> {
        let tensors: Vec<B::Tensor> = inputs
            .into_iter()
            .map(|(shape, v)| {
                let v = v.iter().map(|&x| B::Elem::cast(x)).collect();
                backend.tensor_from_vec(shape, v).unwrap()
            })
            .collect();
        let outputs = match (self, &tensors[..]) {
            (GemmOp::Linear, [x, w, b, dy]) => {
                let y = backend.linear_forward(x, w, Some(b)).unwrap();
                let grads = backend.linear_backward(dy, x, w, true).unwrap();
                vec![y, grads.input, grads.weight, grads.bias.unwrap()]
            }
            (GemmOp::Batched(ta, tb), [a, b]) => {
                vec![backend.batched_matmul(a, b, ta, tb).unwrap()]
            }
            (GemmOp::Conv(params), [x, w, b, dy]) => {
                let (y, context) = backend.conv2d_forward(x, w, Some(b), params).unwrap();
                let grads = backend.conv2d_backward(dy.clone(), &context).unwrap();
                vec![y, grads.input, grads.weight, grads.bias.unwrap()]
            }
            _ => panic!("{self:?}: wrong number of inputs"),
        };
        outputs.iter().map(|t| widened(backend, t)).collect()
    }
}

/// The operand shapes of a batched `op(a) op(b)` over `[2, 3]` batches of `m x k` by `k x n`
/// products, each operand stored transposed when its flag says so.
pub fn batched_shapes(
    (m, k, n): (usize, usize, usize),
    transpose_a: bool,
    transpose_b: bool,
) -> [Vec<usize>; 2] {
    [
        if transpose_a {
            vec![2, 3, k, m]
        } else {
            vec![2, 3, m, k]
        },
        if transpose_b {
            vec![2, 3, n, k]
        } else {
            vec![2, 3, k, n]
        },
    ]
}

/// The elements of `x`, widened to `f64`.
pub fn widened<B: Backend>(backend: &B, x: &B::Tensor) -> Vec<f64> {
    backend
        .to_vec(x)
        .unwrap()
        .into_iter()
        .map(Element::widen)
        .collect()
}
