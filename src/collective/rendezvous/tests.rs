//! Ranks as threads of the test, meeting on 127.0.0.1 at a free port.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use super::rendezvous;
use crate::collective::launch::ProcessRank;
use crate::error::{Error, Result};

/// A timeout no agreeing test comes near.
const GENEROUS: Duration = Duration::from_secs(20);

/// The timeout of the tests in which a rank never arrives.
const SHORT: Duration = Duration::from_secs(1);

const SETTINGS: &str =
    "[model]\nname = \"revsresnet37\"\n\n[train]\nepochs = 3\nbatch = 64\nlr = 0.1\nseed = 0\n";

/// The NCCL unique id rank 0 makes.
fn id() -> Vec<u8> {
    (0..128u8).map(|i| i.wrapping_mul(37)).collect()
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn place(rank: usize, world_size: usize, port: u16) -> ProcessRank {
    ProcessRank {
        rank,
        world_size,
        local_rank: rank,
        master: Some(("127.0.0.1".into(), port)),
    }
}

/// Runs the rendezvous of each `(place, settings)` on a thread of its own, rank 0 after a
/// delay (so the others must retry), and returns each one's outcome, in the order given.
fn meet(ranks: Vec<(ProcessRank, String)>, timeout: Duration) -> Vec<Result<Vec<u8>>> {
    let handles: Vec<_> = ranks
        .into_iter()
        .map(|(me, settings)| {
            thread::spawn(move || {
                if me.rank == 0 {
                    thread::sleep(Duration::from_millis(100));
                }
                let make_id = || match me.rank {
                    0 => Ok(id()),
                    rank => Err(Error::Usage(format!("rank {rank} was asked for the id"))),
                };
                rendezvous(&me, &settings, make_id, timeout)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// The message of a rendezvous error; anything else fails the test.
fn refusal(outcome: &Result<Vec<u8>>) -> String {
    match outcome {
        Err(Error::Rendezvous(text)) => text.clone(),
        other => panic!("expected a rendezvous error, got {other:?}"),
    }
}

/// The outcomes of `world_size` ranks started alike on a fresh port, with `settings`.
fn alike(world_size: usize) -> Vec<(ProcessRank, String)> {
    let port = free_port();
    (0..world_size)
        .map(|rank| (place(rank, world_size, port), SETTINGS.to_string()))
        .collect()
}

#[test]
fn three_ranks_that_agree_get_the_same_id() {
    for outcome in meet(alike(3), GENEROUS) {
        assert_eq!(outcome.unwrap(), id());
    }
}

#[test]
fn one_process_makes_the_id_without_a_network() {
    let me = ProcessRank {
        rank: 0,
        world_size: 1,
        local_rank: 0,
        master: None,
    };
    assert_eq!(rendezvous(&me, "", || Ok(id()), SHORT).unwrap(), id());
}

#[test]
fn different_settings_fail_every_rank_naming_the_line() {
    let mut ranks = alike(3);
    ranks[2].1 = SETTINGS.replace("lr = 0.1", "lr = 0.2");
    let expected = "rank 2 was started with different settings than rank 0: line 7 is \
                    `lr = 0.2` there and `lr = 0.1` on rank 0; start every rank with the same \
                    command";
    for outcome in meet(ranks, GENEROUS) {
        assert_eq!(refusal(&outcome), expected);
    }
}

#[test]
fn a_rank_that_never_starts_fails_the_others_within_the_timeout() {
    let mut ranks = alike(3);
    ranks.pop();
    let start = Instant::now();
    let outcomes = meet(ranks, SHORT);
    let elapsed = start.elapsed();
    assert!(elapsed >= SHORT && elapsed < SHORT * 5, "took {elapsed:?}");
    for outcome in &outcomes {
        let message = refusal(outcome);
        assert!(
            message.starts_with("ranks [2] did not reach rank 0"),
            "{message}"
        );
    }
}

#[test]
fn two_processes_claiming_one_rank_fail_every_rank() {
    let mut ranks = alike(3);
    ranks[2].0.rank = 1;
    for outcome in meet(ranks, GENEROUS) {
        let message = refusal(&outcome);
        assert!(
            message.starts_with("2 processes were started as rank 1;"),
            "{message}"
        );
    }
}

#[test]
fn a_rank_with_another_world_size_fails_every_rank() {
    let mut ranks = alike(3);
    ranks[2].0.world_size = 4;
    for outcome in meet(ranks, GENEROUS) {
        let message = refusal(&outcome);
        assert!(
            message.starts_with("rank 2 was started with WORLD_SIZE 4 and rank 0 with 3"),
            "{message}"
        );
    }
}

#[test]
fn a_stray_connection_is_refused_and_the_ranks_still_meet() {
    let ranks = alike(2);
    let port = ranks[0].0.master.clone().unwrap().1;
    let (leader, follower) = (ranks[0].clone(), ranks[1].clone());
    let rank_0 = thread::spawn(move || rendezvous(&leader.0, &leader.1, || Ok(id()), GENEROUS));
    let mut stray = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => break stream,
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    };
    stray
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    drop(stray);
    let rank_1 = rendezvous(&follower.0, &follower.1, || Ok(Vec::new()), GENEROUS);
    assert_eq!(rank_1.unwrap(), id());
    assert_eq!(rank_0.join().unwrap().unwrap(), id());
}

#[test]
fn an_id_that_rank_0_cannot_make_fails_every_rank() {
    let ranks = alike(2);
    let (leader, follower) = (ranks[0].clone(), ranks[1].clone());
    let no_id = || Err(Error::Usage("no NCCL library".into()));
    let rank_0 = thread::spawn(move || rendezvous(&leader.0, &leader.1, no_id, GENEROUS));
    let rank_1 = rendezvous(&follower.0, &follower.1, || Ok(Vec::new()), GENEROUS);
    assert!(matches!(rank_0.join().unwrap(), Err(Error::Usage(_))));
    let message = refusal(&rank_1);
    assert_eq!(
        message,
        "rank 0 could not make the NCCL unique id: no NCCL library"
    );
}

#[test]
fn a_rank_without_rank_0_gives_up_at_the_timeout() {
    let ranks = alike(2);
    let me = &ranks[1].0;
    let timeout = Duration::from_millis(300);
    let message = refusal(&rendezvous(me, SETTINGS, || Ok(Vec::new()), timeout));
    assert!(
        message.starts_with("rank 1 could not reach rank 0 at"),
        "{message}"
    );
}

#[test]
fn another_program_on_the_port_is_not_taken_for_rank_0() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let imposter = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").unwrap();
    });
    let me = place(1, 2, port);
    let message = refusal(&rendezvous(&me, SETTINGS, || Ok(Vec::new()), SHORT));
    assert!(message.contains("got no answer from rank 0"), "{message}");
    imposter.join().unwrap();
}

#[test]
fn rank_0_on_a_port_in_use_says_so() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let me = place(0, 2, listener.local_addr().unwrap().port());
    let message = refusal(&rendezvous(&me, SETTINGS, || Ok(id()), SHORT));
    assert!(message.starts_with("rank 0 cannot listen on"), "{message}");
}
