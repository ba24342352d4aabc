"""One-screen summary of a GPU campaign directory (see ``campaign.sh``).

    python benchmarks/gpu/summary.py OUT

Reads ``OUT/steps.tsv`` (each step's status and seconds), ``OUT/roofline.json`` (copy bandwidth
and bf16 matmul rate measured in the same campaign) and every pytest-benchmark JSON
``OUT/bench-*.json``; writes ``OUT/summary.txt`` and prints it: the steps, the ceilings, and one
row per benchmark of our fast paths (all rows in the file) with the median time, the ratio to
the reference measured in the same run, and achieved GB/s and TFLOP/s as a percent of the
ceilings measured here (not datasheet numbers).
"""
from __future__ import annotations

import glob
import json
import math
import os
import sys

FAST_PATHS = ("triton", "auto", "cuda", "triton-scale-pass", "cpp")
SCREEN_ROWS = 40


def _f(x, fmt):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        width = fmt.split(".")[0]
        return "-".rjust(int(width) if width.isdigit() else 1)
    return format(x, fmt)


def load_benchmarks(out: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(out, "bench-*.json"))):
        try:
            data = json.load(open(path))
        except (OSError, ValueError) as exc:
            rows.append({"name": f"{os.path.basename(path)}: unreadable ({exc})", "error": True})
            continue
        for b in data.get("benchmarks", []):
            info = b.get("extra_info", {})
            stats = b.get("stats", {})
            rows.append({"name": b.get("name", "?"), "file": os.path.basename(path),
                         "median_s": stats.get("median"), "info": info,
                         "path": info.get("path")})
    return rows


def summarize(out: str) -> str:
    lines = [f"GPU campaign summary: {out}"]
    steps = os.path.join(out, "steps.tsv")
    if os.path.exists(steps):
        lines.append(f"{'step':22s} {'status':>10s} {'seconds':>8s} {'budget':>7s}")
        for ln in open(steps).read().splitlines():
            parts = ln.split("\t")
            if len(parts) >= 4:
                lines.append(f"{parts[0]:22s} {parts[1]:>10s} {parts[2]:>8s} {parts[3]:>7s}")
    roof = {}
    rpath = os.path.join(out, "roofline.json")
    if os.path.exists(rpath):
        roof = json.load(open(rpath))
        lines.append(f"ceilings measured here ({roof.get('device')}): copy "
                     f"{roof['copy_GB_per_s']:.0f} GB/s, {roof['matmul_dtype']} matmul "
                     f"{roof['matmul_TFLOP_per_s']:.1f} TFLOP/s")
    else:
        lines.append("ceilings: roofline.json missing (percent columns empty)")
    bw = roof.get("copy_GB_per_s")
    peak = roof.get("matmul_TFLOP_per_s")
    rows = load_benchmarks(out)
    header = (f"{'benchmark':58s} {'ms':>9s} {'x ref':>6s} {'GB/s':>7s} {'%bw':>5s} "
              f"{'TFLOP/s':>8s} {'%mm':>5s}")
    table = []
    for r in rows:
        if r.get("error"):
            table.append((True, r["name"]))
            continue
        info = r["info"]
        gbs, tfs = info.get("GB_per_s"), info.get("TFLOP_per_s")
        table.append((r["path"] in FAST_PATHS,
                      f"{r['name'][:58]:58s} {_f(r['median_s'] and r['median_s'] * 1e3, '9.3f')} "
                      f"{_f(info.get('speedup_vs_reference'), '6.2f')} {_f(gbs, '7.0f')} "
                      f"{_f(gbs and bw and 100 * gbs / bw, '5.1f')} {_f(tfs, '8.1f')} "
                      f"{_f(tfs and peak and 100 * tfs / peak, '5.1f')}"))
    lines.append(f"{len(rows)} benchmark rows from {len(glob.glob(os.path.join(out, 'bench-*.json')))} "
                 "files (x ref: reference time / this path's time, same run)")
    full = lines + [header] + [t for _, t in table]
    screen_rows = [t for fast, t in table if fast][:SCREEN_ROWS]
    screen = lines + [header] + screen_rows
    if len(screen_rows) < sum(fast for fast, _ in table):
        screen.append(f"... ({sum(fast for fast, _ in table) - len(screen_rows)} more in summary.txt)")
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write("\n".join(full) + "\n")
    return "\n".join(screen)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__)
        return 2
    print(summarize(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
