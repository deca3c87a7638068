# The mixed-precision stage of gpu/check.sh, which sources it (it uses check.sh's run_logged,
# section, end_section, official_ready, REPORT, OUT_DIR, REVSNN and status): for each
# PRECISION_RUNS entry `model:batch` (default the four CIFAR presets at batch 64, T = 4, and the
# DVS presets revsresnet24 and revsformer-2-256 at batch 16, T = 10), `revsnn bench` and
# `revsnn memory` (batch/2 and batch, for the slope) in bf16 and fp16; then, when the official
# model files were carried, the official code on the same presets and batches under its AMP
# recipe (autocast fp16 + GradScaler, enable_amp=True: benches/pytorch/official_baseline.py
# --amp), which also counts the step's FLOPs. The table compares images/s and MiB per image with
# the official AMP figures, and gives the model FLOP utilisation against the card's dense 16-bit
# peak (PEAK_TFLOPS_16, default 989 for an H200 or H100 SXM). For the PRECISION_IM2COL_MODELS
# (default revsresnet37) bf16 also runs on the im2col engine, beside cuDNN's 16-bit
# configurations (docs/precision.md, CUDA).
# Knobs: PRECISION_RUNS, PRECISION_IM2COL_MODELS, PRECISION_BUDGET_S (default 180; the stage's
# steps are cut to it and to DEADLINE_S), PRECISION_BASELINE=0 (no official AMP run),
# PRECISION_STEPS (timed steps per bench, default 10), PRECISION_DEVICE (cuda; cpu for a dry run
# of the logic, with small PRECISION_RUNS), PRECISION_MODEL_ARGS (extra model flags for bench and
# memory, e.g. '--time-steps 1' for a dry run). .ci/run dry-runs the stage on the CPU at every
# stop.

