//! `revsnn train` stopped from outside and continued with `--resume`: killed with SIGKILL at many
//! moments, saves included, and a disk that fills up while the metrics or the checkpoint are
//! written (a child process with a file-size limit, `RLIMIT_FSIZE`). Either way the run folder
//! keeps a complete checkpoint, and the resumed run ends with the bytes of an uninterrupted one.
#![cfg(unix)]

mod common;

use common::{failed, ok, revsnn_command, scratch, small_train_args, wait_for_file};

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use revsnn_reference::testing::SplitMix64;
use serde_json::Value;

/// Epochs of every run here.
const EPOCHS: &str = "3";

/// The files an uninterrupted and a resumed run must have byte for byte.
const CHECKPOINT: [&str; 4] = [
    "last.safetensors",
    "last.optimizer.safetensors",
    "best.safetensors",
    "best.json",
];

fn spec_file(dir: &Path, planes: &str) -> String {
    let path = dir.join(format!("spec-{}.json", planes.replace(',', "-")));
    let text = format!(
        r#"{{"arch": "revsresnet", "layers": [1,1,1,1], "planes": [{planes}],
            "num_classes": 10, "time_steps": 2, "in_channels": 3, "img_size": 16}}"#
    );
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `revsnn train` of the spec `spec` into `out` ([`small_train_args`], one thread, [`EPOCHS`]
/// epochs; `--resume` when `resume`), not yet started.
fn train(spec: &str, out: &Path, resume: bool) -> Command {
    let mut command = revsnn_command(&small_train_args(
        spec,
        out,
        &["--epochs", EPOCHS, "--threads", "1"],
    ));
    if resume {
        command.arg("--resume");
    }
    command
}

fn output(mut command: Command) -> Output {
    command.output().expect("the binary runs")
}

fn bytes(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The metrics of `dir` without the timing and memory fields.
fn metrics(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let mut value: Value = serde_json::from_str(line).unwrap();
            let object = value.as_object_mut().unwrap();
            for key in [
                "images_per_second",
                "epoch_seconds",
                "peak_memory_bytes",
                "loader_images_per_second_per_worker",
                "loader_wait_seconds",
            ] {
                object.remove(key);
            }
            value
        })
        .collect()
}

/// Asserts that the run in `dir` ended with the checkpoint and metrics of the run in `straight`.
fn assert_same_run(straight: &Path, dir: &Path, what: &str) {
    for file in CHECKPOINT {
        assert!(
            bytes(straight.join(file)) == bytes(dir.join(file)),
            "{what}: {file} differs from the uninterrupted run's"
        );
    }
    assert_eq!(metrics(straight), metrics(dir), "{what}: metrics");
    let hidden: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "{what}: files left behind: {hidden:?}");
}

/// The hidden file of `dir` whose name starts with `prefix`: a temporary or a staged file of a
/// save under way.
fn hidden_file(dir: &Path, prefix: &str) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
    })
}

