"""Timestep embedding and AdaLN-LoRA modulation.

* :class:`TimestepEmbedding`: t in [0, 1] (per latent frame) -> sinusoidal features of 1000 t
  -> MLP -> (B, T, hidden).
* :class:`AdaLNLoRA`: SiLU(emb) -> Linear(hidden, rank) -> Linear(rank, n * hidden) giving n
  (shift, scale, gate)-style vectors per frame; the up projection starts at zero, so every
  sublayer starts as the identity (gate 0).
* :func:`modulate`: LN(x) * (1 + scale) + shift, per frame.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(...) times (already scaled, e.g. 1000 t) -> (..., dim) [cos | sin] features."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=t.device) / half)
    args = t.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t (B, T) in [0, 1] -> (B, T, hidden)."""
        return self.mlp(sinusoidal(t * 1000.0, self.freq_dim))


class AdaLNLoRA(nn.Module):
    def __init__(self, hidden: int, rank: int, chunks: int):
        super().__init__()
        self.chunks = chunks
        self.down = nn.Linear(hidden, rank, bias=False)
        self.up = nn.Linear(rank, chunks * hidden, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, emb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """emb (B, T, hidden) -> ``chunks`` tensors (B, T, 1, hidden) (broadcast over tokens)."""
        out = self.up(self.down(torch.nn.functional.silu(emb)))
        return tuple(c.unsqueeze(2) for c in out.chunk(self.chunks, dim=-1))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x (B, T, N, D): LayerNorm without affine, then * (1 + scale) + shift (each (B, T, 1, D))."""
    return torch.nn.functional.layer_norm(x, x.shape[-1:], eps=eps) * (1 + scale) + shift
