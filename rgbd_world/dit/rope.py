"""3D rotary position embedding over the (t, h, w) latent token grid (self-attention only).

Split of the head dim D (even) into time, height and width parts, as in Cosmos-Predict2::

    d_h = d_w = 2 * floor(D / 6),   d_t = D - d_h - d_w

so D = 128 gives t/h/w = 44/42/42; D = 64 -> 24/20/20; D = 24 -> 8/8/8. The time part gets the
remainder, hence at least as many channels as each spatial part. Every part has an even size.
The parts lie in the head dim in the order [t | h | w].

Within a part of size d, channel i and channel i + d/2 (i < d/2) form a pair rotated by the
angle ``pos * theta ** (-2 i / d)`` with ``pos`` that token's index along the part's axis
(rotate-half convention inside each part; Cosmos applies rotate-half over the whole head dim
instead, a fixed permutation of the channels, equivalent for a model trained from scratch).
``layout="global"`` (Cosmos-Predict2's, and diffusers') pairs channel c with c + D/2 over the
whole head dim instead, each half holding [t | h | w] frequencies (d_t/2, d_h/2, d_w/2 of them).
``scale`` = (s_t, s_h, s_w) stretches each axis NTK-style: that axis's theta becomes
``theta * s ** (d / (d - 2))`` (Predict2-2B: h and w by 3).

Because each pair is a plain 2D rotation by ``pos * freq``, ``rope(q)·rope(k)`` depends on the
positions only through their difference (relative position).

Tokens are ordered frame-major, as the DiT lays them out after (1, 2, 2) patching:
index = (t * H + h) * W + w over the grid (T, H/2, W/2) of the latent (H, W).
"""
from __future__ import annotations

import torch


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """(d_t, d_h, d_w) for an even head dim >= 6 (see the module docstring)."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"head_dim must be even and >= 6 for 3D RoPE, got {head_dim}")
    d_hw = 2 * (head_dim // 6)
    return head_dim - 2 * d_hw, d_hw, d_hw


def _axis_angles(positions: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    inv = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return positions.double()[:, None] * inv[None]  # (N, dim / 2)


class Rope3D:
    """Callable ``rope(x)`` rotating x (B, S, heads, D) with S = frames * height * width tokens.

    ``height``/``width`` are the token grid's (the latent's H/2, W/2). The cos/sin tables
    (S, D) are built once in float64, stored in float32 on ``device``; ``x`` is rotated in
    float32 and returned in its own dtype.
    """

    def __init__(self, frames: int, height: int, width: int, head_dim: int,
                 theta: float = 10000.0, device: torch.device | str = "cpu",
                 scale: tuple[float, float, float] = (1.0, 1.0, 1.0), layout: str = "axis"):
        if min(frames, height, width) < 1:
            raise ValueError(f"RoPE grid must be positive, got (T, H, W) = {(frames, height, width)}")
        if layout not in ("axis", "global"):
            raise ValueError(f"layout must be 'axis' or 'global', got {layout!r}")
        self.split = rope_split(head_dim)
        self.grid = (frames, height, width)
        self.tokens = frames * height * width
        self.head_dim = head_dim
        t, h, w = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width),
                                 indexing="ij")
        angles = []
        for pos, d, s in zip((t, h, w), self.split, scale):
            if s != 1.0 and d <= 2:
                raise ValueError(f"rope scale {s} needs more than 2 channels per axis, got {d}")
            axis_theta = theta * s ** (d / (d - 2)) if s != 1.0 else theta
            angles.append(_axis_angles(pos.reshape(-1), d, axis_theta))  # (S, d / 2)
        if layout == "axis":
            cos, sin, partner = [], [], []
            start = 0
            for ang, d in zip(angles, self.split):
                cos.append(torch.cat([ang.cos(), ang.cos()], dim=-1))
                sin.append(torch.cat([-ang.sin(), ang.sin()], dim=-1))  # rotate-half sign folded in
                half = d // 2
                idx = torch.arange(d)
                partner.append(start + torch.where(idx < half, idx + half, idx - half))
                start += d
            cos, sin, partner = torch.cat(cos, dim=-1), torch.cat(sin, dim=-1), torch.cat(partner)
        else:
            ang = torch.cat(angles, dim=-1)  # (S, D / 2): [t | h | w]
            cos = torch.cat([ang.cos(), ang.cos()], dim=-1)
            sin = torch.cat([-ang.sin(), ang.sin()], dim=-1)
            half, idx = head_dim // 2, torch.arange(head_dim)
            partner = torch.where(idx < half, idx + half, idx - half)
        self.cos = cos.float().to(device)[None, :, None, :]  # (1, S, 1, D)
        self.sin = sin.float().to(device)[None, :, None, :]
        self.partner = partner.to(device)  # channel paired with each channel

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.tokens or x.shape[-1] != self.head_dim:
            raise ValueError(f"RoPE built for (B, {self.tokens}, heads, {self.head_dim}) "
                             f"(grid {self.grid}), got {tuple(x.shape)}")
        xf = x.float()
        out = xf * self.cos + xf.index_select(-1, self.partner) * self.sin
        return out.to(x.dtype)
