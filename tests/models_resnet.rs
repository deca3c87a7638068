//! The spiking ResNets (docs/architectures.md §4.0-4.3, 4.6, 4.7): parameter counts of every preset, the
//! official `state_dict` keys, shapes and order, the initialisation, forward shapes, a training
//! step that reaches every parameter, and whole-model gradients against central finite
//! differences in f64 (smooth neurons, relative error `||a - b||_2 / ||b||_2 <= 1e-6` per
//! parameter tensor and for the input), for all four archs; the reversible backward against
//! stored-activation backpropagation (`<= 1e-10` with the float coupling, bitwise with the exact
//! one); bad specs and inputs are errors.

use revsnn::error::Error;
use revsnn::model::build::Builder;
use revsnn::model::resnet::{MsResNet, RevSResNet};
use revsnn::model::reversible::{Coupling, ReversibleOptions, Storage};
use revsnn::model::{
    BuildOptions, EntryKind, Grads, Layer, Mode, ParamStore, Session, StepOutput, Targets,
    train_step,
};
use revsnn::spec::{Arch, ModelSpec};
use revsnn_reference::Cpu;
use revsnn_reference::prelude::*;
use revsnn_reference::testing::{SplitMix64, central_difference, relative_error};

/// Either ResNet, so one test body covers all four archs.
enum Net {
    Rev(RevSResNet),
    Ms(MsResNet),
}

fn build<B: Backend>(
    backend: &B,
    spec: &ModelSpec,
    options: &BuildOptions,
    seed: u64,
) -> Result<(Net, ParamStore<B>), Error> {
    let mut builder = Builder::new(backend, seed);
    let net = match spec.arch {
        Arch::Revsresnet | Arch::RevsresnetDvs => {
            Net::Rev(RevSResNet::build(&mut builder, spec, options)?)
        }
        _ => Net::Ms(MsResNet::build(&mut builder, spec, options)?),
    };
    Ok((net, builder.store))
}

fn step<B: Backend>(
    net: &Net,
    session: &mut Session<B>,
    images: &B::Tensor,
    labels: &[usize],
) -> Result<StepOutput<B>, Error> {
    match net {
        Net::Rev(model) => train_step(model, session, images, Targets::Hard(labels)),
        Net::Ms(model) => train_step(model, session, images, Targets::Hard(labels)),
    }
}

fn forward<B: Backend>(
    net: &Net,
    session: &mut Session<B>,
    images: &B::Tensor,
) -> Result<B::Tensor, Error> {
    Ok(match net {
        Net::Rev(model) => model.forward(session, images.clone())?.0,
        Net::Ms(model) => model.forward(session, images.clone())?.0,
    })
}

fn preset(name: &str, num_classes: usize) -> ModelSpec {
    ModelSpec {
        num_classes,
        ..ModelSpec::preset(name).unwrap()
    }
}

fn spec(json: &str) -> ModelSpec {
    ModelSpec::from_json(json).unwrap()
}

/// Random inputs of the spec's sample shape for a batch of `batch`.
fn inputs<B: Backend>(backend: &B, spec: &ModelSpec, batch: usize, seed: u64) -> B::Tensor {
    let mut shape = vec![batch];
    shape.extend(spec.sample_shape());
    let len = shape.iter().product();
    let data = SplitMix64::new(seed)
        .normal_vec(len, 1.0)
        .into_iter()
        .map(<B::Elem as revsnn_reference::Element>::cast)
        .collect();
    backend.tensor_from_vec(&shape, data).unwrap()
}

/// Every ResNet preset with its official class count and its docs/architectures.md §4.7 parameter count.
const RESNET_PRESETS: [(&str, usize); 8] = [
    ("revsresnet21", 11_048_420),
    ("revsresnet37", 23_590_884),
    ("revsresnet109", 70_075_876),
    ("revsresnet24", 260_362),
    ("msresnet18", 11_220_132),
    ("msresnet34", 21_328_292),
    ("msresnet104", 76_810_660),
    ("msresnet20", 272_330),
];

