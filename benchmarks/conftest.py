"""Shared benchmark helpers.

Each benchmark times the path under test with the ``benchmark`` fixture (pytest-benchmark) and
times the reference *in the same run* with :func:`median_time`, then records the ratio and the
roofline figures with :func:`record`. Run: ``pytest benchmarks --benchmark-only``.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device = DEVICE) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], *, warmup: int = 2, repeat: int = 7,
                device: torch.device = DEVICE) -> float:
    """Median wall time of ``fn()`` in seconds (CUDA: triton's do_bench, which flushes L2)."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_benchmark(benchmark, fn: Callable[[], object], *, rounds: int = 7) -> float:
    """Time ``fn`` with pytest-benchmark (synchronized on CUDA); return its median in seconds."""
    def timed():
        out = fn()
        synchronize()
        return out

    timed()  # warm-up: compilation, autotuning, allocator
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: ran once, untimed
        return float("nan")
    return stats.stats.median


def record(benchmark, *, seconds: float, reference_seconds: float | None = None,
           bytes_moved: int | None = None, flops: int | None = None, **extra) -> None:
    """Put the ratio to the reference, bytes, FLOPs and achieved rates into ``extra_info``."""
    info = benchmark.extra_info
    info["device"] = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"
    info["threads"] = torch.get_num_threads()
    if reference_seconds is not None:
        info["reference_seconds"] = reference_seconds
        info["speedup_vs_reference"] = reference_seconds / seconds if seconds > 0 else float("nan")
    if bytes_moved is not None:
        info["bytes_moved"] = int(bytes_moved)
        info["GB_per_s"] = bytes_moved / seconds / 1e9 if seconds > 0 else float("nan")
    if flops is not None:
        info["flops"] = int(flops)
        info["TFLOP_per_s"] = flops / seconds / 1e12 if seconds > 0 else float("nan")
    info.update(extra)
    _RECORDS.append((benchmark.name, dict(info), seconds))


_RECORDS: list[tuple[str, dict, float]] = []


def pytest_terminal_summary(terminalreporter):
    """A short table of the figures that pytest-benchmark's own table leaves out."""
    rows = [(name, info, s) for name, info, s in _RECORDS if s == s]  # skip untimed runs
    if not rows:
        return
    tr = terminalreporter
    tr.section("rgbd benchmark summary (ratios measured in this run)")
    tr.write_line(f"{'benchmark':60s} {'median ms':>10s} {'ref ms':>9s} {'speedup':>8s} {'GB/s':>8s} {'TFLOP/s':>8s}")
    for name, info, s in rows:
        ref = info.get("reference_seconds")
        tr.write_line(
            f"{name[:60]:60s} {s * 1e3:10.3f} {ref * 1e3 if ref else float('nan'):9.3f} "
            f"{info.get('speedup_vs_reference', float('nan')):8.2f} "
            f"{info.get('GB_per_s', float('nan')):8.1f} {info.get('TFLOP_per_s', float('nan')):8.2f}")


@pytest.fixture(scope="session")
def copy_bandwidth() -> float:
    """Measured device copy bandwidth in bytes/s (read + write of a 256 MiB buffer; CPU: 64 MiB)."""
    n = (256 if DEVICE.type == "cuda" else 64) * 2**20 // 4
    src = torch.randn(n, device=DEVICE)
    dst = torch.empty_like(src)
    seconds = median_time(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / seconds
