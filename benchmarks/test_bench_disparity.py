"""Disparity normalization: fast path vs the reference, measured in the same run.

CPU: C++ vs reference on (16, 256, 256) and (8, 480, 640) fp32 per frame.
CUDA: Triton vs reference vs torch.compile(reference) on (64, 512, 512) fp32, with the
percent of measured copy bandwidth (bytes: read values + mask, write normalized).
Run: ``pytest benchmarks/test_bench_disparity.py --benchmark-only``.
"""
import pytest
import torch

import rgbd_kernels as rk
from rgbd_kernels.disparity import normalize_disparity_reference

from .conftest import DEVICE, median_time, record, run_benchmark

SHAPES = [(16, 256, 256), (8, 480, 640)] if DEVICE.type == "cpu" else [(64, 512, 512)]
PATHS = ["cpp"] if DEVICE.type == "cpu" else ["triton", "compiled-reference"]


def _inputs(shape):
    d = torch.exp(torch.randn(shape, device=DEVICE))
    valid = torch.rand(shape, device=DEVICE) > 0.1
    return d, valid


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("path", PATHS)
def test_normalize_disparity(benchmark, copy_bandwidth, shape, path):
    d, valid = _inputs(shape)
    reference = lambda: normalize_disparity_reference(d, valid, "frame")  # noqa: E731
    if path == "compiled-reference":
        fn_compiled = torch.compile(normalize_disparity_reference)
        fn = lambda: fn_compiled(d, valid, "frame")  # noqa: E731
    else:
        def fn():
            with rk.use_backend(path):
                return rk.normalize_disparity(d, valid, "frame")

    out, ref = fn(), reference()
    torch.testing.assert_close(out[0], ref[0], rtol=1e-4, atol=1e-4)
    seconds = run_benchmark(benchmark, fn)
    ref_seconds = median_time(reference)
    nbytes = d.numel() * (4 + 1 + 4)
    record(benchmark, seconds=seconds, reference_seconds=ref_seconds, bytes_moved=nbytes,
           shape=list(shape), dtype="float32", path=path,
           percent_of_copy_bandwidth=100 * nbytes / seconds / copy_bandwidth)


@pytest.mark.parametrize("path", PATHS[:1])
def test_depth_to_disparity(benchmark, copy_bandwidth, path):
    shape = SHAPES[0]
    depth = torch.rand(shape, device=DEVICE) * 10
    reference = lambda: rk.disparity.depth_to_disparity_reference(depth, 0.1, 80.0)  # noqa: E731

    def fn():
        with rk.use_backend(path):
            return rk.depth_to_disparity(depth, 0.1, 80.0)

    torch.testing.assert_close(fn()[0], reference()[0])
    seconds = run_benchmark(benchmark, fn)
    nbytes = depth.numel() * (4 + 4 + 1)
    record(benchmark, seconds=seconds, reference_seconds=median_time(reference), bytes_moved=nbytes,
           shape=list(shape), dtype="float32", path=path,
           percent_of_copy_bandwidth=100 * nbytes / seconds / copy_bandwidth)