/// The rows of docs/architectures.md §4.7 with the other class count (the presets' own are checked, with their
/// keys, by `presets_have_the_official_keys_shapes_order_and_spec_4_7_parameter_counts`, so
/// each big model is built once: building allocates and initialises every parameter).
#[test]
fn parameter_counts_with_other_class_counts_equal_spec_4_7() {
    let backend = Cpu::<f32>::new();
    let cases: [(&str, usize, usize); 8] = [
        ("revsresnet21", 10, 10_967_690),
        ("revsresnet37", 10, 23_510_154),
        ("msresnet18", 10, 11_173_962),
        ("msresnet34", 10, 21_282_122),
        ("revsresnet24", 11, 260_459),
        ("msresnet20", 11, 272_395),
        // The closed form fc = C nc + nc of docs/architectures.md §4.7 for a class count outside the table.
        ("revsresnet24", 100, 260_362 + 90 * 97),
        ("msresnet20", 100, 272_330 + 90 * 65),
    ];
    for (name, classes, expected) in cases {
        let (_, store) = build(
            &backend,
            &preset(name, classes),
            &BuildOptions::default(),
            1,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            store.parameter_count(),
            expected,
            "{name}, {classes} classes"
        );
    }
}

/// `(key, shape)` lines of a fixture, in order, and its `# parameters:` header.
fn fixture(name: &str) -> (Vec<(String, Vec<usize>)>, usize) {
    let path = format!(
        "{}/fixtures/checkpoint-keys/{name}.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut keys = Vec::new();
    let mut parameters = None;
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix('#') {
            if let Some(count) = comment.trim().strip_prefix("parameters:") {
                parameters = Some(count.trim().parse().unwrap());
            }
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let (key, shape) = line.split_once('\t').expect("key<TAB>[shape]");
        let shape = shape
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().unwrap())
            .collect();
        keys.push((key.to_string(), shape));
    }
    (keys, parameters.expect("a # parameters: line"))
}

#[test]
fn presets_have_the_official_keys_shapes_order_and_spec_4_7_parameter_counts() {
    let backend = Cpu::<f32>::new();
    for (name, count) in RESNET_PRESETS {
        let (expected, parameters) = fixture(name);
        let (_, store) = build(
            &backend,
            &ModelSpec::preset(name).unwrap(),
            &BuildOptions::default(),
            1,
        )
        .unwrap();
        let ours: Vec<(String, Vec<usize>)> = store
            .entries()
            .iter()
            .map(|e| (e.name.clone(), e.shape.clone()))
            .collect();
        assert_eq!(ours.len(), expected.len(), "{name}: number of keys");
        for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
            assert_eq!(a, b, "{name}: key {i}");
        }
        assert_eq!(
            store.parameter_count(),
            count,
            "{name}: docs/architectures.md §4.7"
        );
        assert_eq!(parameters, count, "{name}: the fixture's header");
        for entry in store.entries() {
            let kind =
                if entry.name.ends_with("running_mean") || entry.name.ends_with("running_var") {
                    EntryKind::RunningStat
                } else if entry.name.ends_with("num_batches_tracked") {
                    EntryKind::BatchesTracked
                } else {
                    EntryKind::Parameter
                };
            assert_eq!(entry.kind, kind, "{name}: {}", entry.name);
        }
    }
}

