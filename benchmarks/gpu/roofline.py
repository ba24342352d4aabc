"""Measure the device's two ceilings on the spot: copy bandwidth and bf16 matmul rate.

    python benchmarks/gpu/roofline.py OUT.json [--dry-run]

Copy: ``dst.copy_(src)`` of a 2 GiB float32 buffer (bytes counted: read + write), many times
the L2. Matmul: 8192 x 8192 x 8192 bf16 on random data (never zeros: a product of zeros runs
faster than real data). Both timed with ``triton.testing.do_bench`` (median of event timings,
warm-up first). ``--dry-run`` runs the same code on CPU with small sizes and wall-clock timing,
to check the script before GPU minutes are spent on it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def _median_seconds(fn, device: torch.device) -> float:
    if device.type == "cuda":
        from triton.testing import do_bench
        return do_bench(fn, warmup=50, rep=300, return_mode="median") * 1e-3
    fn()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(device: torch.device, copy_bytes: int, matmul_n: int) -> dict:
    n = copy_bytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    copy_s = _median_seconds(lambda: dst.copy_(src), device)
    del src, dst
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(matmul_n, matmul_n, device=device, dtype=dtype)
    b = torch.randn(matmul_n, matmul_n, device=device, dtype=dtype)
    mm_s = _median_seconds(lambda: a @ b, device)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "copy_bytes_read_plus_written": 2 * n * 4,
        "copy_seconds": copy_s,
        "copy_GB_per_s": 2 * n * 4 / copy_s / 1e9,
        "matmul_n": matmul_n,
        "matmul_dtype": str(dtype).replace("torch.", ""),
        "matmul_seconds": mm_s,
        "matmul_TFLOP_per_s": 2 * matmul_n**3 / mm_s / 1e12,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--dry-run", action="store_true", help="CPU, small sizes")
    args = ap.parse_args(argv)
    if args.dry_run:
        res = measure(torch.device("cpu"), 16 * 2**20, 256)
    else:
        if not torch.cuda.is_available():
            print("roofline: no CUDA device", file=sys.stderr)
            return 2
        res = measure(torch.device("cuda"), 2 * 2**30, 8192)
    res["dry_run"] = args.dry_run
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"roofline: copy {res['copy_GB_per_s']:.0f} GB/s, {res['matmul_dtype']} matmul "
          f"{res['matmul_TFLOP_per_s']:.1f} TFLOP/s ({res['device']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
