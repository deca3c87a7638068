#!/usr/bin/env bash
# The kernels of one CUDA training step, counted on the CPU emulator: per kernel name, the
# launches and the threads (grid x block) of one step of `revsnn bench --device cuda`, the
# difference between a run of two timed steps and a run of one (so the warm-up step and the
# start-up cancel). Host-only mode (REVSNN_EMU_HOST_ONLY=1) traces every launch without running
# it, so a preset at its real batch takes seconds. Launches per step are what a GPU pays launch
# latency for; threads per step, for an elementwise kernel, are its elements.
# usage: gpu/emulator/census.sh MODEL BATCH PRECISION [TIME_STEPS (default 4)]
# Needs the emulator (gpu/emulator/build.sh) in $REVSNN_EMU_DIR (default target/cuda-emulator),
# NVRTC in .nvrtc/, and the binary in $REVSNN (default target/release/revsnn).
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:?usage: census.sh MODEL BATCH PRECISION [TIME_STEPS]}
batch=${2:?batch}
precision=${3:?precision}
time_steps=${4:-4}
NV="${NV:-$PWD/.nvrtc}"
EMU="${REVSNN_EMU_DIR:-$PWD/target/cuda-emulator}"
export LD_LIBRARY_PATH="$EMU:$NV/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export REVSNN_CUDA_INCLUDE="${REVSNN_CUDA_INCLUDE:-$NV/nvidia/cu13/include}"
export REVSNN_REQUIRE_GPU=1 REVSNN_EMU_HOST_ONLY=1 REVSNN_EMU_TRACE=1
traces=$(mktemp -d)
trap 'rm -rf "$traces"' EXIT
for steps in 1 2; do
  "${REVSNN:-target/release/revsnn}" bench --device cuda --model "$model" --batch "$batch" \
    --time-steps "$time_steps" --precision "$precision" --steps "$steps" >/dev/null \
    2>"$traces/$steps.log"
done
python3 - "$traces/1.log" "$traces/2.log" "$model" "$batch" "$precision" <<'PY'
import re, sys
from collections import Counter
launch = re.compile(r"launch (\S+) grid \((\d+),(\d+),(\d+)\) block \((\d+),(\d+),(\d+)\)")
def census(path):
    launches, threads = Counter(), Counter()
    for line in open(path, errors="replace"):
        m = launch.search(line)
        if m:
            dims = [int(d) for d in m.groups()[1:]]
            launches[m[1]] += 1
            threads[m[1]] += dims[0] * dims[1] * dims[2] * dims[3] * dims[4] * dims[5]
    return launches, threads
(l1, t1), (l2, t2) = census(sys.argv[1]), census(sys.argv[2])
launches = {k: l2[k] - l1[k] for k in l2}
threads = {k: t2[k] - t1[k] for k in t2}
model, batch, precision = sys.argv[3:6]
print(f"{model}, batch {batch}, {precision}: {sum(launches.values())} launches, "
      f"{sum(threads.values())} threads per training step")
print(f"{'launches':>8} {'threads':>12}  kernel")
for k in sorted(launches, key=lambda k: (-launches[k], -threads[k], k)):
    if launches[k]:
        print(f"{launches[k]:8d} {threads[k]:12d}  {k}")
PY
