//! The spike fingerprint both backends compute (docs/ARCHITECTURE.md, host-device round trips;
//! docs/reversible.md, the recompute): a 64-bit hash of a tensor's shape and of every element's
//! bits, equal for bitwise-equal tensors, which the reversible backward compares between a
//! block's forward and its recompute.
//!
//! `fingerprint(x) = feed(shape_hash(shape), sum_i mix64(bits(x[i]) ^ i C))`, the sum wrapping
//! mod 2^64 over the row-major index `i`. Integer addition is associative and commutative, so
//! the sum may be split over threads or GPU blocks in any way and the value stays the same; the
//! index in each term makes a moved element change it.

/// The odd constant `C` that the element index is multiplied by before it is mixed in.
const INDEX_MULTIPLIER: u64 = 0xD1B5_4A32_D192_ED03;

/// SplitMix64's increment (2^64 over the golden ratio), which `mix64` adds first; also the
/// multiplier of [`feed`].
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The hash a shape starts from (FNV-1a's offset basis).
const SHAPE_SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// One step of the shape hash, and the last step that feeds the element sum in:
/// `(rotl(hash, 5) ^ word) * GOLDEN_GAMMA (mod 2^64)`.
fn feed(hash: u64, word: u64) -> u64 {
    (hash.rotate_left(5) ^ word).wrapping_mul(GOLDEN_GAMMA)
}

/// The hash of a shape: its sizes fed in order from [`SHAPE_SEED`].
pub fn shape_hash(shape: &[usize]) -> u64 {
    shape
        .iter()
        .fold(SHAPE_SEED, |hash, &size| feed(hash, size as u64))
}

/// The term of element `index` whose bits (zero-extended to 64) are `bits`:
/// `mix64(bits ^ index C)`, with SplitMix64's finaliser as `mix64`, a bijection that spreads
/// every input bit over the whole word.
#[inline(always)]
pub fn element_term(bits: u64, index: u64) -> u64 {
    let mut z = (bits ^ index.wrapping_mul(INDEX_MULTIPLIER)).wrapping_add(GOLDEN_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The fingerprint of a tensor of `shape` whose element terms sum to `sum` (mod 2^64).
pub fn from_sum(shape: &[usize], sum: u64) -> u64 {
    from_hashed_sum(shape_hash(shape), sum)
}

/// [`from_sum`] of a shape already hashed ([`shape_hash`]).
pub fn from_hashed_sum(shape_hash: u64, sum: u64) -> u64 {
    feed(shape_hash, sum)
}

/// `word` with `fingerprint` folded in, `rotl(word, 5) ^ fingerprint`: the fold of
/// `WordOps::fold_fingerprint` on both backends (a CUDA device word folds its pending sums with
/// it when read on the host).
pub fn fold(word: u64, fingerprint: u64) -> u64 {
    word.rotate_left(5) ^ fingerprint
}