#[test]
fn initialisation_follows_spec_4_6() {
    let backend = Cpu::<f64>::new();
    for name in ["revsresnet24", "msresnet20"] {
        let (_, store) = build(&backend, &preset(name, 10), &BuildOptions::default(), 3).unwrap();
        for entry in store.entries() {
            let Some(tensor) = entry.tensor() else {
                assert_eq!(entry.count(), Some(0), "{name}: {}", entry.name);
                continue;
            };
            let values = backend.to_vec(tensor).unwrap();
            let n = values.len() as f64;
            let mean = values.iter().sum::<f64>() / n;
            let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
            let key = format!("{name}: {}", entry.name);
            if entry.shape.len() == 4 {
                // kaiming_normal_(fan_out): N(0, 2 / (C_out k k)).
                let expected =
                    (2.0 / (entry.shape[0] * entry.shape[2] * entry.shape[3]) as f64).sqrt();
                if values.len() >= 2000 {
                    assert!((std / expected - 1.0).abs() < 0.1, "{key}: std {std}");
                    assert!(mean.abs() < 0.1 * expected, "{key}: mean {mean}");
                }
            } else if entry.name.starts_with("fc.") {
                // PyTorch's Linear default: weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
                let fc = store.id_of("fc.weight").unwrap();
                let bound = 1.0 / (backend.shape(store.get(fc))[1] as f64).sqrt();
                assert!(values.iter().all(|v| v.abs() <= bound), "{key}");
                assert!(std > 0.3 * bound, "{key}: std {std}");
            } else if entry.name.ends_with(".weight") || entry.name.ends_with("running_var") {
                assert!(values.iter().all(|&v| v == 1.0), "{key}");
            } else {
                assert!(values.iter().all(|&v| v == 0.0), "{key}");
            }
        }
    }
}

const STATIC_REV: &str = r#"{"arch":"revsresnet","layers":[1,1,1,1],"planes":[2,3,3,4],
    "num_classes":5,"time_steps":2,"in_channels":3,"img_size":16}"#;
const STATIC_MS: &str = r#"{"arch":"msresnet","layers":[1,1,1,1],"planes":[2,3,3,4],
    "num_classes":5,"time_steps":2,"in_channels":3,"img_size":16}"#;
const DVS_REV: &str = r#"{"arch":"revsresnet-dvs","layers":[1,1,1],"planes":[2,3,4],
    "num_classes":5,"time_steps":3,"in_channels":2,"img_size":32}"#;
const DVS_MS: &str = r#"{"arch":"msresnet-dvs","layers":[1,1,1],"planes":[2,3,4],
    "num_classes":5,"time_steps":3,"in_channels":2,"img_size":32}"#;

#[test]
fn forward_gives_finite_logits_and_a_training_step_reaches_every_parameter() {
    let backend = Cpu::<f32>::new();
    for json in [STATIC_REV, STATIC_MS, DVS_REV, DVS_MS] {
        let spec = spec(json);
        let (net, mut store) = build(&backend, &spec, &BuildOptions::default(), 11).unwrap();
        let images = inputs(&backend, &spec, 2, 5);
        for mode in [Mode::Eval, Mode::Train] {
            let mut grads = Grads::new(store.entries().len());
            let mut session = Session::new(&backend, &mut store, &mut grads, mode);
            let logits = forward(&net, &mut session, &images).unwrap();
            assert_eq!(
                backend.shape(&logits),
                vec![2, 5],
                "{:?} {mode:?}",
                spec.arch
            );
            assert!(
                backend
                    .to_vec(&logits)
                    .unwrap()
                    .iter()
                    .all(|v| v.is_finite())
            );
        }
        let mut grads = Grads::new(store.entries().len());
        let mut session = Session::new(&backend, &mut store, &mut grads, Mode::Train);
        let out = step(&net, &mut session, &images, &[1, 4]).unwrap();
        assert!(
            out.loss_value(&backend).unwrap().is_finite(),
            "{:?}",
            spec.arch
        );
        assert_eq!(backend.shape(&out.grad_input), backend.shape(&images));
        for (i, entry) in store.entries().iter().enumerate() {
            let grad = grads.get(revsnn::model::ParamId(i));
            match entry.kind {
                EntryKind::Parameter => {
                    let grad = grad.unwrap_or_else(|| {
                        panic!("{:?}: no gradient for {}", spec.arch, entry.name)
                    });
                    assert_eq!(backend.shape(grad), entry.shape, "{}", entry.name);
                    let values = backend.to_vec(grad).unwrap();
                    assert!(values.iter().all(|v| v.is_finite()), "{}", entry.name);
                }
                _ => assert!(grad.is_none(), "{}", entry.name),
            }
        }
        // Training-mode forwards update the running statistics and count batches.
        let tracked = store
            .id_of("bn1.num_batches_tracked")
            .or(store.id_of("bn1.0.num_batches_tracked"));
        assert!(store.count(tracked.unwrap()) >= 1);
    }
}

