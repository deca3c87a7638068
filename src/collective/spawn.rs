//! The launcher of one machine (`revsnn train --gpus N`): N processes, one per GPU, with the
//! environment torchrun would give them (docs/distributed.md §6).

use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, INTERRUPTED_EXIT_CODE, Result};

/// How long the other ranks may go on after one failed, to end on their own and say why in
/// their own output, before they are killed.
pub const GRACE_PERIOD: Duration = Duration::from_secs(5);

/// How often the launcher looks at its children.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Runs `count` processes, `command(r)` for rank `r`, with `RANK` and `LOCAL_RANK` set to `r`,
/// `WORLD_SIZE` to `count`, and `MASTER_ADDR:MASTER_PORT` to a free port on 127.0.0.1, whose
/// listener rank 0 inherits on Unix (docs/distributed.md §6.3); they share this process's standard
/// output and error unless `command` redirects them. Waits for all of them. When one fails (a
/// non-zero exit or a signal) the others get [`GRACE_PERIOD`] and are then killed, and the
/// error names the first rank that failed; a first rank that exited as Ctrl-C stops one
/// ([`INTERRUPTED_EXIT_CODE`]) is [`Error::RanksInterrupted`].
pub fn run_local_ranks(count: usize, command: impl Fn(usize) -> Command) -> Result<()> {
    run_ranks(count, command, GRACE_PERIOD)
}

/// [`run_local_ranks`] with the grace period `grace`.
fn run_ranks(count: usize, command: impl Fn(usize) -> Command, grace: Duration) -> Result<()> {
    if count == 0 {
        return Err(Error::Usage(
            "a run needs at least one rank: pass --gpus 1 or more".into(),
        ));
    }
    let port = RendezvousPort::bind()?;
    let mut children: Vec<Child> = Vec::with_capacity(count);
    for rank in 0..count {
        let mut rank_command = command(rank);
        rank_command
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", count.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.number.to_string())
            .env_remove("TORCHELASTIC_USE_AGENT_STORE");
        if rank == 0 {
            port.hand_over(&mut rank_command);
        }
        match rank_command.spawn() {
            Ok(child) => children.push(child),
            Err(error) => {
                stop(&mut children);
                return Err(Error::RankNotStarted {
                    rank,
                    detail: error.to_string(),
                });
            }
        }
    }
    let outcome = supervise(children, grace);
    drop(port);
    outcome
}

/// A free port of 127.0.0.1 for the ranks to meet at. On Unix the launcher binds it and keeps
/// the listener open until the ranks end, and rank 0 inherits it ([`RendezvousPort::hand_over`]):
/// no other process can take the port between its choice and the rendezvous (rank 0 could not
/// bind it either). Elsewhere the port is released at once and rank 0 binds it a moment later.
struct RendezvousPort {
    number: u16,
    #[cfg(unix)]
    listener: TcpListener,
}

impl RendezvousPort {
    fn bind() -> Result<Self> {
        let bound = TcpListener::bind("127.0.0.1:0").and_then(|listener| {
            let number = listener.local_addr()?.port();
            Ok(RendezvousPort::new(listener, number))
        });
        bound.map_err(|error| {
            Error::Rendezvous(format!(
                "no free port on 127.0.0.1 for the ranks to meet at: {error}"
            ))
        })
    }

    #[cfg(unix)]
    fn new(listener: TcpListener, number: u16) -> Self {
        RendezvousPort { number, listener }
    }

    #[cfg(not(unix))]
    fn new(_listener: TcpListener, number: u16) -> Self {
        RendezvousPort { number }
    }

