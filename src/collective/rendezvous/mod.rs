//! The rendezvous of a multi-process run (docs/distributed.md §6): before the first step the
//! processes meet at rank 0's `MASTER_ADDR:MASTER_PORT`, rank 0 checks that they were started
//! alike, and hands every one of them the NCCL unique id.
//!
//! Every rank other than 0 connects (retrying until the timeout, since rank 0 may start later)
//! and sends its rank, world size and settings ([`wire`]). Rank 0 waits until it has heard from
//! every other rank or the timeout passes, judges ([`agreement`]), and answers every rank with
//! the id or with the error that they all report.

mod agreement;
mod wire;

use std::io;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

use self::agreement::{Gathering, first_disagreement};
use self::wire::{Answer, Hello, read_answer, read_hello, write_answer, write_hello};
use super::launch::ProcessRank;
use crate::error::{Error, Result};

/// How long rank 0 waits for a new connection's hello: a rank sends it at once.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long rank 0 sleeps between looks for a new connection, and another rank between
/// attempts to reach rank 0.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How much longer than the timeout a connected rank waits for rank 0's answer: rank 0 began
/// its own wait before the rank connected, and judging and making the id take it little time.
const ANSWER_SLACK: Duration = Duration::from_secs(5);

/// Meets the other processes of the run and returns the NCCL unique id, the same bytes on
/// every rank; `make_id` is called on rank 0 only, once the ranks agree. `settings` is the
/// run's settings as text: every rank's must equal rank 0's line for line. Rank 0 waits at most
/// `timeout` for the others; another rank waits at most `timeout` to reach rank 0 and then
/// `timeout` (and a few seconds) for its answer. A run of one process touches no network.
pub fn rendezvous(
    me: &ProcessRank,
    settings: &str,
    make_id: impl FnOnce() -> Result<Vec<u8>>,
    timeout: Duration,
) -> Result<Vec<u8>> {
    if me.rank >= me.world_size {
        return Err(Error::Launch {
            variable: "RANK",
            problem: format!(
                "is {} but WORLD_SIZE is {}: give each process its own rank below WORLD_SIZE",
                me.rank, me.world_size
            ),
        });
    }
    if me.world_size == 1 {
        return make_id();
    }
    let Some((host, port)) = &me.master else {
        return Err(Error::Launch {
            variable: "MASTER_ADDR",
            problem: format!(
                "is not set but WORLD_SIZE is {}: set MASTER_ADDR and MASTER_PORT to rank 0's \
                 address and a free port on every process",
                me.world_size
            ),
        });
    };
    let endpoint = Endpoint { host, port: *port };
    match me.rank {
        0 => lead(me, &endpoint, settings, make_id, timeout),
        _ => join(me, &endpoint, settings, timeout),
    }
}

/// The variable in which `revsnn train --gpus N` names the descriptor of the listener it bound
/// for rank 0 (docs/distributed.md §6.3).
#[cfg(unix)]
pub(super) const INHERITED_LISTENER: &str = "REVSNN_RENDEZVOUS_FD";

/// The listener that this machine's launcher bound on `port` and left open for this process,
/// named in [`INHERITED_LISTENER`]; `None` where there is none, or the descriptor named is not a
/// socket bound to `port` (then it is left alone).
#[cfg(unix)]
fn inherited_listener(port: u16) -> Option<TcpListener> {
    use std::mem::ManuallyDrop;
    use std::os::fd::{FromRawFd, RawFd};

    let fd: RawFd = std::env::var(INHERITED_LISTENER).ok()?.parse().ok()?;
    // SAFETY: `ManuallyDrop` never closes the descriptor, and the only call made on it before
    // it is known to be the launcher's listener, `getsockname`, fails harmlessly on a descriptor
    // that is closed or is not a socket.
    let named = ManuallyDrop::new(unsafe { TcpListener::from_raw_fd(fd) });
    if !named
        .local_addr()
        .is_ok_and(|address| address.port() == port)
    {
        return None;
    }
    // The launcher cleared close-on-exec on this descriptor; a clone has it set again, so that
    // processes this one starts do not hold the port.
    let listener = named.try_clone().ok();
    drop(ManuallyDrop::into_inner(named));
    listener
}

/// Elsewhere rank 0 binds the port itself.
#[cfg(not(unix))]
fn inherited_listener(_port: u16) -> Option<TcpListener> {
    None
}

/// Rank 0's `MASTER_ADDR` and `MASTER_PORT`.
struct Endpoint<'a> {
    host: &'a str,
    port: u16,
}

