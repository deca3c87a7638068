//! `SpikingConvPair` (docs/neurons.md §2.4.2): two spiking convolutions whose second neuron keeps
//! nothing for its backward, against the same two layers in turn (the tuple, whose second neuron
//! keeps `h`). Output, `dL/dx` and every parameter gradient must agree bit for bit: on the CPU in
//! f64, f32 and emulated bf16 and fp16, and on CUDA (the CPU emulator in CI) in f32, bf16 and
//! fp16 on each convolution engine, where the pair must also hold one `f32` tensor of the middle
//! shape fewer after its forward and never more at its backward's peak.

use revsnn::error::Result;
use revsnn::model::build::{Builder, ConvInit};
use revsnn::model::layers::{ConvKind, Neuron, SpikingConvBn, SpikingConvPair};
use revsnn::model::{EntryKind, Grads, Layer, Mode, ParamStore, Session};
use revsnn_gpu::Cuda;
use revsnn_gpu::testing::{backend_or_skip, each_conv_engine, with_peak_rise};
use revsnn_reference::testing::SplitMix64;
use revsnn_reference::{Backend, Conv2dParams, Cpu, Element, NeuronConfig, Precision};

/// The two convolutions: 3x3 and bias-free as in the ResNets (the backward of each is one op),
/// or pointwise with a bias as in the transformers' MLP (the ops in turn).
#[derive(Clone, Copy, Debug)]
enum Shape {
    ResNet,
    Mlp,
}

/// `[T, B, C, H, W]` in, `C -> HIDDEN -> C` channels.
const T: usize = 2;
const B: usize = 3;
const C: usize = 4;
const HIDDEN: usize = 6;
const SIDE: usize = 5;

fn input_shape() -> [usize; 5] {
    [T, B, C, SIDE, SIDE]
}

/// Elements of the middle tensor (BN1's output, SN2's `h`).
fn middle_len() -> usize {
    T * B * HIDDEN * SIDE * SIDE
}

/// The pair and its parameters, BatchNorm affines drawn at random so that they matter.
fn build<Bk: Backend>(backend: &Bk, shape: Shape) -> Result<(SpikingConvPair, ParamStore<Bk>)> {
    let mut builder = Builder::new(backend, 17);
    let mut affine = SplitMix64::new(18);
    let mut layer = |builder: &mut Builder<Bk>, name: &str, [out, inp]: [usize; 2]| -> Result<_> {
        let (kernel, init, padding) = match shape {
            Shape::ResNet => (3, ConvInit::KaimingNormalFanOut, 1),
            Shape::Mlp => (1, ConvInit::PyTorchDefault { bias: true }, 0),
        };
        let kind = ConvKind::Conv2d(Conv2dParams::new(1, padding));
        let weight = [out, inp, kernel, kernel];
        let conv_bn = builder.conv_bn(
            &format!("{name}.0"),
            &format!("{name}.1"),
            &weight,
            init,
            kind,
        )?;
        for id in [conv_bn.norm.ids.gamma, conv_bn.norm.ids.beta] {
            let values = (0..out)
                .map(|_| Bk::Elem::cast(affine.uniform(0.5, 1.5)))
                .collect();
            builder
                .store
                .set(id, backend.tensor_from_vec(&[out], values)?);
        }
        Ok(SpikingConvBn::new(
            Neuron::new(NeuronConfig::if_atan()),
            conv_bn,
        ))
    };
    let first = layer(&mut builder, "conv1", [HIDDEN, C])?;
    let second = layer(&mut builder, "conv2", [C, HIDDEN])?;
    Ok((SpikingConvPair { first, second }, builder.store))
}

/// What one forward and backward gave, as the bits of each value widened to f64.
#[derive(Debug, PartialEq)]
struct Pass {
    output: Vec<u64>,
    grad_input: Vec<u64>,
    grads: Vec<(String, Vec<u64>)>,
}

fn bits<Bk: Backend>(backend: &Bk, x: &Bk::Tensor) -> Result<Vec<u64>> {
    Ok(backend
        .to_vec(x)?
        .iter()
        .map(|v| v.widen().to_bits())
        .collect())
}

fn random<Bk: Backend>(backend: &Bk, seed: u64, std: f64) -> Result<Bk::Tensor> {
    let values = SplitMix64::new(seed).normal_vec(input_shape().iter().product(), std);
    let values = values.into_iter().map(Bk::Elem::cast).collect();
    Ok(backend.tensor_from_vec(&input_shape(), values)?)
}

