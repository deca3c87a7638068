//! This process's place in a multi-process run, from torchrun's environment (docs/distributed.md
//! §6): `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT`.

use std::str::FromStr;

use crate::error::{Error, Result};

/// Where this process stands in a run of `world_size` processes, one per GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessRank {
    /// This process's index among all processes of the run, `0..world_size`.
    pub rank: usize,
    /// The number of processes of the run, on all machines together.
    pub world_size: usize,
    /// This process's index on its own machine: the GPU it uses.
    pub local_rank: usize,
    /// Rank 0's host (`MASTER_ADDR`) and the port of the rendezvous: `MASTER_PORT`, or the
    /// next port under torchrun, whose own agent holds `MASTER_PORT`. `None` only for a run
    /// of one process started without them.
    pub master: Option<(String, u16)>,
}

impl ProcessRank {
    /// This process's place, read from the environment; `None` when `WORLD_SIZE` is unset (a
    /// run of one process that no launcher started).
    pub fn from_env() -> Result<Option<ProcessRank>> {
        ProcessRank::from_vars(|name| std::env::var(name).ok())
    }

    /// This process's place, reading each variable with `get`; a variable set to the empty
    /// string counts as unset. `LOCAL_RANK` defaults to `RANK` (one machine).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<ProcessRank>> {
        let get = |name: &str| get(name).filter(|value| !value.is_empty());
        let Some(world_size) = get("WORLD_SIZE") else {
            return Ok(None);
        };
        let world_size: usize = parse("WORLD_SIZE", &world_size, WHOLE_NUMBER)?;
        if world_size == 0 {
            return Err(launch_error(
                "WORLD_SIZE",
                "is 0, but a run needs at least one process",
            ));
        }
        let rank = get("RANK").ok_or_else(|| {
            let indices = match world_size {
                1 => "0".to_string(),
                n => format!("0 to {}", n - 1),
            };
            launch_error(
                "RANK",
                format!(
                    "is not set but WORLD_SIZE is {world_size}: set RANK to this process's index, \
                     {indices} (torchrun sets it)"
                ),
            )
        })?;
        let rank = index_below("RANK", parse("RANK", &rank, WHOLE_NUMBER)?, world_size)?;
        let local_rank = match get("LOCAL_RANK") {
            Some(value) => index_below(
                "LOCAL_RANK",
                parse("LOCAL_RANK", &value, WHOLE_NUMBER)?,
                world_size,
            )?,
            None => rank,
        };
        let master = master(&get, world_size)?;
        Ok(Some(ProcessRank {
            rank,
            world_size,
            local_rank,
            master,
        }))
    }
}

/// Rank 0's host and the rendezvous's port, from `MASTER_ADDR` and `MASTER_PORT`: required
/// when there are several processes, optional (both or neither) for one.
fn master(
    get: &impl Fn(&str) -> Option<String>,
    world_size: usize,
) -> Result<Option<(String, u16)>> {
    let port = match get("MASTER_PORT") {
        Some(port) => Some(rendezvous_port(
            get,
            parse::<u16>("MASTER_PORT", &port, "a port, 1 to 65535")?,
        )?),
        None => None,
    };
    match (get("MASTER_ADDR"), port) {
        (Some(host), Some(port)) => Ok(Some((host, port))),
        (None, None) if world_size == 1 => Ok(None),
        (host, _) => {
            let missing = if host.is_none() {
                "MASTER_ADDR"
            } else {
                "MASTER_PORT"
            };
            Err(launch_error(
                missing,
                format!(
                    "is not set but WORLD_SIZE is {world_size}: the processes meet at rank 0's \
                     MASTER_ADDR:MASTER_PORT; set both on every process (torchrun sets them), or \
                     use `revsnn train --gpus N` on one machine"
                ),
            ))
        }
    }
}

/// The port of the rendezvous: `MASTER_PORT`, or the next one when torchrun's agent already
/// serves its own store on `MASTER_PORT` (it says so with `TORCHELASTIC_USE_AGENT_STORE=True`).
fn rendezvous_port(get: &impl Fn(&str) -> Option<String>, master_port: u16) -> Result<u16> {
    let agent_holds_it = get("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True");
    let port = if agent_holds_it {
        master_port.checked_add(1)
    } else {
        Some(master_port)
    };
    match port {
        Some(port) if port > 0 => Ok(port),
        _ => Err(launch_error(
            "MASTER_PORT",
            format!(
                "is {master_port}: set it to a free port, 1 to 65535 (torchrun's default is \
                 29500; under torchrun at most 65534, since torchrun's agent holds MASTER_PORT \
                 itself and revsnn meets at the next port)"
            ),
        )),
    }
}

/// `value` of the variable `name` as a number; `expected` says which numbers in the error.
fn parse<T: FromStr>(name: &'static str, value: &str, expected: &str) -> Result<T> {
    value
        .trim()
        .parse()
        .map_err(|_| launch_error(name, format!("= `{value}`: expected {expected}")))
}

/// What [`parse`] expects of a count or an index.
const WHOLE_NUMBER: &str = "a whole number, 0 or more";

/// `index`, checked to lie in `0..world_size`.
fn index_below(name: &'static str, index: usize, world_size: usize) -> Result<usize> {
    if index < world_size {
        return Ok(index);
    }
    Err(launch_error(
        name,
        format!(
            "is {index} but WORLD_SIZE is {world_size}: indices run from 0 to {}; give each \
             process its own",
            world_size - 1
        ),
    ))
}

