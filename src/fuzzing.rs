//! The fuzz targets: every parser of bytes a user hands revsnn, as a function of those bytes, and
//! small valid inputs to start from.
//!
//! Each target feeds arbitrary bytes to one reader the way the program does (a path that names
//! the file only in errors) and drops the result: an error is the expected outcome of most
//! inputs, and a panic, an abort, a hang or a huge allocation is a bug. `tests/fuzz/` runs them
//! under libFuzzer (`cargo fuzz`, coverage-guided, see its README) and `tests/fuzz_smoke.rs` runs
//! them on their seeds and mutations of them in every `cargo test`.

use std::path::Path;

use crate::checkpoint;
use crate::data::Dataset;
use crate::data::cifar::{CIFAR_IMAGE_BYTES, Cifar, CifarVariant};
use crate::data::dvs128::{GESTURE_SIZE, parse_labels_csv};
use crate::data::events::{decode_aedat31, integrate_by_number};
use crate::spec::ModelSpec;
use crate::torch_file::{self, Archive, Weights, pickle::Pickle};
use crate::train::config::{GivenSettings, default_spec};
use crate::train::run_dir::{RunState, STATE_FORMAT};

/// One fuzz target: its name (the `cargo fuzz` target), its body and its seeds.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// The name of the target under `tests/fuzz/fuzz_targets/`.
    pub name: &'static str,
    /// Feeds one input to the parser; never panics on any input.
    pub run: fn(&[u8]),
    /// Valid inputs, the start of a corpus.
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// Every target, one per reader of user files.
pub const TARGETS: [Target; 9] = [
    Target {
        name: "safetensors",
        run: safetensors,
        seeds: safetensors_seeds,
    },
    Target {
        name: "pytorch",
        run: pytorch,
        seeds: pytorch_seeds,
    },
    Target {
        name: "pickle",
        run: pickle,
        seeds: pickle_seeds,
    },
    Target {
        name: "aedat31",
        run: aedat31,
        seeds: aedat31_seeds,
    },
    Target {
        name: "cifar",
        run: cifar,
        seeds: cifar_seeds,
    },
    Target {
        name: "labels_csv",
        run: labels_csv,
        seeds: labels_csv_seeds,
    },
    Target {
        name: "spec_json",
        run: spec_json,
        seeds: spec_json_seeds,
    },
    Target {
        name: "config_toml",
        run: config_toml,
        seeds: config_toml_seeds,
    },
    Target {
        name: "last_json",
        run: last_json,
        seeds: last_json_seeds,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.into_iter().find(|t| t.name == name)
}

/// A safetensors checkpoint ([`checkpoint::parse`]).
pub fn safetensors(bytes: &[u8]) {
    let _ = checkpoint::parse(bytes);
}

/// A PyTorch file of `torch.save`, read for the model's weights and for their moving average
/// ([`torch_file::state_dict`]: `eval --checkpoint [--use-ema]`, `train --initial-checkpoint`,
/// `grad --weights`).
pub fn pytorch(bytes: &[u8]) {
    let _ = torch_file::state_dict(bytes, Weights::Model);
    let _ = torch_file::state_dict(bytes, Weights::Ema);
}

/// A PyTorch file's pickle (its `data.pkl`), unpickled and searched for a `state_dict`'s tensors,
/// each gathered from a zero-filled storage of the size its id says (up to 1 MiB): the part of
/// [`pytorch`] behind the archive's CRC-32s, which few mutations of a file get past.
pub fn pickle(bytes: &[u8]) {
    let Ok(pickle) = Pickle::parse(bytes) else {
        return;
    };
    for which in [Weights::Model, Weights::Ema] {
        for (_, view) in torch_file::tensor_views(&pickle, which).unwrap_or_default() {
            let size = view.storage.elements.saturating_mul(view.storage.width);
            if size <= 1 << 20 {
                let _ = view.gather(&vec![0; size]);
            }
        }
    }
}

/// Small files of `torch.save` itself (fixtures/pytorch/generate.py): views of shared storages
/// in every dtype read, pickled in protocols 2 and 4; a checkpoint with both EMA entries.
const PYTORCH_FILES: [&[u8]; 3] = [
    include_bytes!("../fixtures/pytorch/views.pth"),
    include_bytes!("../fixtures/pytorch/views-protocol4.pth"),
    include_bytes!("../fixtures/pytorch/ema-order.pth"),
];

fn pytorch_seeds() -> Vec<Vec<u8>> {
    PYTORCH_FILES.map(<[u8]>::to_vec).to_vec()
}

fn pickle_seeds() -> Vec<Vec<u8>> {
    let data_pkl = |file| Some(Archive::open(file).ok()?.entry("data.pkl").ok()?.to_vec());
    PYTORCH_FILES.into_iter().filter_map(data_pkl).collect()
}

/// A DVS128 Gesture recording (AEDAT 3.1), decoded and integrated into 4 frames of the sensor,
/// as `revsnn train --dataset dvs128-gesture` does.
pub fn aedat31(bytes: &[u8]) {
    let path = Path::new("fuzz.aedat");
    if let Ok(events) = decode_aedat31(bytes, path) {
        let _ = integrate_by_number(&events, 4, GESTURE_SIZE, GESTURE_SIZE, path);
    }
}

/// A CIFAR-10 and a CIFAR-100 binary file, with their first and last samples read.
pub fn cifar(bytes: &[u8]) {
    for variant in [CifarVariant::Cifar10, CifarVariant::Cifar100] {
        if let Ok(data) = Cifar::from_bytes(bytes, variant, Path::new("fuzz.bin")) {
            let _ = data.get(0);
            let _ = data.get(data.len().saturating_sub(1));
        }
    }
}

/// A DVS128 Gesture `_labels.csv` (the program reads it as UTF-8 text).
pub fn labels_csv(bytes: &[u8]) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = parse_labels_csv(text, Path::new("fuzz_labels.csv"));
    }
}

