//! Model-level checks of the reversible sequence (docs/reversible.md §3; docs/design.md, "the checks that make it
//! an oracle") on real spiking F and G blocks: the BasicResidualBlock of docs/architectures.md §4.0,
//! `Neuron -> Conv3x3+BN -> Neuron -> Conv3x3+BN` over `[T, B, p, H, W]`.
//!
//! Random small configurations (proptest): T in 1..6, batch 1..2, odd p, odd H and W, 1 to 3
//! blocks, IF/ATan or LIF/Sigmoid neurons, random convolution weights (Builder, seeded) and
//! BatchNorm affines, inputs scaled so that the neurons fire (every case asserts a spike rate
//! strictly between 0 and 1). Relative error is `||a - b||_2 / ||b||_2` over a whole tensor
//! (`revsnn_reference::testing::relative_error`, `b` the reference); "bitwise" compares the bits
//! of every element.
//!
//! * inverse: `inverse(forward(x))` is the quantized `x` bit for bit under the exact coupling
//!   (f32 and f64, every bit including the sign of zero), and `x` within 1e-12
//!   under the float coupling (f64);
//! * reversible backward = stored-activation backward on the same model, input and `dy`:
//!   bitwise under the exact coupling (f32 and f64), within 1e-10 under the float coupling (f64),
//!   with no diverged recompute;
//! * BatchNorm running statistics under `RecomputeStats::Once` and `Faithful` (docs/choices.md §A3);
//! * a stored output corrupted between forward and backward is reported as diverged recomputes;
//! * smooth neurons: the reversible gradients of input and every parameter against central
//!   finite differences, within 1e-6 (f64).

use std::cell::Cell;
use std::rc::Rc;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use revsnn::error::Result;
use revsnn::model::build::{Builder, ConvInit};
use revsnn::model::layers::{ConvBn, ConvKind, Neuron, flatten_time, unflatten_time};
use revsnn::model::reversible::{
    Coupling, RecomputeStats, ReversibleBlock, ReversibleOptions, ReversibleSequence,
    SequenceSaved, Storage,
};
use revsnn::model::{BuildOptions, EntryKind, Grads, Layer, Mode, ParamId, ParamStore, Session};
use revsnn_reference::prelude::*;
use revsnn_reference::testing::{SplitMix64, dot, five_point_difference, relative_error};
use revsnn_reference::{Conv2dParams, Cpu, CpuTensor, Element, NeuronConfig};

/// Spikes emitted by every neuron call of a model since the last reset.
#[derive(Debug, Default)]
struct SpikeCounter {
    spikes: Cell<f64>,
    outputs: Cell<usize>,
}

impl SpikeCounter {
    fn reset(&self) {
        self.spikes.set(0.0);
        self.outputs.set(0);
    }

    fn add<B: Backend>(&self, backend: &B, spikes: &B::Tensor) -> Result<()> {
        let values = backend.to_vec(spikes)?;
        self.spikes
            .set(self.spikes.get() + values.iter().map(|v| v.widen()).sum::<f64>());
        self.outputs.set(self.outputs.get() + values.len());
        Ok(())
    }

    fn rate(&self) -> f64 {
        self.spikes.get() / self.outputs.get() as f64
    }
}

/// BasicResidualBlock(p) (docs/architectures.md §4.0): `BN(Conv3x3(SN(BN(Conv3x3(SN(x))))))` over
/// `[T, B, p, H, W]`, the convolutions over the time-flattened `[T B, p, H, W]`.
#[derive(Clone, Debug)]
struct Block {
    sn1: Neuron,
    conv1: ConvBn,
    sn2: Neuron,
    conv2: ConvBn,
    counter: Rc<SpikeCounter>,
}

struct BlockSaved<B: Backend> {
    time_steps: usize,
    sn1: B::NeuronContext,
    conv1: <ConvBn as Layer<B>>::Saved,
    sn2: B::NeuronContext,
    conv2: <ConvBn as Layer<B>>::Saved,
}

