"""3D rotary position embedding over the (t, h, w) latent token grid.

The head dim D is split into time, height and width parts: d_h = d_w = 2 * floor(D / 6) and
d_t = D - d_h - d_w (D = 128 gives h/w/t = 42/42/44, as in Cosmos-Predict2). Within each part,
pair i of (x_i, x_{i + d/2}) is rotated by the angle pos * theta^(-2i / d) of that axis.
Tokens are ordered frame-major: index = (t * H + h) * W + w.
"""
from __future__ import annotations

import torch


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """(d_t, d_h, d_w) for an even head dim."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"head_dim must be even and >= 6 for 3D RoPE, got {head_dim}")
    d_hw = 2 * (head_dim // 6)
    return head_dim - 2 * d_hw, d_hw, d_hw


def _axis_angles(positions: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    inv = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return positions.double()[:, None] * inv[None]  # (N, dim / 2)


class Rope3D:
    """Callable ``rope(x)`` for x (B, S, H, D) with S = T * Hh * Ww tokens."""

    def __init__(self, frames: int, height: int, width: int, head_dim: int,
                 theta: float = 10000.0, device: torch.device | str = "cpu"):
        self.split = rope_split(head_dim)
        t, h, w = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width),
                                 indexing="ij")
        angles = [_axis_angles(p.reshape(-1), d, theta)
                  for p, d in zip((t, h, w), self.split)]
        self.cos = [a.cos().float().to(device) for a in angles]
        self.sin = [a.sin().float().to(device) for a in angles]
        self.tokens = frames * height * width

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.tokens:
            raise ValueError(f"RoPE built for {self.tokens} tokens, got {x.shape[1]}")
        parts = torch.split(x, list(self.split), dim=-1)
        out = []
        for part, cos, sin in zip(parts, self.cos, self.sin):
            half = part.shape[-1] // 2
            a, b = part[..., :half].float(), part[..., half:].float()
            c, s = cos[None, :, None, :], sin[None, :, None, :]
            out.append(torch.cat([a * c - b * s, a * s + b * c], dim=-1).to(x.dtype))
        return torch.cat(out, dim=-1)
