#!/usr/bin/env bash
# Builds the CPU emulator of the CUDA driver, cuBLAS, cuDNN and NCCL into OUT_DIR:
#   libcuda.so.1 (+ libcuda.so)      the driver API cudarc calls, with every gpu/kernels/*.cu inside;
#                                    REVSNN_EMU_DEVICES devices (default 1)
#   libcublas.so.13 (+ libcublas.so) handles and GEMMs
#   libcudnn.so.9 (+ libcudnn.so)    descriptors, algorithm rankings and the three convolution passes
#   libnccl.so.2 (+ libnccl.so)      communicators, all-reduce (sum), all-gather and broadcast between
#                                    processes on this machine, through files in a directory
# and runs the self-tests of the execution model (selftest) and of the fake NCCL (nccl_selftest,
# three processes, a few seconds).
# usage: gpu/emulator/build.sh OUT_DIR
# Needs g++ (C++17), python3 and cuda.h: $REVSNN_CUDA_INCLUDE, else .nvrtc/nvidia/cu13/include
# (installed by .ci/run with NVRTC). See gpu/README.md, "Running the GPU tests on the CPU emulator".
set -euo pipefail
OUT="${1:?usage: gpu/emulator/build.sh OUT_DIR}"
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
INCLUDE="${REVSNN_CUDA_INCLUDE:-$ROOT/.nvrtc/nvidia/cu13/include}"
if [ ! -f "$INCLUDE/cuda.h" ]; then
  echo "build.sh: no cuda.h in $INCLUDE (set REVSNN_CUDA_INCLUDE, or run .ci/run once to install NVRTC's headers)" >&2
  exit 1
fi
CXX="${CXX:-g++}"
mkdir -p "$OUT/obj"
OUT="$(cd "$OUT" && pwd)"
# -ffp-contract=off: every multiply and add rounds separately, as written (see cuda_shim.h).
# -fno-ipa-reference: never assume a `__shared__` static is unchanged across a barrier call.
FLAGS=(-std=c++17 -O2 -fPIC -fvisibility=hidden -ffp-contract=off -fno-ipa-reference -g0 -I"$HERE" -I"$INCLUDE")
WARN=(-Wall -Wextra -Wno-unknown-pragmas -Wno-unused-parameter -Wno-sign-compare)

mapfile -t UNITS < <(python3 "$HERE/gen_registry.py" "$ROOT/gpu/kernels" "$ROOT/gpu/src/kernels.rs" "$OUT/gen" \
  "$CXX" -std=c++17 -I"$HERE")

compile() {  # source -> object, skipped when the object is newer than every input
  local src="$1" obj="$OUT/obj/$(basename "${1%.*}").o"
  local deps=("$src" "$HERE"/*.h "$ROOT"/gpu/kernels/*.cuh "$HERE/build.sh")
  case "$src" in "$OUT"/gen/kernels_*.cpp) deps+=("$(sed -n 's/^#include "\(\/.*\.cu\)"$/\1/p' "$src")");; esac
  local newest
  newest="$(ls -t "${deps[@]}" 2>/dev/null | head -1)"
  if [ -f "$obj" ] && [ "$obj" -nt "$newest" ]; then echo "$obj"; return; fi
  "$CXX" "${FLAGS[@]}" "${WARN[@]}" -c "$src" -o "$obj"
  echo "$obj"
}

SOURCES=("$HERE/emulator.cpp" "$HERE/fake_cuda.cpp" "${UNITS[@]}")
OBJECTS=()
JOBS="${REVSNN_EMU_JOBS:-2}"
pids=()
for src in "${SOURCES[@]}"; do
  compile "$src" > "$OUT/obj/$(basename "${src%.*}").list" &
  pids+=($!)
  if [ "${#pids[@]}" -ge "$JOBS" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for pid in "${pids[@]}"; do wait "$pid"; done
for src in "${SOURCES[@]}"; do OBJECTS+=("$(cat "$OUT/obj/$(basename "${src%.*}").list")"); done

"$CXX" -shared -Wl,-soname,libcuda.so.1 -Wl,--no-undefined -o "$OUT/libcuda.so.1" "${OBJECTS[@]}" -lpthread
ln -sf libcuda.so.1 "$OUT/libcuda.so"
"$CXX" "${FLAGS[@]}" "${WARN[@]}" -shared -Wl,-soname,libcublas.so.13 -Wl,--no-undefined \
  -o "$OUT/libcublas.so.13" "$HERE/fake_cublas.cpp" -L"$OUT" -l:libcuda.so.1 -Wl,-rpath,'$ORIGIN'
ln -sf libcublas.so.13 "$OUT/libcublas.so"
"$CXX" "${FLAGS[@]}" "${WARN[@]}" -shared -Wl,-soname,libcudnn.so.9 -Wl,--no-undefined \
  -o "$OUT/libcudnn.so.9" "$HERE/fake_cudnn.cpp" -L"$OUT" -l:libcuda.so.1 -Wl,-rpath,'$ORIGIN'
ln -sf libcudnn.so.9 "$OUT/libcudnn.so"
"$CXX" "${FLAGS[@]}" "${WARN[@]}" -shared -Wl,-soname,libnccl.so.2 -Wl,--no-undefined \
  -o "$OUT/libnccl.so.2" "$HERE/fake_nccl.cpp" -L"$OUT" -l:libcuda.so.1 -Wl,-rpath,'$ORIGIN'
ln -sf libnccl.so.2 "$OUT/libnccl.so"
echo "build.sh: emulator in $OUT" >&2

# The execution model's own checks (barriers, shuffles, run order, launch validation), against the
# objects just built, in both orders, then host-only mode's.
"$CXX" "${FLAGS[@]}" "${WARN[@]}" -o "$OUT/selftest" "$HERE/selftest.cpp" "$OUT/obj/emulator.o" -lpthread
REVSNN_EMU_ORDER=forward "$OUT/selftest"
REVSNN_EMU_ORDER=reverse "$OUT/selftest"
REVSNN_EMU_HOST_ONLY=1 "$OUT/selftest"
REVSNN_EMU_ALIGN=256 "$OUT/selftest"
# The fake NCCL's checks: three processes, each on its own emulated device.
"$CXX" "${FLAGS[@]}" "${WARN[@]}" -o "$OUT/nccl_selftest" "$HERE/nccl_selftest.cpp" -L"$OUT" -l:libnccl.so.2 \
  -l:libcuda.so.1 -Wl,-rpath,'$ORIGIN'
"$OUT/nccl_selftest"
