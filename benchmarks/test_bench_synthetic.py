"""Procedural RGB-D generator: frames per second of the ray caster (goal: >= 30 fps on CPU).

A 6-object scene (ground, back wall or sky, shadows) at 256x256, 17 frames per call, rendered
on the benchmark device with one torch thread and with torch's default thread count (which is
faster depends on the machine and its load: measured on 2 idle cores, two threads gave 59-63 fps
and one 35). ``extra_info`` records fps, the pixels (primary rays) per second and the thread
count.
Run: ``pytest benchmarks/test_bench_synthetic.py --benchmark-only``.
"""
import pytest
import torch

from rgbd_world.data.synthetic import render, sample_scene

from .conftest import DEVICE, record, run_benchmark

FRAMES, HEIGHT, WIDTH = 17, 256, 256


@pytest.mark.parametrize("threads", [1, 0], ids=["1thread", "default-threads"])
@pytest.mark.parametrize("seed", [3, 17])
def test_render_fps(benchmark, seed, threads):
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        _run(benchmark, seed)
    finally:
        torch.set_num_threads(old)


def _run(benchmark, seed):
    scene = sample_scene(seed, FRAMES, num_objects=6)
    assert len(scene["objects"]) == 6
    fn = lambda: render(scene, FRAMES, HEIGHT, WIDTH, device=DEVICE)  # noqa: E731
    clip = fn()
    assert torch.isfinite(clip.depth).float().mean() > 0.5 and clip.rgb.std() > 0.05
    seconds = run_benchmark(benchmark, fn, rounds=5)
    fps = FRAMES / seconds if seconds == seconds else float("nan")
    record(benchmark, seconds=seconds, fps=fps, frames=FRAMES, height=HEIGHT, width=WIDTH,
           objects=6, rays_per_s=fps * HEIGHT * WIDTH, goal_fps=30,
           camera=scene["camera"]["motion"]["type"])
