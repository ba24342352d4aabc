"""Disparity normalization: fast path vs the reference, measured in the same run.

CPU: C++ vs reference on (16, 256, 256) and (8, 480, 640) fp32 per frame, and one
(1, 33, 256, 256) clip per clip (the threaded single-group path).
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


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the C++ CPU op's threaded single-clip path")
def test_normalize_disparity_one_clip(benchmark, copy_bandwidth):
    """One 33-frame 256x256 clip normalized per clip (what a data loader asks for): the C++ op
    splits the single group across threads (radix-select median). Also timed with one thread
    (the per-group nth_element path) in the same run."""
    shape = (1, 33, 256, 256)
    d, valid = _inputs(shape)
    reference = lambda: normalize_disparity_reference(d, valid, "clip")  # noqa: E731

    def fn():
        with rk.use_backend("cpp"):
            return rk.normalize_disparity(d, valid, "clip")

    torch.testing.assert_close(fn()[0], reference()[0], rtol=1e-4, atol=1e-4)
    seconds = run_benchmark(benchmark, fn)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one_thread_seconds = median_time(fn)
    finally:
        torch.set_num_threads(threads)
    nbytes = d.numel() * (4 + 1 + 4)
    record(benchmark, seconds=seconds, reference_seconds=median_time(reference),
           bytes_moved=nbytes, shape=list(shape), dtype="float32", path="cpp", per="clip",
           one_thread_nth_element_seconds=one_thread_seconds,
           speedup_vs_one_thread=one_thread_seconds / seconds,
           percent_of_copy_bandwidth=100 * nbytes / seconds / copy_bandwidth)
