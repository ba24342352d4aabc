"""Static GPU profile: compile every launched Triton kernel x autotune config x target ahead of
time (no GPU) and write ``benchmarks/results/aot-sm90.json`` plus a Markdown table.

    python benchmarks/aot_report.py [--out benchmarks/results/aot-sm90.json] [--markdown FILE]
                                    [--mode full|ci] [--workers N]

One JSON object per kernel x dtype x config x target (``kernel``, ``target``, ``config``, ``ok``,
``shared_bytes``, ``registers``, ``spills``, ``tensor_core``, ``ld_global`` widths,
``vectorized_loads`` (share of global load instructions of 8 or 16 bytes, cp.async included),
``pipelining`` (cp.async / tma / none), ``dot_tile`` and ``arithmetic_intensity`` (FLOP per operand
byte of one K step of the tile), ...), each with the Triton / torch versions and the date.
Regenerate it whenever a kernel or an autotune config changes.
"""
from __future__ import annotations

import argparse
import collections
import datetime as _dt
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.gpu import aot_compile as aot  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "aot-sm90.json"


def _cfg(c: dict) -> str:
    tile = "x".join(str(c[k]) for k in ("BM", "BN", "BK") if k in c)
    rest = f"w{c.get('num_warps', '-')}" + (f" s{c['num_stages']}" if "num_stages" in c else "")
    return f"{tile} {rest}".strip()


def markdown(results: list[dict], meta: dict) -> str:
    """A compact table: tl.dot kernels per dtype x config (sm_90 and sm_80 side by side), then
    one line per other kernel (worst case over its dtypes and variants)."""
    by = collections.defaultdict(dict)
    for r in results:
        if r["dot_tile"] or r.get("config", {}).get("BM"):
            by[(r["kernel"], r["dtype"], json.dumps(r["config"], sort_keys=True),
                json.dumps(r["constexprs"], sort_keys=True))][r["target"]] = r
    lines = [f"Triton {meta['triton']}, torch {meta['torch']}; {meta['n_ok']}/{meta['n']} "
             f"compiles ok ({', '.join(meta['targets'])}).", "",
             "| kernel | dtype | tile BMxBNxBK, warps, stages | sm_90: MMA / pipelining / smem KiB / regs "
             "| sm_80: MMA / pipelining / smem KiB / regs | vector loads | FLOP/B (tile) |",
             "|---|---|---|---|---|---|---|"]
    main_keys = {}
    for (kern, dt, cfg, cx), t in by.items():
        main_keys.setdefault((kern, dt), cx)
    for (kern, dt, cfg, cx), t in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        if main_keys[(kern, dt)] != cx:
            continue  # other constexpr variants: in the JSON
        cells = []
        for tg in ("sm_90", "sm_80"):
            r = t.get(tg)
            if r is None:
                cells.append("-")
            elif not r["ok"]:
                cells.append(f"FAIL: {r['error'][:40]}")
            else:
                cells.append(f"{r['tensor_core']} / {r['pipelining']} / "
                             f"{r['shared_bytes'] / 1024:.0f} / {r['registers']}")
        r90 = t.get("sm_90") or next(iter(t.values()))
        vec = r90.get("vectorized_loads")
        lines.append(f"| {kern} | {dt} | {_cfg(json.loads(cfg))} | {cells[0]} | {cells[1]} | "
                     f"{'-' if vec is None else f'{vec:.0%}'} | "
                     f"{r90.get('arithmetic_intensity') or '-'} |")
    lines += ["", "| kernel (no tl.dot) | variants x dtypes x targets | all ok | max smem B | "
              "max regs | spills | sm_90 global loads v4 / v2 / scalar |", "|---|---|---|---|---|---|---|"]
    other = collections.defaultdict(list)
    for r in results:
        if not (r["dot_tile"] or r.get("config", {}).get("BM")):
            other[r["kernel"]].append(r)
    for kern, rs in sorted(other.items()):
        ok = [r for r in rs if r["ok"]]
        ld = collections.Counter()
        for r in ok:
            if r["target"] == "sm_90":
                ld.update(r["ld_global"])
        lines.append(f"| {kern} | {len(rs)} | {'yes' if len(ok) == len(rs) else 'NO'} | "
                     f"{max((r['shared_bytes'] for r in ok), default='-')} | "
                     f"{max((r['registers'] for r in ok), default='-')} | "
                     f"{sum(r['spills'] for r in ok)} | {ld['v4']} / {ld['v2']} / {ld['scalar']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    ap.add_argument("--mode", choices=["full", "ci"], default="full")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    recorded = aot.record_launches()
    jobs = aot.plan_jobs(recorded, mode=args.mode)
    print(f"{len(jobs)} compiles of {len(recorded['kernels_launched'])} kernels ...", flush=True)
    results = aot.compile_jobs(jobs, workers=args.workers)
    vers = aot.run_step("versions", None, interpret=False)
    meta = {**vers, "date": _dt.date.today().isoformat(), "mode": args.mode,
            "targets": sorted({r["target"] for r in results}), "n": len(results),
            "n_ok": sum(r["ok"] for r in results),
            "wall_s": round(time.perf_counter() - t0, 1),
            "kernels": recorded["kernels_launched"], "unsupported": recorded["unsupported"]}
    for r in results:
        r.update(triton=vers["triton"], torch=vers["torch"], date=meta["date"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("[\n" + ",\n".join(json.dumps(r, sort_keys=True) for r in results)
                        + "\n]\n")
    table = markdown(results, meta)
    if args.markdown:
        args.markdown.write_text(table)
    print(table)
    bad = [r for r in results if not r["ok"]]
    for r in bad:
        print(f"FAIL {r['kernel']} {r['dtype']} {r['target']} {r['config']}: {r['error']}")
    print(f"{len(results) - len(bad)}/{len(results)} ok in {meta['wall_s']} s -> {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
