#!/usr/bin/env bash
# Builds, on the CPU machine, everything gpu/check.sh runs on the GPU machine (which has no Rust
# and no network), into the git-ignored folder gpu-bin/ named in the device call's `carry`, packed
# as gpu-bin/bundle.tgz, which gpu/check.sh unpacks:
#   gpu-bin/revsnn          the release binary
#   gpu-bin/tests/*         every GPU test binary (tests/gpu_*.rs, gpu/tests/nvrtc_kernels.rs and
#                           nccl_streams.rs)
#   gpu-bin/benches/*       the GPU criterion benches (benches/gpu_*.rs)
#   gpu-bin/kernel-cache/   every kernel file compiled for CARRY_ARCH (default sm_90: H100, H200)
#                           by `revsnn kernels`, when NVRTC is in .nvrtc/ (as .ci/run installs it)
# Optionally (for the PyTorch baseline) .whl/ with the SpikingJelly 0.0.0.0.12 wheel and
# .official/ with the official model files: see gpu/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf gpu-bin && mkdir -p gpu-bin/tests gpu-bin/benches
cargo build --release --bin revsnn
cp target/release/revsnn gpu-bin/
select_executables() { # $1: cargo args; $2: regex on target names
  # shellcheck disable=SC2086
  cargo $1 --no-run --message-format=json 2>/dev/null | python3 -c '
import json, re, sys
pattern = re.compile(sys.argv[1])
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and pattern.fullmatch(m["target"]["name"]):
        print(m["target"]["name"], m["executable"])
' "$2"
}
select_executables "test --release --workspace" 'gpu_.*|nvrtc_kernels|nccl_streams' | while read -r name path; do cp "$path" "gpu-bin/tests/$name"; done
select_executables "bench --workspace" 'gpu_.*' | while read -r name path; do cp "$path" "gpu-bin/benches/$name"; done
# line tables and symbols make the binaries 4x larger, and the carried tree is limited to 64 MiB:
# strip both (a panic still names its file and line; a backtrace loses the function names)
find gpu-bin -type f -exec strip {} +
NV="$PWD/.nvrtc/nvidia/cu13"
if [ -f "$NV/lib/libnvrtc.so.13" ]; then
  LD_LIBRARY_PATH="$NV/lib" REVSNN_CUDA_INCLUDE="$NV/include" \
    REVSNN_KERNEL_CACHE="$PWD/gpu-bin/kernel-cache" gpu-bin/revsnn kernels --arch "${CARRY_ARCH:-sm_90}"
else
  echo "SKIP: no NVRTC in .nvrtc/ (docs/toolchain.md): the GPU machine compiles the kernels itself"
fi
ls -la gpu-bin gpu-bin/tests gpu-bin/benches
# stripped, they still come near 64 MiB with the wheels: one gzip archive is about a third of that,
# and gpu/check.sh unpacks it in place
tar -C gpu-bin -czf bundle.tgz . && rm -rf gpu-bin/* && mv bundle.tgz gpu-bin/
ls -la gpu-bin
du -sh gpu-bin
