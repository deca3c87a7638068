//! One layer's training pass on any backend, as bits to compare with another layer's, and on
//! CUDA the device bytes it holds: for the tests of layers that must equal their parts in turn
//! bit for bit while holding less (tests/gpu_spiking_pair.rs, tests/gpu_tokenizer.rs).

use revsnn::error::Result;
use revsnn::model::build::Builder;
use revsnn::model::layers::BatchNorm;
use revsnn::model::{EntryKind, Grads, Layer, Mode, ParamId, ParamStore, Session};
use revsnn_gpu::Cuda;
use revsnn_gpu::testing::{each_conv_engine, with_peak_rise};
use revsnn_reference::testing::SplitMix64;
use revsnn_reference::{Backend, Element, Precision, TensorOps};

/// What one forward and backward gave, as the bits of each value widened to f64.
#[derive(Debug, PartialEq)]
pub struct Pass {
    pub output: Vec<u64>,
    pub grad_input: Vec<u64>,
    pub grads: Vec<(String, Vec<u64>)>,
}

pub fn bits<B: Backend>(backend: &B, x: &B::Tensor) -> Result<Vec<u64>> {
    Ok(backend
        .to_vec(x)?
        .iter()
        .map(|v| v.widen().to_bits())
        .collect())
}

/// A tensor of `shape` drawn from `N(0, std^2)` with `seed`.
pub fn random<B: Backend>(backend: &B, shape: &[usize], seed: u64, std: f64) -> Result<B::Tensor> {
    let values = SplitMix64::new(seed).normal_vec(shape.iter().product(), std);
    let values = values.into_iter().map(B::Elem::cast).collect();
    Ok(backend.tensor_from_vec(shape, values)?)
}

/// Draws `norm`'s `gamma` and `beta` (`channels` each) from `U(0.5, 1.5)`, so that they matter.
pub fn draw_affine<B: Backend>(
    builder: &mut Builder<B>,
    norm: &BatchNorm,
    channels: usize,
    rng: &mut SplitMix64,
) -> Result<()> {
    for id in [norm.ids.gamma, norm.ids.beta] {
        let values = (0..channels)
            .map(|_| B::Elem::cast(rng.uniform(0.5, 1.5)))
            .collect();
        let tensor = builder.backend.tensor_from_vec(&[channels], values)?;
        builder.store.set(id, tensor);
    }
    Ok(())
}

/// Runs `check` (named `"{precision} on {engine}"`) on CUDA in f32, bf16 and fp16 on each
/// convolution engine, then sets f32 back.
pub fn on_each_engine_and_precision(gpu: &Cuda<f32>, mut check: impl FnMut(&str, Precision)) {
    let device = gpu.device();
    for engine in each_conv_engine(device) {
        for precision in [Precision::F32, Precision::Bf16, Precision::Fp16] {
            device.set_precision(precision).unwrap();
            check(&format!("{precision} on {}", engine.name()), precision);
        }
    }
    device.set_precision(Precision::F32).unwrap();
}

/// A training forward of `layer` over `x` and its backward from `dy`, over a copy of `store`;
/// `after_forward` sees what the forward saved.
pub fn pass<B: Backend, L: Layer<B>>(
    backend: &B,
    layer: &L,
    store: &ParamStore<B>,
    (x, dy): (B::Tensor, B::Tensor),
    after_forward: impl FnOnce(&L::Saved),
) -> Result<Pass> {
    let mut store = store.clone();
    let mut grads = Grads::new(store.entries().len());
    let mut session = Session::new(backend, &mut store, &mut grads, Mode::Train);
    let (y, saved) = layer.forward(&mut session, x)?;
    after_forward(&saved);
    let output = bits(backend, &y)?;
    drop(y);
    let grad_input = layer.backward(&mut session, saved, dy)?;
    let grad_input = bits(backend, &grad_input)?;
    let mut named = Vec::new();
    for (i, entry) in store.entries().iter().enumerate() {
        if entry.kind == EntryKind::Parameter {
            let grad = grads
                .get(ParamId(i))
                .expect("a parameter without a gradient");
            named.push((entry.name.clone(), bits(backend, grad)?));
        }
    }
    Ok(Pass {
        output,
        grad_input,
        grads: named,
    })
}

/// What `layer`'s forward over `x` in evaluation saves, over a copy of `store`.
pub fn eval_saved<B: Backend, L: Layer<B>>(
    backend: &B,
    layer: &L,
    store: &ParamStore<B>,
    x: B::Tensor,
) -> Result<L::Saved> {
    let mut store = store.clone();
    let mut grads = Grads::new(store.entries().len());
    let mut session = Session::new(backend, &mut store, &mut grads, Mode::Eval);
    Ok(layer.forward(&mut session, x)?.1)
}

/// The bytes `layer`'s training forward over `x` leaves live (its saved tensors, the output
/// dropped), and the most its backward from `dy` holds, both above the live bytes before the
/// forward. Over fresh copies of `store`'s tensors: a 16-bit forward keeps the 16-bit copy of a
/// weight with the weight tensor, so over shared tensors a second footprint would not count the
/// copies the first one made.
pub fn footprint<L: Layer<Cuda<f32>>>(
    gpu: &Cuda<f32>,
    layer: &L,
    store: &ParamStore<Cuda<f32>>,
    (x, dy): (
        <Cuda<f32> as TensorOps>::Tensor,
        <Cuda<f32> as TensorOps>::Tensor,
    ),
) -> (usize, usize) {
    let mut store = fresh_copy(gpu, store);
    let mut grads = Grads::new(store.entries().len());
    let mut session = Session::new(gpu, &mut store, &mut grads, Mode::Train);
    let live = || {
        gpu.device().synchronize().unwrap();
        gpu.device().memory().live_bytes
    };
    let before = live();
    let (y, saved) = layer.forward(&mut session, x).unwrap();
    drop(y);
    let held = live() - before;
    let backward = || layer.backward(&mut session, saved, dy).unwrap();
    let (grad, rise) = with_peak_rise(gpu.device(), backward);
    drop(grad);
    (held, held + rise)
}

/// `store` with each tensor copied into a buffer of its own.
fn fresh_copy(gpu: &Cuda<f32>, store: &ParamStore<Cuda<f32>>) -> ParamStore<Cuda<f32>> {
    let mut copy = store.clone();
    for (at, entry) in store.entries().iter().enumerate() {
        if let Some(tensor) = entry.tensor() {
            let values = gpu.to_vec(tensor).unwrap();
            copy.set(
                ParamId(at),
                gpu.tensor_from_vec(tensor.shape(), values).unwrap(),
            );
        }
    }
    copy
}