/// The loss of `net` on `images` with `store`, in training mode, leaving `store` unchanged.
fn loss_of(
    backend: &Cpu<f64>,
    net: &Net,
    store: &ParamStore<Cpu<f64>>,
    images: &<Cpu<f64> as TensorOps>::Tensor,
    labels: &[usize],
) -> f64 {
    let mut store = store.clone();
    let mut grads = Grads::new(store.entries().len());
    let mut session = Session::new(backend, &mut store, &mut grads, Mode::Train);
    session.update_running_stats = false;
    let logits = forward(net, &mut session, images).unwrap();
    backend.cross_entropy_forward(&logits, labels).unwrap().0
}

/// `tensor` with the coordinates `indices` set to `values`.
fn with_values(
    backend: &Cpu<f64>,
    tensor: &<Cpu<f64> as TensorOps>::Tensor,
    indices: &[usize],
    values: &[f64],
) -> <Cpu<f64> as TensorOps>::Tensor {
    let mut data = backend.to_vec(tensor).unwrap();
    for (&i, &v) in indices.iter().zip(values) {
        data[i] = v;
    }
    backend
        .tensor_from_vec(&backend.shape(tensor), data)
        .unwrap()
}

/// A few coordinates of a tensor of `len` elements: both ends and some in between.
fn sample(len: usize, count: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut picks = vec![0, len - 1];
    while picks.len() < count.min(len) {
        let i = (rng.next_u64() % len as u64) as usize;
        if !picks.contains(&i) {
            picks.push(i);
        }
    }
    picks.sort_unstable();
    picks.dedup();
    picks
}

/// Central-difference step: truncation error (~h^2) measured ~1e-5 relative at 1e-4 and ~3e-6 at
/// 1e-5 (the smooth IF neurons are sharp), ~1e-7 at 1e-6, where rounding starts to dominate.
const STEP: f64 = 1e-6;
const TOLERANCE: f64 = 1e-6;

fn check_against_finite_differences(json: &str) {
    let backend = Cpu::<f64>::new();
    let spec = spec(json);
    let options = BuildOptions {
        smooth_neurons: true,
        reversible: ReversibleOptions {
            coupling: Coupling::Float,
            storage: Storage::Reversible,
            ..ReversibleOptions::default()
        },
    };
    let (net, store) = build(&backend, &spec, &options, 21).unwrap();
    let images = inputs(&backend, &spec, 2, 8);
    let labels = [0, 2];

    let mut analytic_store = store.clone();
    let mut grads = Grads::new(store.entries().len());
    let mut session = Session::new(&backend, &mut analytic_store, &mut grads, Mode::Train);
    // (Smooth spikes are continuous, so the float coupling's reconstruction error changes their
    // bits and `diverged_recomputes` counts every recompute here: no assertion on it.)
    let out = step(&net, &mut session, &images, &labels).unwrap();
    assert!(
        (out.loss_value(&backend).unwrap() - loss_of(&backend, &net, &store, &images, &labels))
            .abs()
            < 1e-12,
        "train_step's loss is the forward's"
    );

    let mut rng = SplitMix64::new(99);
    let mut worst = (0.0f64, String::new());
    let mut check = |what: String, analytic: Vec<f64>, numeric: Vec<f64>| {
        let error = relative_error(&analytic, &numeric);
        assert!(
            error <= TOLERANCE,
            "{:?} {what}: relative error {error:e}\nanalytic {analytic:?}\nnumeric  {numeric:?}",
            spec.arch
        );
        if error >= worst.0 {
            worst = (error, what);
        }
    };

    let input_data = backend.to_vec(&images).unwrap();
    let picks = sample(input_data.len(), 12, &mut rng);
    let at: Vec<f64> = picks.iter().map(|&i| input_data[i]).collect();
    let numeric = central_difference(
        |point| {
            let moved = with_values(&backend, &images, &picks, point);
            loss_of(&backend, &net, &store, &moved, &labels)
        },
        &at,
        STEP,
    );
    let grad_input = backend.to_vec(&out.grad_input).unwrap();
    check(
        "input".into(),
        picks.iter().map(|&i| grad_input[i]).collect(),
        numeric,
    );

    let mut checked = 0;
    for (id, entry) in store.entries().iter().enumerate() {
        if entry.kind != EntryKind::Parameter {
            continue;
        }
        let id = revsnn::model::ParamId(id);
        let value = store.get(id);
        let data = backend.to_vec(value).unwrap();
        let picks = sample(data.len(), 4, &mut rng);
        let at: Vec<f64> = picks.iter().map(|&i| data[i]).collect();
        let numeric = central_difference(
            |point| {
                let mut moved = store.clone();
                moved.set(id, with_values(&backend, value, &picks, point));
                loss_of(&backend, &net, &moved, &images, &labels)
            },
            &at,
            STEP,
        );
        let grad = backend.to_vec(grads.get(id).unwrap()).unwrap();
        check(
            entry.name.clone(),
            picks.iter().map(|&i| grad[i]).collect(),
            numeric,
        );
        checked += 1;
    }
    assert!(checked > 10);
    eprintln!(
        "{:?}: {checked} parameter tensors and the input, worst relative error {:e} ({})",
        spec.arch, worst.0, worst.1
    );
}

