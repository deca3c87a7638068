//! CI's smoke of the fuzz targets (tests/fuzz/README.md): every target of `revsnn::fuzzing` on
//! the inputs under `tests/fuzz/seeds/` (its seeds and the inputs earlier runs found) and a few
//! thousand deterministic mutations of them. No input may panic or have more than 1 GiB
//! allocated at once. The long coverage-guided runs are `tests/fuzz/run.sh`.

use std::path::{Path, PathBuf};

use revsnn::fuzzing::{TARGETS, Target};
use revsnn_reference::memory::{self, CountingAllocator};
use revsnn_reference::testing::SplitMix64;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Mutated inputs per target.
const MUTATIONS: usize = 4000;
/// The most bytes an input may have allocated at once (the fuzz runs' `-malloc_limit_mb`).
const ALLOCATION_LIMIT: usize = 1 << 30;
/// Set to rewrite the seed files from `revsnn::fuzzing` instead of checking them.
const REWRITE: &str = "REVSNN_WRITE_FUZZ_SEEDS";

fn seed_dir(target: &Target) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/seeds")
        .join(target.name)
}

/// The inputs stored for `target`: its seeds and the regressions, by name.
fn stored_inputs(target: &Target) -> Vec<(String, Vec<u8>)> {
    let mut inputs: Vec<(String, Vec<u8>)> = std::fs::read_dir(seed_dir(target))
        .unwrap_or_else(|e| panic!("{}: {e}", seed_dir(target).display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    inputs.sort();
    inputs
}

/// Numbers that break size arithmetic, as text for the text formats.
const NUMBERS: [&str; 8] = [
    "0",
    "-1",
    "4294967296",
    "18446744073709551615",
    "99999999999999999999999",
    "1e400",
    "NaN",
    "9223372036854775807",
];

/// The same as little-endian words for the binary formats.
const WORDS: [u64; 7] = [
    0,
    u64::MAX,
    1 << 31,
    (1 << 32) - 1,
    1 << 62,
    i64::MAX as u64,
    1 << 40,
];

/// One random edit of `input`: a bit flip, an extreme byte, word or number, an insertion, a
/// deletion, a duplicated range, a truncation or a splice of `other`.
fn edit(input: &mut Vec<u8>, other: &[u8], rng: &mut SplitMix64) {
    let pick = |rng: &mut SplitMix64, n: usize| (rng.next_u64() % n.max(1) as u64) as usize;
    let at = pick(rng, input.len() + 1);
    match pick(rng, 9) {
        0 if at < input.len() => input[at] ^= 1 << pick(rng, 8),
        1 if at < input.len() => input[at] = [0, 0xff, 0x7f, 0x80, b'{', b'"'][pick(rng, 6)],
        2 => {
            let word = WORDS[pick(rng, WORDS.len())].to_le_bytes();
            let width = [2, 4, 8][pick(rng, 3)];
            let end = (at + width).min(input.len());
            input.splice(at..end, word[..width].iter().copied());
        }
        3 => {
            // Replace a run of digits (or insert at a random place) with an extreme number.
            let start = input[..at]
                .iter()
                .rposition(|b| !b.is_ascii_digit())
                .map_or(0, |i| i + 1);
            let end = input[at..]
                .iter()
                .position(|b| !b.is_ascii_digit())
                .map_or(input.len(), |i| at + i);
            let number = NUMBERS[pick(rng, NUMBERS.len())].bytes();
            input.splice(start..end, number);
        }
        4 => {
            let count = 1 + pick(rng, 16);
            let bytes: Vec<u8> = (0..count).map(|_| rng.next_u64() as u8).collect();
            input.splice(at..at, bytes);
        }
        5 => {
            let end = (at + 1 + pick(rng, 64)).min(input.len());
            input.drain(at..end);
        }
        6 if at < input.len() => {
            let end = (at + 1 + pick(rng, 64)).min(input.len());
            let copy = input[at..end].to_vec();
            input.splice(at..at, copy);
        }
        7 => input.truncate(at),
        _ => {
            let from = pick(rng, other.len() + 1);
            input.truncate(at);
            input.extend_from_slice(&other[from..]);
        }
    }
}

/// Runs `target` on `input`, failing with the input (hex) if it panics or allocates too much.
fn check(target: &Target, what: &str, input: &[u8]) {
    memory::reset_peak();
    let before = memory::stats().live_bytes;
    if std::panic::catch_unwind(|| (target.run)(input)).is_err() {
        panic!(
            "target {} panicked on {what} ({} bytes): {}",
            target.name,
            input.len(),
            hex(input)
        );
    }
    let peak = memory::stats().peak_bytes.saturating_sub(before);
    assert!(
        peak <= ALLOCATION_LIMIT,
        "target {} allocated {peak} bytes on {what} ({} bytes): {}",
        target.name,
        input.len(),
        hex(input)
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_target_survives_its_inputs_and_their_mutations() {
    for target in TARGETS {
        let inputs: Vec<Vec<u8>> = stored_inputs(&target)
            .into_iter()
            .map(|(name, bytes)| {
                check(&target, &name, &bytes);
                bytes
            })
            .collect();
        let mut rng = SplitMix64::new(0xF022 ^ target.name.len() as u64);
        for i in 0..MUTATIONS {
            let mut input = inputs[i % inputs.len()].clone();
            let other = &inputs[(i / inputs.len()) % inputs.len()];
            for _ in 0..1 + rng.next_u64() % 4 {
                edit(&mut input, other, &mut rng);
            }
            check(&target, &format!("mutation {i}"), &input);
        }
    }
}

/// The seed files are `revsnn::fuzzing`'s seeds (`seed-N`); with `REVSNN_WRITE_FUZZ_SEEDS=1` this
/// rewrites them.
#[test]
fn the_seed_files_are_the_librarys_seeds() {
    for target in TARGETS {
        let seeds = (target.seeds)();
        assert!(!seeds.is_empty(), "{} has no seeds", target.name);
        if std::env::var_os(REWRITE).is_some() {
            std::fs::create_dir_all(seed_dir(&target)).unwrap();
            for (i, seed) in seeds.iter().enumerate() {
                std::fs::write(seed_dir(&target).join(format!("seed-{i}")), seed).unwrap();
            }
        }
        let stored: Vec<Vec<u8>> = stored_inputs(&target)
            .into_iter()
            .filter(|(name, _)| name.starts_with("seed-"))
            .map(|(_, bytes)| bytes)
            .collect();
        assert!(
            stored == seeds,
            "tests/fuzz/seeds/{} differs from revsnn::fuzzing's seeds: run `{REWRITE}=1 cargo \
             test --test fuzz_smoke` and commit the files",
            target.name
        );
    }
}
