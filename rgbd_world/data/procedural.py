"""A captioned procedural clip in one call: sample a scene (:mod:`.synthetic`), render it and
caption it (:mod:`.captions`). Above both, so neither imports the other's user."""
from __future__ import annotations

import torch

from .captions import caption_scene
from .synthetic import SyntheticClip, render, sample_scene

__all__ = ["make_clip"]


def make_clip(seed: int, frames: int = 17, height: int = 256, width: int = 256, *,
              num_objects: int | None = None, device: str | torch.device = "cpu") -> SyntheticClip:
    """Sample a scene from ``seed``, render it and caption it."""
    scene = sample_scene(seed, frames, num_objects)
    clip = render(scene, frames, height, width, device=device)
    clip.caption = caption_scene(scene)
    return clip
