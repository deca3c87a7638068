//! `SpikingConvPair` (docs/neurons.md §2.4.2): two spiking convolutions whose second neuron keeps
//! nothing for its backward, against the same two layers in turn (the tuple, whose second neuron
//! keeps `h`). Output, `dL/dx` and every parameter gradient must agree bit for bit: on the CPU in
//! f64, f32 and emulated bf16 and fp16, and on CUDA (the CPU emulator in CI) in f32, bf16 and
//! fp16 on each convolution engine, where the pair must also hold one `f32` tensor of the middle
//! shape fewer after its forward and never more at its backward's peak.

mod common;

use common::layer_pass::{
    draw_affine, eval_saved, footprint, on_each_engine_and_precision, pass, random,
};
use revsnn::error::Result;
use revsnn::model::build::{Builder, ConvInit};
use revsnn::model::layers::{ConvKind, Neuron, SpikingConvBn, SpikingConvPair};
use revsnn::model::{Layer, ParamStore};
use revsnn_gpu::Cuda;
use revsnn_gpu::testing::backend_or_skip;
use revsnn_reference::testing::SplitMix64;
use revsnn_reference::{Backend, Conv2dParams, Cpu, NeuronConfig, Precision};

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
        draw_affine(builder, &conv_bn.norm, out, &mut affine)?;
        Ok(SpikingConvBn::new(
            Neuron::new(NeuronConfig::if_atan()),
            conv_bn,
        ))
    };
    let first = layer(&mut builder, "conv1", [HIDDEN, C])?;
    let second = layer(&mut builder, "conv2", [C, HIDDEN])?;
    Ok((SpikingConvPair { first, second }, builder.store))
}

/// The input and the output's gradient, both `[T, B, C, H, W]`.
fn inputs<Bk: Backend>(backend: &Bk) -> Result<(Bk::Tensor, Bk::Tensor)> {
    let shape = input_shape();
    Ok((
        random(backend, &shape, 1, 1.5)?,
        random(backend, &shape, 2, 1.0)?,
    ))
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
        let by_pair = pass(
            backend,
            &pair,
            &store,
            inputs(backend).unwrap(),
            kept_nothing,
        )
        .unwrap();
        let in_turn = pass(backend, &tuple, &store, inputs(backend).unwrap(), |_| {}).unwrap();
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
    let (pair, store) = build(&cpu, Shape::ResNet).unwrap();
    let x = random(&cpu, &input_shape(), 1, 1.5).unwrap();
    let ((_, neuron), _) = eval_saved(&cpu, &pair, &store, x).unwrap();
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
    on_each_engine_and_precision(&gpu, |what, precision| {
        check_against_the_tuple(&gpu, what);
        check_memory(&gpu, what, precision != Precision::F32);
    });
}

/// The live bytes the forward leaves and the backward's peak above its start, for the pair and
/// the tuple.
fn check_memory(gpu: &Cuda<f32>, what: &str, half: bool) {
    let (pair, store) = build(gpu, Shape::ResNet).unwrap();
    let tuple = (pair.first.clone(), pair.second.clone());
    let (pair_held, pair_peak) = footprint(gpu, &pair, &store, inputs(gpu).unwrap());
    let (tuple_held, tuple_peak) = footprint(gpu, &tuple, &store, inputs(gpu).unwrap());
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
