"""How the DiT is conditioned, in training and in generation (one place for both).

Latents: ``z`` (B, C, T, h, w) from the RGBD tokenizer; ``z_rgb`` (B, C_rgb, T, h, w) from the
frozen RGB tokenizer (its latent space is the one the RGBD tokenizer is distilled towards).

Modes:
* "text":         text only; no conditioning latents.
* "image":        an RGB image: its RGB latent fills latent frame 0 of ``cond`` (zeros after).
* "video":        an RGB video: its RGB latents fill every frame of ``cond``; the model generates
                  the joint RGBD latent, so the depth comes out coherent with the given RGB.
* "continuation": the first k latent frames are given as clean RGBD latents: ``cond_mask`` = 1
                  there, they are held at t = 0 and excluded from the loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

MODES = ("text", "image", "video", "continuation")
DEFAULT_MODE_PROBS = {"text": 0.4, "image": 0.2, "video": 0.3, "continuation": 0.1}


@dataclass
class Conditioning:
    cond: torch.Tensor       # (B, C_rgb, T, h, w) RGB latents of the given RGB frames, else 0
    cond_mask: torch.Tensor  # (B, 1, T, 1, 1) float: 1 on latent frames given as clean RGBD

    @property
    def loss_mask(self) -> torch.Tensor:
        """(B, 1, T, 1, 1) float: 1 on the frames the model must generate."""
        return 1.0 - self.cond_mask


def build_conditioning(mode: str, z_rgb: torch.Tensor | None, like: torch.Tensor,
                       cond_channels: int, given_frames: int = 0,
                       z: torch.Tensor | None = None) -> Conditioning:
    """Conditioning of one mode for a whole batch shaped like ``like`` (B, C, T, h, w)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    b, _, t, h, w = like.shape
    cond = like.new_zeros(b, cond_channels, t, h, w)
    cond_mask = like.new_zeros(b, 1, t, 1, 1)
    if mode in ("image", "video"):
        if z_rgb is None:
            raise ValueError(f"mode {mode!r} needs the RGB latents z_rgb")
        frames = 1 if mode == "image" else min(t, z_rgb.shape[2])
        cond[:, :, :frames] = z_rgb[:, :, :frames].to(cond.dtype)
    elif mode == "continuation":
        if not 0 < given_frames < t:
            raise ValueError(f"continuation needs 0 < given_frames < {t} latent frames, got "
                             f"{given_frames}")
        cond_mask[:, :, :given_frames] = 1.0
    return Conditioning(cond, cond_mask)


def sample_training_conditioning(z: torch.Tensor, z_rgb: torch.Tensor, cond_channels: int,
                                 generator: torch.Generator | None = None,
                                 probs: dict[str, float] | None = None,
                                 cond_dropout: float = 0.1) -> tuple[Conditioning, list[str]]:
    """A random mode per sample (``probs``), and RGB conditioning dropped with ``cond_dropout``
    (so the model also learns the unconditional velocity for guidance)."""
    probs = probs or DEFAULT_MODE_PROBS
    names = [m for m in MODES if probs.get(m, 0) > 0]
    weights = torch.tensor([probs[m] for m in names], dtype=torch.float64)
    b, _, t = z.shape[:3]
    picks = torch.multinomial(weights, b, replacement=True, generator=generator).tolist()
    modes = [names[i] if not (names[i] == "continuation" and t < 2) else "text" for i in picks]
    parts = []
    for i, mode in enumerate(modes):
        k = int(torch.randint(1, max(t, 2), (1,), generator=generator)) if mode == "continuation" else 0
        parts.append(build_conditioning(mode, z_rgb[i:i + 1], z[i:i + 1], cond_channels, k))
    cond = torch.cat([p.cond for p in parts])
    keep = (torch.rand(b, generator=generator) >= cond_dropout).to(cond.dtype)
    cond = cond * keep.view(b, 1, 1, 1, 1).to(cond.device)
    return Conditioning(cond, torch.cat([p.cond_mask for p in parts])), modes
