//! The spiking transformers (docs/architectures.md §4.4-4.7): parameter counts, official key names and order,
//! forward shapes, `train_step`, whole-model gradients against central finite differences in f64
//! (smooth neurons), and errors for bad specs and inputs.
//!
//! Relative errors are `||a - b||_2 / ||b||_2` with `b` the finite difference
//! ([`relative_error`]).

use revsnn::error::Error;
use revsnn::model::build::Builder;
use revsnn::model::reversible::{ReversibleOptions, Storage};
use revsnn::model::transformer::{RevSFormer, Spikingformer};
use revsnn::model::{
    BuildOptions, EntryKind, Grads, Layer, Mode, ParamStore, Session, Targets, train_step,
};
use revsnn::spec::{Arch, ModelSpec};
use revsnn_reference::prelude::*;
use revsnn_reference::testing::{SplitMix64, central_difference, dot, relative_error};
use revsnn_reference::{BatchNormParams, Conv2dParams, Cpu, NeuronConfig, Pool2dParams};

type Cpu64 = Cpu<f64>;

/// A model of either transformer family, built from its spec.
trait Transformer<B: Backend>: Layer<B> + Sized {
    fn build_with(
        builder: &mut Builder<B>,
        spec: &ModelSpec,
        options: &BuildOptions,
    ) -> revsnn::error::Result<Self>;
}

impl<B: Backend> Transformer<B> for RevSFormer {
    fn build_with(
        builder: &mut Builder<B>,
        spec: &ModelSpec,
        options: &BuildOptions,
    ) -> revsnn::error::Result<Self> {
        RevSFormer::build(builder, spec, options)
    }
}

impl<B: Backend> Transformer<B> for Spikingformer {
    fn build_with(
        builder: &mut Builder<B>,
        spec: &ModelSpec,
        options: &BuildOptions,
    ) -> revsnn::error::Result<Self> {
        Spikingformer::build(builder, spec, options)
    }
}

fn build<B: Backend, M: Transformer<B>>(
    backend: &B,
    spec: &ModelSpec,
    options: &BuildOptions,
    seed: u64,
) -> (M, ParamStore<B>) {
    let mut builder = Builder::new(backend, seed);
    let model = M::build_with(&mut builder, spec, options).expect("valid spec builds");
    (model, builder.store)
}

/// The parameter count of a spec, built in f32.
fn count(spec: &ModelSpec) -> usize {
    let backend = Cpu::<f32>::new();
    let options = BuildOptions::default();
    let store = if spec.arch.is_reversible() {
        build::<_, RevSFormer>(&backend, spec, &options, 1).1
    } else {
        build::<_, Spikingformer>(&backend, spec, &options, 1).1
    };
    store.parameter_count()
}

/// A preset with its class count and head count changed (CIFAR-10 runs use 12 heads).
fn preset(name: &str, classes: usize, heads: Option<usize>) -> ModelSpec {
    let mut spec = ModelSpec::preset(name).unwrap();
    spec.num_classes = classes;
    if let Some(heads) = heads {
        spec.heads = Some(heads);
    }
    spec
}

#[test]
fn parameter_counts_equal_spec_4_7() {
    let cases: &[(&str, usize, Option<usize>, usize)] = &[
        ("revsformer-2-384", 10, Some(12), 5_766_586),
        ("revsformer-4-384", 10, Some(12), 9_323_962),
        ("revsformer-2-384", 100, Some(8), 5_835_796),
        ("revsformer-4-384", 100, Some(8), 9_393_172),
        ("spikingformer-2-384", 10, Some(12), 5_765_818),
        ("spikingformer-4-384", 10, Some(12), 9_326_266),
        ("spikingformer-2-384", 100, Some(8), 5_800_468),
        ("spikingformer-4-384", 100, Some(8), 9_360_916),
        ("revsformer-2-256", 10, None, 2_569_226),
        ("revsformer-2-256", 11, None, 2_569_739),
        ("spikingformer-2-256", 10, None, 2_568_714),
        ("spikingformer-2-256", 11, None, 2_568_971),
    ];
    for &(name, classes, heads, expected) in cases {
        let spec = preset(name, classes, heads);
        assert_eq!(count(&spec), expected, "{name}, {classes} classes");
    }
}