/// A JSON model spec (`--spec`), parsed and validated.
pub fn spec_json(bytes: &[u8]) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = ModelSpec::from_json(text);
    }
}

/// A `revsnn train --config` file, parsed, resolved against its recipe and written back as TOML.
/// A spec file it names is not read (the target reads no file).
pub fn config_toml(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(given) = GivenSettings::from_toml(text, Path::new("fuzz/config.toml")) {
        let given = GivenSettings {
            spec: None,
            ..given
        };
        if let Ok(settings) = given.resolve() {
            let _ = settings.to_given().to_toml();
        }
    }
}

/// A run folder's `last.json` (`--resume`).
pub fn last_json(bytes: &[u8]) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = RunState::from_json(text, Path::new("fuzz/last.json"));
    }
}

/// A safetensors file of `tensors` (name, dtype, shape, little-endian data), as the format
/// lays it out (docs in [`checkpoint`]).
fn safetensors_file(tensors: &[(&str, &str, &[usize], Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let begin = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            (*name).into(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
        );
    }
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let header = serde_json::Value::Object(header).to_string();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header.as_bytes());
    file.extend(data);
    file
}

fn safetensors_seeds() -> Vec<Vec<u8>> {
    let f32s: Vec<u8> = [1.5f32, -2.0, 0.25, 3.0, 0.0, -1.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let f64s: Vec<u8> = [0.5f64, -0.125]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    vec![
        safetensors_file(&[]),
        safetensors_file(&[
            ("conv1.weight", "F32", &[2, 3], f32s),
            ("bn1.running_mean", "F64", &[2], f64s),
            (
                "bn1.num_batches_tracked",
                "I64",
                &[],
                7i64.to_le_bytes().to_vec(),
            ),
            ("bn1.weight", "F16", &[2], vec![0x00, 0x3c, 0x01, 0x80]),
            ("bn1.bias", "BF16", &[2], vec![0x80, 0x3f, 0x00, 0xff]),
        ]),
    ]
}

/// A polarity event of a seed: (x, y, polarity, timestamp).
type Event = (u16, u16, u8, u32);

/// An AEDAT 3.1 file of one packet per entry of `packets`: (event type, timestamp overflow,
/// events).
fn aedat31_file(packets: &[(u16, u32, &[Event])]) -> Vec<u8> {
    let mut file = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#!END-HEADER\r\n".to_vec();
    for (event_type, overflow, events) in packets {
        let count = events.len() as u32;
        // type, source, event size, timestamp offset, overflow, capacity, number, valid
        let source_and_type = u32::from(*event_type) | (1 << 16);
        for word in [source_and_type, 8, 4, *overflow, count, count, count] {
            file.extend(word.to_le_bytes());
        }
        for &(x, y, p, t) in *events {
            let data = (u32::from(x) << 17) | (u32::from(y) << 2) | (u32::from(p) << 1) | 1;
            file.extend(data.to_le_bytes());
            file.extend(t.to_le_bytes());
        }
    }
    file
}

fn aedat31_seeds() -> Vec<Vec<u8>> {
    vec![
        aedat31_file(&[]),
        aedat31_file(&[
            (1, 0, &[(3, 5, 1, 10), (127, 0, 0, 20)]),
            (2, 0, &[(1, 1, 1, 1)]),
            (1, 1, &[(0, 127, 1, 7)]),
        ]),
    ]
}

fn cifar_seeds() -> Vec<Vec<u8>> {
    let pixels = (0..CIFAR_IMAGE_BYTES).map(|i| i as u8);
    let cifar10: Vec<u8> = [3u8].into_iter().chain(pixels.clone()).collect();
    let cifar100: Vec<u8> = [4u8, 77].into_iter().chain(pixels).collect();
    vec![cifar10, cifar100]
}

fn labels_csv_seeds() -> Vec<Vec<u8>> {
    vec![
        b"class,startTime_usec,endTime_usec\n1,80048239,85092709\n11,89431170,95231889\n".to_vec(),
        b"class,startTime_usec,endTime_usec\r\n3, 1, 5\r\n\r\n".to_vec(),
    ]
}

fn spec_json_seeds() -> Vec<Vec<u8>> {
    let tiny = br#"{"arch": "revsresnet", "layers": [1,1,1,1], "planes": [4,8,8,16],
        "num_classes": 10, "time_steps": 2, "in_channels": 3, "img_size": 16}"#;
    let presets = ["revsresnet24", "revsformer-2-384", "spikingformer-2-256"]
        .into_iter()
        .filter_map(|name| ModelSpec::preset(name).ok())
        .filter_map(|spec| serde_json::to_vec(&spec).ok());
    std::iter::once(tiny.to_vec()).chain(presets).collect()
}

