"""Attention backends vs the reference (CPU) and vs SDPA bf16 (GPU), forward and forward+backward.

GPU shapes: B=1, H=16, D=128, S in {4096, 16384, 32760}, non-causal; columns SDPA bf16, TE bf16,
TE FP8 and flash-attn where installed. CPU: reference vs SDPA on a small fp32 shape.
Run: ``pytest benchmarks/test_bench_attention.py --benchmark-only``.
"""
import pytest
import torch

from rgbd_kernels import dot_product_attention as attn_mod
from rgbd_kernels.dot_product_attention import attention

from .conftest import DEVICE, record_interleaved

if DEVICE.type == "cuda":
    SEQS, HEADS, DIM, DTYPE = [4096, 16384, 32760], 16, 128, torch.bfloat16
    CASES = [("sdpa", False), ("te", False), ("te", True), ("flash", False)]
    BASELINE = ("sdpa", False)
else:
    SEQS, HEADS, DIM, DTYPE = [512], 4, 64, torch.float32
    CASES = [("sdpa", False)]
    BASELINE = ("reference", False)


def _available(backend, fp8):
    if backend == "te":
        return attn_mod._te() is not None and (not fp8 or torch.cuda.get_device_capability()[0] >= 9)
    if backend == "flash":
        return attn_mod._flash() is not None
    return True


def _step(backend, fp8, q, k, v, train):
    def fn():
        out = attention(q, k, v, backend=backend, fp8=fp8)
        if train:
            out.backward(torch.ones_like(out))
        return out
    return fn


@pytest.mark.parametrize("train", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("seq", SEQS, ids=lambda s: f"S{s}")
@pytest.mark.parametrize("backend,fp8", CASES, ids=lambda c: str(c))
def test_attention(benchmark, backend, fp8, seq, train):
    if not _available(backend, fp8):
        pytest.skip(f"{backend} (fp8={fp8}) not available here")
    q, k, v = (torch.randn(1, seq, HEADS, DIM, device=DEVICE, dtype=DTYPE, requires_grad=train)
               for _ in range(3))
    name, base = f"{backend}{' fp8' if fp8 else ''}", f"{BASELINE[0]}{' fp8' if BASELINE[1] else ''}"
    if name == base:
        pytest.skip("the baseline is not benchmarked against itself")
    candidates = {name: _step(backend, fp8, q, k, v, train), base: _step(*BASELINE, q, k, v, train)}
    flops = 4 * seq * seq * HEADS * DIM * (3.5 if train else 1.0)
    record_interleaved(benchmark, candidates, path=name, reference=base, rounds=5, flops=flops,
                       seq=seq, heads=HEADS, head_dim=DIM, dtype=str(DTYPE), fp8=fp8)
