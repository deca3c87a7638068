//! The transformers' `Tokenizer` (docs/neurons.md §2.4.2): stages whose neurons keep nothing for
//! their backward, the BatchNorm before each making its input again, against the same stages in
//! turn (a `Vec` of `(Option<Neuron>, body)` tuples, whose neurons keep `h`). Output, `dL/dx` and
//! every parameter gradient must agree bit for bit: on the CPU in f64, f32 and emulated bf16 and
//! fp16, and on CUDA (the CPU emulator in CI) in f32, bf16 and fp16 on each convolution engine,
//! where the tokenizer must also hold, after its forward, exactly the neurons' `h` (one f32
//! tensor of each neuron's input shape) fewer bytes, and never more at its backward's peak.

mod common;

use common::layer_pass::{
    draw_affine, eval_saved, footprint, on_each_engine_and_precision, pass, random,
};
use revsnn::error::Result;
use revsnn::model::build::{Builder, ConvInit};
use revsnn::model::compose::SeqToAnn;
use revsnn::model::layers::{ConvBn, ConvKind, MaxPool, Neuron};
use revsnn::model::tokenizer::{Tokenizer, TokenizerStage};
use revsnn::model::{Layer, ParamStore};
use revsnn_gpu::Cuda;
use revsnn_gpu::testing::backend_or_skip;
use revsnn_reference::testing::SplitMix64;
use revsnn_reference::{Backend, Conv2dParams, Cpu, NeuronConfig, Pool2dParams, Precision};

/// `[T, B, C, H, W]` in; the stages widen `C -> 4 -> 6 -> 6`, the last pooling by 2.
const T: usize = 2;
const B: usize = 3;
const C: usize = 2;
const WIDTHS: [usize; 4] = [C, 4, 6, 6];
const SIDE: usize = 6;

fn input_shape() -> [usize; 5] {
    [T, B, C, SIDE, SIDE]
}

/// Elements of the inputs of the neurons (stages 1 and 2): the outputs of stages 0 and 1.
fn neuron_inputs_len() -> usize {
    T * B * (WIDTHS[1] + WIDTHS[2]) * SIDE * SIDE
}

/// Three stages as the models' (`conv -> BN`, `LIF -> conv -> BN`, `LIF -> MaxPool -> conv ->
/// BN`), BatchNorm affines drawn at random so that they matter.
fn build<Bk: Backend>(backend: &Bk) -> Result<(Tokenizer, ParamStore<Bk>)> {
    let mut builder = Builder::new(backend, 17);
    let mut affine = SplitMix64::new(18);
    let mut stages = Vec::new();
    for i in 0..3 {
        let (inp, out) = (WIDTHS[i], WIDTHS[i + 1]);
        let conv_bn = builder.conv_bn(
            &format!("block{i}_conv"),
            &format!("block{i}_bn"),
            &[out, inp, 3, 3],
            ConvInit::PyTorchDefault { bias: false },
            ConvKind::Conv2d(Conv2dParams::new(1, 1)),
        )?;
        draw_affine(&mut builder, &conv_bn.norm, out, &mut affine)?;
        let pool = (i == 2).then_some(MaxPool {
            params: Pool2dParams::K3_S2_P1,
        });
        stages.push(TokenizerStage {
            neuron: (i > 0).then(|| Neuron::new(NeuronConfig::lif_sigmoid(2.0, 1.0))),
            body: SeqToAnn {
                layer: (pool, conv_bn),
            },
        });
    }
    Ok((Tokenizer { stages }, builder.store))
}

/// The same stages as a sequence of tuples, whose every neuron keeps its context.
type InTurn = Vec<(Option<Neuron>, SeqToAnn<(Option<MaxPool>, ConvBn)>)>;

fn in_turn(tokenizer: &Tokenizer) -> InTurn {
    let stage = |stage: &TokenizerStage| (stage.neuron.clone(), stage.body.clone());
    tokenizer.stages.iter().map(stage).collect()
}

/// `[T, B, WIDTHS[3], SIDE / 2, SIDE / 2]`, the tokenizer's output.
fn output_shape() -> [usize; 5] {
    [T, B, WIDTHS[3], SIDE / 2, SIDE / 2]
}

