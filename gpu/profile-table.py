"""Per-kernel table of one profiled training step, for gpu/profile-stage.sh.

Reads Nsight Compute's raw CSV page (`ncu --csv --page raw`, metrics gpu__time_duration.sum and,
where collected, dram__bytes_read.sum and dram__bytes_write.sum) and prints, per kernel name:
the time, its share, the launches, the DRAM bytes moved and the bandwidth they were moved at,
as a share of the card's peak. A kernel far below the peak moves its bytes slowly (few blocks,
uncoalesced accesses, a reduction's tail); one near it can only get faster by moving fewer bytes.

    python3 gpu/profile-table.py NCU_LOG TOP TIMED_LOG PEAK_TBPS
    python3 gpu/profile-table.py --self-test

TIMED_LOG holds a `revsnn bench --json` line whose median step time tells how busy the device
is; PEAK_TBPS is the card's DRAM bandwidth in TB/s (0: unknown, no shares printed).
"""

import csv
import json
import sys
from collections import defaultdict

TIME = "gpu__time_duration.sum"
READ, WRITE = "dram__bytes_read.sum", "dram__bytes_write.sum"
# Each unit Nsight Compute may print, in milliseconds or bytes (its byte units are decimal).
UNITS = {
    "ns": 1e-6, "nsecond": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0, "msecond": 1.0,
    "s": 1e3, "second": 1e3,
    "byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "Tbyte": 1e12,
}


class Kernel:
    """What the launches of one kernel name add up to."""

    def __init__(self):
        self.launches, self.ms, self.bytes = 0, 0.0, 0.0


def per_kernel(rows):
    """Kernel name -> Kernel from the CSV rows, or an error naming what is missing."""
    header = next((r for r in rows if "Kernel Name" in r and TIME in r), None)
    if header is None:
        raise ValueError("no kernel table in the log (ncu failed or was cut short)")
    name = header.index("Kernel Name")
    columns = {m: header.index(m) for m in (TIME, READ, WRITE) if m in header}
    scale = {m: 1.0 for m in columns}
    kernels = defaultdict(Kernel)
    for r in rows[rows.index(header) + 1:]:
        if len(r) <= max(columns.values()):
            continue
        if r[columns[TIME]] in UNITS:  # a units row: it applies to the rows after it
            scale = {m: UNITS.get(r[c], 1.0) for m, c in columns.items()}
            continue
        try:
            value = {m: float(r[c].replace(",", "")) * scale[m] for m, c in columns.items()}
        except ValueError:
            continue
        kernel = kernels[r[name][:110]]
        kernel.launches += 1
        kernel.ms += value[TIME]
        kernel.bytes += value.get(READ, 0.0) + value.get(WRITE, 0.0)
    return kernels, READ in columns and WRITE in columns


def busy_line(total_ms, timed_log):
    """How busy the device is: kernel time per step (half of the two profiled steps) against a
    timed step's wall time. The rest is the most that capturing the step as a CUDA graph (no
    launch gaps, no host work between kernels) could save."""
    try:
        with open(timed_log) as f:
            bench = next(json.loads(l) for l in f if l.startswith("{"))
        wall = 1e3 * bench["median_step_seconds"]
    except (OSError, StopIteration, ValueError, KeyError):
        return "device busy: no timed step to compare with"
    return (f"device busy {100 * total_ms / 2 / wall:.0f}% of a step: {total_ms / 2:.1f} ms of "
            f"kernels per step against a {wall:.1f} ms step ({timed_log.rsplit('/', 1)[-1]})")


def table(kernels, with_bytes, top, peak_tbps):
    """The report's lines: totals, then the `top` names by time."""
    total_ms = sum(k.ms for k in kernels.values())
    lines = [f"{sum(k.launches for k in kernels.values())} kernel launches, "
             f"{total_ms:.1f} ms of kernel time in all"]
    if with_bytes:
        total_gb = sum(k.bytes for k in kernels.values()) / 1e9
        floor = f"; at {peak_tbps} TB/s that is {total_gb / peak_tbps:.2f} ms" if peak_tbps else ""
        lines.append(f"{total_gb:.2f} GB moved to and from DRAM by the two steps{floor}")
    head = f"{'ms':>9} {'share':>6} {'launches':>8}"
    if with_bytes:
        head += f" {'GB':>7} {'TB/s':>5}" + (f" {'%peak':>5}" if peak_tbps else "")
    lines.append(head + "  kernel")
    for name, k in sorted(kernels.items(), key=lambda kv: -kv[1].ms)[:top]:
        line = f"{k.ms:9.2f} {100 * k.ms / total_ms:5.1f}% {k.launches:8d}"
        if with_bytes:
            tbps = k.bytes / 1e9 / k.ms if k.ms else 0.0  # GB/ms = TB/s
            line += f" {k.bytes / 1e9:7.3f} {tbps:5.2f}"
            line += f" {100 * tbps / peak_tbps:4.0f}%" if peak_tbps else ""
        lines.append(f"{line}  {name}")
    return lines, total_ms


def self_test():
    """Two launches of one kernel and one of another, with the units row in base units and then
    auto-scaled ones, as Nsight Compute prints them."""
    header = ["ID", "Kernel Name", TIME, READ, WRITE]
    rows = [["==PROF== Connected"], header, ["", "", "nsecond", "byte", "byte"],
            ["0", "to_bf16", "1000", "2,000,000", "1,000,000"],
            ["1", "to_bf16", "3000", "6000000", "3000000"],
            ["", "", "usecond", "Mbyte", "Kbyte"],
            ["2", "bn_normalise_f32", "2", "4", "2000"]]
    kernels, with_bytes = per_kernel(rows)
    assert with_bytes
    assert kernels["to_bf16"].launches == 2 and abs(kernels["to_bf16"].ms - 4e-3) < 1e-12
    assert abs(kernels["to_bf16"].bytes - 12e6) < 1e-3, kernels["to_bf16"].bytes
    assert abs(kernels["bn_normalise_f32"].bytes - 6e6) < 1e-3
    lines, total_ms = table(kernels, with_bytes, 10, 4.0)
    assert abs(total_ms - 6e-3) < 1e-12
    # to_bf16: 12 MB in 4 us is 3 TB/s, 75% of 4 TB/s; bn_normalise_f32: 6 MB in 2 us, 3 TB/s
    assert lines[1] == ("0.02 GB moved to and from DRAM by the two steps; at 4.0 TB/s that is "
                        "0.00 ms"), lines[1]
    assert lines[3].split()[3:6] == ["0.012", "3.00", "75%"], lines[3]
    assert lines[3].endswith("to_bf16") and lines[4].endswith("bn_normalise_f32"), lines
    time_only, _ = per_kernel([["Kernel Name", TIME], ["", "ms"], ["k", "1.5"]])
    assert time_only["k"].ms == 1.5 and time_only["k"].bytes == 0.0
    print("profile-table self-test: passed")


def main(argv):
    if argv[1:] == ["--self-test"]:
        self_test()
        return
    log, top, timed_log, peak_tbps = argv[1], int(argv[2]), argv[3], float(argv[4])
    with open(log, errors="replace") as f:
        rows = [r for r in csv.reader(f) if r]
    try:
        kernels, with_bytes = per_kernel(rows)
    except ValueError as error:
        sys.exit(str(error))
    lines, total_ms = table(kernels, with_bytes, top, peak_tbps)
    print(lines[0])
    print(busy_line(total_ms, timed_log))
    print("\n".join(lines[1:]))


if __name__ == "__main__":
    main(sys.argv)
