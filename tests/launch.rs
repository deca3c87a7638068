//! The launch of a multi-process run with real processes (docs/distributed.md §6): the local
//! launcher starts copies of this test binary, each reads its place from torchrun's
//! environment and meets the others at the rendezvous over TCP.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use revsnn::collective::{ProcessRank, rendezvous, run_local_ranks};

/// Where each rank writes the id it received, `rank<r>` in this folder.
const OUT_VARIABLE: &str = "REVSNN_TEST_LAUNCH_OUT";

/// The rank whose settings differ from the others', if any.
const ODD_VARIABLE: &str = "REVSNN_TEST_ODD_RANK";

/// The exit status of a rank whose rendezvous failed.
const FAILED_STATUS: i32 = 3;

/// The NCCL unique id rank 0 makes.
fn id() -> Vec<u8> {
    (0..128u8).map(|i| i ^ 0xa5).collect()
}

/// This test binary, running only [`rank_process`], with the output folder `out` and, with
/// `odd_rank`, that rank's settings changed.
fn rank_command(out: &Path, odd_rank: Option<usize>) -> impl Fn(usize) -> Command {
    let out = out.to_path_buf();
    move |_rank| {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--ignored", "--exact", "rank_process", "--test-threads=1"])
            .env(OUT_VARIABLE, &out)
            .stdout(Stdio::null());
        if let Some(odd) = odd_rank {
            command.env(ODD_VARIABLE, odd.to_string());
        }
        command
    }
}

/// What rank `rank` wrote to `out`.
fn written(out: &Path, rank: usize) -> String {
    std::fs::read_to_string(out.join(format!("rank{rank}"))).unwrap()
}

#[test]
#[ignore = "not a test of its own: one rank process, which the other tests of this file start with torchrun's environment (`cargo test --test launch` runs it that way)"]
fn rank_process() {
    let me = ProcessRank::from_env().unwrap().unwrap();
    let odd = std::env::var(ODD_VARIABLE)
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    let settings = if odd == Some(me.rank) {
        "[train]\nlr = 0.2\n"
    } else {
        "[train]\nlr = 0.1\n"
    };
    let outcome = rendezvous(&me, settings, || Ok(id()), Duration::from_secs(30));
    let text = match &outcome {
        Ok(id) => format!("{id:?}"),
        Err(error) => error.to_string(),
    };
    let out = PathBuf::from(std::env::var(OUT_VARIABLE).unwrap());
    std::fs::write(out.join(format!("rank{}", me.rank)), text).unwrap();
    if outcome.is_err() {
        // The launcher's failure, without a panic's backtrace in the test's output.
        std::process::exit(FAILED_STATUS);
    }
}

#[test]
fn three_processes_meet_and_receive_the_same_id() {
    let out = tempfile::tempdir().unwrap();
    run_local_ranks(3, rank_command(out.path(), None)).unwrap();
    for rank in 0..3 {
        assert_eq!(written(out.path(), rank), format!("{:?}", id()));
    }
}

#[test]
fn processes_started_differently_all_stop_with_the_same_error() {
    let out = tempfile::tempdir().unwrap();
    let error = run_local_ranks(3, rank_command(out.path(), Some(1))).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("exited with status 3"), "{message}");
    let expected = "rendezvous of the data-parallel processes: rank 1 was started with different \
                    settings than rank 0: line 2 is `lr = 0.2` there and `lr = 0.1` on rank 0; \
                    start every rank with the same command";
    for rank in 0..3 {
        assert_eq!(written(out.path(), rank), expected);
    }
}