/// The default run's settings and a preset's, as `revsnn train` writes them to `config.toml`.
fn config_toml_seeds() -> Vec<Vec<u8>> {
    let preset = GivenSettings {
        model: Some("revsformer-2-384".into()),
        dataset: Some("cifar100".into()),
        ..GivenSettings::default()
    };
    [GivenSettings::default(), preset]
        .into_iter()
        .filter_map(|given| given.resolve().ok())
        .filter_map(|settings| settings.to_given().to_toml().ok())
        .map(String::into_bytes)
        .collect()
}

/// The `last.json` of the default run after one epoch.
fn last_json_seeds() -> Vec<Vec<u8>> {
    let given = GivenSettings::default();
    let Ok(settings) = given.resolve() else {
        return Vec::new();
    };
    let state = RunState {
        format: STATE_FORMAT.into(),
        model: settings.model.name.clone(),
        spec: default_spec(),
        config: settings.to_given(),
        given,
        epochs_done: 1,
        optimizer_steps: 313,
        optimizer_state: "last.optimizer.safetensors".into(),
        next_shuffle_seed: 0x1234_5678_9abc_def0,
        best_test_acc1: 0.25,
        best_epoch: Some(1),
        loss_scaler: None,
    };
    serde_json::to_vec_pretty(&state).into_iter().collect()
}
