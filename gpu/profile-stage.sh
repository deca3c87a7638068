# The profile stage of gpu/check.sh, which sources it when CHECK_PROFILE=1 (it uses check.sh's
# run_logged, section, end_section, REPORT, OUT_DIR, REVSNN and status): where the time of one
# training step goes, per kernel, in each of PROFILE_PRECISIONS (default bf16,fp16,tf32) for
# PROFILE_MODEL (default revsresnet37) at PROFILE_BATCH (default 64), T = 4:
#   - the cuDNN plans the step makes (REVSNN_CUDNN_PLANS: each shape's algorithm, math type and
#     cuDNN's whole ranking), from `revsnn bench --steps 1`;
#   - Nsight Compute's duration of every kernel of `revsnn bench --steps 1` (the warm-up step and
#     the timed one; one metric, gpu__time_duration, so each kernel runs once; clocks left alone),
#     summed per kernel name: the top PROFILE_TOP (default 25) names per precision in the report,
#     and how busy the device is (kernel time per step against a timed step's wall time: what
#     a CUDA graph of the step could save at most).
# Knobs: PROFILE_MODEL, PROFILE_BATCH, PROFILE_PRECISIONS, PROFILE_TOP, PROFILE_BUDGET_S (default
# 150; the stage's steps are cut to it and to DEADLINE_S).

PROFILE_BUDGET_S=${PROFILE_BUDGET_S:-150}
PROFILE_MODEL=${PROFILE_MODEL:-revsresnet37}
PROFILE_BATCH=${PROFILE_BATCH:-64}
PROFILE_PRECISIONS=${PROFILE_PRECISIONS:-bf16,fp16,tf32}
STAGE_END=$((SECONDS + PROFILE_BUDGET_S))
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null |
  head -n 1)
for p in ${PROFILE_PRECISIONS//,/ }; do
  bench=("$REVSNN" bench --device cuda --precision "$p" --model "$PROFILE_MODEL"
    --batch "$PROFILE_BATCH" --steps 1 --json)
  REVSNN_CUDNN_PLANS=1 run_logged "profile-plans-$p" 60 "${bench[@]}" || status=1
  section "cuDNN plans, $PROFILE_MODEL batch $PROFILE_BATCH, $p: shapes per algorithm"
  plan='^cuDNN plan: \(cudnnConvolution[A-Za-z]*\) .*}: \([A-Z_0-9]*\) with \([A-Z_]*\),.*'
  sed -n "s/$plan/\\1 \\2 \\3/p" "$OUT_DIR/profile-plans-$p.log" | sort | uniq -c | sort -rn \
    >>"$REPORT"
  end_section
  if [ -z "$NCU" ]; then
    echo "SKIP: profile-kernels-$p: Nsight Compute (ncu) is not on this machine" | tee -a "$REPORT"
    continue
  fi
  run_logged "profile-kernels-$p" 120 "$NCU" --clock-control none --metrics gpu__time_duration.sum \
    --csv --page raw "${bench[@]}" || status=1
  section "kernel time per name, $PROFILE_MODEL batch $PROFILE_BATCH, $p (warm-up and timed step)"
  # the step's wall time: the precision stage's 10-step bench at this batch where it ran, else
  # the plans run's single step
  timed="$OUT_DIR/precision-bench-$p-$PROFILE_MODEL.log"
  [ "$PROFILE_BATCH" = 64 ] && [ -s "$timed" ] || timed="$OUT_DIR/profile-plans-$p.log"
  python3 - "$OUT_DIR/profile-kernels-$p.log" "${PROFILE_TOP:-25}" "$timed" >>"$REPORT" 2>&1 <<'PY'
import csv, json, sys
from collections import defaultdict
rows = [r for r in csv.reader(open(sys.argv[1], errors="replace")) if len(r) > 3]
header = next((r for r in rows if "Kernel Name" in r and "gpu__time_duration.sum" in r), None)
if header is None:
    sys.exit("no kernel table in the log (ncu failed or was cut short)")
name, duration = header.index("Kernel Name"), header.index("gpu__time_duration.sum")
scale = {"ns": 1e-6, "nsecond": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0, "msecond": 1.0,
         "s": 1e3, "second": 1e3}
unit = 1.0
per_name = defaultdict(lambda: [0, 0.0])
for r in rows[rows.index(header) + 1:]:
    if r[duration] in scale:
        unit = scale[r[duration]]
        continue
    try:
        ms = float(r[duration].replace(",", "")) * unit
    except ValueError:
        continue
    entry = per_name[r[name][:110]]
    entry[0] += 1
    entry[1] += ms
total = sum(ms for _, ms in per_name.values())
launches = sum(n for n, _ in per_name.values())
print(f"{launches} kernel launches, {total:.1f} ms of kernel time in all")
# How busy the device is: kernel time per step (half of the two steps' total) against the wall
# time of a step. The rest is the most that capturing the step as a CUDA graph (no launch gaps,
# no host work between kernels) could save.
try:
    bench = next(json.loads(l) for l in open(sys.argv[3]) if l.startswith("{"))
    wall = 1e3 * bench["median_step_seconds"]
    print(f"device busy {100 * total / 2 / wall:.0f}% of a step: {total / 2:.1f} ms of kernels per "
          f"step against a {wall:.1f} ms step ({sys.argv[3].rsplit('/', 1)[-1]})")
except (OSError, StopIteration, ValueError, KeyError):
    print("device busy: no timed step to compare with")
print(f"{'ms':>9} {'share':>6} {'launches':>8}  kernel")
for kernel, (n, ms) in sorted(per_name.items(), key=lambda kv: -kv[1][1])[:int(sys.argv[2])]:
    print(f"{ms:9.2f} {100 * ms / total:5.1f}% {n:8d}  {kernel}")
PY
  end_section
done
unset STAGE_END
