"""Causal conv3d: our Triton kernels vs the eager reference layouts vs torch.compile, same run.

CUDA (bf16, shapes of the Cosmos CV8x8x8 tokenizer at 17 frames of 512x512; fwd and fwd+bwd):
  paths ``triton`` (use_backend("triton")), ``auto`` (what a user gets by default),
  ``eager-ncdhw`` (Cosmos's replicate cat + F.pad + F.conv3d, contiguous: the reference),
  ``eager-cl3d`` (the same on channels_last_3d: cuDNN's best layout), ``compiled-reference``
  (torch.compile of eager-cl3d). Our paths and the compiled one read channels_last_3d inputs.
  extra_info: speedup_vs_reference (vs eager-ncdhw), speedup_vs_best_eager (vs the faster eager
  layout), TFLOP/s and percent of the bf16 matmul peak measured in this session.
CPU (fp32, reduced shapes): what a user would write instead, against the reference: eager
  channels_last_3d and torch.compile of the reference (our fast paths are GPU paths; under the
  Triton interpreter they run for correctness, not speed).
The reference is never benchmarked against itself. Every ratio comes from interleaved timings
(the path and its baselines alternate round by round, ``record_interleaved``) with the spread of
the per-round ratios in extra_info.
Run: ``pytest benchmarks/test_bench_causal_conv3d.py --benchmark-only``.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from rgbd_kernels.backend import use_backend
from rgbd_kernels.causal_conv3d import causal_conv3d, causal_time_pad
from rgbd_kernels.testing import rel_error

from .conftest import DEVICE, median_time, record_interleaved

# name: (C_in, C_out, T, H, W, kernel, stride, padding)
CUDA_SHAPES = {
    "k133-C256-T17-128": (256, 256, 17, 128, 128, (1, 3, 3), (1, 1, 1), (1, 1)),
    "k133-C256-T9-128": (256, 256, 9, 128, 128, (1, 3, 3), (1, 1, 1), (1, 1)),
    "k133-C512-T3-64": (512, 512, 3, 64, 64, (1, 3, 3), (1, 1, 1), (1, 1)),
    "k311-C512-T3-64": (512, 512, 3, 64, 64, (3, 1, 1), (1, 1, 1), (0, 0)),
    "k311-C256-T17-128": (256, 256, 17, 128, 128, (3, 1, 1), (1, 1, 1), (0, 0)),
    "k333-C128-T17-128": (128, 128, 17, 128, 128, (3, 3, 3), (1, 1, 1), (1, 1)),
    "k133s122-C256-T17-128": (256, 256, 17, 128, 128, (1, 3, 3), (1, 2, 2), (1, 1)),
}
CPU_SHAPES = {
    "k133-C32-T5-32": (32, 32, 5, 32, 32, (1, 3, 3), (1, 1, 1), (1, 1)),
    "k311-C32-T5-32": (32, 32, 5, 32, 32, (3, 1, 1), (1, 1, 1), (0, 0)),
    "k333-C16-T5-32": (16, 16, 5, 32, 32, (3, 3, 3), (1, 1, 1), (1, 1)),
}
SHAPES = CUDA_SHAPES if DEVICE.type == "cuda" else CPU_SHAPES
REFERENCE = "eager-ncdhw"
PATHS = (["triton", "auto", "eager-cl3d", "compiled-reference"]
         if DEVICE.type == "cuda" else ["eager-cl3d", "compiled-reference"])
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32


def eager_causal_conv3d(x, w, b, stride, padding):
    """What Cosmos runs: replicate frame 0 in time, zero-pad H and W, F.conv3d (input dtype)."""
    tp = causal_time_pad(w.shape[2], stride[0])
    if tp:
        x = torch.cat([x[:, :, :1].repeat(1, 1, tp, 1, 1), x], dim=2)
    x = F.pad(x, (padding[1], padding[1], padding[0], padding[0], 0, 0))
    return F.conv3d(x, w, b, stride=stride)


_COMPILED = {}


def _compiled_eager():
    if "fn" not in _COMPILED:
        # static shapes: a shared compiled function would otherwise turn dynamic after the
        # second shape and time a generic graph
        _COMPILED["fn"] = torch.compile(eager_causal_conv3d, dynamic=False)
    return _COMPILED["fn"]


@pytest.fixture(scope="session")
def bf16_matmul_peak():
    """Measured bf16 matmul throughput (FLOP/s) of this device; None on CPU."""
    if DEVICE.type != "cuda":
        return None
    n = 8192
    a = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    return 2 * n**3 / median_time(lambda: a @ b)


def _inputs(spec, layout):
    ci, co, T, H, W, kernel, stride, padding = spec
    x = torch.randn(1, ci, T, H, W, device=DEVICE, dtype=DTYPE)
    w = (torch.randn(co, ci, *kernel, device=DEVICE) / math.sqrt(ci * math.prod(kernel))).to(DTYPE)
    b = torch.randn(co, device=DEVICE, dtype=DTYPE)
    if layout == "cl3d":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x, w, b


def _forward_fn(path, stride, padding):
    if path in ("triton", "auto"):
        def fn(x, w, b):
            with use_backend(path):
                return causal_conv3d(x, w, b, stride=stride, padding=padding)
        return fn
    if path == "compiled-reference":
        compiled = _compiled_eager()
        return lambda x, w, b: compiled(x, w, b, stride, padding)
    return lambda x, w, b: eager_causal_conv3d(x, w, b, stride, padding)


def _timed(path, mode, spec):
    """A zero-argument callable running ``path`` in ``mode`` on fresh inputs, and its output fn."""
    stride, padding = spec[6], spec[7]
    layout = "ncdhw" if path == "eager-ncdhw" else "cl3d"
    x, w, b = _inputs(spec, layout)
    fwd = _forward_fn(path, stride, padding)
    if mode == "fwd":
        return (lambda: fwd(x, w, b)), (x, w, b)
    x, w, b = (t.requires_grad_(True) for t in (x, w, b))
    gy = torch.randn_like(fwd(x, w, b))

    def fwd_bwd():  # our backward runs on the backend its forward chose (saved in the graph)
        y = fwd(x, w, b)
        return torch.autograd.grad(y, (x, w, b), gy)

    return fwd_bwd, (x, w, b)


def _flops(spec, mode):
    ci, co, T, H, W, kernel, stride, padding = spec
    to = T // stride[0]
    ho = (H + 2 * padding[0] - kernel[1]) // stride[1] + 1
    wo = (W + 2 * padding[1] - kernel[2]) // stride[2] + 1
    fwd = 2 * co * to * ho * wo * ci * math.prod(kernel)
    return fwd if mode == "fwd" else 3 * fwd  # fwd + dgrad + wgrad


def _bytes(spec, mode):
    ci, co, T, H, W, kernel, stride, _ = spec
    size = torch.finfo(DTYPE).bits // 8
    x = ci * T * H * W
    y = co * (T // stride[0]) * (H // stride[1]) * (W // stride[2])
    w = co * ci * math.prod(kernel)
    once = x + y + w
    return size * (once if mode == "fwd" else 3 * once)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_causal_conv3d(benchmark, bf16_matmul_peak, shape, path, mode):
    spec = SHAPES[shape]
    torch.manual_seed(0)  # same inputs for a correctness check before timing
    check, _ = _timed(path, "fwd", spec)
    torch.manual_seed(0)
    want, _ = _timed(REFERENCE, "fwd", spec)
    err = rel_error(check(), want())
    assert err < (2e-2 if DTYPE != torch.float32 else 1e-4), f"{path}: rel error {err:.2e}"

    candidates = {path: _timed(path, mode, spec)[0], REFERENCE: _timed(REFERENCE, mode, spec)[0]}
    if path != "eager-cl3d":  # the faster eager layout is the bar a fast path must clear
        candidates["eager-cl3d"] = _timed("eager-cl3d", mode, spec)[0]
    flops = _flops(spec, mode)
    extra = {}
    if bf16_matmul_peak:
        extra["bf16_matmul_peak_TFLOP_per_s"] = bf16_matmul_peak / 1e12
    record_interleaved(benchmark, candidates, path=path, reference=REFERENCE,
                       bytes_moved=_bytes(spec, mode), flops=flops, shape=shape, mode=mode,
                       dtype=str(DTYPE).removeprefix("torch."), **extra)
    info = benchmark.extra_info
    seconds = info.get("interleaved_seconds", {})
    if seconds:
        eager = [seconds[name] for name in (REFERENCE, "eager-cl3d") if name in seconds]
        info["best_eager_seconds"] = min(eager)
        info["speedup_vs_best_eager"] = min(eager) / seconds[path]
        if bf16_matmul_peak:
            info["percent_of_bf16_matmul_peak"] = 100 * flops / seconds[path] / bf16_matmul_peak