impl std::fmt::Display for Endpoint<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Rank 0: listens, gathers the other ranks' hellos, judges, answers every rank.
fn lead(
    me: &ProcessRank,
    endpoint: &Endpoint,
    settings: &str,
    make_id: impl FnOnce() -> Result<Vec<u8>>,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let listener = match inherited_listener(endpoint.port) {
        Some(listener) => Ok(listener),
        None => TcpListener::bind((endpoint.host, endpoint.port)),
    };
    let listener = listener
        .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
        .map_err(|error| {
            Error::Rendezvous(format!(
                "rank 0 cannot listen on {endpoint} (from MASTER_ADDR and MASTER_PORT): \
                 {error}; MASTER_ADDR must be an address of rank 0's machine and the port a \
                 free one, and only one process may be started as rank 0"
            ))
        })?;
    let (mut peers, strays) = gather(&listener, me.world_size - 1, deadline)?;
    drop(listener);
    let verdict = first_disagreement(&Gathering {
        world_size: me.world_size,
        settings,
        hellos: peers.iter().map(|(_, hello)| hello).collect(),
        strays,
        endpoint: endpoint.to_string(),
        timeout,
    });
    let outcome = match verdict {
        Some(text) => Err(Error::Rendezvous(text)),
        None => make_id(),
    };
    let answer = match &outcome {
        Ok(id) => Answer::Id(id.clone()),
        Err(Error::Rendezvous(text)) => Answer::Refused(text.clone()),
        Err(error) => Answer::Refused(format!("rank 0 could not make the NCCL unique id: {error}")),
    };
    let undelivered = answer_all(&mut peers, &answer);
    match (outcome, undelivered) {
        (Ok(_), Some(rank)) => Err(Error::Rendezvous(format!(
            "rank {rank} left before rank 0 could hand it the NCCL unique id; its own output says \
             why"
        ))),
        (outcome, _) => outcome,
    }
}

/// Accepts connections until `expected` revsnn ranks have said hello or `deadline` passes;
/// returns them and the number of connections refused as not being a revsnn rank.
fn gather(
    listener: &TcpListener,
    expected: usize,
    deadline: Instant,
) -> Result<(Vec<(TcpStream, Hello)>, usize)> {
    let (mut peers, mut strays) = (Vec::new(), 0);
    while peers.len() < expected && Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => match receive_hello(stream, deadline) {
                Ok(peer) => peers.push(peer),
                Err(_) => strays += 1,
            },
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL_INTERVAL),
            Err(error) if error.kind() == io::ErrorKind::ConnectionAborted => strays += 1,
            Err(error) => {
                return Err(Error::Rendezvous(format!(
                    "rank 0 stopped accepting the other ranks: {error}"
                )));
            }
        }
    }
    Ok((peers, strays))
}

/// The hello on a new connection, read within [`HELLO_TIMEOUT`] and before `deadline`.
fn receive_hello(mut stream: TcpStream, deadline: Instant) -> io::Result<(TcpStream, Hello)> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(time_left(deadline).min(HELLO_TIMEOUT)))?;
    stream.set_write_timeout(Some(HELLO_TIMEOUT))?;
    let hello = read_hello(&mut stream)?;
    Ok((stream, hello))
}

/// Sends `answer` to every peer; the first rank it could not reach, if any.
fn answer_all(peers: &mut [(TcpStream, Hello)], answer: &Answer) -> Option<usize> {
    peers
        .iter_mut()
        .filter_map(|(stream, hello)| write_answer(stream, answer).err().map(|_| hello.rank))
        .min()
}

/// A rank other than 0: reaches rank 0, says hello, waits for the answer.
fn join(
    me: &ProcessRank,
    endpoint: &Endpoint,
    settings: &str,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let mut stream = connect(me.rank, endpoint, Instant::now() + timeout, timeout)?;
    let answer_deadline = Instant::now() + timeout + ANSWER_SLACK;
    let hello = Hello {
        rank: me.rank,
        world_size: me.world_size,
        settings: settings.into(),
    };
    let lost = |error: io::Error| {
        Error::Rendezvous(format!(
            "rank {} reached {endpoint} but got no answer from rank 0 within {:?}: {error}; rank \
             0 may have stopped or hung (its own output says why), or another program listens \
             on MASTER_PORT",
            me.rank,
            timeout + ANSWER_SLACK
        ))
    };
    stream
        .set_write_timeout(Some(time_left(answer_deadline)))
        .map_err(lost)?;
    write_hello(&mut stream, &hello).map_err(lost)?;
    stream
        .set_read_timeout(Some(time_left(answer_deadline)))
        .map_err(lost)?;
    match read_answer(&mut stream).map_err(lost)? {
        Answer::Id(id) => Ok(id),
        Answer::Refused(text) => Err(Error::Rendezvous(text)),
    }
}

/// A connection to rank 0, retried until `deadline`.
fn connect(
    rank: usize,
    endpoint: &Endpoint,
    deadline: Instant,
    timeout: Duration,
) -> Result<TcpStream> {
    let mut last_error = None;
    while Instant::now() < deadline {
        let addresses = (endpoint.host, endpoint.port).to_socket_addrs();
        match addresses {
            Ok(addresses) => {
                for address in addresses {
                    match TcpStream::connect_timeout(&address, time_left(deadline)) {
                        Ok(stream) => return Ok(stream),
                        Err(error) => last_error = Some(error),
                    }
                }
            }
            Err(error) => last_error = Some(error),
        }
        thread::sleep(POLL_INTERVAL.min(time_left(deadline)));
    }
    let why = last_error.map_or("no attempt finished".into(), |error| error.to_string());
    Err(Error::Rendezvous(format!(
        "rank {rank} could not reach rank 0 at {endpoint} (from MASTER_ADDR and MASTER_PORT) \
         within {timeout:?} (last attempt: {why}); start rank 0, and check that MASTER_ADDR \
         and MASTER_PORT are the same on every rank and that the port is reachable from here"
    )))
}

/// The time until `deadline`, at least a millisecond (a socket timeout cannot be zero).
fn time_left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests;