impl<B: Backend> Layer<B> for Block {
    type Saved = BlockSaved<B>;

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let backend = session.backend;
        let time_steps = backend.shape(&x)[0];
        let (s1, sn1) = self.sn1.forward(session, x)?;
        self.counter.add(backend, &s1)?;
        let (a, conv1) = self.conv1.forward(session, flatten_time(backend, &s1)?)?;
        let (s2, sn2) = self
            .sn2
            .forward(session, unflatten_time(backend, &a, time_steps)?)?;
        self.counter.add(backend, &s2)?;
        let (b, conv2) = self.conv2.forward(session, flatten_time(backend, &s2)?)?;
        let saved = BlockSaved {
            time_steps,
            sn1,
            conv1,
            sn2,
            conv2,
        };
        Ok((unflatten_time(backend, &b, time_steps)?, saved))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        let backend = session.backend;
        let t = saved.time_steps;
        let grad = self
            .conv2
            .backward(session, saved.conv2, flatten_time(backend, &grad_y)?)?;
        let grad = self
            .sn2
            .backward(session, saved.sn2, unflatten_time(backend, &grad, t)?)?;
        let grad = self
            .conv1
            .backward(session, saved.conv1, flatten_time(backend, &grad)?)?;
        self.sn1
            .backward(session, saved.sn1, unflatten_time(backend, &grad, t)?)
    }
}

/// A random small configuration.
#[derive(Clone, Debug)]
struct Config {
    time_steps: usize,
    batch: usize,
    /// Channels of each half (F and G width); the stream has `2 p`.
    half_channels: usize,
    height: usize,
    width: usize,
    blocks: usize,
    seed: u64,
    lif: bool,
    input_std: f64,
}

impl Config {
    fn input_shape(&self) -> Vec<usize> {
        vec![
            self.time_steps,
            self.batch,
            2 * self.half_channels,
            self.height,
            self.width,
        ]
    }

    fn neuron(&self) -> NeuronConfig {
        if self.lif {
            NeuronConfig::lif_sigmoid(1.5, 1.0)
        } else {
            NeuronConfig::if_atan()
        }
    }
}

fn configs(max_time_steps: usize, max_blocks: usize) -> impl Strategy<Value = Config> {
    (
        1..=max_time_steps,
        1usize..=2,
        prop::sample::select(vec![1usize, 3, 5]),
        prop::sample::select(vec![3usize, 5]),
        prop::sample::select(vec![3usize, 5]),
        1..=max_blocks,
        any::<u64>(),
        any::<bool>(),
        1.5f64..3.0,
    )
        .prop_map(
            |(time_steps, batch, half_channels, height, width, blocks, seed, lif, input_std)| {
                Config {
                    time_steps,
                    batch,
                    half_channels,
                    height,
                    width,
                    blocks,
                    seed,
                    lif,
                    input_std,
                }
            },
        )
}

type Sequence = ReversibleSequence<Block, Block>;

struct Model<B: Backend> {
    sequence: Sequence,
    store: ParamStore<B>,
    counter: Rc<SpikeCounter>,
}

/// The reversible sequence of `config` with `options`; `smooth` makes every neuron smooth.
fn build<B: Backend>(
    backend: &B,
    config: &Config,
    options: ReversibleOptions,
    smooth: bool,
) -> Result<Model<B>> {
    let build_options = BuildOptions {
        reversible: options,
        smooth_neurons: smooth,
    };
    let p = config.half_channels;
    let mut builder = Builder::new(backend, config.seed);
    let mut affine = SplitMix64::new(config.seed ^ 0xA5A5_A5A5);
    let counter = Rc::new(SpikeCounter::default());
    let mut conv_bn = |builder: &mut Builder<B>, prefix: String| -> Result<ConvBn> {
        let conv_bn = builder.conv_bn(
            &format!("{prefix}.0"),
            &format!("{prefix}.1"),
            &[p, p, 3, 3],
            ConvInit::KaimingNormalFanOut,
            ConvKind::Conv2d(Conv2dParams::new(1, 1)),
        )?;
        // Random affines, so that gamma and beta matter (the Builder makes them 1 and 0).
        let gamma = (0..p)
            .map(|_| B::Elem::cast(affine.uniform(0.5, 1.5)))
            .collect();
        let beta = (0..p)
            .map(|_| B::Elem::cast(affine.uniform(-0.5, 0.5)))
            .collect();
        let ids = conv_bn.norm.ids;
        builder
            .store
            .set(ids.gamma, backend.tensor_from_vec(&[p], gamma)?);
        builder
            .store
            .set(ids.beta, backend.tensor_from_vec(&[p], beta)?);
        Ok(conv_bn)
    };
    let mut block = |builder: &mut Builder<B>, prefix: String| -> Result<Block> {
        Ok(Block {
            sn1: build_options.neuron(config.neuron()),
            conv1: conv_bn(builder, format!("{prefix}.conv1"))?,
            sn2: build_options.neuron(config.neuron()),
            conv2: conv_bn(builder, format!("{prefix}.conv2"))?,
            counter: counter.clone(),
        })
    };
    let mut blocks = Vec::with_capacity(config.blocks);
    for i in 0..config.blocks {
        blocks.push(ReversibleBlock {
            f: block(&mut builder, format!("layer.{i}.F"))?,
            g: block(&mut builder, format!("layer.{i}.G"))?,
        });
    }
    Ok(Model {
        sequence: ReversibleSequence { blocks, options },
        store: builder.store,
        counter,
    })
}

