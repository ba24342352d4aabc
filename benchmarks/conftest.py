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


def interleaved_times(candidates: dict[str, Callable[[], object]], *, rounds: int = 7,
                      warmup: int = 1, device: torch.device = DEVICE) -> dict[str, list[float]]:
    """Per-round wall times (seconds) of each candidate, timed round by round in rotating order.

    Interleaving puts every candidate under the same machine load (other processes, frequency
    changes, a warm or cold cache) instead of timing one after the other, so the ratio of two
    candidates is measured fairly; its spread over the rounds says how far it can be trusted.
    CUDA: each round is one short ``triton.testing.do_bench`` median per candidate.
    """
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
        synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            fn = candidates[name]
            if device.type == "cuda":
                from triton.testing import do_bench

                times[name].append(do_bench(fn, warmup=5, rep=20, return_mode="median") * 1e-3)
            else:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return times


def ratio_summary(times: dict[str, list[float]], numerator: str, denominator: str) -> dict:
    """``numerator / denominator`` from interleaved timings: median of the per-round ratios and
    their spread (min, 25th and 75th percentile, max), plus each side's median seconds."""
    ratios = sorted(a / b for a, b in zip(times[numerator], times[denominator]) if b > 0)
    if not ratios:
        return {"ratio": float("nan"), "spread": [], "rounds": 0}

    def q(p: float) -> float:
        return ratios[min(len(ratios) - 1, max(0, round(p * (len(ratios) - 1))))]

    return {"ratio": statistics.median(ratios),
            "spread": [ratios[0], q(0.25), q(0.75), ratios[-1]],
            "rounds": len(ratios),
            "numerator_seconds": statistics.median(times[numerator]),
            "denominator_seconds": statistics.median(times[denominator])}


def record_interleaved(benchmark, candidates: dict[str, Callable[[], object]], *, path: str,
                       reference: str, rounds: int = 7, benchmark_rounds: int = 7,
                       **extra) -> None:
    """Time ``path`` with pytest-benchmark, then ``path`` and ``reference`` (and any other
    candidates: baselines) interleaved; record the ratios reference/path (> 1: path is faster)
    with their spread. Under ``--benchmark-disable`` each candidate runs once, untimed."""
    extra = {"path": path, "reference": reference, **extra}
    seconds = run_benchmark(benchmark, candidates[path], rounds=benchmark_rounds)
    if seconds != seconds:  # untimed run (CI): run every other candidate once, as a smoke test
        for name, fn in candidates.items():
            if name != path:
                fn()
        record(benchmark, seconds=seconds, **extra)
        return
    times = interleaved_times(candidates, rounds=rounds)
    summary = ratio_summary(times, reference, path)
    info = {"interleaved_rounds": summary["rounds"], "speedup_spread_min_p25_p75_max": summary["spread"],
            "interleaved_seconds": {name: statistics.median(t) for name, t in times.items()}}
    for name in candidates:
        if name not in (path, reference):
            other = ratio_summary(times, name, path)
            info[f"speedup_vs_{name}"] = other["ratio"]
            info[f"speedup_vs_{name}_spread"] = other["spread"]
    record(benchmark, seconds=summary["denominator_seconds"],
           reference_seconds=summary["numerator_seconds"], **info, **extra)
    benchmark.extra_info["speedup_vs_reference"] = summary["ratio"]  # median of per-round ratios
    _RECORDS[-1][1]["speedup_vs_reference"] = summary["ratio"]
    _RECORDS[-1][1]["speedup_spread"] = summary["spread"]


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
    tr.write_line(f"{'benchmark':60s} {'median ms':>10s} {'ref ms':>9s} {'speedup':>8s} "
                  f"{'p25-p75':>11s} {'GB/s':>8s} {'TFLOP/s':>8s}")
    for name, info, s in rows:
        ref = info.get("reference_seconds")
        tr.write_line(
            f"{name[:60]:60s} {s * 1e3:10.3f} {ref * 1e3 if ref else float('nan'):9.3f} "
            f"{info.get('speedup_vs_reference', float('nan')):8.2f} "
            f"{_spread(info):>11s} "
            f"{info.get('GB_per_s', float('nan')):8.1f} {info.get('TFLOP_per_s', float('nan')):8.2f}")


def _spread(info: dict) -> str:
    spread = info.get("speedup_spread")
    return f"{spread[1]:.2f}-{spread[2]:.2f}" if spread else "-"


@pytest.fixture(scope="session")
def copy_bandwidth() -> float:
    """Measured device copy bandwidth in bytes/s (read + write of a 256 MiB buffer; CPU: 64 MiB)."""
    n = (256 if DEVICE.type == "cuda" else 64) * 2**20 // 4
    src = torch.randn(n, device=DEVICE)
    dst = torch.empty_like(src)
    seconds = median_time(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / seconds