/// When to kill a run.
#[derive(Clone, Copy, Debug)]
enum Moment {
    /// This long after the start.
    After(Duration),
    /// As soon as a hidden file starting with this appears: while that file of a checkpoint is
    /// being written.
    Writing(&'static str),
}

/// Starts `command` and kills it with SIGKILL at `moment` (`dir` is its run folder). Returns
/// whether it was killed rather than finished first.
fn kill(mut command: Command, dir: &Path, moment: Moment) -> bool {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary runs");
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let due = match moment {
            Moment::After(delay) => started.elapsed() >= delay,
            Moment::Writing(prefix) => hidden_file(dir, prefix),
        };
        if due {
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
    }
}

/// The files of an epoch's save, in the order it writes them, as the hidden names they have
/// while being written.
const SAVE_STEPS: [&str; 6] = [
    ".metrics.jsonl",
    ".last.optimizer.safetensors",
    ".last.safetensors",
    ".best.safetensors",
    ".best.json",
    ".last.json",
];

/// Tries of one kill attempt before it counts as never killed.
const MAX_TRIES: usize = 5;

/// Resumes the run in `out` and kills it at a `moment()` each time, every invocation until one
/// finishes unkilled, at most four: the number of kills.
fn kill_until_finished(spec: &str, out: &Path, mut moment: impl FnMut() -> Moment) -> usize {
    let mut kills = 0;
    while kills < 4 && kill(train(spec, out, true), out, moment()) {
        kills += 1;
    }
    kills
}

#[test]
fn a_run_killed_at_any_moment_even_while_saving_resumes_to_the_same_bytes() {
    let dir = scratch("kill");
    let spec = spec_file(&dir, "2,4,4,4");
    let straight = dir.join("straight");
    let started = Instant::now();
    ok(output(train(&spec, &straight, false)));
    let run_time = started.elapsed();
    let mut rng = SplitMix64::new(9);
    let random = SAVE_STEPS.len()..SAVE_STEPS.len() + 3;
    for attempt in (0..SAVE_STEPS.len()).chain(random) {
        // The best weights are written only by an epoch that improves on the best.
        let conditional = SAVE_STEPS
            .get(attempt)
            .is_some_and(|s| s.starts_with(".best"));
        // A file of a save exists for a moment only: on a loaded machine the poll can miss it,
        // and the run then finishes unkilled; such a try starts again in a fresh folder.
        let mut kills = 0;
        let mut out = dir.clone();
        for try_number in 0..MAX_TRIES {
            out = dir.join(format!("killed-{attempt}-{try_number}"));
            let mut first = train(&spec, &out, false);
            first.args(["--stop-after", "1"]);
            ok(output(first));
            kills = kill_until_finished(&spec, &out, || match SAVE_STEPS.get(attempt) {
                Some(step) => Moment::Writing(step),
                // Within the first third of a whole run's time: a resumed run has two of the
                // three epochs left, so it is still running then even on a less loaded machine.
                None => Moment::After(run_time.mul_f64((rng.next_u64() % 1000) as f64 / 3000.0)),
            });
            if kills > 0 || conditional {
                break;
            }
        }
        assert!(
            kills > 0 || conditional,
            "attempt {attempt} was never killed in {MAX_TRIES} tries"
        );
        ok(output(train(&spec, &out, true)));
        assert_same_run(
            &straight,
            &out,
            &format!("attempt {attempt} ({kills} kills)"),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `command` with a file-size limit of `limit` bytes and SIGXFSZ ignored, so that writing past
/// the limit fails with EFBIG as a write to a full disk fails with ENOSPC.
fn with_file_size_limit(mut command: Command, limit: u64) -> Command {
    // SAFETY: between fork and exec the closure calls only setrlimit and signal, which are
    // async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    command
}

#[test]
fn a_full_disk_stops_training_with_a_clear_error_and_resume_continues_the_run() {
    let dir = scratch("full");
    // Planes whose checkpoint files (over 64 KiB) are larger than curves.png (about 45 KiB).
    let spec = spec_file(&dir, "4,8,8,24");
    let straight = dir.join("straight");
    ok(output(train(&spec, &straight, false)));
    // 16 KiB: the disk fills while curves.png is written, after metrics.jsonl; 56 KiB: while
    // the first file of the checkpoint is written; 124 KiB: while the weights (about 125 KiB)
    // are written, after the optimizer state (about 118 KiB) was staged.
    for (limit, file) in [
        (16 << 10, "curves.png"),
        (56 << 10, ".last.optimizer.safetensors.epoch-2"),
        (124 << 10, ".last.safetensors.epoch-2"),
    ] {
        let out = dir.join(format!("limit-{limit}"));
        let mut first = train(&spec, &out, false);
        first.args(["--stop-after", "1"]);
        ok(output(first));
        let kept: Vec<Vec<u8>> = CHECKPOINT.iter().map(|f| bytes(out.join(f))).collect();
        let stderr = failed(output(with_file_size_limit(
            train(&spec, &out, true),
            limit,
        )));
        for expected in [
            file,
            "cannot write",
            "File too large",
            "epoch 2 is not saved",
            "holds the checkpoint of epoch 1: free space (or fix the folder), then continue",
            "--resume",
        ] {
            assert!(
                stderr.contains(expected),
                "limit {limit}: {expected:?} in {stderr}"
            );
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            !hidden_file(&out, ".last.") && !hidden_file(&out, ".best."),
            "limit {limit}: staged files of the unsaved epoch are left"
        );
        for (name, before) in CHECKPOINT.iter().zip(&kept) {
            assert!(
                bytes(out.join(name)) == *before,
                "limit {limit}: {name} changed"
            );
        }
        let checkpoint = out.join("last.safetensors").display().to_string();
        ok(output({
            let mut eval =
                revsnn_command(&["eval", "--device", "cpu", "--checkpoint", &checkpoint]);
            eval.args(["--spec", &spec]);
            eval.args(["--test-samples", "16"]);
            eval
        }));
        ok(output(train(&spec, &out, true)));
        assert_same_run(&straight, &out, &format!("limit {limit}"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ctrl_c_stops_training_with_what_to_do_and_resume_continues_the_run() {
    ctrl_c_then_resume("ctrl-c", &[]);
}

/// Ranks see the request at different steps; they agree on one to stop before.
#[test]
fn ctrl_c_stops_every_rank_before_the_same_step() {
    ctrl_c_then_resume("ctrl-c-ranks", &["--ranks", "2"]);
}

/// A run of [`small_train_args`] plus `extra` (in the scratch folder `name`) gets SIGINT once it
/// has saved an epoch: it exits with 130 and says which epoch the folder holds and how to go on;
/// that command continues the run.
fn ctrl_c_then_resume(name: &str, extra: &[&str]) {
    let dir = scratch(name);
    let spec = spec_file(&dir, "4,8,8,16");
    let out = dir.join("run");
    // far more epochs than the test waits for: Ctrl-C always comes first
    let long = [&["--epochs", "500", "--threads", "1"], extra].concat();
    let mut child = revsnn_command(&small_train_args(&spec, &out, &long))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    // once the first epoch is saved, SIGINT as a terminal's Ctrl-C sends it
    wait_for_file(&mut child, &out.join("last.json"), Duration::from_secs(120));
    // SAFETY: kill only sends a signal to the child, which has not been waited for yet.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let stopped = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert_eq!(stopped.status.code(), Some(130), "{stderr}");
    let saved = metrics(&out).len();
    let expected = format!(
        " of epoch {}. {} holds the checkpoint of epoch {saved}: continue with `revsnn train \
         --out {} --resume`",
        saved + 1,
        out.display(),
        out.display()
    );
    assert!(
        stderr.contains("interrupted (Ctrl-C) before step ") && stderr.contains(&expected),
        "{expected:?} in {stderr}"
    );
    let mut resumed = revsnn_command(&small_train_args(&spec, &out, &long));
    resumed.args(["--resume", "--stop-after", "1"]);
    ok(output(resumed));
    assert_eq!(metrics(&out).len(), saved + 1);
    let _ = std::fs::remove_dir_all(&dir);
}
