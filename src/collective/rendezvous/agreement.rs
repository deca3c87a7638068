//! Rank 0's verdict on the hellos it received: do the ranks of the run agree?

use std::collections::BTreeMap;
use std::time::Duration;

use super::wire::Hello;

/// What rank 0 knows when it judges: its own start and what reached it.
pub(super) struct Gathering<'a> {
    /// The world size rank 0 was started with.
    pub world_size: usize,
    /// Rank 0's settings.
    pub settings: &'a str,
    /// The hello of every process that reached rank 0.
    pub hellos: Vec<&'a Hello>,
    /// Connections refused for not being a revsnn rank.
    pub strays: usize,
    /// `MASTER_ADDR:MASTER_PORT`, for the message on missing ranks.
    pub endpoint: String,
    /// How long rank 0 waited.
    pub timeout: Duration,
}

/// The first way in which the processes disagree, as the text every rank reports, or `None`
/// when they agree: the same world size, every rank 1 to N-1 present exactly once, and the
/// same settings, line for line, as rank 0.
pub(super) fn first_disagreement(gathering: &Gathering) -> Option<String> {
    let mut hellos = gathering.hellos.clone();
    hellos.sort_by_key(|hello| hello.rank);
    world_size_differs(gathering.world_size, &hellos)
        .or_else(|| rank_claimed_twice(gathering.world_size, &hellos))
        .or_else(|| ranks_missing(gathering, &hellos))
        .or_else(|| settings_differ(gathering.settings, &hellos))
}

fn world_size_differs(world_size: usize, hellos: &[&Hello]) -> Option<String> {
    let hello = hellos.iter().find(|hello| hello.world_size != world_size)?;
    Some(format!(
        "rank {} was started with WORLD_SIZE {} and rank 0 with {world_size}; start every rank \
         with the same WORLD_SIZE",
        hello.rank, hello.world_size
    ))
}

fn rank_claimed_twice(world_size: usize, hellos: &[&Hello]) -> Option<String> {
    let mut claims = BTreeMap::from([(0, 1)]);
    for hello in hellos {
        *claims.entry(hello.rank).or_insert(0) += 1;
    }
    if let Some(rank) = claims.keys().find(|&&rank| rank >= world_size) {
        return Some(format!(
            "a process claims rank {rank}, but WORLD_SIZE is {world_size}; give each process its \
             own RANK, 0 to {}",
            world_size - 1
        ));
    }
    let (rank, count) = claims.into_iter().find(|&(_, count)| count > 1)?;
    Some(format!(
        "{count} processes were started as rank {rank}; give each process its own RANK, 0 to {}",
        world_size - 1
    ))
}

fn ranks_missing(gathering: &Gathering, hellos: &[&Hello]) -> Option<String> {
    let missing: Vec<usize> = (1..gathering.world_size)
        .filter(|rank| !hellos.iter().any(|hello| hello.rank == *rank))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let strays = match gathering.strays {
        0 => String::new(),
        1 => " (1 connection that was not a revsnn rank was refused)".into(),
        n => format!(" ({n} connections that were not revsnn ranks were refused)"),
    };
    Some(format!(
        "ranks {missing:?} did not reach rank 0 at {} within {:?}{strays}; start every rank with \
         the same MASTER_ADDR and MASTER_PORT, or read their own output for why they stopped",
        gathering.endpoint, gathering.timeout
    ))
}

fn settings_differ(ours: &str, hellos: &[&Hello]) -> Option<String> {
    hellos.iter().find_map(|hello| {
        let (line, theirs, mine) = first_different_line(&hello.settings, ours)?;
        Some(format!(
            "rank {} was started with different settings than rank 0: line {line} is {} there \
             and {} on rank 0; {}",
            hello.rank,
            quoted(theirs),
            quoted(mine),
            advice_for(theirs.or(mine).unwrap_or_default())
        ))
    })
}

/// What to do about a rank whose settings' first different `line` it is: the same command on
/// every rank, unless the ranks read different initial checkpoints at the same path (each rank
/// hashes its own file: docs/recipes.md §5.4).
fn advice_for(line: &str) -> &'static str {
    if line.starts_with("initial_checkpoint_sha256") {
        "the file at initial_checkpoint differs between their machines: give every machine rank \
         0's file"
    } else {
        "start every rank with the same command"
    }
}