#[test]
fn revsresnet_gradients_equal_finite_differences() {
    check_against_finite_differences(
        r#"{"arch":"revsresnet","layers":[2,1,1,1],"planes":[2,2,3,2],"num_classes":3,
            "time_steps":2,"in_channels":3,"img_size":8}"#,
    );
}

#[test]
fn msresnet_gradients_equal_finite_differences() {
    check_against_finite_differences(
        r#"{"arch":"msresnet","layers":[2,1,1,1],"planes":[2,3,3,4],"num_classes":3,
            "time_steps":2,"in_channels":3,"img_size":8}"#,
    );
}

#[test]
fn revsresnet_dvs_gradients_equal_finite_differences() {
    check_against_finite_differences(
        r#"{"arch":"revsresnet-dvs","layers":[2,1,1],"planes":[2,3,2],"num_classes":3,
            "time_steps":2,"in_channels":2,"img_size":16}"#,
    );
}

#[test]
fn msresnet_dvs_gradients_equal_finite_differences() {
    check_against_finite_differences(
        r#"{"arch":"msresnet-dvs","layers":[2,1,1],"planes":[2,3,4],"num_classes":3,
            "time_steps":2,"in_channels":2,"img_size":16}"#,
    );
}

/// The reversible backward (recomputing F and G from the output) gives the gradients of plain
/// backpropagation through the same RevSResNet with spiking (Heaviside) neurons: within 1e-10
/// relative with the float coupling, bit for bit with the exact one (docs/design.md checks).
#[test]
fn reversible_backward_equals_stored_activation_backpropagation() {
    let backend = Cpu::<f64>::new();
    for (coupling, tolerance) in [(Coupling::Float, 1e-10), (Coupling::Exact, 0.0)] {
        for json in [STATIC_REV, DVS_REV] {
            let spec = spec(json);
            let images = inputs(&backend, &spec, 2, 4);
            let run = |storage: Storage| {
                let options = BuildOptions {
                    reversible: ReversibleOptions {
                        coupling,
                        storage,
                        ..ReversibleOptions::default()
                    },
                    ..BuildOptions::default()
                };
                let (net, mut store) = build(&backend, &spec, &options, 5).unwrap();
                let mut grads = Grads::new(store.entries().len());
                let mut session = Session::new(&backend, &mut store, &mut grads, Mode::Train);
                let out = step(&net, &mut session, &images, &[3, 1]).unwrap();
                assert_eq!(session.probes.diverged_recomputes(&backend).unwrap(), 0);
                (out, grads, store)
            };
            let (rev, rev_grads, store) = run(Storage::Reversible);
            let (stored, stored_grads, _) = run(Storage::StoredActivations);
            let case = format!("{:?} {coupling:?}", spec.arch);
            assert_eq!(
                backend.to_vec(&rev.loss).unwrap(),
                backend.to_vec(&stored.loss).unwrap(),
                "{case}"
            );
            let input_error = relative_error(
                &backend.to_vec(&rev.grad_input).unwrap(),
                &backend.to_vec(&stored.grad_input).unwrap(),
            );
            assert!(input_error <= tolerance, "{case} input: {input_error:e}");
            for (i, entry) in store.entries().iter().enumerate() {
                let id = revsnn::model::ParamId(i);
                if entry.kind != EntryKind::Parameter {
                    continue;
                }
                let a = backend.to_vec(rev_grads.get(id).unwrap()).unwrap();
                let b = backend.to_vec(stored_grads.get(id).unwrap()).unwrap();
                let error = relative_error(&a, &b);
                assert!(error <= tolerance, "{case} {}: {error:e}", entry.name);
            }
        }
    }
}

