#!/usr/bin/env python3
"""Where one CPU training step's time goes: `perf` call-stack samples of `revsnn bench`, grouped
by kind of work.

    python3 benches/profile/cpu_step.py --binary target/release/revsnn --model revsresnet21 \
        [--batch 8] [--steps 3] [--threads 2] [--json out.json]

Runs `perf record -g --call-graph dwarf` on `revsnn bench` (one warm-up step and `--steps` timed
steps; the release profile keeps debug info, so inlined frames are named), then assigns every
sample to the first kind of work found walking from the leaf of its stack to the root:

- allocation: page faults, malloc/free/calloc, mmap/munmap, memset of fresh buffers;
- conv input gradient, conv weight gradient (including the bias gradient), conv forward (dense
  GEMM or the spike path), BatchNorm and neuron (each split into forward and backward by a frame
  further up the stack; "batch norm" alone is the rest, e.g. the running statistics), optimizer,
  other ops (linear, pooling, loss, elementwise tensor ops);
- idle: rayon workers waiting for work (one thread runs while the other waits);
- other: everything else (network set-up, argument parsing, the model's glue code).

The reversible backward's recompute (docs/reversible.md §3.3) runs the blocks' forward ops a second
time; it is counted under the forward kinds (rayon's worker stacks do not reach the model code, so
a sample cannot tell the recompute from the forward). The shares are of all samples (both threads,
set-up and warm-up included; with the default 3 timed steps the set-up is a few percent).
Needs `perf` (`linux-perf`) and permission to record (perf_event_paranoid <= 2 for own
processes).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter

# (kind, substrings of a frame that mark it), checked in this order from the leaf of a stack.
KINDS = [
    ("allocation", ["asm_exc_page_fault", "__memset", "malloc", "_int_free", "cfree",
                    "__munmap", "__mmap", "calloc", "realloc", "__rust_alloc_zeroed",
                    "alloc::raw_vec::finish_grow"]),
    ("conv input gradient", ["input_grad_block"]),
    ("conv weight gradient", ["ops::conv::spikes::weight_grad", "backward_blocks",
                              "ops::conv::backward"]),
    ("conv forward", ["ops::conv::forward", "ops::conv::spikes::forward"]),
    ("batch norm", ["ops::batch_norm::"]),
    ("neuron", ["ops::neuron::"]),
    ("optimizer", ["ops::optim::", "revsnn::optim::"]),
    ("other ops", ["ops::linear::", "ops::pool::", "ops::loss::", "ops::tensor::"]),
    ("idle", ["wait_until_cold", "rayon_core::sleep", "WorkerThread::wait_until",
              "futex_wait", "sched_yield"]),
]


def samples(perf_script_output):
    """The stacks (lists of frame strings, leaf first) in `perf script` output."""
    stack = []
    for line in perf_script_output.splitlines():
        if not line.strip():
            if stack:
                yield stack
            stack = []
        elif line.startswith((" ", "\t")):
            stack.append(line.strip())
    if stack:
        yield stack


# Kinds split into forward and backward by a frame anywhere in the stack.
DIRECTIONS = {
    "batch norm": [("forward", ["batch_norm::train_forward", "batch_norm::eval_forward"]),
                   ("backward", ["batch_norm::backward"])],
    "neuron": [("forward", ["neuron::forward"]),
               ("backward", ["neuron::backward", "neuron::dispatch_backward"])],
}


def kind_of(stack):
    """The first kind whose marker a frame of `stack` carries, leaf first; else "other"."""
    for frame in stack:
        for kind, markers in KINDS:
            if any(marker in frame for marker in markers):
                return with_direction(kind, stack)
    return "other"


def with_direction(kind, stack):
    """`kind` with " forward" or " backward" appended where [DIRECTIONS] tells them apart."""
    for direction, markers in DIRECTIONS.get(kind, []):
        if any(marker in frame for frame in stack for marker in markers):
            return f"{kind} {direction}"
    return kind


def profile(args):
    """Records `revsnn bench` under perf and returns (bench output, samples per kind)."""
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        bench = [args.binary, "bench", "--model", args.model, "--batch", str(args.batch),
                 "--steps", str(args.steps), "--threads", str(args.threads)]
        record = ["perf", "record", "-q", "-F", str(args.frequency), "-g", "--call-graph",
                  "dwarf,65528", "-o", data, "--"] + bench
        run = subprocess.run(record, capture_output=True, text=True, check=True)
        script = subprocess.run(["perf", "script", "-i", data], capture_output=True,
                                text=True, check=True).stdout
    kinds = Counter(kind_of(stack) for stack in samples(script))
    return run.stdout.strip(), kinds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default="target/release/revsnn")
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frequency", type=int, default=499, help="samples per second")
    parser.add_argument("--json", help="also write the shares to this file")
    args = parser.parse_args()
    bench, kinds = profile(args)
    total = sum(kinds.values())
    if total == 0:
        sys.exit("perf recorded no samples: check perf_event_paranoid and the binary path")
    print(bench)
    print(f"{total} samples")
    print("| kind | share |")
    print("|---|---|")
    split = [f"{kind} {direction}"
             for kind, _ in KINDS for direction, _ in DIRECTIONS.get(kind, [])]
    order = [kind for kind, _ in KINDS if kind not in DIRECTIONS] + split + ["other"]
    order += sorted(set(kinds) - set(order))
    for kind in order:
        print(f"| {kind} | {100 * kinds[kind] / total:.1f}% |")
    if args.json:
        shares = {kind: kinds[kind] / total for kind in order}
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"model": args.model, "batch": args.batch, "threads": args.threads,
                       "samples": total, "bench": bench, "shares": shares}, out, indent=1)


if __name__ == "__main__":
    main()
