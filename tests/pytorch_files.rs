//! PyTorch's own files (`torch.save`) read as weights (docs/pytorch-files.md): the fixtures of
//! `fixtures/pytorch/`, written by torch itself (`generate.py`), against the tensors they were
//! made of; the files revsnn does not read, each refused with what to do; and `revsnn grad` on a
//! `.pth` giving the same bytes as on the safetensors file of the same weights, and `revsnn eval`
//! scoring a timm checkpoint's moving average of the weights as that file's.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{failed, ok, revsnn, scratch};
use revsnn::checkpoint::{self, StoredTensor, TensorData};
use serde_json::Value;

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(path)
}

/// The tensors of a file by name (the readers keep the file's order, which differs by format).
fn by_name(tensors: checkpoint::TensorFile) -> BTreeMap<String, StoredTensor> {
    let count = tensors.len();
    let map: BTreeMap<_, _> = tensors.into_iter().collect();
    assert_eq!(map.len(), count, "a name read twice");
    map
}

fn read_weights(path: &Path) -> BTreeMap<String, StoredTensor> {
    by_name(checkpoint::read_weights(path).unwrap_or_else(|e| panic!("{e}")))
}

fn read_safetensors(path: &Path) -> BTreeMap<String, StoredTensor> {
    by_name(checkpoint::read(path).unwrap())
}

#[test]
fn training_checkpoints_of_the_official_code_and_of_timm_read_as_their_state_dicts() {
    // the official DVS train.py's dict ('model', optimizer, args, ...) and timm's
    // ('state_dict', ...), both in float64 with int64 num_batches_tracked
    for (file, weights) in [
        (
            "pytorch/revsresnet-official.pth",
            "parity/revsresnet.weights.safetensors",
        ),
        (
            "pytorch/revsformer-timm.pth.tar",
            "parity/revsformer.weights.safetensors",
        ),
    ] {
        let read = read_weights(&fixture(file));
        assert_eq!(read, read_safetensors(&fixture(weights)), "{file}");
        assert!(read.keys().any(|k| k.ends_with("num_batches_tracked")));
    }
}

#[test]
fn the_state_dict_is_found_by_the_documented_rule() {
    let keys = |file: &str| -> Vec<String> { read_weights(&fixture(file)).into_keys().collect() };
    // 'state_dict' is tried before 'model'
    assert_eq!(keys("pytorch/nested-order.pth"), ["b"]);
    // a tensor metric beside a nested state_dict does not hide it
    assert_eq!(keys("pytorch/metric-beside.pth"), ["b"]);
    // 'module.' stays where not every key has it
    assert_eq!(keys("pytorch/partial-prefix.pth"), ["b", "module.a"]);
}

#[test]
fn the_moving_average_of_the_weights_is_read_where_timm_or_deit_saved_it() {
    // timm's CheckpointSaver with --model-ema: 'state_dict_ema' beside 'state_dict'; generate.py
    // halved each float of the EMA copy
    let file = fixture("pytorch/revsformer-timm-ema.pth.tar");
    let weights = read_safetensors(&fixture("parity/revsformer.weights.safetensors"));
    assert_eq!(read_weights(&file), weights);
    let halved: BTreeMap<_, _> = weights
        .into_iter()
        .map(|(name, mut tensor)| {
            if let TensorData::F64(values) = &mut tensor.data {
                values.iter_mut().for_each(|v| *v *= 0.5);
            }
            (name, tensor)
        })
        .collect();
    let ema = |path: &Path| checkpoint::read_ema_weights(path).map(by_name);
    assert_eq!(ema(&file).unwrap(), halved);
    assert_ne!(ema(&file).unwrap(), read_weights(&file));
    // DeiT's 'model_ema' beside 'model'; 'state_dict_ema' first where both are; a None
    // 'state_dict_ema' passed over, as timm passes it
    let keys = |file: &str| -> Vec<String> { ema(&fixture(file)).unwrap().into_keys().collect() };
    assert_eq!(keys("pytorch/deit-ema.pth"), ["b"]);
    assert_eq!(keys("pytorch/ema-order.pth"), ["c"]);
    assert_eq!(keys("pytorch/ema-none-then-deit.pth"), ["b"]);
    // no EMA entry, one that is not a dict of tensors, and a safetensors file
    let refused = |file: &str| match ema(&fixture(file)) {
        Ok(_) => panic!("{file}: EMA weights read"),
        Err(error) => error.to_string(),
    };
    for (file, held) in [
        (
            "pytorch/revsresnet-official.pth",
            "keys: 'model', 'optimizer'",
        ),
        ("pytorch/ema-none.pth", "its 'state_dict_ema' holds None"),
    ] {
        let message = refused(file);
        assert!(
            message.contains("no EMA weights")
                && message.contains(held)
                && message.contains("leave out --use-ema")
                && !message.contains("  "),
            "{message}"
        );
    }
    let safetensors = refused("parity/revsformer.weights.safetensors");
    assert!(safetensors.contains("one set of weights"), "{safetensors}");
}

