//! The counting allocator: live and peak bytes follow allocations, and `reset_peak` restarts the
//! peak from what is live. One test in its own binary, so no other test allocates concurrently.

use revsnn_reference::Cpu;
use revsnn_reference::memory::{self, CountingAllocator};
use revsnn_reference::prelude::*;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[test]
fn live_and_peak_bytes_follow_tensor_allocations() {
    let cpu = Cpu::<f32>::new();
    let before = memory::reset_peak();
    assert!(
        before.is_counting,
        "the counting allocator is installed in this binary"
    );
    let base = memory::stats().live_bytes;

    let big = cpu.zeros(&[1024, 1024]).unwrap(); // 4 MiB
    let with_big = memory::stats();
    assert!(with_big.live_bytes >= base + (4 << 20), "{with_big:?}");
    assert!(with_big.peak_bytes >= with_big.live_bytes);

    let shared = big.clone(); // a shared tensor costs no copy
    assert!(memory::stats().live_bytes < with_big.live_bytes + 4096);
    drop((big, shared));
    let after_drop = memory::stats();
    assert!(
        after_drop.live_bytes < base + 4096,
        "{after_drop:?} vs base {base}"
    );
    assert!(
        after_drop.peak_bytes >= base + (4 << 20),
        "the peak remembers the 4 MiB"
    );

    memory::reset_peak();
    assert!(
        memory::stats().peak_bytes < base + 4096,
        "reset_peak restarts from the live bytes"
    );
}
