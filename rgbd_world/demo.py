"""The main job on a fresh machine: procedural data -> tiny RGB tokenizer -> tiny RGBD tokenizer
-> tiny DiT -> an RGBD video from a prompt, all on CPU (``rgbd-world demo``).

Each stage runs ``python -m rgbd_world.train`` (the same trainer as ``train.py``) with the
``tiny-cpu`` config; ``skip_training`` uses the shipped checkpoint instead.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from rgbd_world.package_data import DEFAULT_PIPELINE_NAME


def _train(stage: str, out: Path, steps: int, *extra: str) -> None:
    cmd = [sys.executable, "-m", "rgbd_world.train", "--stage", stage, "--config", "tiny-cpu",
           f"run.out_dir={out}", f"run.steps={steps}", f"run.ckpt_every={steps}", *extra]
    print("$", " ".join(cmd), flush=True)
    if out.exists() and (out / "checkpoints").exists():
        cmd.append("--resume")  # a rerun continues (or finds the stage already done)
    subprocess.run(cmd, check=True)


def run_demo(out: Path, steps: int = 300, skip_training: bool = False,
             prompt: str = "a red sphere moves left in front of a blue box") -> Path:
    import torch

    from rgbd_world.export import write_outputs
    from rgbd_world.pipeline import RGBDPipeline
    from rgbd_world.train.run_models import pipeline_from_training_runs
    from rgbd_world.validation import check_int

    check_int("steps", steps, 1)
    start = time.perf_counter()
    if skip_training:
        pipe = RGBDPipeline.from_pretrained(DEFAULT_PIPELINE_NAME)
    else:
        runs = out / "runs"
        data = runs / "data"
        _train("tokenizer-rgb", runs / "rgb", steps, f"data.root={data}")
        _train("tokenizer", runs / "rgbd", steps, f"data.root={data}", f"model.teacher={runs / 'rgb'}")
        _train("dit", runs / "dit", 4 * steps, f"data.root={data}", f"model.tokenizer={runs / 'rgbd'}",
               "optim.lr=1e-3")
        pipe = pipeline_from_training_runs(runs / "rgbd", runs / "dit")
        pipe.save_pretrained(out / "pipeline")
    sample = pipe(prompt=prompt, generator=torch.Generator().manual_seed(0))
    paths = write_outputs(sample, out / "sample")
    print(f"demo finished in {time.perf_counter() - start:.0f} s; prompt: {prompt!r}")
    for kind, path in paths.items():
        print(f"  {kind:14s} {path}")
    return out
