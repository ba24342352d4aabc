"""Synthetic dataset generation into shards, written atomically and resumable.

Format (no code needed to read it, ``numpy.load`` does): ``shard-000000.npz`` holds up to
``clips_per_shard`` clips. Member ``meta`` is a 0-d unicode array with JSON
``{"format": "rgbd-world-shard", "version": 1, "clips": [{"name", "frames", "height",
"width", "caption", "scene", "seed"}]}``; each clip ``<name>`` has members ``<name>/rgb``
(T, H, W, 3) uint8, ``<name>/depth`` (T, H, W) float32 planar metres (inf = sky),
``<name>/K`` (3, 3) float32 and ``<name>/poses`` (T, 4, 4) float32 camera-to-world (OpenCV
axes). ``manifest.json`` records the generation settings.

Atomicity: a shard is written to ``.shard-000000.npz.tmp-<pid>@<host>`` (a name readers never
match, owned by the writing process), flushed, fsynced and renamed over its final name. An
interrupted run leaves at most a temporary file; the next run deletes temporaries whose writer
is gone (never those of a writer still running) and skips every shard that already has its
final name. Clip ``i`` is rendered from seed ``(seed, i)``, so a resumed run produces the same
dataset. ``make-data --workers`` processes end with their parent, also on ``kill -9``.
"""
from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from rgbd_world.atomic import (remove_stale_temporaries, temporary_owner_gone,  # noqa: F401
                               temporary_path, write_text_atomic, writers_in_flight)
from rgbd_world.validation import check_device, check_int, check_output_dir

__all__ = ["SHARD_GLOB", "generate_dataset", "write_npz_atomic", "shard_path", "clip_seed",
           "progress_bar", "temporary_path", "remove_stale_temporaries", "die_with_parent"]

SHARD_GLOB = "shard-*.npz"
SHARD_FORMAT = "rgbd-world-shard"
_MANIFEST = "manifest.json"


def shard_path(out_dir: str | os.PathLike, index: int) -> Path:
    return Path(out_dir) / f"shard-{index:06d}.npz"