    /// Lets the process of `command` keep the listener open across `exec` and names it in
    /// `REVSNN_RENDEZVOUS_FD`, where the rendezvous takes it over instead of binding the port.
    #[cfg(unix)]
    fn hand_over(&self, command: &mut Command) {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;

        use super::rendezvous::INHERITED_LISTENER;

        let fd = self.listener.as_raw_fd();
        command.env(INHERITED_LISTENER, fd.to_string());
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe functions may be called; it calls fcntl only, to clear close-on-exec
        // on a descriptor the child inherited open.
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    #[cfg(not(unix))]
    fn hand_over(&self, _command: &mut Command) {}
}

/// Waits for every child; after the first failure, waits `grace` more, then kills the rest.
fn supervise(children: Vec<Child>, grace: Duration) -> Result<()> {
    let mut running: Vec<Option<Child>> = children.into_iter().map(Some).collect();
    let mut first_failure: Option<(usize, Failure, Instant)> = None;
    loop {
        for (rank, failure) in take_ended(&mut running) {
            if let (Some(ended), None) = (failure, &first_failure) {
                first_failure = Some((rank, ended, Instant::now()));
            }
        }
        if running.iter().all(Option::is_none) {
            break;
        }
        if first_failure
            .as_ref()
            .is_some_and(|(_, _, failed_at)| failed_at.elapsed() >= grace)
        {
            running
                .iter_mut()
                .filter_map(Option::take)
                .for_each(|mut child| kill_and_reap(&mut child));
        }
        thread::sleep(POLL_INTERVAL);
    }
    match first_failure {
        None => Ok(()),
        Some((_, Failure::Interrupted, _)) => Err(Error::RanksInterrupted),
        Some((rank, Failure::Ended(ended), _)) => Err(Error::RankFailed { rank, ended }),
    }
}

/// How a rank's process failed.
enum Failure {
    /// It exited with [`INTERRUPTED_EXIT_CODE`]: Ctrl-C stopped it, and it said so.
    Interrupted,
    /// Otherwise: how, e.g. "exited with status 3".
    Ended(String),
}

/// Takes the children that have ended out of `running`: the rank of each and, when it failed,
/// how.
fn take_ended(running: &mut [Option<Child>]) -> Vec<(usize, Option<Failure>)> {
    let mut ended = Vec::new();
    for (rank, slot) in running.iter_mut().enumerate() {
        let Some(child) = slot else { continue };
        let failure = match child.try_wait() {
            Ok(None) => continue,
            Ok(Some(status)) if status.success() => None,
            Ok(Some(status)) if status.code() == Some(INTERRUPTED_EXIT_CODE.into()) => {
                Some(Failure::Interrupted)
            }
            Ok(Some(status)) => Some(Failure::Ended(how_it_ended(status))),
            Err(error) => {
                kill_and_reap(child);
                let how = format!("could not be waited for ({error}) and was killed");
                Some(Failure::Ended(how))
            }
        };
        *slot = None;
        ended.push((rank, failure));
    }
    ended
}

/// Kills the children started so far and waits for them.
fn stop(children: &mut [Child]) {
    children.iter_mut().for_each(kill_and_reap);
}

fn kill_and_reap(child: &mut Child) {
    // Killing fails only for a child that already exited; waiting reaps it either way.
    let _ = child.kill();
    let _ = child.wait();
}

/// "exited with status 3", or how a process killed by a signal ended.
fn how_it_ended(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => format!("ended without an exit status ({status})"),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::{Path, PathBuf};

    use super::*;

    /// The grace period of the tests.
    const GRACE: Duration = Duration::from_millis(200);

    /// `sh -c script`; the script of rank `r` is `scripts[r]`.
    fn shells(scripts: &'static [&'static str]) -> impl Fn(usize) -> Command {
        |rank| {
            let mut command = Command::new("sh");
            command.args(["-c", scripts[rank]]);
            command
        }
    }

    /// `sh -c script(file)` for each rank, where `file` is the rank's own file in `folder`
    /// ([`written`]).
    fn shells_writing<S: Fn(&Path) -> String>(
        folder: &Path,
        script: S,
    ) -> impl Fn(usize) -> Command + use<S> {
        let folder = folder.to_path_buf();
        move |rank| {
            let mut command = Command::new("sh");
            command.args(["-c", &script(&rank_file(&folder, rank))]);
            command
        }
    }

    fn rank_file(folder: &Path, rank: usize) -> PathBuf {
        folder.join(format!("rank{rank}"))
    }

    /// What rank `rank` of [`shells_writing`] wrote.
    fn written(folder: &Path, rank: usize) -> std::io::Result<String> {
        fs::read_to_string(rank_file(folder, rank))
    }

    #[test]
    fn ranks_that_all_succeed_are_ok() {
        assert!(run_ranks(3, shells(&["true", "exit 0", "true"]), GRACE).is_ok());
    }

