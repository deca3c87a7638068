# The profile stage of gpu/check.sh, which sources it when CHECK_PROFILE=1 (it uses check.sh's
# run_logged, section, end_section, REPORT, OUT_DIR, REVSNN and status): where the time of one
# training step goes, per kernel, for each of PROFILE_MODELS (default revsresnet37 and
# spikingformer-4-384, the convolutional and the transformer presets) in each of
# PROFILE_PRECISIONS (default bf16; bf16,fp16,tf32 for all three). An entry is
# MODEL[:BATCH[:T]]: BATCH defaults to PROFILE_BATCH (default 64), T to the preset's own (4 for
# the CIFAR presets, 10 for the DVS ones), e.g. revsresnet24:16 for an event preset at its
# official batch:
#   - the cuDNN plans the step makes (REVSNN_CUDNN_PLANS: each shape's algorithm, math type and
#     cuDNN's whole ranking), from `revsnn bench --steps 1`;
#   - Nsight Compute's duration and DRAM bytes read and written of every kernel of `revsnn bench
#     --steps 1` (the warm-up step and the timed one; clocks left alone; ncu flushes the caches
#     before each kernel, so both are a cold L2's, and may replay a kernel to collect the three
#     metrics), summed per kernel name by gpu/profile-table.py: the top PROFILE_TOP (default 25)
#     names per model and precision in the report, each with the bandwidth it moved its bytes at
#     against the card's (PEAK_TBPS: 4.8 on an H200, 3.35 on an H100 SXM, else set it), and how
#     busy the device is (kernel time per step against a timed step's wall time: what a CUDA
#     graph of the step could save at most).
# Knobs: PROFILE_MODELS, PROFILE_BATCH, PROFILE_PRECISIONS, PROFILE_TOP, PEAK_TBPS,
# PROFILE_BUDGET_S (default 240; the stage's steps are cut to it and to DEADLINE_S).

PROFILE_BUDGET_S=${PROFILE_BUDGET_S:-240}
PROFILE_MODELS=${PROFILE_MODELS:-revsresnet37,spikingformer-4-384}
PROFILE_BATCH=${PROFILE_BATCH:-64}
PROFILE_PRECISIONS=${PROFILE_PRECISIONS:-bf16}
if [ -z "${PEAK_TBPS:-}" ]; then
  case "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)" in
    *H200*) PEAK_TBPS=4.8 ;;
    *H100*PCIe*) PEAK_TBPS=2.0 ;;
    *H100*NVL*) PEAK_TBPS=3.9 ;;
    *H100*) PEAK_TBPS=3.35 ;;
    *) PEAK_TBPS=0 ;;
  esac
fi
# One profiled training step of the PROFILE_MODELS entry $1 (MODEL[:BATCH[:T]]) in precision
# $2: its cuDNN plans, then its kernels.
profile_step() {
  local model batch time_steps p=$2
  IFS=: read -r model batch time_steps <<<"$1"
  batch=${batch:-$PROFILE_BATCH}
  local tag="$model-b$batch${time_steps:+-t$time_steps}-$p"
  local shape="batch $batch${time_steps:+, T $time_steps}"
  local bench=("$REVSNN" bench --device cuda --precision "$p" --model "$model" --batch "$batch"
    ${time_steps:+--time-steps "$time_steps"} --steps 1 --json)
  REVSNN_CUDNN_PLANS=1 run_logged "profile-plans-$tag" 60 "${bench[@]}" || status=1
  section "cuDNN plans, $model $shape, $p: shapes per algorithm"
  local plan='^cuDNN plan: \(cudnnConvolution[A-Za-z]*\) .*}: \([A-Z_0-9]*\) with \([A-Z_]*\),.*'
  sed -n "s/$plan/\\1 \\2 \\3/p" "$OUT_DIR/profile-plans-$tag.log" | sort | uniq -c | sort -rn \
    >>"$REPORT"
  end_section
  if [ -z "$NCU" ]; then
    echo "SKIP: profile-kernels-$tag: Nsight Compute (ncu) is not on this machine" |
      tee -a "$REPORT"
    return
  fi
  run_logged "profile-kernels-$tag" 120 "$NCU" --clock-control none \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
    --csv --page raw "${bench[@]}" || status=1
  local title="kernel time and DRAM bytes per name, $model $shape, $p"
  section "$title (warm-up and timed step)"
  # the step's wall time: the precision stage's 10-step bench where it ran at this batch and T,
  # else the plans run's single step
  local timed="$OUT_DIR/precision-bench-$p-$model.log"
  same_step "$timed" "$batch" "$time_steps" || timed="$OUT_DIR/profile-plans-$tag.log"
  python3 gpu/profile-table.py "$OUT_DIR/profile-kernels-$tag.log" "${PROFILE_TOP:-25}" "$timed" \
    "$PEAK_TBPS" >>"$REPORT" 2>&1
  end_section
}

# Whether the bench JSON in log $1 timed a step at batch $2 and, when $3 is given, T = $3.
same_step() {
  [ -s "$1" ] && grep -q "\"batch\":$2," "$1" && { [ -z "$3" ] || grep -q "\"time_steps\":$3," "$1"; }
}

STAGE_END=$((SECONDS + PROFILE_BUDGET_S))
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null |
  head -n 1)
for model in ${PROFILE_MODELS//,/ }; do
  for p in ${PROFILE_PRECISIONS//,/ }; do
    profile_step "$model" "$p"
  done
done
unset STAGE_END