def clip_seed(seed: int, index: int) -> int:
    """The scene seed of clip ``index`` of a dataset generated with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def write_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray],
                     compress: bool = True) -> Path:
    """Write ``arrays`` to ``path`` (.npz) through a temporary file and an atomic rename."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as fh:
            (np.savez_compressed if compress else np.savez)(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


class progress_bar:  # noqa: N801 - used like tqdm
    """``tqdm`` when installed, else a minimal stderr counter with the same calls."""

    def __new__(cls, total: int, desc: str = "", unit: str = "it", disable: bool = False):
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return super().__new__(cls)
        return tqdm(total=total, desc=desc, unit=unit, disable=disable)

    def __init__(self, total: int, desc: str = "", unit: str = "it", disable: bool = False):
        self.total, self.desc, self.unit, self.disable = total, desc, unit, disable
        self.n, self._start = 0, time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.disable:
            rate = self.n / max(time.perf_counter() - self._start, 1e-9)
            print(f"\r{self.desc}: {self.n}/{self.total} {self.unit} ({rate:.2f} {self.unit}/s)",
                  end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.disable:
            print(file=sys.stderr, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _render_shard(job: dict) -> tuple[int, int]:
    """Render and write one shard (runs in a worker process or inline)."""
    import torch

    from .captions import caption_scene
    from .synthetic import render, sample_scene

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    arrays: dict[str, np.ndarray] = {}
    clips = []
    for i in job["clips"]:
        s = clip_seed(job["seed"], i)
        scene = sample_scene(s, job["frames"], job["num_objects"])
        clip = render(scene, job["frames"], job["height"], job["width"], device=job["device"])
        name = f"clip-{i:07d}"
        arrays[f"{name}/rgb"] = (clip.rgb * 255 + 0.5).clamp(0, 255).to(torch.uint8).cpu().numpy()
        arrays[f"{name}/depth"] = clip.depth.cpu().numpy().astype(np.float32)
        arrays[f"{name}/K"] = clip.K.cpu().numpy().astype(np.float32)
        arrays[f"{name}/poses"] = clip.poses.cpu().numpy().astype(np.float32)
        clips.append({"name": name, "index": i, "seed": s, "frames": job["frames"],
                      "height": job["height"], "width": job["width"],
                      "caption": caption_scene(scene), "scene": scene})
    meta = {"format": SHARD_FORMAT, "version": 1, "clips": clips}
    arrays["meta"] = np.array(json.dumps(meta))
    write_npz_atomic(job["path"], arrays, compress=job["compress"])
    return job["shard"], len(job["clips"])


def die_with_parent(parent_pid: int) -> None:
    """Make this (worker) process end when ``parent_pid`` does, even on ``kill -9`` of the parent:
    ``PR_SET_PDEATHSIG`` on Linux (it fires when the thread that forked us ends: the pool is made
    and used by the calling thread), else a daemon thread that watches the parent's pid."""
    import signal
    import threading

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _init_worker(threads: int, parent_pid: int) -> None:
    import torch

    die_with_parent(parent_pid)
    torch.set_num_threads(threads)


def generate_dataset(out_dir: str | os.PathLike, num_clips: int, frames: int = 17,
                     height: int = 256, width: int = 256, seed: int = 0, workers: int = 0, *,
                     clips_per_shard: int = 16, num_objects: int | None = None,
                     device: str = "cpu", compress: bool = True, progress: bool = True,
                     on_shard: Callable[[int], None] | None = None) -> list[Path]:
    """Render ``num_clips`` procedural clips into shards under ``out_dir``; return shard paths.

    Resumable: shards that already exist are skipped (after checking that ``manifest.json``
    was written with the same settings), temporaries of an interrupted run are deleted.
    ``workers`` > 0 renders shards in that many processes (one torch thread each unless there
    are more cores). ``on_shard(index)`` is called after each shard is written (tests use it to
    simulate an interruption).
    """
    from .synthetic import PALETTE, SCENE_VERSION

    for name, value in (("num_clips", num_clips), ("frames", frames), ("height", height),
                        ("width", width), ("clips_per_shard", clips_per_shard)):
        check_int(name, value, 1)
    check_int("seed", seed, 0, 2 ** 63 - 1)
    check_int("workers", workers, 0, 1024)
    check_int("num_objects", num_objects, 0, len(PALETTE), allow_none=True)
    check_device(device)
    out = check_output_dir("out_dir", out_dir)
    config = {"format": SHARD_FORMAT, "version": 1, "num_clips": int(num_clips),
              "frames": int(frames), "height": int(height), "width": int(width),
              "seed": int(seed), "clips_per_shard": int(clips_per_shard),
              "num_objects": num_objects, "scene_version": SCENE_VERSION}
    manifest = out / _MANIFEST
    has_shards = out.is_dir() and any(out.glob(SHARD_GLOB))
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text())
            old_config = old.get("config") if isinstance(old, dict) else None
        except (OSError, ValueError):
            old_config = None  # unreadable: only replaced below when no shard depends on it
        if old_config != config and (has_shards or writers_in_flight(out)):
            raise ValueError(f"{out} already holds a dataset generated with different settings "
                             f"({old_config}); use another directory or the same "
                             f"settings to resume (asked for {config})")
        # no shard and no writer: a failed or killed earlier run left nothing; start afresh
    elif has_shards:
        raise ValueError(f"{out} holds shards but no {_MANIFEST}; refusing to mix datasets")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(manifest, json.dumps({"config": config, "complete": False}, indent=1))
    remove_stale_temporaries(out)

    num_shards = -(-num_clips // clips_per_shard)
    paths = [shard_path(out, s) for s in range(num_shards)]
    cores = os.cpu_count() or 1
    threads = max(1, cores // workers) if workers else 0
    jobs = [{"shard": s, "path": str(paths[s]),
             "clips": list(range(s * clips_per_shard, min((s + 1) * clips_per_shard, num_clips))),
             "seed": seed, "frames": frames, "height": height, "width": width,
             "num_objects": num_objects, "device": device, "compress": compress,
             "threads": threads} for s in range(num_shards) if not paths[s].exists()]
    done_clips = num_clips - sum(len(j["clips"]) for j in jobs)
    bar = progress_bar(total=num_clips, desc="make-data", unit="clip", disable=not progress)
    bar.update(done_clips)
    try:
        if workers and len(jobs) > 1:
            import multiprocessing as mp

            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                     initargs=(threads, os.getpid())) as pool:
                results: Iterable = pool.map(_render_shard, jobs)
                for shard, n in results:
                    bar.update(n)
                    if on_shard:
                        on_shard(shard)
        else:
            for job in jobs:
                job["threads"] = 0
                shard, n = _render_shard(job)
                bar.update(n)
                if on_shard:
                    on_shard(shard)
    finally:
        bar.close()
    write_text_atomic(manifest, json.dumps({"config": config, "complete": True,
                                            "shards": [p.name for p in paths]}, indent=1))
    return paths
