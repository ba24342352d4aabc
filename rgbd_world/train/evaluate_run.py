"""Evaluate a tokenizer training run on held-out clips (``rgbd-world eval-tokenizer --run``):
the run's newest checkpoint through :func:`rgbd_world.eval.evaluate_tokenizer` (an RGBD run with a
teacher also reports its latent's agreement with that teacher)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from rgbd_world.eval.tokenizer_eval import evaluate_tokenizer

from .run_models import load_rgb_tokenizer, load_tokenizer, run_teacher

__all__ = ["evaluate_run"]


def evaluate_run(run_dir: str | os.PathLike, data: str | os.PathLike | None = None,
                 num_clips: int = 16, device: str = "cpu", ema: bool = True) -> dict[str, float]:
    """Evaluate a ``train.py --stage tokenizer[-rgb]`` run on held-out clips.

    ``data``: a dataset directory; default: ``num_clips`` procedural clips rendered with a seed
    the training data never used, at the run's frames and size, under
    ``<run>/eval-data-v<scene version>-<clips>x<frames>x<height>x<width>`` (kept for reruns).
    """
    from rgbd_world.data import RGBDVideoDataset, generate_dataset
    from rgbd_world.validation import InvalidArgument, check_int

    check_int("num_clips", num_clips, 1)
    run = Path(run_dir)
    if not (run / "config.json").is_file():
        raise InvalidArgument("run_dir", str(run), "a train.py --stage tokenizer[-rgb] run "
                              "directory", f"{run / 'config.json'} does not exist")
    cfg = json.loads((run / "config.json").read_text())
    model = load_tokenizer(run, ema=ema, device=device)
    d = cfg["data"]
    if data is None:
        from rgbd_world.data.synthetic import SCENE_VERSION

        data = run / (f"eval-data-v{SCENE_VERSION}-{num_clips}x{d['frames']}x{d['height']}x"
                      f"{d['width']}")
        generate_dataset(data, num_clips, frames=d["frames"], height=d["height"], width=d["width"],
                         seed=cfg["run"]["seed"] + 100_003, progress=False)
    dataset = RGBDVideoDataset(data, frames=d["frames"], size=(d["height"], d["width"]),
                               augment=False, temporal_compression=model.config.temporal_compression)
    teacher = None
    if model.config.in_channels >= 4 and run_teacher(run):
        teacher = load_rgb_tokenizer(run, device=device)      # latent agreement with it
    return evaluate_tokenizer(model, dataset, device=device, max_clips=num_clips, teacher=teacher)
