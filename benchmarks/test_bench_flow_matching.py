"""Flow matching: fused interpolation and fused loss (forward + backward) vs the reference.

CUDA: the issue's bf16 latents (8, 16, 16, 60, 60) and (2, 16, 31, 88, 160); paths Triton,
torch.compile(reference) and the eager reference (timed in the same run), with bytes moved
against the measured copy bandwidth. The loss also runs as "triton-scale-pass": the backward
always makes its scaling pass instead of reading grad_output back to see that it is 1.
Bytes are the floor of each op: interpolate reads x0 and noise and writes x_t; the loss reads
v_pred, x0 and noise and writes the gradient.
CPU: the reference and torch.compile(reference) on a smaller bf16 latent.
Run: ``pytest benchmarks/test_bench_flow_matching.py --benchmark-only``.
"""
import pytest
import torch

import rgbd_kernels as rk
from rgbd_kernels import flow_matching as fm
from rgbd_kernels.flow_matching import (flow_interpolate, flow_interpolate_reference,
                                        flow_matching_loss, flow_matching_loss_reference)

from .conftest import DEVICE, record, record_interleaved, run_benchmark

DTYPE = torch.bfloat16
if DEVICE.type == "cuda":
    SHAPES = [(8, 16, 16, 60, 60), (2, 16, 31, 88, 160)]
    PATHS = ["triton", "compiled-reference", "reference"]
    LOSS_PATHS = ["triton", "triton-scale-pass", "compiled-reference", "reference"]
else:
    SHAPES = [(2, 16, 5, 30, 40)]
    PATHS = LOSS_PATHS = ["reference", "compiled-reference"]

_COMPILED = {}


def _compiled(fn):
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn)
    return _COMPILED[fn]


def _latents(shape):
    x0, noise, v = (torch.randn(shape, device=DEVICE, dtype=DTYPE) for _ in range(3))
    t = torch.rand(shape[0], shape[2], device=DEVICE)  # per latent frame
    return x0, noise, v.requires_grad_(True), t


def _percent(nbytes, seconds, bandwidth):
    return 100 * nbytes / seconds / bandwidth if seconds == seconds else float("nan")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("path", PATHS)
def test_flow_interpolate(benchmark, copy_bandwidth, shape, path):
    x0, noise, _, t = _latents(shape)
    reference = lambda: flow_interpolate_reference(x0, noise, t)  # noqa: E731
    if path == "reference":
        fn = reference
    elif path == "compiled-reference":
        compiled = _compiled(flow_interpolate_reference)
        fn = lambda: compiled(x0, noise, t)  # noqa: E731
    else:
        def fn():
            with rk.use_backend(path):
                return flow_interpolate(x0, noise, t, check_range=False)

    torch.testing.assert_close(fn(), reference(), rtol=2e-2, atol=2e-2)
    nbytes = 3 * x0.numel() * x0.element_size()
    info = dict(bytes_moved=nbytes, flops=3 * x0.numel(), shape=list(shape), dtype=str(DTYPE))
    if path == "reference":  # no self-ratio: the reference row gives its absolute time only
        seconds = run_benchmark(benchmark, fn)
        record(benchmark, seconds=seconds, path=path, **info)
    else:
        record_interleaved(benchmark, {path: fn, "reference": reference}, path=path,
                           reference="reference", **info)
    seconds = benchmark.extra_info.get("interleaved_seconds", {}).get(path, _median(benchmark))
    benchmark.extra_info["percent_of_copy_bandwidth"] = _percent(nbytes, seconds, copy_bandwidth)


def _loss_step(loss_fn, v, x0, noise):
    loss = loss_fn(v, x0, noise)
    (grad,) = torch.autograd.grad(loss, v)
    return loss, grad


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("path", LOSS_PATHS)
def test_flow_matching_loss_fwd_bwd(benchmark, copy_bandwidth, shape, path, monkeypatch):
    """"triton-scale-pass": the backward always scales (no host read of grad_output)."""
    if path == "triton-scale-pass":
        monkeypatch.setattr(fm, "HAND_BACK_WHEN_ONE", False)
    x0, noise, v, _ = _latents(shape)
    reference = lambda: _loss_step(flow_matching_loss_reference, v, x0, noise)  # noqa: E731
    if path == "reference":
        fn = reference
    elif path == "compiled-reference":
        compiled = _compiled(flow_matching_loss_reference)
        fn = lambda: _loss_step(compiled, v, x0, noise)  # noqa: E731
    else:
        def fn():
            with rk.use_backend("triton"):
                return _loss_step(flow_matching_loss, v, x0, noise)

    (loss, grad), (ref_loss, ref_grad) = fn(), reference()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=2e-2, atol=1e-9)
    nbytes = 4 * v.numel() * v.element_size()
    info = dict(bytes_moved=nbytes, flops=6 * v.numel(), shape=list(shape), dtype=str(DTYPE))
    if path == "reference":  # no self-ratio
        seconds = run_benchmark(benchmark, fn)
        record(benchmark, seconds=seconds, path=path, **info)
    else:
        candidates = {path: fn, "reference": reference}
        if path.startswith("triton"):  # the torch.compile baseline, interleaved in the same run
            compiled = _compiled(flow_matching_loss_reference)
            candidates["compiled"] = lambda: _loss_step(compiled, v, x0, noise)
        record_interleaved(benchmark, candidates, path=path, reference="reference", **info)
    seconds = benchmark.extra_info.get("interleaved_seconds", {}).get(path, _median(benchmark))
    benchmark.extra_info["percent_of_copy_bandwidth"] = _percent(nbytes, seconds, copy_bandwidth)


def _median(benchmark) -> float:
    stats = getattr(benchmark, "stats", None)
    return stats.stats.median if stats is not None else float("nan")