fn options(
    coupling: Coupling,
    recompute_stats: RecomputeStats,
    storage: Storage,
) -> ReversibleOptions {
    ReversibleOptions {
        coupling,
        recompute_stats,
        storage,
    }
}

/// `shape` filled with normal values of standard deviation `std` from `seed`.
fn random<B: Backend>(backend: &B, shape: &[usize], seed: u64, std: f64) -> Result<B::Tensor> {
    let len = shape.iter().product();
    let values = SplitMix64::new(seed).normal_vec(len, std);
    Ok(backend.tensor_from_vec(shape, values.into_iter().map(B::Elem::cast).collect())?)
}

fn input<B: Backend>(backend: &B, config: &Config) -> Result<B::Tensor> {
    random(
        backend,
        &config.input_shape(),
        config.seed.wrapping_add(1),
        config.input_std,
    )
}

fn grad_output<B: Backend>(backend: &B, config: &Config) -> Result<B::Tensor> {
    random(
        backend,
        &config.input_shape(),
        config.seed.wrapping_add(2),
        1.0,
    )
}

fn bits<E: Element>(values: &[E]) -> Vec<u64> {
    values.iter().map(|v| v.widen().to_bits()).collect()
}

fn widen<E: Element>(values: &[E]) -> Vec<f64> {
    values.iter().map(|v| v.widen()).collect()
}

/// The ids of the entries of `kind`.
fn ids_of<B: Backend>(store: &ParamStore<B>, kind: EntryKind) -> Vec<ParamId> {
    store
        .entries()
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == kind)
        .map(|(i, _)| ParamId(i))
        .collect()
}

/// The running statistics and batch counters of `store`, widened, per entry.
fn buffers<B: Backend>(backend: &B, store: &ParamStore<B>) -> Result<Vec<(String, Vec<f64>)>> {
    store
        .entries()
        .iter()
        .filter(|e| e.kind != EntryKind::Parameter)
        .map(|e| {
            let values = match e.tensor() {
                Some(tensor) => widen(&backend.to_vec(tensor)?),
                None => vec![e.count().unwrap_or_default() as f64],
            };
            Ok((e.name.clone(), values))
        })
        .collect()
}

fn assert_rate_strictly_inside(rate: f64) -> std::result::Result<(), TestCaseError> {
    prop_assert!(
        rate > 0.0 && rate < 1.0,
        "spike rate {rate}: the neurons must fire, and not always"
    );
    Ok(())
}

// ------------------------------------------------------------------------------------ inverse