/// `(key, shape)` per line of a fixture, and the parameter count its header states.
fn fixture(name: &str) -> (Vec<(String, Vec<usize>)>, usize) {
    let path = format!(
        "{}/fixtures/checkpoint-keys/{name}.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut stated = None;
    let keys = text
        .lines()
        .filter(|line| {
            if let Some(n) = line.strip_prefix("# parameters: ") {
                stated = Some(n.trim().parse().unwrap());
            }
            !line.starts_with('#') && !line.trim().is_empty()
        })
        .map(|line| {
            let (key, shape) = line.split_once('\t').expect("key<TAB>shape");
            let inner = shape.trim().trim_start_matches('[').trim_end_matches(']');
            let shape = inner
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect();
            (key.to_string(), shape)
        })
        .collect();
    (keys, stated.expect("fixture states its parameter count"))
}

#[test]
fn keys_shapes_and_order_equal_the_official_state_dicts() {
    let backend = Cpu::<f32>::new();
    let options = BuildOptions::default();
    for name in [
        "revsformer-2-384",
        "revsformer-4-384",
        "revsformer-2-256",
        "spikingformer-2-384",
        "spikingformer-4-384",
        "spikingformer-2-256",
    ] {
        // The fixtures are the CIFAR-10 (12 heads) and CIFAR10-DVS configurations.
        let heads = name.ends_with("384").then_some(12);
        let spec = preset(name, 10, heads);
        let store = if spec.arch.is_reversible() {
            build::<_, RevSFormer>(&backend, &spec, &options, 7).1
        } else {
            build::<_, Spikingformer>(&backend, &spec, &options, 7).1
        };
        let ours: Vec<(String, Vec<usize>)> = store
            .entries()
            .iter()
            .map(|e| (e.name.clone(), e.shape.clone()))
            .collect();
        let (official, stated) = fixture(name);
        assert_eq!(ours.len(), official.len(), "{name}: number of entries");
        for (i, (a, b)) in ours.iter().zip(&official).enumerate() {
            assert_eq!(a, b, "{name}: entry {i}");
        }
        assert_eq!(store.parameter_count(), stated, "{name}");
    }
}

#[test]
fn initialisation_follows_spec_4_6() {
    let backend = Cpu::<f64>::new();
    let spec = preset("spikingformer-2-384", 10, Some(12));
    let (_, store) = build::<_, Spikingformer>(&backend, &spec, &BuildOptions::default(), 3);
    let values = |name: &str| {
        let id = store.id_of(name).unwrap_or_else(|| panic!("{name}"));
        backend.to_vec(store.get(id)).unwrap()
    };
    let head = values("head.weight");
    let std = (head.iter().map(|v| v * v).sum::<f64>() / head.len() as f64).sqrt();
    assert!((std - 0.02).abs() < 0.001, "head std {std}");
    assert!(values("head.bias").iter().all(|&v| v == 0.0));
    assert!(values("block.0.norm1.weight").iter().all(|&v| v == 1.0));
    assert!(values("block.1.norm2.bias").iter().all(|&v| v == 0.0));
    assert!(values("block.0.attn.q_bn.weight").iter().all(|&v| v == 1.0));
    for (name, fan_in) in [
        ("patch_embed.block1_conv.weight", 48 * 9),
        ("block.0.attn.proj_conv.weight", 384),
        ("block.0.attn.proj_conv.bias", 384),
        ("block.1.mlp.mlp2_conv.bias", 1536),
    ] {
        let v = values(name);
        let bound = 1.0 / (fan_in as f64).sqrt();
        let max = v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        // U(-b, b): the largest of many draws is inside and close to the bound.
        assert!(
            max <= bound && max > 0.9 * bound,
            "{name}: max {max}, bound {bound}"
        );
    }
}

/// Small specs of every arch: CIFAR 8x8 images (2x2 tokens), DVS 32x32 frames (2x2 tokens).
fn small_spec(arch: Arch, depth: usize) -> ModelSpec {
    let dvs = arch.is_dvs();
    ModelSpec {
        arch,
        num_classes: 3,
        time_steps: if dvs { 3 } else { 2 },
        in_channels: if dvs { 2 } else { 3 },
        img_size: if dvs { 32 } else { 8 },
        layers: None,
        planes: None,
        depth: Some(depth),
        dim: Some(16),
        heads: Some(2),
        mlp_ratio: Some(4),
        patch_size: Some(if dvs { 16 } else { 4 }),
    }
}

fn input_shape(spec: &ModelSpec, batch: usize) -> Vec<usize> {
    let mut shape = vec![batch];
    shape.extend(spec.sample_shape());
    shape
}

fn random(rng: &mut SplitMix64, len: usize, std: f64) -> Vec<f64> {
    rng.normal_vec(len, std)
}

fn is_unused_norm(name: &str) -> bool {
    name.contains(".norm1.") || name.contains(".norm2.")
}

fn check_train_step<M: Transformer<Cpu<f32>>>(spec: &ModelSpec) {
    let backend = Cpu::<f32>::new();
    let (model, mut store) = build::<_, M>(&backend, spec, &BuildOptions::default(), 11);
    let batch = 2;
    let shape = input_shape(spec, batch);
    let mut rng = SplitMix64::new(5);
    let len = shape.iter().product();
    let data = random(&mut rng, len, 1.5)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let images = backend.tensor_from_vec(&shape, data).unwrap();
    let mut grads = Grads::new(store.entries().len());
    let mut session = Session::new(&backend, &mut store, &mut grads, Mode::Train);
    let out = train_step(&model, &mut session, &images, Targets::Hard(&[0, 2])).unwrap();
    assert_eq!(backend.shape(&out.logits), vec![batch, spec.num_classes]);
    assert!(
        backend
            .to_vec(&out.logits)
            .unwrap()
            .iter()
            .all(|v| v.is_finite())
    );
    assert!(out.loss_value(&backend).unwrap().is_finite());
    assert_eq!(backend.shape(&out.grad_input), shape);
    assert!(
        backend
            .to_vec(&out.grad_input)
            .unwrap()
            .iter()
            .all(|v| v.is_finite())
    );
    assert_eq!(
        session.probes.diverged_recomputes(&backend).unwrap(),
        0,
        "{:?}",
        spec.arch
    );
    for (i, entry) in store.entries().iter().enumerate() {
        let grad = grads.get(revsnn::model::ParamId(i));
        match entry.kind {
            EntryKind::Parameter if is_unused_norm(&entry.name) => {
                assert!(grad.is_none(), "{}: unused, yet has a gradient", entry.name)
            }
            EntryKind::Parameter => {
                let grad = grad.unwrap_or_else(|| panic!("{}: no gradient", entry.name));
                assert_eq!(backend.shape(grad), entry.shape, "{}", entry.name);
                assert!(backend.to_vec(grad).unwrap().iter().all(|v| v.is_finite()));
            }
            EntryKind::BatchesTracked => {
                // Training-mode forward updated every BatchNorm's running statistics once.
                assert_eq!(entry.count(), Some(1), "{}", entry.name);
            }
            EntryKind::RunningStat => assert!(grad.is_none()),
        }
    }
    // Evaluation mode runs on the running statistics.
    let mut grads = Grads::new(store.entries().len());
    let mut session = Session::new(&backend, &mut store, &mut grads, Mode::Eval);
    let (logits, _) = model.forward(&mut session, images.clone()).unwrap();
    assert_eq!(backend.shape(&logits), vec![batch, spec.num_classes]);
    assert!(
        backend
            .to_vec(&logits)
            .unwrap()
            .iter()
            .all(|v| v.is_finite())
    );
}

#[test]
fn forward_shapes_and_train_step_give_every_used_parameter_a_gradient() {
    check_train_step::<RevSFormer>(&small_spec(Arch::Revsformer, 1));
    check_train_step::<RevSFormer>(&small_spec(Arch::RevsformerDvs, 1));
    check_train_step::<Spikingformer>(&small_spec(Arch::Spikingformer, 1));
    check_train_step::<Spikingformer>(&small_spec(Arch::SpikingformerDvs, 1));
}

/// Analytic gradients of `L = <w, logits>` (training mode, running statistics left alone):
/// `(dL/dinput, dL/dparameter per store entry, recomputes whose spikes differed)`. With smooth
/// neurons the "spikes" are real values that the reconstruction's rounding changes, so only
/// Heaviside runs expect no divergence.
fn analytic<M: Layer<Cpu64>>(
    model: &M,
    store: &ParamStore<Cpu64>,
    input: &[f64],
    shape: &[usize],
    w: &[f64],
) -> Gradients {
    let backend = Cpu64::new();
    let mut store = store.clone();
    let mut grads = Grads::new(store.entries().len());
    let mut session = Session::new(&backend, &mut store, &mut grads, Mode::Train);
    session.update_running_stats = false;
    let x = backend.tensor_from_vec(shape, input.to_vec()).unwrap();
    let (logits, saved) = model.forward(&mut session, x.clone()).unwrap();
    let grad_logits = backend
        .tensor_from_vec(&backend.shape(&logits), w.to_vec())
        .unwrap();
    let grad_input = model.backward(&mut session, saved, grad_logits).unwrap();
    let diverged = session.probes.diverged_recomputes(&backend).unwrap();
    let params = (0..store.entries().len())
        .map(|i| {
            grads
                .get(revsnn::model::ParamId(i))
                .map(|g| backend.to_vec(g).unwrap())
        })
        .collect();
    (backend.to_vec(&grad_input).unwrap(), params, diverged)
}

type Gradients = (Vec<f64>, Vec<Option<Vec<f64>>>, usize);

/// `L = <w, logits>` of a training-mode forward.
fn loss<M: Layer<Cpu64>>(
    model: &M,
    store: &mut ParamStore<Cpu64>,
    input: &[f64],
    shape: &[usize],
    w: &[f64],
) -> f64 {
    let backend = Cpu64::new();
    let mut grads = Grads::new(store.entries().len());
    let mut session = Session::new(&backend, store, &mut grads, Mode::Train);
    session.update_running_stats = false;
    let x = backend.tensor_from_vec(shape, input.to_vec()).unwrap();
    let (logits, _) = model.forward(&mut session, x.clone()).unwrap();
    dot(&backend.to_vec(&logits).unwrap(), w)
}

/// `count` distinct coordinates of `0..len`, all of them when `len <= count`.
fn sample(rng: &mut SplitMix64, len: usize, count: usize) -> Vec<usize> {
    if len <= count {
        return (0..len).collect();
    }
    let mut picked = Vec::with_capacity(count);
    while picked.len() < count {
        let i = (rng.next_u64() % len as u64) as usize;
        if !picked.contains(&i) {
            picked.push(i);
        }
    }
    picked
}

/// Central-difference step: at 1e-5 the truncation error of the first convolutions' weights
/// reaches 5e-7 relative, at 1e-6 the rounding error of the rest 4e-7; 3e-6 keeps both near 1e-7.
const STEP: f64 = 3e-6;
const TOLERANCE: f64 = 1e-6;

/// Conv biases directly before a BatchNorm: the normalisation removes them, so their exact
/// gradient is 0 (docs/reversible.md §3.5).
fn cancelled_by_batch_norm(name: &str) -> bool {
    name.ends_with("proj_conv.bias")
        || name.ends_with("mlp1_conv.bias")
        || name.ends_with("mlp2_conv.bias")
}

/// Whole-model gradient check in f64 with smooth neurons: grad_input and a sample of coordinates
/// of every used parameter tensor against central differences of `L = <w, logits>`.
fn check_gradients<M: Transformer<Cpu64>>(spec: &ModelSpec, options: &BuildOptions) -> M {
    let backend = Cpu64::new();
    let (model, store) = build::<_, M>(&backend, spec, options, 21);
    let batch = 2;
    let shape = input_shape(spec, batch);
    let mut rng = SplitMix64::new(99);
    let input = random(&mut rng, shape.iter().product(), 1.5);
    let w = random(&mut rng, batch * spec.num_classes, 1.0);
    let (grad_input, grad_params, _) = analytic(&model, &store, &input, &shape, &w);
    let scale = grad_input
        .iter()
        .chain(grad_params.iter().flatten().flatten())
        .fold(0.0f64, |m, g| m.max(g.abs()));

    let picked = sample(&mut rng, input.len(), 48);
    let point: Vec<f64> = picked.iter().map(|&i| input[i]).collect();
    let mut work = store.clone();
    let numeric = central_difference(
        |sub| {
            let mut x = input.clone();
            for (&i, &v) in picked.iter().zip(sub) {
                x[i] = v;
            }
            loss(&model, &mut work, &x, &shape, &w)
        },
        &point,
        STEP,
    );
    let exact: Vec<f64> = picked.iter().map(|&i| grad_input[i]).collect();
    let error = relative_error(&exact, &numeric);
    assert!(error <= TOLERANCE, "{:?} grad_input: {error:e}", spec.arch);

    let mut checked = 0;
    for (index, entry) in store.entries().iter().enumerate() {
        if entry.kind != EntryKind::Parameter {
            continue;
        }
        let grad = &grad_params[index];
        if is_unused_norm(&entry.name) {
            assert!(grad.is_none(), "{}", entry.name);
            continue;
        }
        let grad = grad
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no gradient", entry.name));
        let id = revsnn::model::ParamId(index);
        let values = backend.to_vec(store.get(id)).unwrap();
        let picked = sample(&mut rng, values.len(), 6);
        let point: Vec<f64> = picked.iter().map(|&i| values[i]).collect();
        let mut work = store.clone();
        let numeric = central_difference(
            |sub| {
                let mut v = values.clone();
                for (&i, &x) in picked.iter().zip(sub) {
                    v[i] = x;
                }
                work.set(id, backend.tensor_from_vec(&entry.shape, v).unwrap());
                loss(&model, &mut work, &input, &shape, &w)
            },
            &point,
            STEP,
        );
        let exact: Vec<f64> = picked.iter().map(|&i| grad[i]).collect();
        if cancelled_by_batch_norm(&entry.name) {
            let worst = exact
                .iter()
                .chain(&numeric)
                .fold(0.0f64, |m, g| m.max(g.abs()));
            assert!(worst <= 1e-8 * scale, "{}: {worst:e} is not 0", entry.name);
        } else {
            let error = relative_error(&exact, &numeric);
            assert!(
                error <= TOLERANCE,
                "{:?} {}: {error:e}",
                spec.arch,
                entry.name
            );
        }
        checked += 1;
    }
    assert!(checked > 30, "{checked} tensors checked");
    model
}

fn smooth(storage: Storage) -> BuildOptions {
    BuildOptions {
        reversible: ReversibleOptions {
            storage,
            ..ReversibleOptions::default()
        },
        smooth_neurons: true,
    }
}

#[test]
fn revsformer_gradients_match_finite_differences() {
    check_gradients::<RevSFormer>(
        &small_spec(Arch::Revsformer, 2),
        &smooth(Storage::Reversible),
    );
}

#[test]
fn revsformer_dvs_gradients_match_finite_differences() {
    check_gradients::<RevSFormer>(
        &small_spec(Arch::RevsformerDvs, 2),
        &smooth(Storage::Reversible),
    );
}

#[test]
fn spikingformer_gradients_match_finite_differences() {
    check_gradients::<Spikingformer>(
        &small_spec(Arch::Spikingformer, 2),
        &smooth(Storage::Reversible),
    );
}

#[test]
fn spikingformer_dvs_gradients_match_finite_differences() {
    check_gradients::<Spikingformer>(
        &small_spec(Arch::SpikingformerDvs, 2),
        &smooth(Storage::Reversible),
    );
}

/// The reversible backward (recomputing F and G) equals plain backpropagation through the same
/// model with stored activations, in f64 with Heaviside spikes (docs/design.md: <= 1e-10).
#[test]
fn revsformer_reversible_backward_equals_stored_activations() {
    let backend = Cpu64::new();
    for arch in [Arch::Revsformer, Arch::RevsformerDvs] {
        let spec = small_spec(arch, 3);
        let shape = input_shape(&spec, 2);
        let mut rng = SplitMix64::new(4);
        let input = random(&mut rng, shape.iter().product(), 2.0);
        let w = random(&mut rng, 2 * spec.num_classes, 1.0);
        let mut results = Vec::new();
        for storage in [Storage::Reversible, Storage::StoredActivations] {
            let options = BuildOptions {
                reversible: ReversibleOptions {
                    storage,
                    ..ReversibleOptions::default()
                },
                smooth_neurons: false,
            };
            let (model, store) = build::<_, RevSFormer>(&backend, &spec, &options, 8);
            results.push(analytic(&model, &store, &input, &shape, &w));
        }
        let (rev, stored) = (&results[0], &results[1]);
        let error = relative_error(&rev.0, &stored.0);
        assert!(error <= 1e-10, "{arch:?} grad_input: {error:e}");
        let flat = |grads: &[Option<Vec<f64>>]| -> Vec<f64> {
            grads.iter().flatten().flatten().copied().collect()
        };
        let error = relative_error(&flat(&rev.1), &flat(&stored.1));
        assert!(error <= 1e-10, "{arch:?} parameters: {error:e}");
        assert!(rev.0.iter().any(|&g| g != 0.0), "{arch:?}: gradient is 0");
        assert_eq!(rev.2, 0, "{arch:?}: a recompute flipped spikes");
    }
}

/// The forward of docs/architectures.md §4.0, 4.4 and 4.5 written out plainly from the official key names, in
/// training mode with Heaviside spikes: the tokenizer stage by stage, the attention with explicit
/// loops over heads and tokens (`c = head d + j`), the MLP, the body, the read-out.
struct ReferenceForward<'a> {
    backend: Cpu64,
    spec: &'a ModelSpec,
    store: &'a ParamStore<Cpu64>,
}

