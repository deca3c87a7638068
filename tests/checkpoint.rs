//! Checkpoints across versions and languages: the files of revsnn's earlier, hand-written
//! safetensors writer still load and evaluate as before, and what revsnn writes now loads in the
//! Python `safetensors` package (numpy path; torch too where it is installed) with every name,
//! dtype, shape and value. 16-bit state_dicts (F16, BF16; numpy's `float16` among them) load
//! and evaluate as the F32 values they hold. The Python checks skip (saying `SKIP:`) where the
//! package is missing, unless `REVSNN_REQUIRE_SAFETENSORS_PY=1` (set by CI after installing it)
//! makes that a failure.

mod common;

use common::{ok, python, python_imports, revsnn, scratch};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use revsnn::checkpoint::{self, StoredTensor, TensorData, TensorFile};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::Value;

const TINY: &str = r#"{"arch": "revsresnet", "layers": [1,1,1,1], "planes": [2,4,4,4],
  "num_classes": 10, "time_steps": 1, "in_channels": 3, "img_size": 16}"#;

/// Loads each file named after the first argument with `safetensors.<numpy|torch>.load_file`
/// and prints, per file and tensor, the dtype, the shape and the values (`repr`, so that no
/// digit is lost on the way).
const READER: &str = r#"
import json, sys
framework, paths = sys.argv[1], sys.argv[2:]
if framework == "torch":
    from safetensors.torch import load_file
else:
    from safetensors.numpy import load_file
def describe(tensor):
    return {"dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape),
            "values": [repr(v) for v in tensor.flatten().tolist()]}
print(json.dumps({path: {name: describe(t) for name, t in load_file(path).items()}
                  for path in paths}))
"#;

fn earlier_writer(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/earlier-writer")
        .join(name)
}

