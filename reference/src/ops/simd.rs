//! Run-time selection of the widest x86-64 vector instructions for a kernel. The crate is built
//! for the x86-64 baseline (SSE2), so a loop compiled as usual uses 128-bit vectors; a kernel run
//! through [`widest`] is compiled twice more, for AVX-512 (F and DQ) and for AVX2, and the running
//! CPU picks one. Every variant performs the same IEEE operations in the same order (the compiler
//! vectorises across independent elements and never reassociates floating-point sums), so the
//! results are bitwise the same whichever runs (docs/ARCHITECTURE.md, "The op contract").

/// A loop nest to compile for each instruction set. `run` must be `#[inline(always)]`, and so must
/// the functions it calls in its loops, for the wider instructions to reach them.
pub(super) trait Kernel {
    type Output;

    fn run(self) -> Self::Output;
}

/// Runs `kernel` inside a function compiled for AVX-512F and AVX-512DQ where the CPU has both,
/// else for AVX2 where it has that, else as it is.
#[inline(always)]
pub(super) fn widest<K: Kernel>(kernel: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
        {
            // SAFETY: the CPU supports AVX-512F and AVX-512DQ, checked just above.
            return unsafe { avx512(kernel) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { avx2(kernel) };
        }
    }
    kernel.run()
}

/// `kernel.run()` compiled for AVX-512F and AVX-512DQ.
///
/// # Safety
/// The CPU must support AVX-512F and AVX-512DQ.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn avx512<K: Kernel>(kernel: K) -> K::Output {
    kernel.run()
}

/// `kernel.run()` compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2<K: Kernel>(kernel: K) -> K::Output {
    kernel.run()
}