/// The first line (numbered from 1) where `a` and `b` differ, with its text in each (`None`
/// past the end of one); `None` when every line agrees.
fn first_different_line<'s>(
    a: &'s str,
    b: &'s str,
) -> Option<(usize, Option<&'s str>, Option<&'s str>)> {
    let (mut a_lines, mut b_lines) = (a.lines(), b.lines());
    (1..)
        .find_map(|number| match (a_lines.next(), b_lines.next()) {
            (None, None) => Some(None),
            (x, y) if x != y => Some(Some((number, x, y))),
            _ => None,
        })
        .flatten()
}

fn quoted(line: Option<&str>) -> String {
    match line {
        Some(text) => format!("`{text}`"),
        None => "absent".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: &str = "[train]\nlr = 0.1\nbatch = 64\n";

    fn hello(rank: usize, world_size: usize, settings: &str) -> Hello {
        Hello {
            rank,
            world_size,
            settings: settings.into(),
        }
    }

    fn verdict(world_size: usize, hellos: &[Hello]) -> Option<String> {
        first_disagreement(&Gathering {
            world_size,
            settings: SETTINGS,
            hellos: hellos.iter().collect(),
            strays: 0,
            endpoint: "127.0.0.1:29500".into(),
            timeout: Duration::from_secs(600),
        })
    }

    #[test]
    fn ranks_that_agree_get_no_verdict() {
        let hellos = [hello(2, 3, SETTINGS), hello(1, 3, SETTINGS)];
        assert_eq!(verdict(3, &hellos), None);
    }

    #[test]
    fn the_first_different_line_is_named_with_both_texts() {
        let other = SETTINGS.replace("0.1", "0.2");
        let hellos = [hello(1, 3, SETTINGS), hello(2, 3, &other)];
        let message = verdict(3, &hellos).unwrap();
        assert_eq!(
            message,
            "rank 2 was started with different settings than rank 0: line 2 is `lr = 0.2` there \
             and `lr = 0.1` on rank 0; start every rank with the same command"
        );
    }

    #[test]
    fn ranks_that_read_different_initial_checkpoints_are_told_to_share_one_file() {
        let pinned = |digest: &str| format!("{SETTINGS}initial_checkpoint_sha256 = \"{digest}\"\n");
        let (ours, theirs) = (pinned("ab"), pinned("cd"));
        let message = settings_differ(&ours, &[&hello(1, 2, &theirs)]).unwrap();
        assert!(
            message.ends_with("differs between their machines: give every machine rank 0's file"),
            "{message}"
        );
    }

    #[test]
    fn a_line_past_the_end_of_one_side_is_absent() {
        let longer = format!("{SETTINGS}epochs = 3\n");
        let message = verdict(2, &[hello(1, 2, &longer)]).unwrap();
        assert!(
            message.contains("line 4 is `epochs = 3` there and absent on rank 0"),
            "{message}"
        );
        let message = verdict(2, &[hello(1, 2, "[train]\n")]).unwrap();
        assert!(message.contains("line 2 is absent there and `lr = 0.1` on rank 0"));
    }

    #[test]
    fn a_rank_claimed_twice_or_out_of_range_is_named() {
        let hellos = [hello(1, 3, SETTINGS), hello(1, 3, SETTINGS)];
        let message = verdict(3, &hellos).unwrap();
        assert!(
            message.starts_with("2 processes were started as rank 1;"),
            "{message}"
        );
        let message = verdict(2, &[hello(0, 2, SETTINGS)]).unwrap();
        assert!(
            message.starts_with("2 processes were started as rank 0;"),
            "{message}"
        );
        let message = verdict(2, &[hello(5, 2, SETTINGS)]).unwrap();
        assert!(message.starts_with("a process claims rank 5"), "{message}");
    }

    #[test]
    fn a_different_world_size_comes_first() {
        let hellos = [hello(2, 4, "other"), hello(1, 3, SETTINGS)];
        let message = verdict(3, &hellos).unwrap();
        assert!(
            message.starts_with("rank 2 was started with WORLD_SIZE 4 and rank 0 with 3"),
            "{message}"
        );
    }

    #[test]
    fn missing_ranks_are_listed() {
        let message = verdict(4, &[hello(2, 4, SETTINGS)]).unwrap();
        assert!(
            message.starts_with("ranks [1, 3] did not reach rank 0 at 127.0.0.1:29500 within 600s"),
            "{message}"
        );
    }
}