type T64 = <Cpu64 as TensorOps>::Tensor;

impl ReferenceForward<'_> {
    fn param(&self, name: &str) -> T64 {
        let id = self
            .store
            .id_of(name)
            .unwrap_or_else(|| panic!("no {name}"));
        self.store.get(id).clone()
    }

    fn lif(&self, x: &T64, v_threshold: f64) -> T64 {
        let tau = if self.spec.arch.is_dvs() { 1.5 } else { 2.0 };
        let config = NeuronConfig::lif_sigmoid(tau, v_threshold);
        self.backend.neuron_forward(x.clone(), &config).unwrap().0
    }

    /// `BN(conv(x))` on `[N, C, H, W]`, with the conv bias when the store has one.
    fn conv_bn(&self, x: &T64, conv: &str, bn: &str, padding: usize) -> T64 {
        let b = &self.backend;
        let mut weight = self.param(&format!("{conv}.weight"));
        let w = b.shape(&weight);
        if w.len() == 3 {
            weight = b.reshape(&weight, &[w[0], w[1], 1, 1]).unwrap();
        }
        let bias = self
            .store
            .id_of(&format!("{conv}.bias"))
            .map(|id| self.store.get(id).clone());
        let params = Conv2dParams::new(1, padding);
        let y = b
            .conv2d_forward(x, &weight, bias.as_ref(), params)
            .unwrap()
            .0;
        let gamma = self.param(&format!("{bn}.weight"));
        let beta = self.param(&format!("{bn}.bias"));
        let bn_params = BatchNormParams::default();
        b.batch_norm_train_forward(&y, &gamma, &beta, bn_params)
            .unwrap()
            .0
    }

    /// `[T, B, C, H, W] -> [T B, C, H, W]` and back.
    fn flat(&self, x: &T64) -> T64 {
        let s = self.backend.shape(x);
        let mut shape = vec![s[0] * s[1]];
        shape.extend_from_slice(&s[2..]);
        self.backend.reshape(x, &shape).unwrap()
    }

    fn unflat(&self, x: &T64, t: usize) -> T64 {
        let s = self.backend.shape(x);
        let mut shape = vec![t, s[0] / t];
        shape.extend_from_slice(&s[1..]);
        self.backend.reshape(x, &shape).unwrap()
    }

    fn tokenizer(&self, x: &T64) -> T64 {
        let b = &self.backend;
        let t = b.shape(x)[0];
        let dvs = self.spec.arch.is_dvs();
        let pool = Pool2dParams {
            kernel: 3,
            stride: 2,
            padding: 1,
        };
        let mut x = x.clone();
        for i in 0..5 {
            if i > 0 {
                x = self.lif(&x, 1.0);
            }
            let mut flat = self.flat(&x);
            if (dvs && i >= 1) || (!dvs && i >= 3) {
                flat = b.max_pool2d_forward(&flat, pool).unwrap().0;
            }
            let (conv, bn) = match (dvs, i) {
                (true, 0) => ("proj_conv".to_string(), "proj_bn".to_string()),
                (true, _) => (format!("proj{i}_conv"), format!("proj{i}_bn")),
                (false, _) => (format!("block{i}_conv"), format!("block{i}_bn")),
            };
            let y = self.conv_bn(
                &flat,
                &format!("patch_embed.{conv}"),
                &format!("patch_embed.{bn}"),
                1,
            );
            x = self.unflat(&y, t);
        }
        x
    }

    fn attention(&self, x: &T64, prefix: &str) -> T64 {
        let b = &self.backend;
        let shape = b.shape(x);
        let (t, batch, c, n) = (shape[0], shape[1], shape[2], shape[3] * shape[4]);
        let heads = self.spec.heads.unwrap();
        let d = c / heads;
        let s = b.reshape(&self.lif(x, 1.0), &[t * batch, c, n, 1]).unwrap();
        let branch = |name: &str| {
            let y = self.conv_bn(
                &s,
                &format!("{prefix}.{name}_conv"),
                &format!("{prefix}.{name}_bn"),
                0,
            );
            let y = b.reshape(&y, &[t, batch, c, n]).unwrap();
            b.to_vec(&self.lif(&y, 1.0)).unwrap()
        };
        let (q, k, v) = (branch("q"), branch("k"), branch("v"));
        let at = |z: &[f64], tb: usize, ch: usize, token: usize| z[(tb * c + ch) * n + token];
        let mut out = vec![0.0; t * batch * c * n];
        for tb in 0..t * batch {
            for head in 0..heads {
                for i in 0..n {
                    for j in 0..d {
                        let mut sum = 0.0;
                        for m in 0..n {
                            let score: f64 = (0..d)
                                .map(|e| at(&q, tb, head * d + e, i) * at(&k, tb, head * d + e, m))
                                .sum();
                            sum += score * at(&v, tb, head * d + j, m);
                        }
                        out[(tb * c + head * d + j) * n + i] = sum * 0.125;
                    }
                }
            }
        }
        let o = b.tensor_from_vec(&[t, batch, c, n], out).unwrap();
        let spikes = b
            .reshape(&self.lif(&o, 0.5), &[t * batch, c, n, 1])
            .unwrap();
        let y = self.conv_bn(
            &spikes,
            &format!("{prefix}.proj_conv"),
            &format!("{prefix}.proj_bn"),
            0,
        );
        b.reshape(&y, &shape).unwrap()
    }

    fn mlp(&self, x: &T64, prefix: &str) -> T64 {
        let t = self.backend.shape(x)[0];
        let y = self.flat(&self.lif(x, 1.0));
        let y = self.conv_bn(
            &y,
            &format!("{prefix}.mlp1_conv"),
            &format!("{prefix}.mlp1_bn"),
            0,
        );
        let y = self.flat(&self.lif(&self.unflat(&y, t), 1.0));
        let y = self.conv_bn(
            &y,
            &format!("{prefix}.mlp2_conv"),
            &format!("{prefix}.mlp2_bn"),
            0,
        );
        self.unflat(&y, t)
    }

    fn logits(&self, input: &T64) -> Vec<f64> {
        let b = &self.backend;
        let x = if self.spec.arch.is_dvs() {
            b.permute(input, &[1, 0, 2, 3, 4]).unwrap()
        } else {
            b.repeat_leading(input, self.spec.time_steps).unwrap()
        };
        let mut x = self.tokenizer(&x);
        let dim = b.shape(&x)[2];
        for i in 0..self.spec.depth.unwrap() {
            if self.spec.arch.is_reversible() {
                if i == 0 {
                    x = b.concat(&[&x, &x], 2).unwrap();
                }
                let prefix = format!("block.reversible_blocks.{i}");
                let x1 = b.narrow(&x, 2, 0, dim).unwrap();
                let x2 = b.narrow(&x, 2, dim, dim).unwrap();
                let y1 = b
                    .add(&x1, &self.attention(&x2, &format!("{prefix}.f_block")))
                    .unwrap();
                let y2 = b
                    .add(&x2, &self.mlp(&y1, &format!("{prefix}.g_block")))
                    .unwrap();
                x = b.concat(&[&y1, &y2], 2).unwrap();
            } else {
                let prefix = format!("block.{i}");
                x = b
                    .add(&x, &self.attention(&x, &format!("{prefix}.attn")))
                    .unwrap();
                x = b.add(&x, &self.mlp(&x, &format!("{prefix}.mlp"))).unwrap();
            }
        }
        let tokens = b.mean_axes(&x, &[3, 4]).unwrap();
        let features = b.mean_axes(&tokens, &[0]).unwrap();
        let logits = b
            .linear_forward(
                &features,
                &self.param("head.weight"),
                Some(&self.param("head.bias")),
            )
            .unwrap();
        b.to_vec(&logits).unwrap()
    }
}

