//! The `revsnn` commands as a user runs them: their JSON contracts, exit codes, and clear errors
//! (naming the file and the problem, never a panic) on bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{ok, revsnn, revsnn_command};

fn json(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON object")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/parity")
        .join(name)
}

fn scratch(name: &str) -> PathBuf {
    let folder = std::env::temp_dir().join(format!("revsnn-cli-{}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    folder.join(name)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn info_reports_cuda_status_without_panicking() {
    let report = json(&revsnn(&["info", "--json"]));
    assert!(report["cpu_threads"].as_u64().unwrap() >= 1);
    let cuda = &report["cuda"];
    assert!(cuda["available"].as_bool().unwrap() || !cuda["reason"].as_str().unwrap().is_empty());
    let cached = |setting: &str| {
        let output = revsnn_command(&["info", "--json"])
            .env("REVSNN_KERNEL_CACHE", setting)
            .output()
            .unwrap();
        json(&output)["kernel_cache"].clone()
    };
    assert_eq!(cached("/tmp/kernels"), "/tmp/kernels");
    assert!(cached("off").is_null());
}

/// `revsnn kernels` compiles every kernel file into the cache it is given, then finds them all
/// there (an architecture named twice is filled once); a bad architecture or a cache that is off
/// is a usage error.
#[test]
fn kernels_fills_the_cache_and_then_finds_every_file_there() {
    let folder = scratch("kernel-cache");
    let _ = std::fs::remove_dir_all(&folder);
    let kernels = |args: &[&str], cache: &Path| {
        revsnn_command(&[&["kernels"], args].concat())
            .env("REVSNN_KERNEL_CACHE", cache)
            .output()
            .unwrap()
    };
    for (args, cache, expected) in [
        (
            &["--arch", "compute_90"][..],
            folder.as_path(),
            "sm_XY or X.Y",
        ),
        (
            &["--arch", "sm_90"][..],
            Path::new("off"),
            "REVSNN_KERNEL_CACHE",
        ),
    ] {
        let refused = kernels(args, cache);
        assert_eq!(refused.status.code(), Some(1), "{args:?}");
        assert!(stderr(&refused).contains(expected), "{}", stderr(&refused));
    }
    let first = kernels(&["--arch", "sm_90", "--json"], &folder);
    if !first.status.success() && stderr(&first).contains("NVRTC") {
        assert_ne!(
            std::env::var("REVSNN_REQUIRE_NVRTC").as_deref(),
            Ok("1"),
            "REVSNN_REQUIRE_NVRTC=1 but: {}",
            stderr(&first)
        );
        println!("SKIP: NVRTC not found: {}", stderr(&first));
        return;
    }
    let sources = |output: &Output| -> Vec<(String, String)> {
        let report = json(output);
        report["kernels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|image| {
                assert_eq!(image["architecture"], "sm_90", "{image}");
                assert!(image["bytes"].as_u64().unwrap() > 0, "{image}");
                let field = |name: &str| image[name].as_str().unwrap().to_string();
                (field("file"), field("source"))
            })
            .collect()
    };
    let compiled = sources(&first);
    assert_eq!(compiled.len(), revsnn_gpu::kernels::ALL.len());
    assert!(
        compiled.iter().all(|(_, source)| source == "compiled"),
        "{compiled:?}"
    );
    let entries = std::fs::read_dir(&folder).unwrap().count();
    assert_eq!(entries, compiled.len());
    // the same architecture named twice is filled once
    let again = sources(&kernels(&["--arch", "9.0,sm_90", "--json"], &folder));
    assert_eq!(again.len(), compiled.len());
    assert!(
        again.iter().all(|(_, source)| source == "cached"),
        "{again:?}"
    );
    let text = kernels(&["--arch", "sm_90"], &folder);
    let summary = format!("0 compiled, {} already cached", compiled.len());
    assert!(String::from_utf8_lossy(&text.stdout).contains(&summary));
    // without --arch: CUDA device 0's architecture, or an error that asks for --arch
    let own = kernels(&["--json"], &folder);
    if own.status.success() {
        assert_eq!(
            json(&own)["kernels"].as_array().unwrap().len(),
            compiled.len()
        );
    } else {
        assert!(
            stderr(&own).contains("give --arch sm_XY"),
            "{}",
            stderr(&own)
        );
    }
    std::fs::remove_dir_all(&folder).unwrap();
}

#[test]
fn summary_counts_parameters_of_presets_and_overrides() {
    let report = json(&revsnn(&["summary", "--model", "revsresnet21", "--json"]));
    assert_eq!(report["parameters"], 11_048_420);
    let ten = json(&revsnn(&[
        "summary",
        "--model",
        "revsresnet21",
        "--num-classes",
        "10",
        "--json",
    ]));
    assert_eq!(ten["parameters"], 10_967_690);
    let former = json(&revsnn(&[
        "summary",
        "--model",
        "revsformer-2-384",
        "--json",
    ]));
    assert_eq!(former["parameters"], 5_835_796);
    let text = revsnn(&["summary", "--model", "msresnet18"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("total parameters: 11220132"));
}

#[test]
fn verify_passes_on_a_small_spec_with_both_couplings() {
    let spec = fixture("revsresnet.spec.json");
    for coupling in ["float", "exact"] {
        let report = json(&revsnn(&[
            "verify",
            "--spec",
            spec.to_str().unwrap(),
            "--coupling",
            coupling,
            "--json",
        ]));
        for key in [
            "reconstruction_max_rel_err",
            "spike_flips",
            "grad_max_rel_err_vs_bptt",
            "fd_max_rel_err",
        ] {
            assert!(report[key].is_number(), "{key} in {report}");
        }
        assert_eq!(report["passed"], true, "{report}");
    }
}

#[test]
fn verify_of_a_model_without_reversible_sequences_reports_those_checks_as_not_applicable() {
    let spec = fixture("msresnet.spec.json");
    let spec = spec.to_str().unwrap();
    let report = json(&revsnn(&["verify", "--spec", spec, "--json"]));
    assert_eq!(report["reversible"], false);
    for key in [
        "reconstruction_max_rel_err",
        "spike_flips",
        "spikes_compared",
        "grad_max_rel_err_vs_bptt",
    ] {
        assert!(report[key].is_null(), "{key} in {report}");
    }
    assert!(report["fd_max_rel_err"].is_number(), "{report}");
    assert_eq!(report["passed"], true, "{report}");
    let table = String::from_utf8_lossy(&revsnn(&["verify", "--spec", spec]).stdout).into_owned();
    assert!(
        table.contains("n/a (the model has no reversible sequence)")
            && !table.contains("spike flips "),
        "{table}"
    );
}

#[test]
fn memory_reports_per_batch_peaks_and_per_image_figures() {
    let spec = fixture("revsformer.spec.json");
    let report = json(&revsnn(&[
        "memory",
        "--spec",
        spec.to_str().unwrap(),
        "--batch",
        "3,1",
        "--json",
    ]));
    let per_batch = report["per_batch"].as_array().unwrap();
    assert_eq!(per_batch.len(), 2);
    assert_eq!(per_batch[0]["batch"], 3);
    let peak = |i: usize| per_batch[i]["peak_bytes"].as_u64().unwrap() as f64;
    assert!(peak(0) > peak(1));
    // the figures take the largest and smallest batch, not the last and first given
    assert_eq!(report["bytes_per_image_slope"], (peak(0) - peak(1)) / 2.0);
    assert_eq!(report["bytes_per_image_at_max_batch"], peak(0) / 3.0);
}

#[test]
fn grad_writes_the_fixture_format_and_rejects_bad_files() {
    let spec = fixture("msresnet.spec.json");
    let weights = fixture("msresnet.weights.safetensors");
    let input = fixture("msresnet.input.safetensors");
    let output = scratch("msresnet.out.safetensors");
    let run = |weights: &Path, input: &Path| {
        revsnn(&[
            "grad",
            "--spec",
            spec.to_str().unwrap(),
            "--weights",
            weights.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ])
    };
    let succeeded = run(&weights, &input);
    assert!(succeeded.status.success(), "{}", stderr(&succeeded));
    let written = revsnn::checkpoint::read(&output).unwrap();
    assert!(written.iter().any(|(name, _)| name == "grad.conv1.weight"));
    assert!(
        written
            .iter()
            .any(|(name, _)| name == "after_forward.bn1.running_var")
    );

    // in emulated bf16: the same gradients, rounded differently
    let bf16_output = scratch("msresnet.bf16.safetensors");
    let args = [&spec, &weights, &input, &bf16_output].map(|path| path.to_str().unwrap());
    ok(revsnn(&[
        "grad",
        "--spec",
        args[0],
        "--weights",
        args[1],
        "--input",
        args[2],
        "--output",
        args[3],
        "--precision",
        "bf16",
    ]));
    let rounded = revsnn::checkpoint::read(&bf16_output).unwrap();
    let names = |tensors: &revsnn::checkpoint::TensorFile| {
        tensors
            .iter()
            .map(|(name, _)| name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&rounded), names(&written));
    assert!(
        rounded
            .iter()
            .zip(&written)
            .any(|((name, a), (_, b))| name.starts_with("grad.") && a != b),
        "--precision bf16 changed no gradient"
    );

    // a truncated weights file
    let bytes = std::fs::read(&weights).unwrap();
    let truncated = scratch("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let failed = run(&truncated, &input);
    assert!(!failed.status.success());
    assert!(
        stderr(&failed).contains("truncated.safetensors") && stderr(&failed).contains("truncated"),
        "{}",
        stderr(&failed)
    );

    // not a safetensors file at all
    let garbage = scratch("garbage.safetensors");
    std::fs::write(&garbage, b"\xff\xff\xff\xff\xff\xff\xff\xffnot json").unwrap();
    let failed = run(&garbage, &input);
    assert!(
        !failed.status.success() && stderr(&failed).contains("garbage.safetensors"),
        "{}",
        stderr(&failed)
    );

    // weights of another model: one error counts the keys of each kind and names a few
    let failed = run(&fixture("revsresnet.weights.safetensors"), &input);
    assert!(!failed.status.success());
    let message = stderr(&failed);
    assert!(
        message.contains(" missing keys: ")
            && message.contains(" unexpected keys: ")
            && message.contains(" more")
            && message.contains("give the command the model they were trained as")
            && message.len() < 2000,
        "{message}"
    );

    // labels out of range, images of the wrong shape
    let mut tensors = revsnn::checkpoint::read(&input).unwrap();
    for (name, tensor) in tensors.iter_mut() {
        if name == "labels" {
            tensor.data = revsnn::checkpoint::TensorData::I64(vec![0, 99, 1]);
        }
    }
    let bad_labels = scratch("bad-labels.safetensors");
    revsnn::checkpoint::write(&bad_labels, &tensors).unwrap();
    let failed = run(&weights, &bad_labels);
    assert!(
        !failed.status.success() && stderr(&failed).contains("label 99"),
        "{}",
        stderr(&failed)
    );

    let failed = run(&weights, &fixture("revsformer-dvs.input.safetensors"));
    assert!(
        !failed.status.success() && stderr(&failed).contains("images have shape"),
        "{}",
        stderr(&failed)
    );
}

#[test]
fn bad_specs_and_devices_are_errors_not_panics() {
    let spec = scratch("bad.json");
    std::fs::write(&spec, r#"{"arch":"revsformer","num_classes":3,"time_steps":2,"in_channels":3,"img_size":8,"depth":1,"dim":20,"heads":3,"mlp_ratio":4,"patch_size":4}"#).unwrap();
    let failed = revsnn(&["summary", "--spec", spec.to_str().unwrap()]);
    assert!(
        !failed.status.success() && stderr(&failed).contains("divisible"),
        "{}",
        stderr(&failed)
    );
    let failed = revsnn(&["summary", "--model", "resnet50"]);
    assert!(!failed.status.success() && stderr(&failed).contains("unknown preset"));
    let failed = revsnn(&["verify", "--model", "revsresnet21", "--device", "nvidia"]);
    assert!(!failed.status.success() && stderr(&failed).contains("cuda"));
    assert!(!stderr(&failed).contains("panicked"));
    let failed = revsnn(&["bench", "--model", "revsresnet21", "--batch", "1", "--tf32"]);
    assert!(
        !failed.status.success() && stderr(&failed).contains("unexpected argument '--tf32'"),
        "{}",
        stderr(&failed)
    );
}

#[test]
fn verify_in_fp16_marks_each_bound_void_where_spikes_differ() {
    let spec = fixture("revsresnet.spec.json");
    let args = ["verify", "--spec", spec.to_str().unwrap(), "--dtype", "f32"];
    let table =
        String::from_utf8_lossy(&revsnn(&[&args[..], &["--precision", "fp16"]].concat()).stdout)
            .into_owned();
    let differing = table
        .lines()
        .find(|line| line.contains("fp16 vs f64: spikes differing"))
        .unwrap_or_else(|| panic!("{table}"));
    // this seed's spikes differ from the f64 reference's, so neither error has a bound
    assert!(!differing.contains(" 0 of "), "{table}");
    for error in ["logits max abs. error", "loss abs. error"] {
        let line = table.lines().find(|line| line.contains(error)).unwrap();
        assert!(line.ends_with("bound void: spikes differ"), "{line}");
    }
}

#[test]
fn small_mistakes_are_refused_with_what_to_do() {
    let train_into = |extra: &[&str]| {
        let out = scratch("mistakes");
        let mut args = vec!["train", "--out", out.to_str().unwrap(), "--device", "cpu"];
        args.extend_from_slice(extra);
        stderr(&revsnn(&args))
    };
    let cases: Vec<(String, &str)> = vec![
        (
            stderr(&revsnn(&["summary"])),
            "<--model <MODEL>|--spec <SPEC>>",
        ),
        (
            stderr(&revsnn(&[
                "verify",
                "--model",
                "revsresnet21",
                "--batch",
                "0",
            ])),
            "--batch must be >= 1",
        ),
        (
            train_into(&["--lr", "-1"]),
            "optimizer.lr = -1: expected a positive, finite number",
        ),
        (
            train_into(&["--model", "revsresnet24", "--dataset", "synthetic"]),
            "the model (revsresnet-dvs, 2 input channels) wants event frames",
        ),
    ];
    for (message, expected) in cases {
        assert!(message.contains(expected), "{expected:?} in {message}");
    }
}

#[test]
fn an_unknown_precision_lists_the_valid_ones() {
    for command in ["train", "bench", "memory", "verify", "grad", "eval"] {
        let failed = revsnn(&[command, "--precision", "fp8"]);
        let message = stderr(&failed);
        assert!(
            !failed.status.success()
                && message
                    .contains("unknown precision `fp8`: expected one of f32, tf32, bf16, fp16"),
            "{command}: {message}"
        );
    }
}

#[test]
fn every_command_that_computes_takes_threads() {
    let missing = scratch("never-read");
    let missing = missing.to_str().unwrap();
    let spec = fixture("revsresnet.spec.json");
    let spec = spec.to_str().unwrap();
    let out = scratch("threads-run");
    let commands: [&[&str]; 6] = [
        &["train", "--out", out.to_str().unwrap()],
        &["bench", "--spec", spec, "--batch", "1"],
        &["memory", "--spec", spec],
        &["verify", "--spec", spec],
        &[
            "grad",
            "--spec",
            spec,
            "--weights",
            missing,
            "--input",
            missing,
            "--output",
            missing,
        ],
        &["eval", "--checkpoint", missing],
    ];
    for args in commands {
        // refused before anything reads or computes
        let refused = revsnn(&[args, &["--threads", "0"]].concat());
        let message = stderr(&refused);
        assert!(
            refused.status.code() == Some(1) && message.contains("--threads 0: give 1 to 1024"),
            "{args:?}: {message}"
        );
    }
    assert!(!out.exists(), "a refused run leaves no folder");
    // the reference is deterministic whatever the thread count: verify's whole report is the
    // same on one thread and on two
    let verify = |threads: &str| {
        let args = ["verify", "--spec", spec, "--fd-samples", "2", "--json"];
        json(&revsnn(&[&args[..], &["--threads", threads]].concat()))
    };
    assert_eq!(verify("1"), verify("2"));
}

#[test]
fn bench_and_memory_report_the_emulated_precision_and_their_threads() {
    let out = ok(revsnn(&[
        "bench",
        "--model",
        "revsresnet21",
        "--time-steps",
        "1",
        "--batch",
        "1",
        "--steps",
        "1",
        "--device",
        "cpu",
        "--precision",
        "bf16",
        "--threads",
        "1",
        "--json",
    ]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["precision"], "bf16", "{report}");
    assert_eq!(report["threads"], 1, "{report}");
    let out = ok(revsnn(&[
        "memory",
        "--model",
        "revsresnet21",
        "--time-steps",
        "1",
        "--batch",
        "1",
        "--precision",
        "fp16",
        "--threads",
        "1",
        "--json",
    ]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["precision"], "fp16", "{report}");
    // the CPU's peak depends on the thread count (each thread's working buffers): the report
    // says it
    assert_eq!(report["threads"], 1, "{report}");
}

/// Whether this machine has a usable CUDA device (then `--device cuda` runs instead of failing).
fn has_gpu() -> bool {
    matches!(revsnn::gpu::probe(), revsnn::gpu::CudaStatus::Available(_))
}

#[test]
fn device_cuda_without_a_gpu_is_a_clear_error_in_every_command() {
    if has_gpu() {
        eprintln!("SKIP: a CUDA device is present, so --device cuda runs");
        return;
    }
    let spec = fixture("revsresnet.spec.json");
    let spec = spec.to_str().unwrap();
    let weights = fixture("revsresnet.weights.safetensors");
    let input = fixture("revsresnet.input.safetensors");
    let output = scratch("cuda-grad.safetensors");
    let run = scratch("cuda-run");
    let commands: Vec<Vec<&str>> = vec![
        vec![
            "grad",
            "--spec",
            spec,
            "--weights",
            weights.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ],
        vec!["verify", "--spec", spec],
        vec!["memory", "--spec", spec],
        vec!["bench", "--spec", spec, "--batch", "1", "--steps", "1"],
        vec!["train", "--spec", spec, "--out", run.to_str().unwrap()],
        vec!["eval", "--checkpoint", weights.to_str().unwrap()],
    ];
    for mut args in commands {
        args.extend(["--device", "cuda"]);
        let failed = revsnn(&args);
        let message = stderr(&failed);
        assert!(!failed.status.success(), "{args:?} succeeded");
        assert!(
            message.contains("--device cuda:") && message.contains("--device cpu"),
            "{args:?}: {message}"
        );
        assert!(!message.contains("panicked"), "{args:?}: {message}");
    }
    assert!(!output.exists(), "grad wrote an output");
    assert!(!run.exists(), "train made a run folder");
}

#[test]
fn device_auto_without_a_gpu_runs_on_the_cpu() {
    if has_gpu() {
        eprintln!("SKIP: a CUDA device is present, so --device auto picks it");
        return;
    }
    let spec = fixture("revsresnet.spec.json");
    let output = revsnn(&[
        "bench",
        "--spec",
        spec.to_str().unwrap(),
        "--batch",
        "1",
        "--steps",
        "1",
        "--device",
        "auto",
        "--json",
    ]);
    assert_eq!(
        device_lines(&output),
        ["device: cpu (auto: "],
        "{}",
        stderr(&output)
    );
    let report = json(&output);
    assert_eq!(report["device"], "cpu", "{report}");
    assert_eq!(report["backend"], "cpu", "{report}");
    assert!(report["peak_memory_bytes"].as_u64().unwrap() > 0);
}

/// The lines a command printed on stderr about its device, each cut after `(auto: `.
fn device_lines(output: &Output) -> Vec<String> {
    let stderr = stderr(output);
    let lines = stderr.lines().filter(|l| l.starts_with("device:"));
    lines
        .map(|l| match l.find("(auto: ") {
            Some(at) => l[..at + "(auto: ".len()].to_string(),
            None => l.to_string(),
        })
        .collect()
}

#[test]
fn train_bench_and_eval_take_the_gpu_by_default_where_there_is_one_and_say_which() {
    let (backend, line) = if has_gpu() {
        ("cuda", "device: cuda (auto: ")
    } else {
        ("cpu", "device: cpu (auto: ")
    };
    let spec = fixture("revsresnet.spec.json");
    let spec = spec.to_str().unwrap();
    let run = scratch("auto-run");
    let _ = std::fs::remove_dir_all(&run);
    let train = revsnn(&[
        "train",
        "--spec",
        spec,
        "--num-classes",
        "10",
        "--out",
        run.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch",
        "4",
        "--train-samples",
        "8",
        "--test-samples",
        "4",
        "--quiet",
    ]);
    assert!(train.status.success(), "{}", stderr(&train));
    assert_eq!(device_lines(&train), [line], "{}", stderr(&train));
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("\ndevice = \"auto\"\n"), "{config}");
    assert!(
        config.contains(&format!("# device used: {backend}")),
        "{config}"
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let epoch: serde_json::Value = serde_json::from_str(metrics.trim()).unwrap();
    assert_eq!(epoch["backend"], backend, "{epoch}");

    let checkpoint = run.join("last.safetensors");
    let commands: [&[&str]; 2] = [
        &[
            "bench", "--spec", spec, "--batch", "1", "--steps", "1", "--json",
        ],
        &[
            "eval",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--test-samples",
            "4",
            "--json",
        ],
    ];
    for args in commands {
        let output = revsnn(args);
        assert_eq!(json(&output)["backend"], backend, "{args:?}");
        assert_eq!(
            device_lines(&output),
            [line],
            "{args:?}: {}",
            stderr(&output)
        );
    }
    // The oracle's commands stay on the CPU, and say nothing about it.
    let commands: [&[&str]; 2] = [
        &["memory", "--spec", spec, "--batch", "1", "--json"],
        &["verify", "--spec", spec, "--fd-samples", "2", "--json"],
    ];
    for args in commands {
        let output = revsnn(args);
        assert_eq!(json(&output)["backend"], "cpu", "{args:?}");
        assert!(
            device_lines(&output).is_empty(),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}
