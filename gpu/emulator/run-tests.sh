#!/usr/bin/env bash
# Runs every GPU test on the CPU emulator (gpu/README.md, "Running the GPU tests on the CPU
# emulator"): tests/gpu_*.rs and gpu/tests/*.rs with REVSNN_REQUIRE_GPU=1, the emulated driver,
# cuBLAS, cuDNN and NCCL (build.sh builds them and runs their self-tests) first on the library path
# and the real NVRTC after them. Extra arguments go to the test binaries (e.g. a test name filter).
# The emulator shows 2 devices (REVSNN_EMU_DEVICES) so the tests of two ranks (tests/gpu_ranks.rs)
# run, one device each; NCCL and cuDNN are required (REVSNN_REQUIRE_NCCL=1, REVSNN_REQUIRE_CUDNN=1),
# the fake ones always load, so the cuDNN engine is the convolutions' default there as on a GPU.
# GPU_TEST_BINARIES (names of tests/gpu_*.rs binaries, separated by spaces or newlines) runs only
# those.
# usage: gpu/emulator/run-tests.sh [-- TEST ARGS...]
# Needs NVRTC 13.0 in .nvrtc/ (installed by .ci/run; or set NV to another install).
set -euo pipefail
cd "$(dirname "$0")/../.."
NV="${NV:-$PWD/.nvrtc}"
if [ ! -f "$NV/nvidia/cu13/lib/libnvrtc.so.13" ]; then
  echo "run-tests.sh: no NVRTC in $NV (run .ci/run once, or install it as gpu/README.md says)" >&2
  exit 1
fi
export REVSNN_CUDA_INCLUDE="${REVSNN_CUDA_INCLUDE:-$NV/nvidia/cu13/include}"
EMU="${REVSNN_EMU_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/cuda-emulator}"
gpu/emulator/build.sh "$EMU"
export LD_LIBRARY_PATH="$EMU:$NV/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export REVSNN_REQUIRE_GPU=1 REVSNN_REQUIRE_NVRTC=1 REVSNN_REQUIRE_NCCL=1 REVSNN_REQUIRE_CUDNN=1
export REVSNN_EMU_DEVICES="${REVSNN_EMU_DEVICES:-2}"
[ "${1:-}" = "--" ] && shift
# The GPU tests of the root crate (tests/gpu_*.rs) and of revsnn-gpu (gpu/tests/*.rs).
# --no-fail-fast: every binary runs and every failure is reported. The tests' `SKIP:` lines (what
# the emulator could not run) are repeated at the end, so a log shows them together.
status=0
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# --workspace, as the README's test command builds them: with -p, Cargo resolves the
# dependencies' features for one package and builds everything again.
if [ -n "${GPU_TEST_BINARIES:-}" ]; then
  # every name, on however many lines (`read` alone stops at the first line's end)
  read -rd '' -a names <<<"$GPU_TEST_BINARIES" || true
else
  names=('gpu_*')
  for test in gpu/tests/*.rs; do names+=("$(basename "$test" .rs)"); done
fi
selected=()
for name in "${names[@]}"; do selected+=(--test "$name"); done
cargo test --release --no-fail-fast --workspace "${selected[@]}" -- "$@" 2>&1 | tee -a "$log" ||
  status=1
echo "== skipped on the emulator:"
grep '^SKIP:' "$log" | sort | uniq -c || echo "   nothing"
exit "$status"