fn launch_error(variable: &'static str, problem: impl Into<String>) -> Error {
    Error::Launch {
        variable,
        problem: problem.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ProcessRank::from_vars` over the variables `pairs`.
    fn place(pairs: &[(&str, &str)]) -> Result<Option<ProcessRank>> {
        ProcessRank::from_vars(|name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        })
    }

    /// The error message of `place(pairs)`, which must fail.
    fn failure(pairs: &[(&str, &str)]) -> String {
        match place(pairs) {
            Err(error @ Error::Launch { .. }) => error.to_string(),
            other => panic!("expected a launch error, got {other:?}"),
        }
    }

    const MASTER: [(&str, &str); 2] = [("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "29500")];

    #[test]
    fn no_world_size_is_a_single_process_run() {
        assert_eq!(place(&[]).unwrap(), None);
        assert_eq!(place(&[("RANK", "3"), ("WORLD_SIZE", "")]).unwrap(), None);
    }

    #[test]
    fn torchruns_variables_give_the_place() {
        let vars = [
            ("WORLD_SIZE", "16"),
            ("RANK", "9"),
            ("LOCAL_RANK", "1"),
            MASTER[0],
            MASTER[1],
        ];
        let expected = ProcessRank {
            rank: 9,
            world_size: 16,
            local_rank: 1,
            master: Some(("10.0.0.1".into(), 29500)),
        };
        assert_eq!(place(&vars).unwrap(), Some(expected));
    }

    #[test]
    fn the_local_rank_defaults_to_the_rank() {
        let vars = [("WORLD_SIZE", "4"), ("RANK", "2"), MASTER[0], MASTER[1]];
        assert_eq!(place(&vars).unwrap().unwrap().local_rank, 2);
    }

    #[test]
    fn one_process_needs_no_master() {
        let place = place(&[("WORLD_SIZE", "1"), ("RANK", "0")])
            .unwrap()
            .unwrap();
        assert_eq!((place.world_size, place.master), (1, None));
    }

    #[test]
    fn several_processes_need_the_master_address_and_port() {
        let message = failure(&[("WORLD_SIZE", "2"), ("RANK", "0"), MASTER[1]]);
        assert!(message.starts_with("MASTER_ADDR is not set but WORLD_SIZE is 2"));
        let message = failure(&[("WORLD_SIZE", "2"), ("RANK", "1"), MASTER[0]]);
        assert!(message.starts_with("MASTER_PORT is not set"), "{message}");
        assert!(message.contains("--gpus N"), "{message}");
    }

    #[test]
    fn the_rank_must_be_set_and_below_the_world_size() {
        let message = failure(&[("WORLD_SIZE", "4"), MASTER[0], MASTER[1]]);
        assert!(message.contains("RANK is not set but WORLD_SIZE is 4"));
        assert!(message.contains("0 to 3"), "{message}");
        let message = failure(&[("WORLD_SIZE", "4"), ("RANK", "4"), MASTER[0], MASTER[1]]);
        assert!(
            message.starts_with("RANK is 4 but WORLD_SIZE is 4"),
            "{message}"
        );
        let vars = [("WORLD_SIZE", "4"), ("RANK", "0"), ("LOCAL_RANK", "7")];
        assert!(failure(&vars).starts_with("LOCAL_RANK is 7"));
    }

    #[test]
    fn values_that_are_not_numbers_are_named() {
        let message = failure(&[("WORLD_SIZE", "two")]);
        assert!(message.starts_with("WORLD_SIZE = `two`: expected a whole number"));
        let message = failure(&[("WORLD_SIZE", "2"), ("RANK", "-1"), MASTER[0], MASTER[1]]);
        assert!(message.starts_with("RANK = `-1`"), "{message}");
        let vars = [("WORLD_SIZE", "2"), ("RANK", "0"), MASTER[0]];
        let message = failure(&[vars[0], vars[1], vars[2], ("MASTER_PORT", "70000")]);
        assert!(message.starts_with("MASTER_PORT = `70000`"), "{message}");
        let message = failure(&[vars[0], vars[1], vars[2], ("MASTER_PORT", "0")]);
        assert!(message.starts_with("MASTER_PORT is 0"), "{message}");
    }

    #[test]
    fn under_torchruns_agent_store_the_rendezvous_takes_the_next_port() {
        let agent = ("TORCHELASTIC_USE_AGENT_STORE", "True");
        let vars = [
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            MASTER[0],
            MASTER[1],
            agent,
        ];
        let master = place(&vars).unwrap().unwrap().master;
        assert_eq!(master, Some(("10.0.0.1".into(), 29501)));
        let vars = [
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            MASTER[0],
            ("MASTER_PORT", "65535"),
            agent,
        ];
        assert!(failure(&vars).starts_with("MASTER_PORT is 65535"));
        let not_the_agent = ("TORCHELASTIC_USE_AGENT_STORE", "False");
        let vars = [
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            MASTER[0],
            MASTER[1],
            not_the_agent,
        ];
        assert_eq!(place(&vars).unwrap().unwrap().master.unwrap().1, 29500);
    }

    #[test]
    fn a_world_of_no_process_is_refused() {
        assert!(failure(&[("WORLD_SIZE", "0"), ("RANK", "0")]).starts_with("WORLD_SIZE is 0"));
    }
}
