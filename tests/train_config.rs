//! `revsnn train` settings: the TOML config file and its round trip, flags over the file, errors
//! that name the key, `--recipe paper` resolving to docs/recipes.md §5, and a run from a config file
//! matching the same run from flags bit for bit.

mod common;

use common::{f32_tensors, failed, ok, revsnn, scratch, tiny_train_args};

use std::path::Path;

use revsnn::checkpoint::TensorData;
use revsnn::data::augment::{Augmentation, Mixup, RandAugment};
use revsnn::device::DeviceChoice;
use revsnn::optim::OptimizerKind;
use revsnn::reference::{AdamWParams, SgdParams};
use revsnn::train::config::{GivenSettings, RunSettings};
use revsnn::train::recipe::{DatasetKind, OptimizerName, RecipeKind, Schedule, ScheduleName};
use revsnn::train::{Run, initial};
use serde_json::Value;

const TINY: &str = r#"{"arch": "revsresnet", "layers": [1,1,1,1], "planes": [2,4,4,4],
  "num_classes": 10, "time_steps": 2, "in_channels": 3, "img_size": 16}"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The settings `revsnn train ARGS --print-config` resolves, parsed.
fn printed(args: &[&str]) -> GivenSettings {
    let mut all = vec!["train", "--print-config"];
    all.extend(args);
    let output = ok(revsnn(&all));
    let text = String::from_utf8(output.stdout).unwrap();
    GivenSettings::from_toml(&text, Path::new("printed.toml")).unwrap()
}

fn resolve(args: &[(&str, &str)]) -> RunSettings {
    let mut settings = GivenSettings::default();
    for &(key, value) in args {
        match key {
            "recipe" => {
                settings.recipe = Some(match value {
                    "paper" => RecipeKind::Paper,
                    _ => RecipeKind::Quick,
                })
            }
            "model" => settings.model = Some(value.into()),
            "dataset" => settings.dataset = Some(value.into()),
            "epochs" => settings.epochs = Some(value.parse().unwrap()),
            "lr" => settings.optimizer.lr = Some(value.parse().unwrap()),
            other => panic!("no test key {other}"),
        }
    }
    settings.resolve().unwrap()
}