/// The relative error between the logits of `model` and of [`ReferenceForward`] on the same
/// weights and input.
fn forward_error<M: Transformer<Cpu64>>(spec: &ModelSpec) -> f64 {
    let backend = Cpu64::new();
    let (model, mut store) = build::<_, M>(&backend, spec, &BuildOptions::default(), 31);
    let shape = input_shape(spec, 3);
    let mut rng = SplitMix64::new(17);
    let input = random(&mut rng, shape.iter().product(), 2.0);
    let x = backend.tensor_from_vec(&shape, input).unwrap();
    let reference = ReferenceForward {
        backend: backend.clone(),
        spec,
        store: &store.clone(),
    }
    .logits(&x);
    let mut grads = Grads::new(store.entries().len());
    let mut session = Session::new(&backend, &mut store, &mut grads, Mode::Train);
    let (logits, _) = model.forward(&mut session, x.clone()).unwrap();
    relative_error(&backend.to_vec(&logits).unwrap(), &reference)
}

#[test]
fn forward_equals_the_spec_written_out() {
    let mut cifar = small_spec(Arch::Revsformer, 2);
    cifar.img_size = 16; // 4x4 tokens
    let mut dvs = small_spec(Arch::RevsformerDvs, 2);
    dvs.img_size = 64;
    for (spec, reversible) in [(&cifar, true), (&dvs, true), (&cifar, false), (&dvs, false)] {
        let mut spec = spec.clone();
        let error = if reversible {
            forward_error::<RevSFormer>(&spec)
        } else {
            spec.arch = if spec.arch.is_dvs() {
                Arch::SpikingformerDvs
            } else {
                Arch::Spikingformer
            };
            forward_error::<Spikingformer>(&spec)
        };
        assert!(
            error <= 1e-12,
            "{:?}: logits differ by {error:e}",
            spec.arch
        );
    }
}

