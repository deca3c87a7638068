//! [`WordOps`]: the 64-bit words a backend keeps where it computes, into which spike
//! fingerprints fold and mismatch counts add without the host waiting (docs/reversible.md §3.3).
//! The hash itself is [`crate::contract::fingerprint`]; the CUDA word is `gpu/src/word.rs`.

use std::fmt::Debug;

use super::tensor::TensorOps;
use crate::contract::error::Result;

/// Fingerprints of tensors, and words kept where the backend computes that fold them.
pub trait WordOps: TensorOps {
    /// A 64-bit word kept where the backend computes (on a GPU, device memory): spike
    /// fingerprints fold into it and counts add into it without the host waiting; only
    /// [`WordOps::read_word`] brings it back (docs/reversible.md §3.3).
    type Word: Debug + Send + Sync;

    /// A hash of the shape and of every element's bits: equal for bitwise-equal tensors.
    fn fingerprint(&self, x: &Self::Tensor) -> Result<u64>;

    /// A new [`WordOps::Word`] holding 0.
    fn zero_word(&self) -> Result<Self::Word>;

    /// `word = word.rotate_left(5) ^ fingerprint(x)`, computed where the word lives: the value
    /// the host would get from [`WordOps::fingerprint`], with no wait.
    fn fold_fingerprint(&self, word: &mut Self::Word, x: &Self::Tensor) -> Result<()>;

    /// `count += (a != b) as u64`, computed where the words live, with no wait.
    fn count_unequal(&self, count: &mut Self::Word, a: &Self::Word, b: &Self::Word) -> Result<()>;

    /// The value of `word` on the host (on a GPU, waits for the queued work).
    fn read_word(&self, word: &Self::Word) -> Result<u64>;
}