/// Forward, then the inverse of the output; the reconstruction and the forward's spike rate.
fn forward_then_inverse<E: Element>(
    config: &Config,
    coupling: Coupling,
) -> Result<(Vec<E>, Vec<E>, f64)> {
    let backend = Cpu::<E>::new();
    let mut model = build(
        &backend,
        config,
        options(coupling, RecomputeStats::Once, Storage::Reversible),
        false,
    )?;
    let x = input(&backend, config)?;
    let expected = match coupling {
        Coupling::Exact => backend.quantize(&x, Coupling::grid_bits(E::DTYPE))?,
        Coupling::Float => x.clone(),
    };
    let mut grads = Grads::new(model.store.entries().len());
    let mut session = Session::new(&backend, &mut model.store, &mut grads, Mode::Train);
    model.counter.reset();
    let (y, _saved) = model.sequence.forward(&mut session, x.clone())?;
    let rate = model.counter.rate();
    let reconstructed = model.sequence.inverse(&mut session, &y)?;
    Ok((
        backend.to_vec(&reconstructed)?,
        backend.to_vec(&expected)?,
        rate,
    ))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn inverse_reconstructs_the_input(config in configs(5, 3)) {
        let (got, want, rate) = forward_then_inverse::<f32>(&config, Coupling::Exact)?;
        assert_rate_strictly_inside(rate)?;
        prop_assert!(
            bits(&got) == bits(&want),
            "exact coupling, f32: not bitwise"
        );

        let (got, want, rate) = forward_then_inverse::<f64>(&config, Coupling::Exact)?;
        assert_rate_strictly_inside(rate)?;
        prop_assert!(
            bits(&got) == bits(&want),
            "exact coupling, f64: not bitwise"
        );

        let (got, want, rate) = forward_then_inverse::<f64>(&config, Coupling::Float)?;
        assert_rate_strictly_inside(rate)?;
        let error = relative_error(&got, &want);
        prop_assert!(error <= 1e-12, "float coupling, f64: relative error {error:e}");
    }
}

// ------------------------------------------------------------------- reversible = stored BPTT

/// What one training-mode forward and backward produced.
struct Step<E> {
    output: Vec<E>,
    grad_input: Vec<E>,
    /// Every parameter's gradient, in store order.
    grad_params: Vec<(String, Vec<E>)>,
    diverged: usize,
    spike_rate: f64,
}

/// Forward and backward of `model` from a copy of its store, with `storage`.
fn step<E: Element>(
    backend: &Cpu<E>,
    model: &mut Model<Cpu<E>>,
    storage: Storage,
    x: &<Cpu<E> as TensorOps>::Tensor,
    dy: &<Cpu<E> as TensorOps>::Tensor,
) -> Result<Step<E>> {
    model.sequence.options.storage = storage;
    let mut store = model.store.clone();
    let mut grads = Grads::new(store.entries().len());
    let mut session = Session::new(backend, &mut store, &mut grads, Mode::Train);
    model.counter.reset();
    let (y, saved) = model.sequence.forward(&mut session, x.clone())?;
    let spike_rate = model.counter.rate();
    let grad_input = model.sequence.backward(&mut session, saved, dy.clone())?;
    let diverged = session.probes.diverged_recomputes(backend)?;
    let grad_params = ids_of(&store, EntryKind::Parameter)
        .into_iter()
        .map(|id| {
            let name = store.entries()[id.0].name.clone();
            let grad = grads
                .get(id)
                .unwrap_or_else(|| panic!("no gradient reached {name}"));
            Ok((name, backend.to_vec(grad)?))
        })
        .collect::<Result<_>>()?;
    Ok(Step {
        output: backend.to_vec(&y)?,
        grad_input: backend.to_vec(&grad_input)?,
        grad_params,
        diverged,
        spike_rate,
    })
}

/// The reversible and the stored-activation step of the same model, input and `dy`.
fn reversible_and_stored<E: Element>(
    config: &Config,
    coupling: Coupling,
) -> Result<(Step<E>, Step<E>)> {
    let backend = Cpu::<E>::new();
    let mut model = build(
        &backend,
        config,
        options(coupling, RecomputeStats::Once, Storage::Reversible),
        false,
    )?;
    let x = input(&backend, config)?;
    let dy = grad_output(&backend, config)?;
    let reversible = step(&backend, &mut model, Storage::Reversible, &x, &dy)?;
    let stored = step(&backend, &mut model, Storage::StoredActivations, &x, &dy)?;
    Ok((reversible, stored))
}

