#!/usr/bin/env bash
# The one prepared GPU script (gpu/README.md). On the GPU machine, from the repository root:
#   bash gpu/check.sh "$OUT"
# Runs, in order of importance: every GPU test carried in gpu-bin/ (built here by
# gpu/build-carry.sh); the mixed-precision stage (CHECK_PRECISION=1, the default;
# gpu/precision-stage.sh: bench and memory in bf16 and fp16 against the official code under AMP);
# the training stage (below); `revsnn bench` (f32 and TF32) and `revsnn memory` on CUDA for the
# headline presets, on cuDNN and on im2col + cuBLAS; then, when .official/ and .whl/ were carried
# (PYTORCH_BASELINE=0 turns it off), the official PyTorch code on the same presets in the same
# run, the bar to beat; then the criterion benches. Writes report.md, pytorch-baseline.json,
# pytorch-amp-batch*.json and logs.tar.gz into the output folder. A missing GPU fails the tests
# (REVSNN_REQUIRE_GPU=1). The whole script keeps inside DEADLINE_S seconds (default 530): each
# step's timeout is cut to what is left, and steps that no longer fit are skipped and listed.
# The test binaries run TEST_JOBS (default 4) at a time. CHECK_PROFILE=1 adds the profile stage
# after the training stage (gpu/profile-stage.sh: cuDNN's plans and Nsight Compute's time per
# kernel of one training step, per model and precision, with its DRAM bytes).
# TRACE_MEMORY=revsresnet37:bf16:64 adds a peak-memory trace (below).
# For a short rerun: CHECK_TESTS and CHECK_BENCHES (extended regexes on the binaries' names, e.g.
# 'gpu_conv|gpu_models'; 'none' runs none), BENCH_FILTER (criterion's name filter), CLI_MODELS
# and BASELINE_MODELS (comma lists of presets), CHECK_CLI=0 (no CLI bench/memory step).
# The training stage (CHECK_TRAIN=1, the default; gpu/train-stage.sh says what it runs and its
# knobs) has its own budget, TRAIN_BUDGET_S (default 200), inside DEADLINE_S. REVSNN names the
# binary (default gpu-bin/revsnn). A dry run of the precision and training stages' logic on the
# CPU (.ci/run runs it at every stop):
#   REVSNN=target/release/revsnn CHECK_TESTS=none CHECK_CLI=0 CHECK_BENCHES=none PYTORCH_BASELINE=0 \
#     PRECISION_DEVICE=cpu PRECISION_RUNS=revsresnet21:2,revsformer-2-384:2 PRECISION_STEPS=1 \
#     PRECISION_IM2COL_MODELS= PRECISION_MODEL_ARGS='--time-steps 1' \
#     TRAIN_DEVICE=cpu TRAIN_RUNS=revsresnet21:4,revsformer-2-384:4 TRAIN_SAMPLES=16 \
#     TRAIN_TEST_SAMPLES=8 TRAIN_MODEL_ARGS='--time-steps 1' bash gpu/check.sh /tmp/check-dry
set -uo pipefail
OUT_DIR=${1:?usage: gpu/check.sh OUTPUT_FOLDER}
mkdir -p "$OUT_DIR"
REPORT="$OUT_DIR/report.md"
cd "$(dirname "$0")/.."

