//! The transformers' `Tokenizer` (docs/neurons.md §2.4.2): stages whose neurons keep nothing for
//! their backward, the BatchNorm before each making its input again, against the same stages in
//! turn (a `Vec` of `(Option<Neuron>, body)` tuples, whose neurons keep `h`). Output, `dL/dx` and
//! every parameter gradient must agree bit for bit: on the CPU in f64, f32 and emulated bf16 and
//! fp16, and on CUDA (the CPU emulator in CI) in f32, bf16 and fp16 on each convolution engine,
//! where the tokenizer must also hold, after its forward, exactly the neurons' `h` (one f32
//! tensor of each neuron's input shape) fewer bytes, and never more at its backward's peak.

use revsnn::error::Result;
use revsnn::model::build::{Builder, ConvInit};
use revsnn::model::compose::SeqToAnn;
use revsnn::model::layers::{ConvBn, ConvKind, MaxPool, Neuron};
use revsnn::model::tokenizer::{Tokenizer, TokenizerStage};
use revsnn::model::{EntryKind, Grads, Layer, Mode, ParamStore, Session};
use revsnn_gpu::Cuda;
use revsnn_gpu::testing::{backend_or_skip, each_conv_engine, with_peak_rise};
use revsnn_reference::testing::SplitMix64;
use revsnn_reference::{
    Backend, Conv2dParams, Cpu, Element, NeuronConfig, Pool2dParams, Precision,
};

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
        for id in [conv_bn.norm.ids.gamma, conv_bn.norm.ids.beta] {
            let values = (0..out)
                .map(|_| Bk::Elem::cast(affine.uniform(0.5, 1.5)))
                .collect();
            builder
                .store
                .set(id, backend.tensor_from_vec(&[out], values)?);
        }
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

fn random<Bk: Backend>(backend: &Bk, shape: &[usize], seed: u64, std: f64) -> Result<Bk::Tensor> {
    let values = SplitMix64::new(seed).normal_vec(shape.iter().product(), std);
    let values = values.into_iter().map(Bk::Elem::cast).collect();
    Ok(backend.tensor_from_vec(shape, values)?)
}

/// `[T, B, WIDTHS[3], SIDE / 2, SIDE / 2]`, the tokenizer's output.
fn output_shape() -> [usize; 5] {
    [T, B, WIDTHS[3], SIDE / 2, SIDE / 2]
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
    let x = random(backend, &input_shape(), 1, 1.5)?;
    let (y, saved) = layer.forward(&mut session, x)?;
    after_forward(&saved);
    let output = bits(backend, &y)?;
    drop(y);
    let dy = random(backend, &output_shape(), 2, 1.0)?;
    let grad_input = layer.backward(&mut session, saved, dy)?;
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

/// The tokenizer against its stages in turn, bit for bit; no neuron of the tokenizer kept a
/// context.
fn check_against_the_stages_in_turn<Bk: Backend>(backend: &Bk, what: &str) {
    let (tokenizer, store) = build(backend).unwrap();
    let kept_nothing = |saved: &<Tokenizer as Layer<Bk>>::Saved| {
        let kept = saved.iter().filter(|(neuron, _)| neuron.is_some()).count();
        assert_eq!(kept, 0, "{what}: neurons kept a context");
    };
    let by_tokenizer = pass(backend, &tokenizer, &store, kept_nothing).unwrap();
    let stages = in_turn(&tokenizer);
    let kept_each = |saved: &<InTurn as Layer<Bk>>::Saved| {
        let kept: Vec<bool> = saved.iter().map(|(neuron, _)| neuron.is_some()).collect();
        assert_eq!(kept, [false, true, true], "{what}: the stages in turn");
    };
    let by_stages = pass(backend, &stages, &store, kept_each).unwrap();
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
    let (tokenizer, mut store) = build(&cpu).unwrap();
    let mut grads = Grads::new(store.entries().len());
    let mut session = Session::new(&cpu, &mut store, &mut grads, Mode::Eval);
    let x = random(&cpu, &input_shape(), 1, 1.5).unwrap();
    let (_, saved) = tokenizer.forward(&mut session, x).unwrap();
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
    let device = gpu.device();
    for engine in each_conv_engine(device) {
        for precision in [Precision::F32, Precision::Bf16, Precision::Fp16] {
            device.set_precision(precision).unwrap();
            let what = format!("{precision} on {}", engine.name());
            check_against_the_stages_in_turn(&gpu, &what);
            check_memory(&gpu, &what);
        }
    }
    device.set_precision(Precision::F32).unwrap();
}

/// The live bytes the forward leaves and the backward's peak above its start, for the
/// tokenizer and its stages in turn.
fn check_memory(gpu: &Cuda<f32>, what: &str) {
    let (tokenizer, store) = build(gpu).unwrap();
    let (tokenizer_held, tokenizer_peak) = footprint(gpu, &tokenizer, &store);
    let (stages_held, stages_peak) = footprint(gpu, &in_turn(&tokenizer), &store);
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
    let x = random(gpu, &input_shape(), 1, 1.5).unwrap();
    let dy = random(gpu, &output_shape(), 2, 1.0).unwrap();
    let before = live();
    let (y, saved) = layer.forward(&mut session, x).unwrap();
    drop(y);
    let held = live() - before;
    let backward = || layer.backward(&mut session, saved, dy).unwrap();
    let (grad, rise) = with_peak_rise(gpu.device(), backward);
    drop(grad);
    (held, held + rise)
}
