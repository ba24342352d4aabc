"""Throughput figures for the training log: frames/s, tokens/s and MFU (GPU only).

MFU = achieved FLOP/s / the device's bf16 matmul rate, measured once per run (a 8192^2 bf16
matmul) rather than taken from a datasheet.
"""
from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def measured_peak_flops(device: str) -> float | None:
    """bf16 matmul FLOP/s of a CUDA device (None on CPU)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    n = 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(dev)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize(dev)
    return 10 * 2 * n**3 / (start.elapsed_time(end) * 1e-3)


def throughput(stage, seconds: float, device: torch.device, world_size: int) -> dict[str, float]:
    """frames/s always; tokens/s and MFU when the stage reports tokens and FLOPs per step."""
    out = {"frames_per_s": stage.frames_per_step() / max(seconds, 1e-9)}
    tokens = stage.tokens_per_step()
    if tokens:
        out["tokens_per_s"] = tokens * world_size / max(seconds, 1e-9)
    flops, peak = stage.flops_per_step(), measured_peak_flops(str(device))
    if flops and peak:
        out["mfu"] = flops * world_size / max(seconds, 1e-9) / (peak * world_size)
    return out