SP=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || echo /nonexistent)
# cuDNN 9 from PyTorch's wheels (nvidia/cudnn/lib), wherever that package put it
CUDNN_SO=$(find "$SP/nvidia" -name 'libcudnn.so.9' 2>/dev/null | head -n 1)
# NCCL from the same wheels (nvidia/nccl/lib), for the ranks of `train --gpus` (tests/gpu_ranks.rs):
# the wheel ships libnccl.so.2 and cudarc opens libnccl.so, so a link of that name goes first
NCCL_SO=$(find "$SP/nvidia" -name 'libnccl.so.2' 2>/dev/null | head -n 1)
NCCL_LINK=$(mktemp -d)
[ -n "$NCCL_SO" ] && ln -sf "$NCCL_SO" "$NCCL_LINK/libnccl.so"
export LD_LIBRARY_PATH="$SP/nvidia/cu13/lib:$(dirname "${CUDNN_SO:-$SP/nvidia/cudnn/lib/x}"):$NCCL_LINK:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export REVSNN_CUDA_INCLUDE="$SP/nvidia/cu13/include:/usr/local/cuda/include"
export REVSNN_REQUIRE_GPU=1 REVSNN_REQUIRE_NVRTC=1 REVSNN_REQUIRE_CUDNN=1 REVSNN_REQUIRE_NCCL=1 PYTHONUNBUFFERED=1
status=0
DEADLINE_S=${DEADLINE_S:-530}
# gpu/build-carry.sh packs the binaries into one gzip archive, since the carry is limited to 64 MiB
if [ -f gpu-bin/bundle.tgz ]; then tar -C gpu-bin -xzf gpu-bin/bundle.tgz && rm gpu-bin/bundle.tgz; fi
REVSNN=${REVSNN:-gpu-bin/revsnn}
# the kernels gpu/build-carry.sh compiled for sm_90 (H100, H200), so no process here runs NVRTC
[ -d gpu-bin/kernel-cache ] && export REVSNN_KERNEL_CACHE="$PWD/gpu-bin/kernel-cache"
# the binary that the test binaries run (tests/common/mod.rs): Cargo's path to it is not here
export REVSNN_BIN
REVSNN_BIN=$(realpath "$REVSNN")
# STAGE_END (in $SECONDS), when set, cuts the time left to a stage's own budget.
left() {
  local rest=$((DEADLINE_S - SECONDS))
  if [ -n "${STAGE_END:-}" ] && [ $((STAGE_END - SECONDS)) -lt "$rest" ]; then rest=$((STAGE_END - SECONDS)); fi
  echo "$rest"
}

section() { printf '\n## %s\n\n```\n' "$1" >>"$REPORT"; SECTION_OPEN=1; }
end_section() { printf '```\n' >>"$REPORT"; SECTION_OPEN=0; }
run_logged() { # $1: log name; $2: timeout in seconds (cut to the time left); rest: command
  local log="$OUT_DIR/$1.log" limit=$2; shift 2
  if [ "$(left)" -lt 10 ]; then
    echo "[$(basename "$log" .log)] skipped: time budget spent (DEADLINE_S=$DEADLINE_S${STAGE_END:+, stage budget})" | tee -a "$REPORT.summary"
    : >"$log"; return 1
  fi
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  local start=$SECONDS
  timeout "$limit" "$@" >"$log" 2>&1; local rc=$?
  echo "[$(basename "$log" .log)] rc=$rc in $((SECONDS - start)) s (limit $limit s)" | tee -a "$REPORT.summary"
  return $rc
}

