"""Tokenizer streaming vs whole video: time and peak memory, measured in one run.

Tiny preset, RGB, 121 frames at 256x256 (B=1, fp32, no grad), encode + decode:

* whole: ``decode(encode(x))``;
* streaming: ``decode_stream(encode_stream(x, chunk_frames), chunk_latents)`` (the
  reconstruction is written chunk by chunk into one output tensor);
* chunks in, chunks out (:func:`test_tokenizer_streaming_chunks_in_chunks_out`):
  ``iter_decode(iter_encode(chunks))``, each reconstructed chunk consumed before the next, at
  41 and 121 frames: the long-video use, where nothing holds the whole video.

Time: the streaming and whole-video paths are timed interleaved, 3 rounds each (each pass takes
seconds on CPU); ``speedup_vs_reference`` is whole / streaming with the spread of the rounds.

Peak memory: the PyTorch profiler with ``profile_memory=True`` records every allocation and
free of the CPU allocator (kineto ``[memory]`` events, bytes signed); the peak of their running
sum during the call is the peak of live tensor bytes allocated by the call. The input video is
allocated before the call and not counted; the 95 MB reconstruction is allocated inside the
call in both paths and is counted; the streaming output buffer is live from the first decoded
chunk on, so its peak minus the output size is the streaming working memory (also recorded). (``tracemalloc`` does not see torch's allocator and process
RSS depends on glibc's caching, so neither is used.) Profiling slows the calls, so the timed
runs are separate, unprofiled calls.
Run: ``pytest benchmarks/test_bench_tokenizer_streaming.py --benchmark-only``.
"""
from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from rgbd_world.tokenizer import VideoTokenizer

from .conftest import DEVICE, record, record_interleaved, run_benchmark

FRAMES, SIZE = 121, 256


def peak_allocated_bytes(fn) -> tuple[int, object]:
    """Peak of live bytes allocated by ``fn()`` above the level at its start (CPU allocator)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak, out


@pytest.mark.skipif(DEVICE.type != "cpu", reason="CPU benchmark of the tiny preset")
@pytest.mark.parametrize("chunk_frames", [8])
def test_tokenizer_streaming_vs_whole(benchmark, chunk_frames):
    torch.manual_seed(0)
    model = VideoTokenizer("tiny").eval()
    x = torch.rand(1, 3, FRAMES, SIZE, SIZE) * 2 - 1
    chunk_latents = chunk_frames // model.temporal_compression

    def whole():
        with torch.no_grad():
            return model.decode(model.encode(x))

    def streaming():
        with torch.no_grad():
            z = model.encode_stream(x, chunk_frames=chunk_frames)
            return model.decode_stream(z, chunk_latents=chunk_latents)

    peak_whole, y_whole = peak_allocated_bytes(whole)
    peak_stream, y_stream = peak_allocated_bytes(streaming)
    err = ((y_stream - y_whole).norm() / y_whole.norm()).item()
    assert err <= 1e-5, err
    del y_whole, y_stream

    record_interleaved(benchmark, {"streaming": streaming, "whole": whole}, path="streaming",
                       reference="whole", rounds=3, benchmark_rounds=1)
    timed = benchmark.extra_info.get("interleaved_seconds", {})
    seconds, whole_seconds = timed.get("streaming", float("nan")), timed.get("whole", float("nan"))
    out_bytes = x.numel() * x.element_size()
    benchmark.extra_info.update(
           frames=FRAMES, size=SIZE, chunk_frames=chunk_frames,
           peak_MB_whole=peak_whole / 2**20, peak_MB_streaming=peak_stream / 2**20,
           peak_ratio_streaming_over_whole=peak_stream / peak_whole,
           output_MB=out_bytes / 2**20, stream_vs_whole_rel_err=err,
           streaming_working_MB=(peak_stream - out_bytes) / 2**20,
           working_ratio=(peak_stream - out_bytes) / peak_whole,
           goal_peak_ratio_le_0_25=peak_stream <= 0.25 * peak_whole)
    print(f"\nwhole: {whole_seconds:.2f} s, peak {peak_whole / 2**20:.0f} MiB; streaming "
          f"(chunk {chunk_frames} frames): {seconds:.2f} s, peak {peak_stream / 2**20:.0f} MiB; "
          f"ratio {peak_stream / peak_whole:.3f} (output {out_bytes / 2**20:.0f} MiB counted in "
          f"both); streaming working memory (peak - its output buffer) "
          f"{(peak_stream - out_bytes) / 2**20:.0f} MiB = {(peak_stream - out_bytes) / peak_whole:.3f}"
          f" of the whole peak; rel err {err:.1e}")


@pytest.mark.skipif(DEVICE.type != "cpu", reason="CPU benchmark of the tiny preset")
def test_tokenizer_streaming_chunks_in_chunks_out(benchmark):
    """Long-video use: frames arrive in chunks (a reader) and each reconstructed chunk is consumed
    (written out) before the next, via ``iter_decode(iter_encode(chunks))``; nothing holds the
    whole video. Peak live bytes at 41 and 121 frames (does it grow with the frame count?) and
    against the whole-video call at 121 frames, measured in this run."""
    torch.manual_seed(0)
    model = VideoTokenizer("tiny").eval()
    tc = model.temporal_compression
    x = torch.rand(1, 3, FRAMES, SIZE, SIZE) * 2 - 1

    def chunks(frames):  # views of the input (allocated before the call, as a reader's buffer)
        video = x[:, :, :frames]
        return [video[:, :, :1 + tc]] + [video[:, :, s:s + tc] for s in range(1 + tc, frames, tc)]

    def pipeline(frames, reference=None):
        err_sq = ref_sq = 0.0
        t = 0
        with torch.no_grad():
            for y in model.iter_decode(model.iter_encode(chunks(frames))):  # one chunk at a time
                if reference is not None:
                    err_sq += (y - reference[:, :, t:t + y.shape[2]]).pow(2).sum().item()
                    ref_sq += reference[:, :, t:t + y.shape[2]].pow(2).sum().item()
                t += y.shape[2]
        assert t == frames
        return (err_sq / ref_sq) ** 0.5 if reference is not None else None

    def whole():
        with torch.no_grad():
            return model.decode(model.encode(x))

    peak_whole, y_whole = peak_allocated_bytes(whole)
    peak_41, _ = peak_allocated_bytes(lambda: pipeline(41))
    peak_121, err = peak_allocated_bytes(lambda: pipeline(FRAMES, y_whole))
    assert err <= 1e-5, err
    seconds = run_benchmark(benchmark, lambda: pipeline(FRAMES), rounds=1)
    record(benchmark, seconds=seconds, frames=FRAMES, size=SIZE, chunk_frames=tc,
           peak_MB_whole=peak_whole / 2**20, peak_MB_chunked_41_frames=peak_41 / 2**20,
           peak_MB_chunked_121_frames=peak_121 / 2**20,
           peak_ratio_chunked_over_whole=peak_121 / peak_whole,
           peak_growth_121_over_41_frames=peak_121 / peak_41, stream_vs_whole_rel_err=err,
           goal_peak_ratio_le_0_25=peak_121 <= 0.25 * peak_whole)
    print(f"\nchunks in, chunks out: peak {peak_41 / 2**20:.1f} MiB at 41 frames, "
          f"{peak_121 / 2**20:.1f} MiB at {FRAMES} (x{peak_121 / peak_41:.3f}); whole video "
          f"{peak_whole / 2**20:.0f} MiB: ratio {peak_121 / peak_whole:.3f}; rel err {err:.1e}")
