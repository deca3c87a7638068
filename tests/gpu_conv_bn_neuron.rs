//! `ConvBnNeuron` (docs/neurons.md §2.4.2), `SN(BN(conv(x)))` whose neuron keeps nothing for its
//! backward, against the same two layers in turn (the tuple, whose neuron keeps `h`): the
//! attention's pointwise q, k and v projections over tokens, and a 3x3 convolution. Output,
//! `dL/dx` and every parameter gradient must agree bit for bit: on the CPU in f64, f32 and emulated
//! bf16 and fp16, and on CUDA (the CPU emulator in CI) in f32, bf16 and fp16 on each convolution
//! engine, where the layer must also hold exactly the neuron's `h` (one `f32` tensor of the
//! output's shape) fewer bytes after its forward and never more at its backward's peak.

mod common;

use common::layer_pass::{
    draw_affine, eval_saved, footprint, on_each_engine_and_precision, pass, random,
};
use revsnn::error::Result;
use revsnn::model::build::{Builder, ConvInit};
use revsnn::model::compose::SeqToAnn;
use revsnn::model::layers::{ConvBnNeuron, ConvKind, Neuron};
use revsnn::model::{Layer, ParamStore};
use revsnn_gpu::Cuda;
use revsnn_gpu::testing::backend_or_skip;
use revsnn_reference::testing::SplitMix64;
use revsnn_reference::{Backend, Conv2dParams, Cpu, Element, NeuronConfig, Precision};

/// The convolution: pointwise over tokens `[T, B, C, N]` as the attention's projections, or 3x3
/// over `[T, B, C, H, W]`.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Tokens,
    Image,
}

const T: usize = 2;
const B: usize = 3;
const C_IN: usize = 4;
const C_OUT: usize = 6;
const SIDE: usize = 5;

impl Shape {
    fn input(self) -> Vec<usize> {
        match self {
            Shape::Tokens => vec![T, B, C_IN, SIDE * SIDE],
            Shape::Image => vec![T, B, C_IN, SIDE, SIDE],
        }
    }

    fn output(self) -> Vec<usize> {
        let mut shape = self.input();
        shape[2] = C_OUT;
        shape
    }
}

/// The layer and its parameters, the BatchNorm's affine drawn at random so that it matters.
fn build<Bk: Backend>(backend: &Bk, shape: Shape) -> Result<(ConvBnNeuron, ParamStore<Bk>)> {
    let mut builder = Builder::new(backend, 17);
    let (weight, kind) = match shape {
        Shape::Tokens => (vec![C_OUT, C_IN, 1], ConvKind::Conv1d),
        Shape::Image => (
            vec![C_OUT, C_IN, 3, 3],
            ConvKind::Conv2d(Conv2dParams::new(1, 1)),
        ),
    };
    let init = ConvInit::PyTorchDefault { bias: false };
    let conv_bn = builder.conv_bn("q_conv", "q_bn", &weight, init, kind)?;
    draw_affine(&mut builder, &conv_bn.norm, C_OUT, &mut SplitMix64::new(18))?;
    let layer = ConvBnNeuron {
        conv_bn: SeqToAnn { layer: conv_bn },
        neuron: Neuron::new(NeuronConfig::lif_sigmoid(2.0, 1.0)),
    };
    Ok((layer, builder.store))
}

/// The input (spikes, as every projection reads) and the output's gradient.
fn inputs<Bk: Backend>(backend: &Bk, shape: Shape) -> Result<(Bk::Tensor, Bk::Tensor)> {
    let noise = random(backend, &shape.input(), 1, 1.0)?;
    let fire = |v: Bk::Elem| Bk::Elem::cast(if v.widen() >= 0.5 { 1.0 } else { 0.0 });
    let spikes = backend.to_vec(&noise)?.into_iter().map(fire).collect();
    Ok((
        backend.tensor_from_vec(&shape.input(), spikes)?,
        random(backend, &shape.output(), 2, 1.0)?,
    ))
}

/// The layer against the tuple of its two layers, bit for bit; its saved neuron is nothing.
fn check_against_the_tuple<Bk: Backend>(backend: &Bk, what: &str) {
    for shape in [Shape::Tokens, Shape::Image] {
        let (layer, store) = build(backend, shape).unwrap();
        let tuple = (layer.conv_bn.clone(), layer.neuron.clone());
        let kept_nothing = |(_, neuron): &<ConvBnNeuron as Layer<Bk>>::Saved| {
            assert!(
                neuron.is_none(),
                "{what} {shape:?}: the neuron kept a context"
            );
        };
        let x_dy = inputs(backend, shape).unwrap();
        let by_layer = pass(backend, &layer, &store, x_dy, kept_nothing).unwrap();
        let x_dy = inputs(backend, shape).unwrap();
        let in_turn = pass(backend, &tuple, &store, x_dy, |_| {}).unwrap();
        assert_eq!(by_layer, in_turn, "{what} {shape:?}");
    }
}

#[test]
fn the_layer_gives_the_bits_of_its_two_layers_in_turn_on_the_cpu() {
    check_against_the_tuple(&Cpu::<f64>::new(), "f64");
    check_against_the_tuple(&Cpu::<f32>::new(), "f32");
    for precision in [Precision::Bf16, Precision::Fp16] {
        let what = precision.to_string();
        check_against_the_tuple(&Cpu::<f32>::with_precision(precision), &what);
    }
}

/// In evaluation no backward follows, and the layer runs as the tuple does: the neuron keeps its
/// context.
#[test]
fn in_evaluation_the_neuron_keeps_its_context() {
    let cpu = Cpu::<f64>::new();
    let (layer, store) = build(&cpu, Shape::Tokens).unwrap();
    let (x, _) = inputs(&cpu, Shape::Tokens).unwrap();
    let (_, neuron) = eval_saved(&cpu, &layer, &store, x).unwrap();
    assert!(neuron.is_some());
}

/// On CUDA, the bits of the tuple; after the forward the layer holds the neuron's `h` fewer
/// bytes, exactly, and its backward's peak is never higher.
#[test]
fn on_cuda_the_layer_gives_the_bits_of_its_two_layers_and_holds_less() {
    let Some(gpu) = backend_or_skip::<f32>("on_cuda_the_layer_gives_the_bits") else {
        return;
    };
    on_each_engine_and_precision(&gpu, |what, _| {
        check_against_the_tuple(&gpu, what);
        for shape in [Shape::Tokens, Shape::Image] {
            check_memory(&gpu, &format!("{what} {shape:?}"), shape);
        }
    });
}

fn check_memory(gpu: &Cuda<f32>, what: &str, shape: Shape) {
    let (layer, store) = build(gpu, shape).unwrap();
    let tuple = (layer.conv_bn.clone(), layer.neuron.clone());
    let (layer_held, layer_peak) = footprint(gpu, &layer, &store, inputs(gpu, shape).unwrap());
    let (tuple_held, tuple_peak) = footprint(gpu, &tuple, &store, inputs(gpu, shape).unwrap());
    let h = shape.output().iter().product::<usize>() * size_of::<f32>();
    assert_eq!(tuple_held - layer_held, h, "{what}: held after the forward");
    assert!(
        layer_peak <= tuple_peak,
        "{what}: backward peak {layer_peak} > {tuple_peak}"
    );
}