#[test]
fn bad_specs_and_inputs_are_errors() {
    let backend = Cpu::<f64>::new();
    let options = BuildOptions::default();
    let spec_error = |result: Result<(), Error>, what: &str| match result {
        Err(Error::Spec(_)) => {}
        other => panic!("{what}: expected a spec error, got {other:?}"),
    };
    let rev = |spec: &ModelSpec| {
        RevSResNet::build(&mut Builder::new(&backend, 1), spec, &options).map(|_| ())
    };
    let ms = |spec: &ModelSpec| {
        MsResNet::build(&mut Builder::new(&backend, 1), spec, &options).map(|_| ())
    };
    spec_error(rev(&spec(STATIC_MS)), "RevSResNet from an msresnet spec");
    spec_error(ms(&spec(DVS_REV)), "MS-ResNet from a revsresnet-dvs spec");
    spec_error(
        rev(&ModelSpec::preset("revsformer-2-384").unwrap()),
        "RevSResNet from a transformer",
    );
    let mut three_stages = spec(STATIC_REV);
    three_stages.planes = Some(vec![2, 3, 4]);
    spec_error(rev(&three_stages), "three widths for four stages");
    let mut empty_stage = spec(DVS_MS);
    empty_stage.layers = Some(vec![1, 0, 1]);
    spec_error(ms(&empty_stage), "a stage without blocks");
    let mut tiny = spec(STATIC_MS);
    tiny.img_size = 4;
    spec_error(ms(&tiny), "an image too small for three downsamples");
    let mut no_classes = spec(DVS_REV);
    no_classes.num_classes = 0;
    spec_error(rev(&no_classes), "zero classes");
    let mut huge = spec(STATIC_REV);
    huge.planes = Some(vec![usize::MAX, 1, 1, 1]);
    spec_error(rev(&huge), "a width that overflows when doubled");

    // Inputs of the wrong rank or channel count are errors, not panics.
    for json in [STATIC_REV, STATIC_MS, DVS_REV, DVS_MS] {
        let spec = spec(json);
        let (net, mut store) = build(&backend, &spec, &options, 2).unwrap();
        let mut grads = Grads::new(store.entries().len());
        let mut session = Session::new(&backend, &mut store, &mut grads, Mode::Train);
        let good = inputs(&backend, &spec, 2, 1);
        let mut shape = backend.shape(&good);
        let flat = backend.reshape(&good, &[shape.iter().product()]).unwrap();
        assert!(
            forward(&net, &mut session, &flat).is_err(),
            "{json}: rank 1"
        );
        let channel_axis = shape.len() - 3;
        shape[channel_axis] += 1;
        let wrong = backend.zeros(&shape).unwrap();
        assert!(
            forward(&net, &mut session, &wrong).is_err(),
            "{json}: channels"
        );
        assert!(
            step(&net, &mut session, &good, &[0, 9]).is_err(),
            "{json}: label 9 of 5"
        );
    }
}
