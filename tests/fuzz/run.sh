#!/usr/bin/env bash
# A coverage-guided run of one fuzz target (README.md): tests/fuzz/run.sh TARGET SECONDS [RUNS]
#
# Builds the target with cargo fuzz (AddressSanitizer, debug assertions and overflow checks on,
# RUSTC_BOOTSTRAP=1 for the -Z flags on a stable toolchain), starts from the committed seeds and
# the working corpus of earlier runs, and runs libFuzzer for SECONDS seconds (or RUNS inputs,
# whichever comes first). A panic, an abort, an input running over 10 s, or a single allocation
# over 1 GiB (ASan's malloc hooks, so calloc'ed memory that never touches RSS counts too) stops
# the run and leaves the input in tests/fuzz/artifacts/TARGET/.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 TARGET SECONDS [RUNS]" >&2
    echo "targets: $(ls "$(dirname "$0")/fuzz_targets" | sed 's/\.rs$//' | tr '\n' ' ')" >&2
    exit 2
fi
target=$1
seconds=$2
runs=${3:--1}
fuzz_dir=$(cd "$(dirname "$0")" && pwd)
corpus="$fuzz_dir/corpus/$target"
mkdir -p "$corpus"

# The inputs may reach 8 KiB (a CIFAR record is 3 KiB); the 1 GiB limits apply to every input.
RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir "$fuzz_dir" --debug-assertions "$target" \
    "$corpus" "$fuzz_dir/seeds/$target" -- \
    -max_total_time="$seconds" -runs="$runs" -max_len=8192 -timeout=10 \
    -malloc_limit_mb=1024 -rss_limit_mb=2048 -print_final_stats=1