fn assert_bitwise_equal<E: Element>(
    reversible: &Step<E>,
    stored: &Step<E>,
) -> std::result::Result<(), TestCaseError> {
    prop_assert!(
        bits(&reversible.output) == bits(&stored.output),
        "outputs differ"
    );
    prop_assert!(
        bits(&reversible.grad_input) == bits(&stored.grad_input),
        "input gradients differ"
    );
    prop_assert_eq!(reversible.grad_params.len(), stored.grad_params.len());
    for ((name, r), (_, s)) in reversible.grad_params.iter().zip(&stored.grad_params) {
        prop_assert!(bits(r) == bits(s), "gradients of {} differ", name);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn reversible_gradients_equal_stored_activation_gradients(config in configs(5, 3)) {
        let (reversible, stored) = reversible_and_stored::<f32>(&config, Coupling::Exact)?;
        assert_rate_strictly_inside(reversible.spike_rate)?;
        prop_assert_eq!(reversible.diverged, 0);
        assert_bitwise_equal(&reversible, &stored)?;

        let (reversible, stored) = reversible_and_stored::<f64>(&config, Coupling::Exact)?;
        assert_rate_strictly_inside(reversible.spike_rate)?;
        prop_assert_eq!(reversible.diverged, 0);
        assert_bitwise_equal(&reversible, &stored)?;

        let (reversible, stored) = reversible_and_stored::<f64>(&config, Coupling::Float)?;
        assert_rate_strictly_inside(reversible.spike_rate)?;
        prop_assert_eq!(reversible.diverged, 0);
        prop_assert!(bits(&reversible.output) == bits(&stored.output), "outputs differ");
        let error = relative_error(&reversible.grad_input, &stored.grad_input);
        prop_assert!(error <= 1e-10, "input gradient: relative error {error:e}");
        for ((name, r), (_, s)) in reversible.grad_params.iter().zip(&stored.grad_params) {
            let error = relative_error(r, s);
            prop_assert!(error <= 1e-10, "gradient of {name}: relative error {error:e}");
        }
    }
}

// ------------------------------------------------------------ BatchNorm running statistics (A3)

/// Something done to a model in a training session.
type Run = fn(&Sequence, &mut Session<Cpu<f64>>, &CpuTensor<f64>) -> Result<()>;

/// The buffers of `config`'s model (f64) after `run` from a fresh store.
fn buffers_after(
    config: &Config,
    coupling: Coupling,
    recompute_stats: RecomputeStats,
    run: Run,
) -> Result<Vec<(String, Vec<f64>)>> {
    let backend = Cpu::<f64>::new();
    let mut model = build(
        &backend,
        config,
        options(coupling, recompute_stats, Storage::Reversible),
        false,
    )?;
    let x = input(&backend, config)?;
    let mut grads = Grads::new(model.store.entries().len());
    let mut session = Session::new(&backend, &mut model.store, &mut grads, Mode::Train);
    run(&model.sequence, &mut session, &x)?;
    buffers(&backend, &model.store)
}

fn forward_only(
    sequence: &Sequence,
    session: &mut Session<Cpu<f64>>,
    x: &CpuTensor<f64>,
) -> Result<()> {
    sequence.forward(session, x.clone()).map(drop)
}

fn two_forwards(
    sequence: &Sequence,
    session: &mut Session<Cpu<f64>>,
    x: &CpuTensor<f64>,
) -> Result<()> {
    forward_only(sequence, session, x)?;
    forward_only(sequence, session, x)
}

fn forward_backward(
    sequence: &Sequence,
    session: &mut Session<Cpu<f64>>,
    x: &CpuTensor<f64>,
) -> Result<()> {
    let (y, saved) = sequence.forward(session, x.clone())?;
    let dy = session.backend.scale(&y, 0.5)?;
    sequence.backward(session, saved, dy)?;
    assert_eq!(session.probes.diverged_recomputes(session.backend)?, 0);
    Ok(())
}

fn forward_inverse(
    sequence: &Sequence,
    session: &mut Session<Cpu<f64>>,
    x: &CpuTensor<f64>,
) -> Result<()> {
    let (y, _) = sequence.forward(session, x.clone())?;
    sequence.inverse(session, &y).map(drop)
}

fn assert_buffers_bitwise(
    got: &[(String, Vec<f64>)],
    want: &[(String, Vec<f64>)],
    what: &str,
) -> std::result::Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len());
    for ((name, g), (_, w)) in got.iter().zip(want) {
        prop_assert!(bits(g) == bits(w), "{}: {} differs", what, name);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// `Once`: a forward and backward leave the running statistics where the forward alone left
    /// them. `Faithful`: the recompute updates them a second time with its own batch statistics,
    /// which under the exact coupling are bitwise the forward's, so the result is bitwise that of
    /// two forwards (and within 1e-12 under the float coupling). The inverse follows the same rule.
    #[test]
    fn recompute_updates_running_stats_once_or_twice(config in configs(4, 2), exact in any::<bool>()) {
        let coupling = if exact { Coupling::Exact } else { Coupling::Float };
        let once = RecomputeStats::Once;
        let faithful = RecomputeStats::Faithful;
        let after_forward = buffers_after(&config, coupling, once, forward_only)?;
        let after_two = buffers_after(&config, coupling, once, two_forwards)?;
        prop_assert!(
            after_forward.iter().zip(&after_two).any(|((_, a), (_, b))| a != b),
            "a second forward must move the running statistics"
        );

        let got = buffers_after(&config, coupling, once, forward_backward)?;
        assert_buffers_bitwise(&got, &after_forward, "once, backward")?;
        let got = buffers_after(&config, coupling, once, forward_inverse)?;
        assert_buffers_bitwise(&got, &after_forward, "once, inverse")?;

        for (what, run) in [
            ("faithful, backward", forward_backward as Run),
            ("faithful, inverse", forward_inverse),
        ] {
            let got = buffers_after(&config, coupling, faithful, run)?;
            match coupling {
                Coupling::Exact => assert_buffers_bitwise(&got, &after_two, what)?,
                Coupling::Float => {
                    for ((name, g), (_, w)) in got.iter().zip(&after_two) {
                        let error = relative_error(g, w);
                        prop_assert!(error <= 1e-12, "{what}: {name} relative error {error:e}");
                    }
                }
            }
        }
    }
}