#[test]
fn bad_specs_and_inputs_are_errors() {
    let backend = Cpu::<f32>::new();
    let options = BuildOptions::default();
    let spec_error = |result: revsnn::error::Result<()>, what: &str| match result {
        Err(Error::Spec(_)) => {}
        other => panic!("{what}: expected a spec error, got {other:?}"),
    };
    let revsformer = |spec: &ModelSpec| {
        RevSFormer::build(&mut Builder::new(&backend, 0), spec, &options).map(|_| ())
    };
    let spikingformer = |spec: &ModelSpec| {
        Spikingformer::build(&mut Builder::new(&backend, 0), spec, &options).map(|_| ())
    };

    let mut spec = small_spec(Arch::Revsformer, 1);
    spec.heads = Some(3);
    spec_error(revsformer(&spec), "dim not divisible by heads");
    let mut spec = small_spec(Arch::Spikingformer, 1);
    spec.dim = Some(12);
    spec.heads = Some(3);
    spec_error(spikingformer(&spec), "dim not divisible by 8");
    let mut spec = small_spec(Arch::RevsformerDvs, 1);
    spec.patch_size = Some(4);
    spec_error(revsformer(&spec), "DVS patch size 4");
    let mut spec = small_spec(Arch::Revsformer, 1);
    spec.depth = Some(0);
    spec_error(revsformer(&spec), "depth 0");
    let mut spec = small_spec(Arch::Spikingformer, 1);
    spec.num_classes = 0;
    spec_error(spikingformer(&spec), "no classes");
    spec_error(
        revsformer(&small_spec(Arch::Spikingformer, 1)),
        "a Spikingformer spec for RevSFormer",
    );
    spec_error(
        spikingformer(&small_spec(Arch::RevsformerDvs, 1)),
        "a RevSFormer spec for Spikingformer",
    );
    spec_error(
        revsformer(&ModelSpec::preset("revsresnet21").unwrap()),
        "a ResNet spec",
    );

    // Inputs of the wrong shape are errors too, for either layout.
    for arch in [Arch::Revsformer, Arch::RevsformerDvs] {
        let spec = small_spec(arch, 1);
        let (model, mut store) = build::<_, RevSFormer>(&backend, &spec, &options, 1);
        let good = input_shape(&spec, 2);
        let mut bad_shapes = vec![good[1..].to_vec(), good.clone(), good.clone()];
        bad_shapes[1][2] += 1;
        *bad_shapes[2].last_mut().unwrap() += 4;
        bad_shapes.push(vec![0; good.len()]);
        for shape in bad_shapes {
            let x = backend.zeros(&shape).unwrap();
            let mut grads = Grads::new(store.entries().len());
            let mut session = Session::new(&backend, &mut store, &mut grads, Mode::Train);
            assert!(
                model.forward(&mut session, x.clone()).is_err(),
                "{arch:?}: input {shape:?} was accepted"
            );
        }
    }
}