# The report's summary, and one archive of the logs (the device tool brings back at most 8 files:
# the report, the baselines' JSON and the archive); also when the run is stopped by a signal, so
# that a call cut short still brings back what ran.
finish() {
  trap - TERM INT
  [ "${SECTION_OPEN:-0}" = 1 ] && end_section
  section "summary"
  cat "$REPORT.summary" >>"$REPORT"
  end_section
  rm -f "$REPORT.summary"
  [ "${TRAIN_DIR_MADE:-}" = 1 ] && rm -rf "$TRAIN_DIR"
  (cd "$OUT_DIR" && shopt -s nullglob && tar -czf logs.tar.gz ./*.log ./*.jsonl &&
    rm -f ./*.log ./*.jsonl ./pytorch-baseline.md)
  cat "$REPORT"
}
stopped() { # $1: the signal's exit code
  echo "[check.sh] stopped by a signal after $SECONDS s" >>"$REPORT.summary"
  finish
  exit "$1"
}
trap 'stopped 143' TERM
trap 'stopped 130' INT

{
  echo "# GPU check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  dirty=$(git status --porcelain --untracked-files=no 2>/dev/null | head -c1)
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)${dirty:+ with uncommitted changes}"
} >"$REPORT"
: >"$REPORT.summary"

section "card and driver"
timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >>"$REPORT" 2>&1
end_section

section "revsnn info"
timeout 60 "$REVSNN" info >>"$REPORT" 2>&1 || status=1
end_section

# Every kernel file for this card in the cache before the tests start: the carried images when
# their NVRTC version matches (each says "cached"), else one compile here instead of one in each
# of the first test processes at once (at most KERNELS_TIMEOUT_S, default 180). Not a check: a
# kernel that does not compile fails its tests.
section "kernel cache"
timeout "${KERNELS_TIMEOUT_S:-180}" "$REVSNN" kernels >>"$REPORT" 2>&1 ||
  echo "(not filled: the processes compile what they use)" >>"$REPORT"
end_section

# The test binaries run TEST_JOBS at a time (default 4: the GPU machine has 16 cores, and each
# test binary spends most of its time in the CPU reference); their sections follow in name order.
tests=()
for test in gpu-bin/tests/*; do
  name=$(basename "$test")
  [ -x "$test" ] && [[ $name =~ ^(${CHECK_TESTS:-.*})$ ]] && tests+=("$name")
done
for name in "${tests[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "${TEST_JOBS:-4}" ]; do wait -n; done
  (run_logged "test-$name" 120 "gpu-bin/tests/$name" --nocapture --test-threads=1
    echo $? >"$OUT_DIR/test-$name.rc") &
done
wait
for name in "${tests[@]}"; do
  [ "$(cat "$OUT_DIR/test-$name.rc" 2>/dev/null)" = 0 ] || status=1
  rm -f "$OUT_DIR/test-$name.rc"
  section "test $name"
  grep -E '^(test |SKIP|NVRTC|f32|f64)|test result|panicked' "$OUT_DIR/test-$name.log" >>"$REPORT"
  end_section
done

# Whether the official code can run: its model files and the SpikingJelly wheel were carried
# (PYTORCH_BASELINE=0 says no); installs the wheels the first time.
official_ready() {
  [ "${PYTORCH_BASELINE:-1}" = 1 ] && [ -d .official ] && ls .whl/spikingjelly-*.whl >/dev/null 2>&1 || return 1
  if [ ! -d /tmp/site/spikingjelly ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/spikingjelly-*.whl
    if ls .whl/timm-0.6.12-*.whl >/dev/null 2>&1; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/timm06 .whl/timm-0.6.12-*.whl
    fi
  fi
  [ -d /tmp/timm06 ] && export TIMM_FALLBACK=/tmp/timm06
  export PYTHONPATH=/tmp/site
}

if [ "${CHECK_PRECISION:-1}" = 1 ]; then
  # shellcheck source=gpu/precision-stage.sh
  source gpu/precision-stage.sh
fi

if [ "${CHECK_TRAIN:-1}" = 1 ]; then
  # shellcheck source=gpu/train-stage.sh
  source gpu/train-stage.sh
fi

if [ "${CHECK_PROFILE:-0}" = 1 ]; then
  # shellcheck source=gpu/profile-stage.sh
  source gpu/profile-stage.sh
fi

# TRACE_MEMORY (a comma list of MODEL:PRECISION:BATCH, empty by default) runs `revsnn memory`
# for each with REVSNN_TRACE_PEAK_MEMORY=1: what was live at the peak of the measured step, by
# allocation site, cuDNN's workspaces included (docs/memory.md §9.6).
for traced in ${TRACE_MEMORY:+${TRACE_MEMORY//,/ }}; do
  IFS=: read -r model precision batch <<<"$traced"
  run_logged "trace-memory-$model-$precision" 120 env REVSNN_TRACE_PEAK_MEMORY=1 "$REVSNN" memory \
    --device cuda --model "$model" --precision "$precision" --batch "$batch" --json || status=1
  section "peak trace: revsnn memory --model $model --precision $precision --batch $batch"
  cat "$OUT_DIR/trace-memory-$model-$precision.log" >>"$REPORT"
  end_section
done

# `revsnn bench` and `revsnn memory` on CUDA (the training-step figures: images/s and memory per
# image against the official code's, benches/pytorch/official_baseline.py, T = 4). A failing
# or timed-out command is logged and the next one runs.
CLI_MODELS=${CLI_MODELS:-revsresnet37,msresnet34,revsformer-4-384,spikingformer-4-384}
[ "${CHECK_CLI:-1}" = 1 ] || CLI_MODELS=""
: >"$OUT_DIR/cli-results.jsonl"
for model in ${CLI_MODELS//,/ }; do
  for what in bench bench-tf32 bench-tf32-im2col bench-bf16 memory; do
    case $what in
      bench) run_logged "cli-$what-$model" 90 "$REVSNN" bench --device cuda --model "$model" \
        --batch 64 --steps 10 --json || status=1 ;;
      # TF32 for convolutions, linear layers and attention, the scope the official run below
      # takes with --tf32-matmul: the like-for-like speed comparison
      bench-tf32) run_logged "cli-$what-$model" 90 "$REVSNN" bench --device cuda --precision tf32 \
        --model "$model" --batch 64 --steps 10 --json || status=1 ;;
      # the other convolution engine, side by side
      bench-tf32-im2col) REVSNN_CONV_ENGINE=im2col run_logged "cli-$what-$model" 90 "$REVSNN" \
        bench --device cuda --precision tf32 --model "$model" --batch 64 --steps 10 --json || status=1 ;;
      # 16-bit operands (docs/precision.md, CUDA): cuBLAS GEMMs and cuDNN's 16-bit configurations
      bench-bf16) run_logged "cli-$what-$model" 90 "$REVSNN" bench --device cuda --precision bf16 \
        --model "$model" --batch 64 --steps 10 --json || status=1 ;;
      # in TF32, the mode of the speed compared with the official code's
      memory) run_logged "cli-$what-$model" 60 "$REVSNN" memory --device cuda --precision tf32 \
        --model "$model" --batch 32,64 --json || status=1 ;;
    esac
    section "revsnn $what --device cuda --model $model"
    cat "$OUT_DIR/cli-$what-$model.log" >>"$REPORT"
    end_section
    grep -h '^{' "$OUT_DIR/cli-$what-$model.log" | sed "s/^{/{\"command\":\"$what\",/" \
      >>"$OUT_DIR/cli-results.jsonl"
  done
done

# BASELINE_MODELS defaults to CLI_MODELS; with neither (CHECK_CLI=0) the official f32 run is skipped
# The official code's matmuls run on TF32 too (BASELINE_TF32_MATMUL=1, the default), the scope of
# our `--precision tf32`; BASELINE_TF32_MATMUL=0 keeps PyTorch's default (convolutions only).
BASELINE_MODELS=${BASELINE_MODELS-$CLI_MODELS}
if [ -n "$BASELINE_MODELS" ] && official_ready; then
  tf32_matmul=()
  [ "${BASELINE_TF32_MATMUL:-1}" = 1 ] && tf32_matmul=(--tf32-matmul)
  run_logged pytorch-baseline 150 python3 benches/pytorch/official_baseline.py --official .official \
    "${tf32_matmul[@]}" --models "$BASELINE_MODELS" \
    --batches 32,64 --steps "${BASELINE_STEPS:-10}" --out "$OUT_DIR/pytorch-baseline.json" \
    --markdown "$OUT_DIR/pytorch-baseline.md" || status=1
  section "official PyTorch baseline"
  cat "$OUT_DIR/pytorch-baseline.md" >>"$REPORT" 2>/dev/null
  end_section
fi

# the CLI stage's table, when it ran
if [ -s "$OUT_DIR/cli-results.jsonl" ]; then
  printf '\n## training step, T = 4, batch 64 (memory per image: slope between batch 32 and 64)\n\n' >>"$REPORT"
  python3 - "$OUT_DIR/cli-results.jsonl" "$OUT_DIR/pytorch-baseline.json" "${PEAK_TFLOPS_TF32:-494}" >>"$REPORT" 2>&1 <<'PY'
import json, sys
peak = float(sys.argv[3]) * 1e12
ours = {}
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    ours.setdefault(r["model"], {})[r["command"]] = r
official = {}
try:
    for r in json.load(open(sys.argv[2]))["results"]:
        official.setdefault(r["model"], {})[r["batch"]] = r
except (OSError, ValueError, KeyError):
    pass
mib = 2.0 ** 20
fmt = lambda v, f: (f % v) if isinstance(v, (int, float)) else "-"
print("| model | conv engine | images/s f32 | images/s TF32 | images/s TF32 im2col | images/s bf16 | official images/s | peak MiB TF32 | official peak MiB | MiB/image TF32 | official MiB/image | MFU TF32 |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for model, r in ours.items():
    b, t, i, h, m = (r.get(k, {}) for k in ("bench", "bench-tf32", "bench-tf32-im2col", "bench-bf16", "memory"))
    o = official.get(model, {})
    o_slope = (o[64]["peak_bytes"] - o[32]["peak_bytes"]) / 32 / mib if 32 in o and 64 in o else None
    flops = o.get(64, {}).get("flops_per_image")
    mfu = 100 * t["images_per_second"] * flops / peak if flops and t.get("images_per_second") else None
    print("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
        model, b.get("conv_engine", "-"),
        fmt(b.get("images_per_second"), "%.0f"), fmt(t.get("images_per_second"), "%.0f"),
        fmt(i.get("images_per_second"), "%.0f"), fmt(h.get("images_per_second"), "%.0f"),
        fmt(o.get(64, {}).get("images_per_second"), "%.0f"),
        fmt(t["peak_memory_bytes"] / mib if t else None, "%.0f"),
        fmt(o[64]["peak_bytes"] / mib if 64 in o else None, "%.0f"),
        fmt(m["bytes_per_image_slope"] / mib if m.get("bytes_per_image_slope") else None, "%.1f"),
        fmt(o_slope, "%.1f"), fmt(mfu, "%.1f%%")))
print()
print("Memory columns: ours from the TF32 step (`bench` for the peak, `memory` for the slope), the mode "
      "of the speed compared; the official code's from its own timed run.")
print(f"MFU TF32: our TF32 images/s x the official step's FLOPs per image / {peak / 1e12:.0f} TFLOP/s "
      "dense TF32 (PEAK_TFLOPS_TF32).")
try:
    environment = json.load(open(sys.argv[2]))["environment"]
    scope = "convolutions and matmuls" if environment.get("tf32_matmul") else "convolutions only"
    print(f"The official run put TF32 on {scope}; ours under --precision tf32 on convolutions, "
          "linear layers and attention.")
except (OSError, ValueError, KeyError):
    pass
PY
fi

for bench in gpu-bin/benches/*; do
  [ -x "$bench" ] || continue
  name=$(basename "$bench")
  [[ $name =~ ^(${CHECK_BENCHES:-.*})$ ]] || continue
  run_logged "bench-$name" 150 "$bench" --bench --warm-up-time 0.5 --measurement-time 1 --sample-size 30 --noplot ${BENCH_FILTER:-} || status=1
  section "bench $name"
  grep -E 'time:|thrpt:|^[a-z_0-9]+/|SKIP' "$OUT_DIR/bench-$name.log" >>"$REPORT"
  end_section
done

finish
exit $status