// ------------------------------------------------------------------------ divergence detection

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// A stored output corrupted between forward and backward cannot be inverted to the forward's
    /// activations: the recomputed spikes differ, and the backward counts it. With only the second
    /// half `y2` corrupted, the last block's G still sees the true `y1` and matches, so the
    /// divergence is first caught in its F.
    #[test]
    fn corrupted_output_is_counted_as_diverged_recomputes(
        config in configs(5, 3),
        exact in any::<bool>(),
        second_half_only in any::<bool>(),
    ) {
        let coupling = if exact { Coupling::Exact } else { Coupling::Float };
        let backend = Cpu::<f64>::new();
        let mut model = build(
            &backend,
            &config,
            options(coupling, RecomputeStats::Once, Storage::Reversible),
            false,
        )?;
        let x = input(&backend, &config)?;
        let dy = grad_output(&backend, &config)?;
        let mut noise = random(&backend, &config.input_shape(), config.seed.wrapping_add(3), 10.0)?;
        if second_half_only {
            let p = config.half_channels;
            let second = backend.narrow(&noise, 2, p, p)?;
            let first = backend.zeros(&backend.shape(&second))?;
            noise = backend.concat(&[&first, &second], 2)?;
        }
        let mut grads = Grads::new(model.store.entries().len());
        let mut session = Session::new(&backend, &mut model.store, &mut grads, Mode::Train);
        model.counter.reset();
        let (_, mut saved) = model.sequence.forward(&mut session, x.clone())?;
        assert_rate_strictly_inside(model.counter.rate())?;
        match &mut saved {
            SequenceSaved::Reversible { output, .. } => *output = backend.add(output, &noise)?,
            SequenceSaved::Stored { .. } => prop_assert!(false, "the reversible storage stored contexts"),
        }
        model.sequence.backward(&mut session, saved, dy.clone())?;
        let diverged = session.probes.diverged_recomputes(&backend)?;
        prop_assert!(diverged > 0, "corruption not detected");
        let most = 2 * config.blocks - usize::from(second_half_only);
        prop_assert!(diverged <= most, "{diverged} > {most}");

        // A second corrupted pass counted on top of the first (as a training epoch counts its
        // steps) adds its own: every recompute compared, at least one more diverged.
        let first = session.probes.take_diverged();
        prop_assert_eq!(first.compared(), 2 * config.blocks);
        session.probes.count_diverged_into(first);
        let (_, mut saved) = model.sequence.forward(&mut session, x)?;
        if let SequenceSaved::Reversible { output, .. } = &mut saved {
            *output = backend.add(output, &noise)?;
        }
        model.sequence.backward(&mut session, saved, dy)?;
        let both = session.probes.take_diverged();
        prop_assert_eq!(both.compared(), 4 * config.blocks);
        let total = both.read(&backend)?;
        prop_assert!(total > diverged && total <= 2 * most, "{total} after {diverged}");
    }
}