    #[test]
    fn each_rank_sees_torchruns_environment() {
        let folder = tempfile::tempdir().unwrap();
        let command = shells_writing(folder.path(), |file| {
            format!(
                "echo \"$RANK $LOCAL_RANK $WORLD_SIZE $MASTER_ADDR $MASTER_PORT\" > '{}'",
                file.display()
            )
        });
        run_ranks(2, command, GRACE).unwrap();
        let seen: Vec<Vec<String>> = (0..2)
            .map(|rank| {
                let text = written(folder.path(), rank).unwrap();
                text.split_whitespace().map(String::from).collect()
            })
            .collect();
        for (rank, words) in seen.iter().enumerate() {
            assert_eq!(
                words[..4],
                [&rank.to_string(), &rank.to_string(), "2", "127.0.0.1"]
            );
            assert!(words[4].parse::<u16>().unwrap() > 0);
        }
        assert_eq!(seen[0][4], seen[1][4], "both ranks meet at one port");
    }

    #[test]
    fn a_failed_rank_is_named_and_a_rank_that_sleeps_is_killed() {
        let start = Instant::now();
        let scripts = &["exec sleep 60", "exit 3", "true"];
        let error = run_ranks(3, shells(scripts), GRACE).unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(
            error.to_string(),
            "rank 1 exited with status 3; the other ranks were stopped; its own output above \
             says why"
        );
    }

    #[test]
    fn ranks_that_ctrl_c_stopped_are_an_interruption() {
        let error = run_ranks(2, shells(&["exit 130", "exit 130"]), GRACE).unwrap_err();
        assert!(matches!(error, Error::RanksInterrupted), "{error}");
        assert_eq!(error.exit_code(), INTERRUPTED_EXIT_CODE);
    }

    #[test]
    fn a_rank_killed_by_a_signal_is_a_failure() {
        let error = run_ranks(2, shells(&["true", "kill -9 $$"]), GRACE).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("rank 1 ended without an exit status"),
            "{message}"
        );
    }

    #[test]
    fn a_program_that_cannot_start_is_named() {
        let command = |rank: usize| match rank {
            0 => {
                let mut command = Command::new("sh");
                command.args(["-c", "exec sleep 60"]);
                command
            }
            _ => Command::new("/nonexistent/revsnn"),
        };
        let error = run_ranks(2, command, GRACE).unwrap_err();
        assert!(
            matches!(error, Error::RankNotStarted { rank: 1, .. }),
            "{error}"
        );
    }

    #[test]
    fn no_rank_is_refused() {
        assert!(run_ranks(0, shells(&[]), GRACE).is_err());
    }

    /// Rank 0 has the launcher's listener open under the descriptor that [`INHERITED_LISTENER`]
    /// names (`readlink` shows a socket); rank 1 has no such variable.
    #[cfg(target_os = "linux")]
    #[test]
    fn rank_0_alone_inherits_the_listener() {
        use crate::collective::rendezvous::INHERITED_LISTENER;

        let folder = tempfile::tempdir().unwrap();
        let command = shells_writing(folder.path(), |file| {
            format!(
                "fd=${INHERITED_LISTENER}; [ -z \"$fd\" ] || readlink /proc/$$/fd/$fd > '{0}'; \
                 touch '{0}'",
                file.display()
            )
        });
        run_ranks(2, command, GRACE).unwrap();
        let named = |rank| written(folder.path(), rank);
        assert!(named(0).unwrap().starts_with("socket:["), "{:?}", named(0));
        assert_eq!(named(1).unwrap(), "");
    }

    #[test]
    fn no_other_process_can_take_the_port_before_rank_0_listens() {
        let folder = tempfile::tempdir().unwrap();
        let command = shells_writing(folder.path(), |file| {
            format!(
                "echo $MASTER_PORT > '{0}.part' && mv '{0}.part' '{0}' && sleep 2",
                file.display()
            )
        });
        let launcher = thread::spawn(move || run_ranks(1, command, GRACE));
        let deadline = Instant::now() + Duration::from_secs(20);
        let port: u16 = loop {
            if let Ok(text) = written(folder.path(), 0) {
                break text.trim().parse().unwrap();
            }
            assert!(Instant::now() < deadline, "rank 0 never started");
            thread::sleep(Duration::from_millis(10));
        };
        let taken = TcpListener::bind(("127.0.0.1", port));
        assert!(taken.is_err(), "another process bound port {port}");
        launcher.join().unwrap().unwrap();
    }
}
