#!/usr/bin/env bash
# The one prepared GPU script (gpu/README.md). On the GPU machine, from the repository root:
#   bash gpu/check.sh "$OUT"
# Runs every GPU test and benchmark carried in gpu-bin/ (built here by gpu/build-carry.sh), then
# `revsnn bench` and `revsnn memory` on CUDA for the headline presets, then (only with
# PYTORCH_BASELINE=1, and when .official/ and .whl/ were carried) the official PyTorch baseline,
# whose numbers are committed in benches/results/2026-11-27-h200.md. Writes report.md plus logs
# into the output folder. A missing GPU fails the tests (REVSNN_REQUIRE_GPU=1). About 8 minutes
# of GPU time without the baseline: every CLI run has a timeout, and the CLI runs stop starting
# once CLI_BUDGET_S seconds (default 300) have gone to them.
set -uo pipefail
OUT_DIR=${1:?usage: gpu/check.sh OUTPUT_FOLDER}
mkdir -p "$OUT_DIR"
REPORT="$OUT_DIR/report.md"
cd "$(dirname "$0")/.."

SP=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || echo /nonexistent)
export LD_LIBRARY_PATH="$SP/nvidia/cu13/lib:$SP/nvidia/cudnn/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export REVSNN_CUDA_INCLUDE="$SP/nvidia/cu13/include:/usr/local/cuda/include"
export REVSNN_REQUIRE_GPU=1 REVSNN_REQUIRE_NVRTC=1 PYTHONUNBUFFERED=1
status=0

section() { printf '\n## %s\n\n```\n' "$1" >>"$REPORT"; }
end_section() { printf '```\n' >>"$REPORT"; }
run_logged() { # $1: log name; rest: command
  local log="$OUT_DIR/$1.log"; shift
  local start=$SECONDS
  "$@" >"$log" 2>&1; local rc=$?
  echo "[$1] rc=$rc in $((SECONDS - start)) s" | tee -a "$REPORT.summary"
  return $rc
}

{
  echo "# GPU check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
} >"$REPORT"
: >"$REPORT.summary"

section "card and driver"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >>"$REPORT" 2>&1
end_section

section "revsnn info"
gpu-bin/revsnn info >>"$REPORT" 2>&1 || status=1
end_section

for test in gpu-bin/tests/*; do
  [ -x "$test" ] || continue
  name=$(basename "$test")
  run_logged "test-$name" "$test" --nocapture --test-threads=1 || status=1
  section "test $name"
  grep -E '^(test |SKIP|NVRTC|f32|f64)|test result|panicked' "$OUT_DIR/test-$name.log" >>"$REPORT"
  end_section
done

for bench in gpu-bin/benches/*; do
  [ -x "$bench" ] || continue
  name=$(basename "$bench")
  run_logged "bench-$name" "$bench" --bench --warm-up-time 1 --measurement-time 3 --noplot || status=1
  section "bench $name"
  grep -E 'time:|thrpt:|^[a-z_0-9]+/|SKIP' "$OUT_DIR/bench-$name.log" >>"$REPORT"
  end_section
done

# `revsnn bench` and `revsnn memory` on CUDA (issue 5's training-step figures, T = 4). A failing
# or timed-out command is logged and the next one runs.
CLI_MODELS=${CLI_MODELS:-revsresnet37,msresnet34,revsformer-4-384,spikingformer-4-384}
CLI_BUDGET_S=${CLI_BUDGET_S:-300}
cli_start=$SECONDS
: >"$OUT_DIR/cli-results.jsonl"
for model in ${CLI_MODELS//,/ }; do
  for what in bench bench-tf32 memory; do
    if [ $((SECONDS - cli_start)) -ge "$CLI_BUDGET_S" ]; then
      echo "[$what-$model] skipped: CLI_BUDGET_S=$CLI_BUDGET_S s spent" | tee -a "$REPORT.summary"
      continue
    fi
    if [ "$what" = bench ]; then
      run_logged "cli-bench-$model" timeout 90 gpu-bin/revsnn bench --device cuda --model "$model" \
        --batch 64 --steps 10 --json || status=1
    elif [ "$what" = bench-tf32 ]; then
      # PyTorch runs its convolutions on TF32 by default: the like-for-like speed comparison
      run_logged "cli-bench-tf32-$model" timeout 90 gpu-bin/revsnn bench --device cuda --tf32 \
        --model "$model" --batch 64 --steps 10 --json || status=1
    else
      run_logged "cli-memory-$model" timeout 60 gpu-bin/revsnn memory --device cuda --model "$model" \
        --batch 32,64 --json || status=1
    fi
    section "revsnn $what --device cuda --model $model"
    cat "$OUT_DIR/cli-$what-$model.log" >>"$REPORT"
    end_section
    grep -h '^{' "$OUT_DIR/cli-$what-$model.log" | sed "s/^{/{\"command\":\"$what\",/" \
      >>"$OUT_DIR/cli-results.jsonl"
  done
done
printf '\n## training step on CUDA (f32, T = 4): bench at batch 64, memory at batch 32 and 64\n\n' >>"$REPORT"
python3 - "$OUT_DIR/cli-results.jsonl" >>"$REPORT" 2>&1 <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    rows.setdefault(r["model"], {})[r["command"]] = r
mib = 2.0 ** 20
print("| model | device | step s | images/s | images/s (TF32) | peak MiB (b64) | MiB/image slope | MiB/image at b64 |")
print("|---|---|---|---|---|---|---|---|")
for model, r in rows.items():
    b, t, m = r.get("bench", {}), r.get("bench-tf32", {}), r.get("memory", {})
    fmt = lambda v, f: (f % v) if isinstance(v, (int, float)) else "-"
    print("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
        model, b.get("device", m.get("device", "-")),
        fmt(b.get("median_step_seconds"), "%.4f"), fmt(b.get("images_per_second"), "%.1f"),
        fmt(t.get("images_per_second"), "%.1f"),
        fmt(b.get("peak_memory_bytes", 0) / mib if b else None, "%.1f"),
        fmt((m.get("bytes_per_image_slope") or 0) / mib if m else None, "%.2f"),
        fmt(m.get("bytes_per_image_at_max_batch", 0) / mib if m else None, "%.2f")))
PY

if [ "${PYTORCH_BASELINE:-0}" = 1 ] && [ -d .official ] && ls .whl/spikingjelly-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/spikingjelly-*.whl
  if ls .whl/timm-0.6.12-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/timm06 .whl/timm-0.6.12-*.whl
    export TIMM_FALLBACK=/tmp/timm06
  fi
  export PYTHONPATH=/tmp/site
  run_logged pytorch-baseline python3 benches/pytorch/official_baseline.py --official .official \
    --models "${BASELINE_MODELS:-revsresnet37,msresnet34,revsformer-4-384,spikingformer-4-384,revsresnet21,revsresnet109,msresnet18,msresnet104,revsformer-2-384,spikingformer-2-384}" \
    --batches 32,64 --steps "${BASELINE_STEPS:-10}" --out "$OUT_DIR/pytorch-baseline.json" \
    --markdown "$OUT_DIR/pytorch-baseline.md" || status=1
  section "official PyTorch baseline"
  cat "$OUT_DIR/pytorch-baseline.md" >>"$REPORT" 2>/dev/null
  end_section
fi

section "summary"
cat "$REPORT.summary" >>"$REPORT"
end_section
rm -f "$REPORT.summary"
cat "$REPORT"
exit $status