// ---------------------------------------------------------------------- finite differences

/// `L = <dy, y(x)>` of a training-mode forward that leaves the running statistics alone.
fn loss(
    sequence: &Sequence,
    store: &mut ParamStore<Cpu<f64>>,
    x: &CpuTensor<f64>,
    dy: &[f64],
) -> Result<f64> {
    let backend = Cpu::<f64>::new();
    let mut grads = Grads::new(store.entries().len());
    let mut session = Session::new(&backend, store, &mut grads, Mode::Train);
    session.update_running_stats = false;
    let (y, _) = sequence.forward(&mut session, x.clone())?;
    Ok(dot(&backend.to_vec(&y)?, dy))
}

/// The step of the five-point differences: the smooth neurons are steep, and the central
/// difference's `O(h^2)` truncation error reached 1.8e-6 relative at `h = 1e-5` for some seeds;
/// the five-point formula's `O(h^4)` error at `1e-4` is far below the 1e-6 bound.
const FD_STEP: f64 = 1e-4;

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, failure_persistence: None, ..ProptestConfig::default() })]

    /// With smooth neurons (the surrogate's primitive, detach_reset off) the model is
    /// differentiable and the reversible backward must compute its exact gradient.
    #[test]
    fn smooth_reversible_gradients_match_finite_differences(config in configs(3, 2)) {
        let backend = Cpu::<f64>::new();
        let model = build(
            &backend,
            &config,
            options(Coupling::Float, RecomputeStats::Once, Storage::Reversible),
            true,
        )?;
        let x = input(&backend, &config)?;
        let dy = grad_output(&backend, &config)?;
        let dy_values = backend.to_vec(&dy)?;

        let mut store = model.store.clone();
        let mut grads = Grads::new(store.entries().len());
        let mut session = Session::new(&backend, &mut store, &mut grads, Mode::Train);
        session.update_running_stats = false;
        model.counter.reset();
        let (_, saved) = model.sequence.forward(&mut session, x.clone())?;
        assert_rate_strictly_inside(model.counter.rate())?;
        let grad_input = backend.to_vec(&model.sequence.backward(&mut session, saved, dy.clone())?)?;

        let shape = config.input_shape();
        let mut probe = model.store.clone();
        let numeric = five_point_difference(
            |point| {
                let x = backend.tensor_from_vec(&shape, point.to_vec()).expect("input");
                loss(&model.sequence, &mut probe, &x, &dy_values).expect("forward")
            },
            &backend.to_vec(&x)?,
            FD_STEP,
        );
        let error = relative_error(&grad_input, &numeric);
        prop_assert!(error <= 1e-6, "input gradient: relative error {error:e}");

        for id in ids_of(&model.store, EntryKind::Parameter) {
            let entry = model.store.entries()[id.0].clone();
            let analytic = backend.to_vec(grads.get(id).expect("every parameter has a gradient"))?;
            let mut probe = model.store.clone();
            let numeric = five_point_difference(
                |point| {
                    let value = backend.tensor_from_vec(&entry.shape, point.to_vec()).expect("parameter");
                    probe.set(id, value);
                    loss(&model.sequence, &mut probe, &x, &dy_values).expect("forward")
                },
                &backend.to_vec(model.store.get(id))?,
                FD_STEP,
            );
            let error = relative_error(&analytic, &numeric);
            prop_assert!(error <= 1e-6, "gradient of {}: relative error {error:e}", entry.name);
        }
    }
}