#[test]
fn settings_round_trip_through_toml_and_resolve_to_the_same_run() {
    let dir = scratch("round-trip");
    let spec = write(&dir, "tiny.json", TINY);
    let text = format!(
        r#"
recipe = "quick"
spec = "{spec}"
dataset = "synthetic"
epochs = 3
batch = 4
seed = 11
train_samples = 24

[optimizer]
name = "adamw"
lr = 0.002
betas = [0.8, 0.99]

[schedule]
name = "cosine"
warmup_epochs = 1
min_lr = 1e-6

[augment]
crop_padding = 2
flip = true
mixup_alpha = 0.4
label_smoothing = 0.05

[loader]
workers = 2
"#
    );
    let path = dir.join("run.toml");
    let settings = GivenSettings::from_toml(&text, &path).unwrap();
    assert_eq!(settings.optimizer.betas, Some(vec![0.8, 0.99]));
    let again = GivenSettings::from_toml(&settings.to_toml().unwrap(), &path).unwrap();
    assert_eq!(again, settings);
    // the resolved settings, written and read back, resolve to the same run
    let config = settings.resolve().unwrap();
    let written = config.to_given().to_toml().unwrap();
    let reread = GivenSettings::from_toml(&written, &path).unwrap();
    assert_eq!(reread, config.to_given());
    assert_eq!(reread.resolve().unwrap(), config);
    // relative paths are relative to the file
    let relative = GivenSettings::from_toml("spec = \"tiny.json\"\n", &path).unwrap();
    assert_eq!(relative.spec, Some(dir.join("tiny.json")));
    for config in [
        resolve(&[
            ("recipe", "paper"),
            ("model", "revsformer-2-384"),
            ("dataset", "cifar100"),
        ]),
        resolve(&[
            ("recipe", "paper"),
            ("model", "msresnet20"),
            ("dataset", "cifar10-dvs"),
        ]),
    ] {
        let settings = config.to_given();
        let reread = GivenSettings::from_toml(&settings.to_toml().unwrap(), &path).unwrap();
        assert_eq!(reread.resolve().unwrap(), config);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn flags_override_the_config_file() {
    let dir = scratch("override");
    let spec = write(&dir, "tiny.json", TINY);
    let config = write(
        &dir,
        "config.toml",
        &format!(
            "spec = \"{spec}\"\nepochs = 3\nbatch = 4\n[optimizer]\nlr = 0.2\nmomentum = 0.5\n\
             [augment]\nflip = true\n"
        ),
    );
    let from_file = printed(&["--config", &config]);
    assert_eq!((from_file.epochs, from_file.batch), (Some(3), Some(4)));
    assert_eq!(from_file.optimizer.lr, Some(0.2));
    assert_eq!(from_file.augment.flip, Some(true));
    let overridden = printed(&[
        "--config", &config, "--epochs", "5", "--lr", "0.3", "--flip", "false",
    ]);
    assert_eq!((overridden.epochs, overridden.batch), (Some(5), Some(4)));
    assert_eq!(overridden.optimizer.lr, Some(0.3));
    assert_eq!(overridden.optimizer.momentum, Some(0.5));
    assert_eq!(overridden.augment.flip, Some(false));
    // a model flag replaces the file's model
    let preset = printed(&["--config", &config, "--model", "revsresnet21"]);
    assert_eq!(
        (preset.model.as_deref(), preset.spec),
        (Some("revsresnet21"), None)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Both fields are `name`; each flag needs its own clap id, or `--schedule` parses as a second
/// `--optimizer`.
#[test]
fn the_optimizer_and_the_schedule_are_separate_flags() {
    let both = printed(&["--optimizer", "adamw", "--schedule", "multistep"]);
    assert_eq!(both.optimizer.name, Some(OptimizerName::Adamw));
    assert_eq!(both.schedule.name, Some(ScheduleName::Multistep));
    let schedule_only = printed(&["--schedule", "cosine"]);
    assert_eq!(schedule_only.schedule.name, Some(ScheduleName::Cosine));
}

#[test]
fn the_device_is_auto_unless_a_flag_or_the_file_names_one() {
    let dir = scratch("device");
    assert_eq!(printed(&[]).device, Some(DeviceChoice::Auto));
    let config = write(&dir, "config.toml", "device = \"cuda\"\n");
    assert_eq!(
        printed(&["--config", &config]).device,
        Some(DeviceChoice::Cuda)
    );
    let overridden = printed(&["--config", &config, "--device", "cpu"]);
    assert_eq!(overridden.device, Some(DeviceChoice::Cpu));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_keys_and_bad_values_are_named() {
    let dir = scratch("errors");
    // the error of `train --print-config` on a config file `name` holding `text`
    let refusal = |name: &str, text: &str| {
        let config = write(&dir, name, text);
        failed(revsnn(&["train", "--config", &config, "--print-config"]))
    };
    let stderr = refusal("unknown.toml", "epochs = 2\nlearning_rate = 0.1\n");
    assert!(
        stderr.contains("unknown.toml")
            && stderr.contains("`learning_rate`")
            && stderr.contains("`epochs`")
            && stderr.contains("`optimizer`"),
        "{stderr}"
    );
    // a section's key at the top, or in another section: the error names its section
    let stderr = refusal("misplaced.toml", "lr = 0.1\n");
    assert!(
        stderr.contains("that key belongs in the [optimizer] section"),
        "{stderr}"
    );
    let stderr = refusal("elsewhere.toml", "[optimizer]\nmilestones = [2]\n");
    assert!(
        stderr.contains("that key belongs in the [schedule] section"),
        "{stderr}"
    );
    let stderr = refusal("placed.toml", "[optimizer]\nlr = \"x\"\n");
    assert!(!stderr.contains("belongs in"), "{stderr}");
    let stderr = refusal("nested.toml", "[optimizer]\nrate = 0.1\n");
    assert!(
        stderr.contains("`rate`") && stderr.contains("`lr`") && stderr.contains("`momentum`"),
        "{stderr}"
    );
    let stderr = refusal(
        "type.toml",
        "[schedule]\nname = \"cosine\"\nmin_lr = \"x\"\n",
    );
    assert!(
        stderr.contains("schedule.min_lr") && stderr.contains("f64"),
        "{stderr}"
    );
    let stderr = refusal("precision.toml", "precision = \"fp8\"\n");
    assert!(
        stderr.contains("precision.toml")
            && stderr.contains("unknown precision `fp8`: expected one of f32, tf32, bf16, fp16"),
        "{stderr}"
    );
    let stderr = refusal("range.toml", "[optimizer]\nlr = -1.0\n");
    assert!(
        stderr.contains("optimizer.lr") && stderr.contains("--lr") && stderr.contains("positive"),
        "{stderr}"
    );
    let stderr = failed(revsnn(&["train", "--mixup-prob", "1.5", "--print-config"]));
    assert!(stderr.contains("mixup_alpha"), "{stderr}");
    let stderr = failed(revsnn(&[
        "train",
        "--mixup-alpha",
        "0.5",
        "--mixup-prob",
        "1.5",
        "--print-config",
    ]));
    assert!(
        stderr.contains("augment.mixup_prob") && stderr.contains("[0, 1]"),
        "{stderr}"
    );
    let stderr = failed(revsnn(&["train", "--recipe", "paper", "--print-config"]));
    assert!(stderr.contains("--recipe quick"), "{stderr}");
    let stderr = failed(revsnn(&[
        "train",
        "--dataset",
        "cifar10",
        "--rand-augment-n",
        "1",
        "--snn-augment-wide",
        "true",
        "--print-config",
    ]));
    assert!(stderr.contains("augment.snn_augment_wide"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_paper_recipe_resolves_to_spec_section_5() {
    // CIFAR ResNets (docs/recipes.md §5.2): SGD 0.1, momentum 0.9, wd 1e-4, multistep, crop + flip
    let resnet = resolve(&[
        ("recipe", "paper"),
        ("model", "revsresnet21"),
        ("dataset", "cifar10"),
    ]);
    assert_eq!((resnet.epochs, resnet.batch, resnet.seed), (200, 32, 2020));
    assert_eq!(
        (resnet.train_samples, resnet.test_samples),
        (50_000, 10_000)
    );
    assert_eq!(
        (resnet.model.spec.num_classes, resnet.model.spec.time_steps),
        (100, 4)
    );
    assert_eq!(
        resnet.optimizer,
        OptimizerKind::Sgd(SgdParams {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4
        })
    );
    assert_eq!(
        resnet.schedule,
        Schedule::MultiStep {
            milestones: vec![100, 150],
            gamma: 0.1
        }
    );
    assert_eq!(
        resnet.augmentation,
        Augmentation {
            crop_padding: 4,
            flip: true,
            ..Augmentation::NONE
        }
    );
    let cifar100 = resolve(&[
        ("recipe", "paper"),
        ("model", "msresnet34"),
        ("dataset", "cifar100"),
    ]);
    assert_eq!(cifar100.seed, 2023);
    assert_eq!(
        cifar100.schedule,
        Schedule::MultiStep {
            milestones: vec![60, 120, 160],
            gamma: 0.1
        }
    );

    // CIFAR transformers (docs/recipes.md §5.1): AdamW, cosine 20 warmup + 10 cooldown, RandAugment,
    // mixup with label smoothing, random erasing; CIFAR-10 heads 12, 10 classes
    let former = resolve(&[
        ("recipe", "paper"),
        ("model", "revsformer-4-384"),
        ("dataset", "cifar10"),
    ]);
    assert_eq!((former.epochs, former.batch, former.seed), (310, 64, 42));
    let spec = &former.model.spec;
    assert_eq!(
        (spec.num_classes, spec.heads, spec.time_steps),
        (10, Some(12), 4)
    );
    assert_eq!(
        former.optimizer,
        OptimizerKind::AdamW(AdamWParams {
            lr: 5e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.06
        })
    );
    assert_eq!(
        former.schedule,
        Schedule::Cosine {
            warmup_epochs: 20,
            cooldown_epochs: 10,
            min_lr: 1e-5
        }
    );
    assert_eq!(
        former.augmentation,
        Augmentation {
            flip: true,
            rand_augment: Some(RandAugment {
                num_ops: 1,
                magnitude: 9.0,
                magnitude_std: 0.4,
                ..RandAugment::cifar()
            }),
            mixup: Some(Mixup {
                alpha: 0.5,
                prob: 1.0,
                label_smoothing: 0.1
            }),
            label_smoothing: 0.1,
            random_erasing: 0.25,
            ..Augmentation::NONE
        }
    );
    assert_eq!(former.mixup_off_epoch, 200);
    // synchronised BatchNorm where the official configs set `sync_bn: True`: the CIFAR
    // transformers only
    assert!(former.sync_bn && !resnet.sync_bn && !cifar100.sync_bn);
    // the schedule of docs/recipes.md §5.1: from 1e-5, cosine counted from epoch 0 over 300, then 1e-5
    assert!((former.lr(0) - 1e-5).abs() < 1e-15);
    let lr_20 = 1e-5 + 0.5 * (5e-4 - 1e-5) * (1.0 + (std::f64::consts::PI * 20.0 / 300.0).cos());
    assert!((former.lr(20) - lr_20).abs() < 1e-15);
    assert_eq!(former.lr(300), 1e-5);
    let former100 = resolve(&[
        ("recipe", "paper"),
        ("model", "revsformer-2-384"),
        ("dataset", "cifar100"),
    ]);
    assert_eq!(
        (former100.model.spec.num_classes, former100.model.spec.heads),
        (100, Some(8))
    );

    // event data (docs/recipes.md §5.3): AdamW 1e-3 (ResNets without weight decay), cosine 10 + 10,
    // SNNAugmentWide, mixup p 0.5 off at 75, T 10, Gesture's 11 classes
    let dvs = resolve(&[
        ("recipe", "paper"),
        ("model", "revsresnet24"),
        ("dataset", "dvs128-gesture"),
    ]);
    assert_eq!(dvs.dataset, DatasetKind::Dvs128Gesture);
    assert!(!dvs.sync_bn);
    assert_eq!((dvs.epochs, dvs.batch, dvs.seed), (202, 16, 2021));
    assert_eq!((dvs.train_samples, dvs.test_samples), (1176, 288));
    assert_eq!(
        (dvs.model.spec.num_classes, dvs.model.spec.time_steps),
        (11, 10)
    );
    assert_eq!(
        dvs.optimizer,
        OptimizerKind::AdamW(AdamWParams {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0
        })
    );
    assert_eq!(
        dvs.schedule,
        Schedule::Cosine {
            warmup_epochs: 10,
            cooldown_epochs: 10,
            min_lr: 1e-5
        }
    );
    assert_eq!(
        dvs.augmentation,
        Augmentation {
            flip: true,
            snn_augment_wide: true,
            mixup: Some(Mixup {
                alpha: 0.5,
                prob: 0.5,
                label_smoothing: 0.1
            }),
            label_smoothing: 0.1,
            ..Augmentation::NONE
        }
    );
    assert_eq!(dvs.mixup_off_epoch, 75);
    let former_dvs = resolve(&[
        ("recipe", "paper"),
        ("model", "spikingformer-2-256"),
        ("dataset", "cifar10-dvs"),
    ]);
    assert_eq!(former_dvs.epochs, 106);
    assert!(!former_dvs.sync_bn);
    assert_eq!(former_dvs.optimizer.lr(), 1e-3);
    assert!(matches!(
        former_dvs.optimizer,
        OptimizerKind::AdamW(AdamWParams {
            weight_decay: 0.06,
            ..
        })
    ));

    // explicit settings override the recipe's values, the rest stays the paper's
    let shorter = resolve(&[
        ("recipe", "paper"),
        ("model", "revsresnet21"),
        ("dataset", "cifar10"),
        ("epochs", "20"),
        ("lr", "0.05"),
    ]);
    assert_eq!((shorter.epochs, shorter.optimizer.lr()), (20, 0.05));
    assert_eq!(shorter.schedule, resnet.schedule);
    assert_eq!(shorter.augmentation, resnet.augmentation);
    // the same through the command line
    let printed = printed(&[
        "--recipe",
        "paper",
        "--model",
        "revsresnet21",
        "--dataset",
        "cifar100",
        "--batch",
        "64",
    ]);
    assert_eq!((printed.epochs, printed.batch), (Some(200), Some(64)));
    assert_eq!(printed.schedule.milestones, Some(vec![60, 120, 160]));
}

fn metrics(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut line: Value = serde_json::from_str(l).unwrap();
            let object = line.as_object_mut().unwrap();
            for key in [
                "images_per_second",
                "epoch_seconds",
                "peak_memory_bytes",
                "loader_images_per_second_per_worker",
                "loader_wait_seconds",
            ] {
                object.remove(key);
            }
            line
        })
        .collect()
}

#[test]
fn a_run_from_a_config_file_is_the_run_from_flags() {
    let dir = scratch("same-run");
    let spec = write(&dir, "tiny.json", TINY);
    let common = ["--train-samples", "32", "--test-samples", "16", "--quiet"];
    let flags_out = dir.join("flags").display().to_string();
    let mut args = vec![
        "train",
        "--spec",
        &spec,
        "--out",
        &flags_out,
        "--epochs",
        "2",
        "--batch",
        "8",
        "--seed",
        "3",
        "--optimizer",
        "adamw",
        "--lr",
        "0.003",
        "--betas",
        "0.85,0.99",
        "--warmup-epochs",
        "1",
        "--crop-padding",
        "2",
        "--flip",
        "true",
        "--mixup-alpha",
        "0.4",
        "--label-smoothing",
        "0.1",
        "--random-erasing",
        "0.5",
        "--workers",
        "2",
    ];
    args.extend(common);
    ok(revsnn(&args));
    let config = write(
        &dir,
        "run.toml",
        r#"spec = "tiny.json"
epochs = 2
batch = 8
seed = 3

[optimizer]
name = "adamw"
lr = 0.003
betas = [0.85, 0.99]

[schedule]
warmup_epochs = 1

[augment]
crop_padding = 2
flip = true
mixup_alpha = 0.4
label_smoothing = 0.1
random_erasing = 0.5
"#,
    );
    let file_out = dir.join("file").display().to_string();
    let mut args = vec!["train", "--config", &config, "--out", &file_out];
    args.extend(common);
    ok(revsnn(&args));
    // and again from the run folder's config.toml
    let folder_config = dir.join("flags/config.toml").display().to_string();
    let again_out = dir.join("again").display().to_string();
    ok(revsnn(&[
        "train",
        "--config",
        &folder_config,
        "--out",
        &again_out,
        "--quiet",
    ]));
    let expected = metrics(&dir.join("flags"));
    assert_eq!(expected.len(), 2);
    let weights = std::fs::read(dir.join("flags/last.safetensors")).unwrap();
    for other in ["file", "again"] {
        assert_eq!(metrics(&dir.join(other)), expected, "{other}");
        assert_eq!(
            std::fs::read(dir.join(other).join("last.safetensors")).unwrap(),
            weights,
            "{other}"
        );
    }
    // a resumed run keeps its settings: repeating them is fine, changing one is refused by name
    let stderr = failed(revsnn(&[
        "train", "--out", &flags_out, "--resume", "--lr", "0.01", "--quiet",
    ]));
    assert!(
        stderr.contains("optimizer.lr = 0.01") && stderr.contains("0.003"),
        "{stderr}"
    );
    // a longer run rescales what the recipe scaled to the run: the cosine's cooldown and
    // mixup stop (warmup was given)
    let resumed = printed(&[
        "--out", &flags_out, "--resume", "--epochs", "62", "--lr", "0.003",
    ]);
    assert_eq!(resumed.epochs, Some(62));
    assert_eq!(
        (
            resumed.schedule.warmup_epochs,
            resumed.schedule.cooldown_epochs
        ),
        (Some(1), Some(2))
    );
    assert_eq!(resumed.augment.mixup_off_epoch, Some(40));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_evaluation_batch_is_the_batch_from_32_up_and_a_resumed_run_may_change_it() {
    let eval_batch = |args: &[&str]| printed(args).loader.eval_batch;
    assert_eq!(eval_batch(&["--batch", "8"]), Some(32));
    assert_eq!(eval_batch(&["--batch", "64"]), Some(64));
    assert_eq!(
        eval_batch(&["--batch", "64", "--eval-batch", "10"]),
        Some(10)
    );
    let stderr = failed(revsnn(&["train", "--eval-batch", "0", "--print-config"]));
    assert!(
        stderr.contains("loader.eval_batch") && stderr.contains("--eval-batch"),
        "{stderr}"
    );

    let dir = scratch("eval-batch");
    let out = dir.join("run").display().to_string();
    let run = |extra: &[&str]| {
        let mut args = vec!["train", "--out", &out, "--device", "cpu", "--quiet"];
        args.extend(["--train-samples", "32", "--test-samples", "16"]);
        revsnn(&[&args[..], extra].concat())
    };
    ok(run(&["--epochs", "1"]));
    ok(run(&["--epochs", "2", "--resume", "--eval-batch", "5"]));
    let config = std::fs::read_to_string(dir.join("run/config.toml")).unwrap();
    assert!(config.contains("eval_batch = 5"), "{config}");
    assert_eq!(metrics(&dir.join("run")).len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The largest difference between two runs' parameters (the running statistics left out).
fn parameter_distance(a: &Path, b: &Path) -> f64 {
    let (a, b) = (f32_tensors(a, true), f32_tensors(b, true));
    assert_eq!(a.len(), b.len());
    let pairs = a.iter().zip(&b).flat_map(|((na, va), (nb, vb))| {
        assert_eq!(na, nb);
        va.iter().zip(vb)
    });
    pairs.map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// A checkpoint of [`common::TINY_REVSRESNET`] after one epoch (4 steps) in `dir/source`.
fn source_checkpoint(dir: &Path) -> String {
    ok(revsnn(&tiny_train_args(
        &dir.join("source"),
        &["--epochs", "1"],
    )));
    dir.join("source/last.safetensors").display().to_string()
}

/// Every `num_batches_tracked` of a run's `last.safetensors`.
fn batches_tracked(run: &Path) -> Vec<i64> {
    let tensors = revsnn::checkpoint::read(&run.join("last.safetensors")).unwrap();
    let counts = tensors.into_iter().filter_map(|(_, t)| match t.data {
        TensorData::I64(count) => Some(count[0]),
        _ => None,
    });
    counts.collect()
}

#[test]
fn a_run_starts_from_an_initial_checkpoint_afresh_and_keeps_it_on_resume() {
    let dir = scratch("initial-checkpoint");
    let train = |name: &str, extra: &[&str]| revsnn(&tiny_train_args(&dir.join(name), extra));
    let source = source_checkpoint(&dir);
    // An epoch at a learning rate of 1e-9 leaves the weights where it started: the checkpoint's
    // with the flag, the seed's without.
    let still = ["--epochs", "1", "--lr", "1e-9"];
    let output = ok(train(
        "started",
        &[&still[..], &["--initial-checkpoint", &source]].concat(),
    ));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("starting from the weights of"), "{stderr}");
    ok(train("fresh", &still));
    let (started, fresh) = (dir.join("started"), dir.join("fresh"));
    assert!(parameter_distance(&started, &dir.join("source")) < 1e-6);
    assert!(parameter_distance(&fresh, &dir.join("source")) > 1e-3);
    // The BatchNorm statistics came from the file (4 batches there, 4 more here); the optimizer
    // started afresh.
    let tracked = batches_tracked(&dir.join("source"));
    assert!(
        !tracked.is_empty() && tracked.iter().all(|&n| n == 4),
        "{tracked:?}"
    );
    assert!(batches_tracked(&started).iter().all(|&n| n == 8));
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(started.join("last.json")).unwrap()).unwrap();
    assert_eq!(state["optimizer_steps"], 4, "{state}");

    let config = GivenSettings::read(&started.join("config.toml")).unwrap();
    assert_eq!(
        config.initial_checkpoint.as_deref(),
        Some(Path::new(&source))
    );
    // A resumed run continues from its own checkpoint (the source is gone), and may not name
    // another.
    std::fs::rename(&source, dir.join("moved.safetensors")).unwrap();
    let resumed = ["--epochs", "2", "--lr", "1e-9", "--resume"];
    let other = started.join("last.safetensors").display().to_string();
    let refused = [&resumed[..], &["--initial-checkpoint", &other]].concat();
    let stderr = failed(train("started", &refused));
    assert!(stderr.contains("initial_checkpoint"), "{stderr}");
    ok(train("started", &resumed));
    assert_eq!(metrics(&started).len(), 2);

    // In a config file, a relative path is relative to the file's folder.
    let toml = "initial_checkpoint = \"w.safetensors\"";
    let given = GivenSettings::from_toml(toml, Path::new("/x/c.toml")).unwrap();
    assert_eq!(
        given.initial_checkpoint.as_deref(),
        Some(Path::new("/x/w.safetensors"))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The SHA-256 of the file at `path` as Python's hashlib computes it: a second implementation.
fn hashlib_sha256(path: &str) -> String {
    let script =
        "import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest())";
    String::from_utf8(common::python(script, &[path]))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_run_pins_its_initial_checkpoint_by_sha256_and_its_config_refuses_a_changed_file() {
    let dir = scratch("initial-pinned");
    let source = source_checkpoint(&dir);
    let still = ["--epochs", "1", "--lr", "1e-9"];
    let from_source = [&still[..], &["--initial-checkpoint", &source]].concat();
    ok(revsnn(&tiny_train_args(&dir.join("first"), &from_source)));
    let config = dir.join("first/config.toml").display().to_string();
    let recorded = GivenSettings::read(Path::new(&config)).unwrap();
    let digest = recorded.initial_checkpoint_sha256.clone().unwrap();
    assert_eq!(digest, hashlib_sha256(&source));
    assert_eq!(
        printed(&["--initial-checkpoint", &source]).initial_checkpoint_sha256,
        Some(digest.clone())
    );
    // The config runs again from the same file, and so does the digest given as a flag; a
    // resume, with a new length or not, keeps the digest in config.toml.
    let rerun = |name: &str, extra: &[&str]| {
        let out = dir.join(name).display().to_string();
        let args = ["train", "--config", &config, "--out", &out, "--quiet"];
        revsnn(&[&args[..], extra].concat())
    };
    ok(rerun("again", &["--initial-checkpoint-sha256", &digest]));
    let last = |name: &str| std::fs::read(dir.join(name).join("last.safetensors")).unwrap();
    assert_eq!(last("again"), last("first"));
    let resume = |epochs: &str| {
        let args = ["--epochs", epochs, "--lr", "1e-9", "--resume"];
        ok(revsnn(&tiny_train_args(&dir.join("first"), &args)));
        let resumed = GivenSettings::read(Path::new(&config)).unwrap();
        assert_eq!(resumed.initial_checkpoint_sha256.as_deref(), Some(&*digest));
    };
    resume("2");
    let upper = digest.to_ascii_uppercase();
    let stderr = failed(rerun("upper", &["--initial-checkpoint-sha256", &upper]));
    assert!(stderr.contains("64 lowercase hex digits"), "{stderr}");

    // The file changes: the config stops before a run folder, naming both digests.
    let mut tensors = revsnn::checkpoint::read(Path::new(&source)).unwrap();
    let (_, weight) = tensors
        .iter_mut()
        .find(|(n, _)| n.ends_with("conv1.weight"))
        .unwrap();
    let TensorData::F32(values) = &mut weight.data else {
        panic!("a run's checkpoint holds F32 weights")
    };
    values[0] += 0.5;
    revsnn::checkpoint::write(Path::new(&source), &tensors).unwrap();
    let changed = hashlib_sha256(&source);
    let stderr = failed(rerun("changed", &[]));
    assert!(
        stderr.contains(&digest)
            && stderr.contains(&format!("--initial-checkpoint-sha256 {changed}")),
        "{stderr}"
    );
    assert!(!dir.join("changed").exists(), "{stderr}");
    // a resumed run does not read the file again
    resume("3");
    // Given the new digest, or naming the file again (the config's digest pinned the file the
    // config named), the run starts from what the file holds now.
    ok(rerun(
        "new-digest",
        &["--initial-checkpoint-sha256", &changed],
    ));
    ok(rerun("named-again", &["--initial-checkpoint", &source]));
    assert_eq!(last("new-digest"), last("named-again"));
    assert!(parameter_distance(&dir.join("new-digest"), &dir.join("source")) < 1e-6);

    // A digest that is not one, and a digest with no file to pin, are refused.
    let stderr = failed(rerun("short", &["--initial-checkpoint-sha256", "abc123"]));
    assert!(
        stderr.contains("initial_checkpoint_sha256 = abc123")
            && stderr.contains("64 lowercase hex"),
        "{stderr}"
    );
    let alone = ["--epochs", "1", "--initial-checkpoint-sha256", &digest];
    let stderr = failed(revsnn(&tiny_train_args(&dir.join("alone"), &alone)));
    assert!(stderr.contains("no initial_checkpoint"), "{stderr}");

    // The tensors are parsed only from bytes of the recorded digest: a file that changes after
    // the run hashed it is refused when it is loaded, by its digest, not as a broken file.
    let given = GivenSettings {
        initial_checkpoint: Some(source.clone().into()),
        ..GivenSettings::default()
    };
    let run = Run::start(given).unwrap();
    std::fs::write(&source, b"not the file that was hashed").unwrap();
    let error = initial::weights(&run, false).unwrap_err().to_string();
    assert!(
        error.contains(&format!(
            "--initial-checkpoint: its SHA-256 is {}",
            hashlib_sha256(&source)
        )),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_initial_checkpoint_that_does_not_fit_or_is_not_finite_is_refused_before_the_run_folder() {
    let dir = scratch("initial-refused");
    let source = source_checkpoint(&dir);
    let refused = |spec: &str, checkpoint: &str| {
        let out = dir.join("refused").display().to_string();
        let args = ["train", "--spec", spec, "--out", &out, "--device", "cpu"];
        let short = [
            "--train-samples",
            "48",
            "--test-samples",
            "24",
            "--epochs",
            "1",
        ];
        let stderr = failed(revsnn(
            &[&args[..], &short, &["--initial-checkpoint", checkpoint]].concat(),
        ));
        assert!(
            !dir.join("refused").exists(),
            "a run folder was left: {stderr}"
        );
        stderr
    };
    let tiny = write(&dir, "tiny.json", TINY);
    // Another model: its last stage 4 channels wide, the model's 8.
    let wider = write(&dir, "wider.json", &TINY.replace("[2,4,4,4]", "[2,4,4,8]"));
    let stderr = refused(&wider, &source);
    assert!(
        stderr.contains(&source)
            && stderr.contains("--initial-checkpoint")
            && stderr.contains("does not fit the model"),
        "{stderr}"
    );
    // A NaN, and a file that is not there.
    let mut tensors = revsnn::checkpoint::read(Path::new(&source)).unwrap();
    let (name, weight) = tensors
        .iter_mut()
        .find(|(name, _)| name.ends_with("conv1.weight"))
        .unwrap();
    if let TensorData::F32(values) = &mut weight.data {
        values[1] = f32::NAN;
    }
    let name = name.clone();
    let poisoned = dir.join("nan.safetensors");
    revsnn::checkpoint::write(&poisoned, &tensors).unwrap();
    let stderr = refused(&tiny, poisoned.to_str().unwrap());
    assert!(
        stderr.contains(&name) && stderr.contains("--allow-non-finite"),
        "{stderr}"
    );
    let missing = dir.join("missing.safetensors").display().to_string();
    let stderr = refused(&tiny, &missing);
    assert!(
        stderr.contains("--initial-checkpoint: cannot read"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