/// A training forward and backward of `layer` over a copy of `store`; `after_forward` sees what
/// the forward saved.
fn pass<Bk: Backend, L: Layer<Bk>>(
    backend: &Bk,
    layer: &L,
    store: &ParamStore<Bk>,
    after_forward: impl FnOnce(&L::Saved),
) -> Result<Pass> {
    let mut store = store.clone();
    let mut grads = Grads::new(store.entries().len());
    let mut session = Session::new(backend, &mut store, &mut grads, Mode::Train);
    let (y, saved) = layer.forward(&mut session, random(backend, 1, 1.5)?)?;
    after_forward(&saved);
    let output = bits(backend, &y)?;
    drop(y);
    let grad_input = layer.backward(&mut session, saved, random(backend, 2, 1.0)?)?;
    let grad_input = bits(backend, &grad_input)?;
    let mut named = Vec::new();
    for (i, entry) in store.entries().iter().enumerate() {
        if entry.kind == EntryKind::Parameter {
            let grad = grads
                .get(revsnn::model::ParamId(i))
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

/// The pair against the tuple of its two layers, bit for bit; the pair's saved second neuron
/// is nothing.
fn check_against_the_tuple<Bk: Backend>(backend: &Bk, what: &str) {
    for shape in [Shape::ResNet, Shape::Mlp] {
        let (pair, store) = build(backend, shape).unwrap();
        let tuple = (pair.first.clone(), pair.second.clone());
        let kept_nothing = |((_, neuron), _): &<SpikingConvPair as Layer<Bk>>::Saved| {
            assert!(neuron.is_none(), "{what} {shape:?}: SN2 kept a context");
        };
        let by_pair = pass(backend, &pair, &store, kept_nothing).unwrap();
        let in_turn = pass(backend, &tuple, &store, |_| {}).unwrap();
        assert_eq!(by_pair, in_turn, "{what} {shape:?}");
    }
}

#[test]
fn the_pair_gives_the_bits_of_its_two_layers_in_turn_on_the_cpu() {
    check_against_the_tuple(&Cpu::<f64>::new(), "f64");
    check_against_the_tuple(&Cpu::<f32>::new(), "f32");
    for precision in [Precision::Bf16, Precision::Fp16] {
        let what = precision.to_string();
        check_against_the_tuple(&Cpu::<f32>::with_precision(precision), &what);
    }
}

/// In evaluation no backward follows, and the pair runs as the tuple does: SN2 keeps its context.
#[test]
fn in_evaluation_the_second_neuron_keeps_its_context() {
    let cpu = Cpu::<f64>::new();
    let (pair, mut store) = build(&cpu, Shape::ResNet).unwrap();
    let mut grads = Grads::new(store.entries().len());
    let mut session = Session::new(&cpu, &mut store, &mut grads, Mode::Eval);
    let x = random(&cpu, 1, 1.5).unwrap();
    let (_, ((_, neuron), _)) = pair.forward(&mut session, x).unwrap();
    assert!(neuron.is_some());
}

/// On CUDA, the bits of the tuple; after the forward the pair holds SN2's `h` (one f32 tensor of
/// the middle shape) fewer bytes, exactly; its backward's peak is never higher, and lower under
/// bf16 and fp16, where the neuron's `h` is made again only after the second convolution's
/// passes have freed their buffers.
#[test]
fn on_cuda_the_pair_gives_the_bits_of_its_two_layers_and_holds_less() {
    let Some(gpu) = backend_or_skip::<f32>("on_cuda_the_pair_gives_the_bits") else {
        return;
    };
    let device = gpu.device();
    for engine in each_conv_engine(device) {
        for precision in [Precision::F32, Precision::Bf16, Precision::Fp16] {
            device.set_precision(precision).unwrap();
            let what = format!("{precision} on {}", engine.name());
            check_against_the_tuple(&gpu, &what);
            check_memory(&gpu, &what, precision != Precision::F32);
        }
    }
    device.set_precision(Precision::F32).unwrap();
}

/// The live bytes the forward leaves and the backward's peak above its start, for the pair and
/// the tuple.
fn check_memory(gpu: &Cuda<f32>, what: &str, half: bool) {
    let (pair, store) = build(gpu, Shape::ResNet).unwrap();
    let tuple = (pair.first.clone(), pair.second.clone());
    let (pair_held, pair_peak) = footprint(gpu, &pair, &store);
    let (tuple_held, tuple_peak) = footprint(gpu, &tuple, &store);
    let h = middle_len() * size_of::<f32>();
    assert_eq!(tuple_held - pair_held, h, "{what}: held after the forward");
    assert!(
        pair_peak <= tuple_peak,
        "{what}: backward peak {pair_peak} > {tuple_peak}"
    );
    if half {
        let detail = format!("backward peak {pair_peak} not below {tuple_peak}");
        assert!(pair_peak < tuple_peak, "{what}: {detail}");
    }
}

/// The bytes `layer`'s training forward leaves live (its saved tensors, the output dropped), and
/// the most its backward holds, both above the live bytes before the forward.
fn footprint<L: Layer<Cuda<f32>>>(
    gpu: &Cuda<f32>,
    layer: &L,
    store: &ParamStore<Cuda<f32>>,
) -> (usize, usize) {
    let mut store = store.clone();
    let mut grads = Grads::new(store.entries().len());
    let mut session = Session::new(gpu, &mut store, &mut grads, Mode::Train);
    let live = || {
        gpu.device().synchronize().unwrap();
        gpu.device().memory().live_bytes
    };
    let (x, dy) = (random(gpu, 1, 1.5).unwrap(), random(gpu, 2, 1.0).unwrap());
    let before = live();
    let (y, saved) = layer.forward(&mut session, x).unwrap();
    drop(y);
    let held = live() - before;
    let backward = || layer.backward(&mut session, saved, dy).unwrap();
    let (grad, rise) = with_peak_rise(gpu.device(), backward);
    drop(grad);
    (held, held + rise)
}