/// The tensors sorted by name (the order a file lays them out in is the writer's choice).
fn by_name(mut tensors: TensorFile) -> TensorFile {
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

/// `revsnn eval --json` of `checkpoint` for the tiny model: samples, loss, acc1 and acc5.
fn evaluate(checkpoint: &Path) -> Value {
    let spec = earlier_writer("revsresnet-tiny.spec.json");
    let output = ok(revsnn(&[
        "eval",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--spec",
        spec.to_str().unwrap(),
        "--test-samples",
        "64",
        "--device",
        "cpu",
        "--json",
    ]));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let fields = ["samples", "loss", "acc1", "acc5"];
    fields.iter().map(|&f| (f, report[f].clone())).collect()
}

#[test]
fn checkpoints_of_the_earlier_writer_load_and_evaluate_as_they_did() {
    let dir = scratch("earlier");
    for name in [
        "revsresnet-tiny.safetensors",
        "revsresnet-tiny.optimizer.safetensors",
    ] {
        let before = checkpoint::read(&earlier_writer(name)).unwrap();
        assert!(before.len() > 10, "{name}: {} tensors", before.len());
        let again = dir.join(name);
        checkpoint::write(&again, &before).unwrap();
        assert_eq!(
            by_name(checkpoint::read(&again).unwrap()),
            by_name(before),
            "{name} written again"
        );
    }
    let before = evaluate(&earlier_writer("revsresnet-tiny.safetensors"));
    assert_eq!(before["samples"], 64, "{before}");
    assert_eq!(
        evaluate(&dir.join("revsresnet-tiny.safetensors")),
        before,
        "the same weights, read from the file of each writer, evaluate alike"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A checkpoint of a real run (F32 weights and statistics, I64 counters, the optimizer's
/// momenta) and a file of every dtype we write, scalars and empty tensors included.
fn files_we_write(dir: &Path) -> Vec<PathBuf> {
    let spec = dir.join("tiny.json");
    std::fs::write(&spec, TINY).unwrap();
    let run = dir.join("run");
    ok(revsnn(&[
        "train",
        "--spec",
        spec.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--epochs",
        "2",
        "--batch",
        "8",
        "--train-samples",
        "16",
        "--test-samples",
        "8",
        "--device",
        "cpu",
        "--quiet",
    ]));
    let dtypes = dir.join("dtypes.safetensors");
    let tensors: TensorFile = vec![
        (
            "f64".into(),
            StoredTensor::f64(vec![2, 2], vec![0.1, -2.5, 1e300, 5e-324]),
        ),
        (
            "f32.scalar".into(),
            StoredTensor {
                shape: vec![],
                data: TensorData::F32(vec![1.0 / 3.0]),
            },
        ),
        (
            "i64".into(),
            StoredTensor {
                shape: vec![3],
                data: TensorData::I64(vec![i64::MIN, -1, i64::MAX]),
            },
        ),
        (
            "empty".into(),
            StoredTensor {
                shape: vec![0, 3],
                data: TensorData::F32(vec![]),
            },
        ),
    ];
    checkpoint::write(&dtypes, &tensors).unwrap();
    vec![
        run.join("last.safetensors"),
        run.join("last.optimizer.safetensors"),
        dtypes,
    ]
}

/// What Python's reader printed for `tensor`, checked against it: dtype, shape and every value.
fn assert_read_alike(name: &str, tensor: &StoredTensor, read: &Value) {
    let dtype = match tensor.data {
        TensorData::F32(_) => "float32",
        TensorData::F64(_) => "float64",
        TensorData::I64(_) => "int64",
    };
    assert_eq!(read["dtype"], dtype, "{name}");
    assert_eq!(read["shape"], serde_json::json!(tensor.shape), "{name}");
    let values: Vec<&str> = (read["values"].as_array().unwrap().iter())
        .map(|v| v.as_str().unwrap())
        .collect();
    let same = match &tensor.data {
        TensorData::F32(v) => values
            .iter()
            .map(|s| s.parse::<f32>().ok())
            .eq(v.iter().map(|&x| Some(x))),
        TensorData::F64(v) => values
            .iter()
            .map(|s| s.parse::<f64>().ok())
            .eq(v.iter().map(|&x| Some(x))),
        TensorData::I64(v) => values
            .iter()
            .map(|s| s.parse::<i64>().ok())
            .eq(v.iter().map(|&x| Some(x))),
    };
    assert!(
        same,
        "{name}: Python read {values:?}, we wrote {:?}",
        tensor.data
    );
}

/// Reads `files` with `safetensors.<framework>.load_file` and checks every tensor against ours.
fn assert_python_reads(framework: &str, files: &[PathBuf]) {
    let mut args = vec![framework];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    let read: Value = serde_json::from_slice(&python(READER, &args)).unwrap();
    for file in files {
        let ours = checkpoint::read(file).unwrap();
        let theirs = read[file.to_str().unwrap()].as_object().unwrap();
        let their_names: BTreeSet<&str> = theirs.keys().map(String::as_str).collect();
        let our_names: BTreeSet<&str> = ours.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            their_names,
            our_names,
            "{framework}: names in {}",
            file.display()
        );
        for (name, tensor) in &ours {
            assert_read_alike(&format!("{framework}: {name}"), tensor, &theirs[name]);
        }
    }
}

/// Whether Python's `safetensors.numpy` can run; prints `SKIP:` when not (a failure under
/// `REVSNN_REQUIRE_SAFETENSORS_PY=1`).
fn python_safetensors_or_skip(test: &str) -> bool {
    if python_imports("safetensors.numpy") {
        return true;
    }
    assert!(
        std::env::var("REVSNN_REQUIRE_SAFETENSORS_PY").as_deref() != Ok("1"),
        "REVSNN_REQUIRE_SAFETENSORS_PY=1 but python3 cannot import safetensors.numpy"
    );
    println!(
        "SKIP: {test}: the safetensors Python package is not installed \
         (pip install safetensors numpy)"
    );
    false
}

#[test]
fn what_we_write_loads_in_python_safetensors() {
    if !python_safetensors_or_skip("what_we_write_loads_in_python_safetensors") {
        return;
    }
    let dir = scratch("python");
    let files = files_we_write(&dir);
    assert_python_reads("numpy", &files);
    if python_imports("torch") {
        assert_python_reads("torch", &files);
    } else {
        println!("SKIP (torch part only): torch is not installed");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The tiny model's checkpoint with every float tensor rounded to a 16-bit format (`round`,
/// to nearest even) and stored in it as `dtype`: what `model.half()` or a bfloat16 `state_dict`
/// saves. Written twice: in 16 bits, and as F32 holding the same (rounded) values.
fn rounded_checkpoint(dir: &Path, dtype: Dtype, round: fn(f32) -> (f32, [u8; 2])) -> [PathBuf; 2] {
    let tensors = checkpoint::read(&earlier_writer("revsresnet-tiny.safetensors")).unwrap();
    let mut widened: TensorFile = Vec::new();
    // Every tensor as the 16-bit file holds it: name, dtype, shape, little-endian bytes.
    let mut stored: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, tensor) in tensors {
        let shape = tensor.shape.clone();
        let (data, stored_dtype, stored_bytes) = match tensor.data {
            TensorData::F32(values) => {
                let (rounded, bytes): (Vec<f32>, Vec<[u8; 2]>) =
                    values.iter().map(|&v| round(v)).unzip();
                (TensorData::F32(rounded), dtype, bytes.concat())
            }
            TensorData::I64(counts) => {
                let bytes = counts.iter().flat_map(|c| c.to_le_bytes()).collect();
                (TensorData::I64(counts), Dtype::I64, bytes)
            }
            other => panic!("{name}: the tiny checkpoint holds F32 and I64, not {other:?}"),
        };
        stored.push((name.clone(), stored_dtype, shape.clone(), stored_bytes));
        widened.push((name, StoredTensor { shape, data }));
    }
    let views = stored.iter().map(|(name, dtype, shape, bytes)| {
        let view = TensorView::new(*dtype, shape.clone(), bytes).unwrap();
        (name.clone(), view)
    });
    let stem = format!("{dtype}").to_lowercase();
    let half_file = dir.join(format!("{stem}.safetensors"));
    let f32_file = dir.join(format!("{stem}-as-f32.safetensors"));
    std::fs::write(&half_file, safetensors::serialize(views, None).unwrap()).unwrap();
    checkpoint::write(&f32_file, &widened).unwrap();
    [half_file, f32_file]
}

/// `v` rounded to F16: the value, and its bytes as a file stores them.
fn to_f16(v: f32) -> (f32, [u8; 2]) {
    let h = f16::from_f32(v);
    (h.to_f32(), h.to_le_bytes())
}

/// `v` rounded to BF16: the value, and its bytes as a file stores them.
fn to_bf16(v: f32) -> (f32, [u8; 2]) {
    let h = bf16::from_f32(v);
    (h.to_f32(), h.to_le_bytes())
}

#[test]
fn half_precision_state_dicts_load_and_evaluate_as_the_f32_values_they_hold() {
    let dir = scratch("half");
    for (dtype, round) in [(Dtype::F16, to_f16 as fn(f32) -> _), (Dtype::BF16, to_bf16)] {
        let [half_file, f32_file] = rounded_checkpoint(&dir, dtype, round);
        assert_eq!(
            by_name(checkpoint::read(&half_file).unwrap()),
            by_name(checkpoint::read(&f32_file).unwrap()),
            "{dtype}: read as F32"
        );
        let (half, exact) = (evaluate(&half_file), evaluate(&f32_file));
        assert_eq!(half["samples"], 64, "{half}");
        assert_eq!(half, exact, "{dtype}: evaluated as its F32 values");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// numpy's `float16` rounding, written by Python's `safetensors`, reads as our own rounding.
const HALVER: &str = r#"
import sys, numpy
from safetensors.numpy import load_file, save_file
tensors = load_file(sys.argv[1])
save_file({k: v.astype(numpy.float16) if v.dtype == numpy.float32 else v
           for k, v in tensors.items()}, sys.argv[2])
"#;

#[test]
fn a_float16_state_dict_saved_by_python_reads_as_our_rounding() {
    if !python_safetensors_or_skip("a_float16_state_dict_saved_by_python_reads_as_our_rounding") {
        return;
    }
    let dir = scratch("python-half");
    let [_, ours] = rounded_checkpoint(&dir, Dtype::F16, to_f16);
    let theirs = dir.join("numpy-f16.safetensors");
    let source = earlier_writer("revsresnet-tiny.safetensors");
    python(
        HALVER,
        &[source.to_str().unwrap(), theirs.to_str().unwrap()],
    );
    assert_eq!(
        by_name(checkpoint::read(&theirs).unwrap()),
        by_name(checkpoint::read(&ours).unwrap())
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