/// The input and the output's gradient.
fn inputs<Bk: Backend>(backend: &Bk) -> Result<(Bk::Tensor, Bk::Tensor)> {
    let x = random(backend, &input_shape(), 1, 1.5)?;
    Ok((x, random(backend, &output_shape(), 2, 1.0)?))
}

/// The tokenizer against its stages in turn, bit for bit; no neuron of the tokenizer kept a
/// context.
fn check_against_the_stages_in_turn<Bk: Backend>(backend: &Bk, what: &str) {
    let (tokenizer, store) = build(backend).unwrap();
    let kept_nothing = |saved: &<Tokenizer as Layer<Bk>>::Saved| {
        let kept = saved.iter().filter(|(neuron, _)| neuron.is_some()).count();
        assert_eq!(kept, 0, "{what}: neurons kept a context");
    };
    let by_tokenizer = pass(
        backend,
        &tokenizer,
        &store,
        inputs(backend).unwrap(),
        kept_nothing,
    );
    let by_tokenizer = by_tokenizer.unwrap();
    let stages = in_turn(&tokenizer);
    let kept_each = |saved: &<InTurn as Layer<Bk>>::Saved| {
        let kept: Vec<bool> = saved.iter().map(|(neuron, _)| neuron.is_some()).collect();
        assert_eq!(kept, [false, true, true], "{what}: the stages in turn");
    };
    let by_stages = pass(
        backend,
        &stages,
        &store,
        inputs(backend).unwrap(),
        kept_each,
    )
    .unwrap();
    assert_eq!(by_tokenizer, by_stages, "{what}");
}

#[test]
fn the_tokenizer_gives_the_bits_of_its_stages_in_turn_on_the_cpu() {
    check_against_the_stages_in_turn(&Cpu::<f64>::new(), "f64");
    check_against_the_stages_in_turn(&Cpu::<f32>::new(), "f32");
    for precision in [Precision::Bf16, Precision::Fp16] {
        let what = precision.to_string();
        check_against_the_stages_in_turn(&Cpu::<f32>::with_precision(precision), &what);
    }
}

/// In evaluation no backward follows, and every neuron keeps its context as in turn.
#[test]
fn in_evaluation_the_neurons_keep_their_context() {
    let cpu = Cpu::<f64>::new();
    let (tokenizer, store) = build(&cpu).unwrap();
    let x = random(&cpu, &input_shape(), 1, 1.5).unwrap();
    let saved = eval_saved(&cpu, &tokenizer, &store, x).unwrap();
    let kept: Vec<bool> = saved.iter().map(|(neuron, _)| neuron.is_some()).collect();
    assert_eq!(kept, [false, true, true]);
}

/// On CUDA, the bits of the stages in turn; after the forward the tokenizer holds exactly the
/// neurons' `h` fewer bytes, and its backward's peak is never higher.
#[test]
fn on_cuda_the_tokenizer_gives_the_bits_of_its_stages_and_holds_less() {
    let Some(gpu) = backend_or_skip::<f32>("on_cuda_the_tokenizer_gives_the_bits") else {
        return;
    };
    on_each_engine_and_precision(&gpu, |what, _| {
        check_against_the_stages_in_turn(&gpu, what);
        check_memory(&gpu, what);
    });
}

/// The live bytes the forward leaves and the backward's peak above its start, for the
/// tokenizer and its stages in turn.
fn check_memory(gpu: &Cuda<f32>, what: &str) {
    let (tokenizer, store) = build(gpu).unwrap();
    let (tokenizer_held, tokenizer_peak) = footprint(gpu, &tokenizer, &store, inputs(gpu).unwrap());
    let stages = in_turn(&tokenizer);
    let (stages_held, stages_peak) = footprint(gpu, &stages, &store, inputs(gpu).unwrap());
    let h = neuron_inputs_len() * size_of::<f32>();
    assert_eq!(
        stages_held - tokenizer_held,
        h,
        "{what}: held after the forward"
    );
    assert!(
        tokenizer_peak <= stages_peak,
        "{what}: backward peak {tokenizer_peak} > {stages_peak}"
    );
}