#[test]
fn views_dtypes_and_the_data_parallel_prefix_read_as_contiguous_tensors() {
    let expected = read_safetensors(&fixture("pytorch/views.expected.safetensors"));
    for file in ["pytorch/views.pth", "pytorch/views-protocol4.pth"] {
        let read = read_weights(&fixture(file));
        assert_eq!(read, expected, "{file}");
    }
    // spot checks against the tensors generate.py made, independent of the expected file
    let read = read_weights(&fixture("pytorch/views.pth"));
    let base = |row: usize, col: usize| (row * 6 + col) as f32 / 7.0 - 1.0;
    let f32s = |name: &str| match &read[name].data {
        TensorData::F32(values) => values.clone(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(read["transposed"].shape, [6, 4]);
    assert_eq!(f32s("transposed")[1], base(1, 0));
    assert_eq!(read["rows_offset"].shape, [2, 6]);
    assert_eq!(f32s("rows_offset")[0], base(1, 0));
    assert_eq!(f32s("strided")[1], base(0, 2));
    assert_eq!(
        read["scalar"],
        StoredTensor {
            shape: vec![],
            data: TensorData::I64(vec![7])
        }
    );
    assert_eq!(read["long"].data, TensorData::I64(vec![-(1 << 40), 0, 3]));
    assert_eq!(read["empty"].shape, [0, 3]);
    assert_eq!(f32s("parameter"), [0.25; 4]);
    // float16 and bfloat16 widened exactly: torch rounded base * 100 and base * 1e30 (f32) to
    // nearest even, as the half crate does
    let rounded = |scale: f32, round: fn(f32) -> f32| -> Vec<f32> {
        (0..24).map(|i| round(base(i / 6, i % 6) * scale)).collect()
    };
    assert_eq!(
        f32s("half"),
        rounded(100.0, |v| half::f16::from_f32(v).to_f32())
    );
    assert_eq!(
        f32s("bfloat"),
        rounded(1e30, |v| half::bf16::from_f32(v).to_f32())
    );
}

#[test]
fn files_it_does_not_read_are_refused_with_what_to_do() {
    let message = |path: &Path| match checkpoint::read_weights(path) {
        Ok(_) => panic!("{} was read", path.display()),
        Err(error) => error.to_string(),
    };
    for file in ["pytorch/legacy.pth", "pytorch/legacy-protocol4.pth"] {
        let legacy = message(&fixture(file));
        assert!(
            legacy.contains("before 1.6") && legacy.contains("torch.save"),
            "{legacy}"
        );
    }
    let module = message(&fixture("pytorch/whole-module.pth"));
    let class = "an object of torch.nn.modules.linear.Linear";
    assert!(
        module.contains(class) && module.contains("state_dict()"),
        "{module}"
    );
    let script = message(&fixture("pytorch/torchscript.pt"));
    assert!(
        script.contains("TorchScript") && script.contains("state_dict"),
        "{script}"
    );
    let mixed = message(&fixture("pytorch/not-only-tensors.pth"));
    assert!(mixed.contains("entry 'step' is not a tensor"), "{mixed}");
    let none = message(&fixture("pytorch/no-state-dict.pth"));
    assert!(
        none.contains("no state_dict") && none.contains("'epoch', 'net'"),
        "{none}"
    );

    let bytes = std::fs::read(fixture("pytorch/views.pth")).unwrap();
    let dir = scratch("refused");
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    // one bit flipped in the storage of generate.py's `base`: its CRC-32 no longer matches
    let base: Vec<u8> = (0..3)
        .flat_map(|i| (i as f32 / 7.0 - 1.0).to_le_bytes())
        .collect();
    let storage = find(&bytes, &base).expect("the storage of base");
    let mut corrupt = bytes.clone();
    corrupt[storage + 5] ^= 1;
    let crc = message(&write("corrupt.pth", &corrupt));
    assert!(crc.contains("CRC-32"), "{crc}");
    let truncated = message(&write("truncated.pth", &bytes[..bytes.len() - 40]));
    assert!(truncated.contains("truncated"), "{truncated}");
}

/// The first position of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn grad_on_a_pth_file_gives_the_bytes_of_its_safetensors_twin() {
    let dir = scratch("grad");
    let grad = |weights: &str, output: &Path| {
        let spec = fixture("parity/revsresnet.spec.json");
        let input = fixture("parity/revsresnet.input.safetensors");
        revsnn(&[
            "grad".as_ref(),
            "--spec".as_ref(),
            spec.as_os_str(),
            "--weights".as_ref(),
            fixture(weights).as_os_str(),
            "--input".as_ref(),
            input.as_os_str(),
            "--output".as_ref(),
            output.as_os_str(),
        ])
    };
    let [from_pth, twin] = [
        "pytorch/revsresnet-official.pth",
        "parity/revsresnet.weights.safetensors",
    ]
    .map(|weights| {
        let output = dir.join("out.safetensors");
        ok(grad(weights, &output));
        std::fs::read(output).unwrap()
    });
    assert!(from_pth == twin, "grad's outputs differ");

    // a PyTorch file whose tensors do not fit the model: the usual misfit error
    let misfit = failed(grad("pytorch/views.pth", &dir.join("never.safetensors")));
    assert!(misfit.contains("transposed"), "{misfit}");
}

#[test]
fn eval_reads_a_pth_file_and_takes_num_classes_for_its_model() {
    let eval = |extra: &[&str]| {
        let checkpoint = fixture("pytorch/revsresnet-official.pth");
        let spec = fixture("parity/revsresnet.spec.json");
        let mut args = vec!["eval", "--checkpoint", checkpoint.to_str().unwrap()];
        args.extend(["--spec", spec.to_str().unwrap(), "--device", "cpu"]);
        args.extend(extra);
        failed(revsnn(&args))
    };
    // the fixture's 5-class head read from the file, against the 10 classes asked for
    let misfit = eval(&["--num-classes", "10"]);
    assert!(
        misfit.contains("fc.weight (file [5, 8], model [10, 8])"),
        "{misfit}"
    );
    // the 5 classes of the file's model, against synthetic's 10
    let classes = eval(&[]);
    assert!(classes.contains("pass --num-classes 10"), "{classes}");
    // --use-ema reads the moving average of the weights, which this file has not
    let no_ema = eval(&["--use-ema"]);
    assert!(no_ema.contains("no EMA weights"), "{no_ema}");
}

#[test]
fn eval_scores_the_moving_average_that_a_timm_checkpoint_keeps() {
    // generate.py's RevSResNet with a 10-class head, its EMA copy each float halved
    let file = fixture("pytorch/revsresnet10-timm-ema.pth.tar");
    let spec = fixture("parity/revsresnet.spec.json");
    let eval = |checkpoint: &Path, extra: &[&str]| {
        let mut args = vec!["eval", "--checkpoint", checkpoint.to_str().unwrap()];
        args.extend(["--spec", spec.to_str().unwrap(), "--num-classes", "10"]);
        args.extend(["--device", "cpu", "--test-samples", "16", "--batch", "8"]);
        args.extend(extra);
        ok(revsnn(&args))
    };
    let report = |output: Output| -> Value { serde_json::from_slice(&output.stdout).unwrap() };
    // the EMA weights as a safetensors file of their own: what --use-ema must score
    let dir = scratch("eval-ema");
    let ema_file = dir.join("ema.safetensors");
    checkpoint::write(&ema_file, &checkpoint::read_ema_weights(&file).unwrap()).unwrap();
    let ema = report(eval(&file, &["--use-ema", "--json"]));
    let alone = report(eval(&ema_file, &["--json"]));
    let model = report(eval(&file, &["--json"]));
    assert_eq!(
        (&ema["weights"], &model["weights"]),
        (&"ema".into(), &"model".into())
    );
    for key in ["samples", "loss", "acc1", "acc5"] {
        assert_eq!(ema[key], alone[key], "{key}: {ema} against {alone}");
    }
    assert_ne!(ema["loss"], model["loss"], "{ema} against {model}");
    let line = String::from_utf8(eval(&file, &["--use-ema"]).stdout).unwrap();
    assert!(line.contains("(16 samples, EMA weights): top-1"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}