PRECISION_BUDGET_S=${PRECISION_BUDGET_S:-180}
PRECISION_DEVICE=${PRECISION_DEVICE:-cuda}
PRECISION_STEPS=${PRECISION_STEPS:-10}
PRECISION_RUNS=${PRECISION_RUNS:-revsresnet37:64,msresnet34:64,revsformer-4-384:64,spikingformer-4-384:64,revsresnet24:16,revsformer-2-256:16}
read -r -a PRECISION_MODEL_FLAGS <<<"${PRECISION_MODEL_ARGS:-}"
STAGE_END=$((SECONDS + PRECISION_BUDGET_S))
: >"$OUT_DIR/precision-results.jsonl"
declare -A amp_models # batch -> the models run at it, for the official code below
for run in ${PRECISION_RUNS//,/ }; do
  model=${run%%:*} batch=${run##*:}
  amp_models[$batch]+="${amp_models[$batch]:+,}$model"
  for precision in bf16 fp16; do
    precision_args=(--device "$PRECISION_DEVICE" --precision "$precision" --model "$model"
      "${PRECISION_MODEL_FLAGS[@]}")
    run_logged "precision-bench-$precision-$model" 60 "$REVSNN" bench "${precision_args[@]}" \
      --batch "$batch" --steps "$PRECISION_STEPS" --json || status=1
    run_logged "precision-memory-$precision-$model" 60 "$REVSNN" memory "${precision_args[@]}" \
      --batch "$((batch / 2)),$batch" --json || status=1
    whats="bench memory"
    if [ "$precision" = bf16 ] && [[ ",${PRECISION_IM2COL_MODELS-revsresnet37}," == *",$model,"* ]]; then
      REVSNN_CONV_ENGINE=im2col run_logged "precision-bench-im2col-$precision-$model" 60 "$REVSNN" bench \
        "${precision_args[@]}" --batch "$batch" --steps "$PRECISION_STEPS" --json || status=1
      whats+=" bench-im2col"
    fi
    for what in $whats; do
      grep -h '^{' "$OUT_DIR/precision-$what-$precision-$model.log" |
        sed "s/^{/{\"command\":\"$what\",/" >>"$OUT_DIR/precision-results.jsonl"
    done
  done
done

# The official code under AMP: one process per batch of the runs, over its models (the DVS model
# files, from cifar10-dvs/, are carried in .official-dvs).
if [ "${PRECISION_BASELINE:-1}" = 1 ] && [ "${#amp_models[@]}" -gt 0 ] && official_ready; then
  for batch in "${!amp_models[@]}"; do
    run_logged "pytorch-amp-batch$batch" 150 python3 benches/pytorch/official_baseline.py --amp \
      --official .official --official-dvs .official-dvs --models "${amp_models[$batch]}" \
      --batches "$((batch / 2)),$batch" --steps "${BASELINE_STEPS:-10}" \
      --out "$OUT_DIR/pytorch-amp-batch$batch.json" || status=1
  done
fi

section "mixed precision: bf16 and fp16 against the official code under AMP"
python3 - "$OUT_DIR" "${PEAK_TFLOPS_16:-989}" >>"$REPORT" 2>&1 <<'PY'
import glob, json, sys
out, peak = sys.argv[1], float(sys.argv[2]) * 1e12
mib = 2.0 ** 20
ours = {}
for line in open(f"{out}/precision-results.jsonl"):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    ours.setdefault(r["model"], {})[(r["command"], r["precision"])] = r
official = {}
for path in glob.glob(f"{out}/pytorch-amp-batch*.json"):
    try:
        for r in json.load(open(path))["results"]:
            if "error" not in r:
                official.setdefault(r["model"], {})[r["batch"]] = r
    except (OSError, ValueError, KeyError):
        pass

def fmt(value, spec):
    return spec % value if isinstance(value, (int, float)) else "-"

def ratio(a, b):
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None

print("| model | batch | images/s bf16 | bf16 on im2col | images/s fp16 | official AMP images/s | bf16 / official | "
      "fp16 / official | MiB/image bf16 | MiB/image fp16 | official AMP MiB/image | bf16 / official | "
      "fp16 / official | GFLOP/image | MFU bf16 | MFU fp16 |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for model, r in ours.items():
    bench = {p: r.get(("bench", p), {}) for p in ("bf16", "fp16")}
    memory = {p: r.get(("memory", p), {}) for p in ("bf16", "fp16")}
    batch = next((b.get("batch") for b in bench.values() if b), None)
    runs = official.get(model, {})
    top = runs.get(batch, {})
    low = runs.get(batch // 2, {}) if batch else {}
    o_slope = (top["peak_bytes"] - low["peak_bytes"]) / (batch - batch // 2) / mib if top and low else None
    speed = {p: bench[p].get("images_per_second") for p in bench}
    im2col = r.get(("bench-im2col", "bf16"), {}).get("images_per_second")
    slope = {p: (memory[p].get("bytes_per_image_slope") or 0) / mib or None for p in memory}
    flops = top.get("flops_per_image")
    mfu = {p: ratio(speed[p] * flops, peak) if speed[p] and flops else None for p in speed}
    o_speed = top.get("images_per_second")
    print("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
        model, batch, fmt(speed["bf16"], "%.0f"), fmt(im2col, "%.0f"), fmt(speed["fp16"], "%.0f"),
        fmt(o_speed, "%.0f"), fmt(ratio(speed["bf16"], o_speed), "%.2fx"),
        fmt(ratio(speed["fp16"], o_speed), "%.2fx"),
        fmt(slope["bf16"], "%.1f"), fmt(slope["fp16"], "%.1f"), fmt(o_slope, "%.1f"),
        fmt(ratio(slope["bf16"], o_slope), "%.2fx"), fmt(ratio(slope["fp16"], o_slope), "%.2fx"),
        fmt(flops and flops / 1e9, "%.1f"),
        fmt(mfu["bf16"] and 100 * mfu["bf16"], "%.1f%%"), fmt(mfu["fp16"] and 100 * mfu["fp16"], "%.1f%%")))
print()
print("Targets (issue 11): images/s at least 2x the official code's under AMP, memory per image at "
      "most 0.5x; the ratios divide ours by the official figure at the same batch.")
print(f"MFU: images/s x the official step's matmul and convolution FLOPs per image (forward, recompute, "
      f"backward; torch's own FLOP formulas) / {peak / 1e12:.0f} TFLOP/s dense 16-bit. The bf16 and fp16 "
      f"columns run the device's engine (cuDNN on a GPU); 'bf16 on im2col' the im2col engine.")
PY
end_section
unset STAGE_END
