"""Timestep embedding and AdaLN-LoRA modulation (Cosmos-Predict2 style).

* :func:`sinusoidal`: ``[cos(s * f_0..f_{n-1}) | sin(s * f_0..f_{n-1})]`` with
  ``f_i = max_period ** (-i / n)``, ``n = dim / 2``, ``max_period = 10000``.
* :class:`TimestepEmbedding`: the flow-matching time ``t`` in [0, 1] (one per latent frame) is
  scaled to ``s = 1000 t`` (the DDPM-like range the sinusoid's frequencies are made for), embedded
  sinusoidally in float32 (bf16 would round t to ~3 digits) and passed through
  ``Linear -> SiLU -> Linear`` to the model width: (B, T) -> (B, T, hidden).
* :class:`AdaLNLoRA`: ``up(down(SiLU(emb)))`` with ``down: hidden -> rank`` and
  ``up: rank -> chunks * hidden`` (both without bias), split into ``chunks`` vectors per frame,
  each (B, T, 1, hidden) to broadcast over that frame's tokens. A block uses 9 chunks
  (shift, scale, gate for self-attention, cross-attention and MLP); the final layer 2 (shift,
  scale). ``up`` starts at zero (adaLN-Zero): every gate is 0 at init, so each sublayer starts
  as the identity. ``modulation="block"`` (the default) uses one 9-chunk LoRA per block: 10 *
  hidden * rank parameters per block; ``"sublayer"`` (Cosmos-Predict2's) one 3-chunk LoRA per
  sublayer (12 * hidden * rank) plus the shared base below.
* :class:`Predict2TimestepEmbedding` (``modulation="sublayer"``, Cosmos-Predict2's form): the
  sinusoid of ``scale * t`` at the model width ``f``; returns ``emb = RMSNorm(f)`` (affine, eps
  1e-6; what every AdaLN-LoRA reads) and ``base = linear_2(SiLU(linear_1(f)))`` (no biases,
  hidden -> hidden -> 3 hidden): a (shift, scale, gate) added to every sublayer's LoRA output
  (its first two thirds to the final layer's shift, scale). ``linear_2`` starts at zero.
* :func:`modulate`: ``LN(x) * (1 + scale) + shift`` with a LayerNorm without affine (eps 1e-6).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

TIME_SCALE = 1000.0  # t in [0, 1] is embedded as the sinusoid of 1000 t


def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(...) times (already scaled, e.g. 1000 t) -> (..., dim) float32 ``[cos | sin]`` features."""
    if dim % 2:
        raise ValueError(f"sinusoidal embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=t.device) / half)
    args = t.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedding(nn.Module):
    """t (B, T) in [0, 1] -> (B, T, hidden): MLP(sinusoidal(scale t)), scale 1000 by default."""

    def __init__(self, hidden: int, freq_dim: int = 256, scale: float = TIME_SCALE):
        super().__init__()
        self.freq_dim, self.scale = freq_dim, scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        feats = sinusoidal(t.float() * self.scale, self.freq_dim)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


class Predict2TimestepEmbedding(nn.Module):
    """t (B, T) in [0, 1] -> (emb (B, T, hidden), base (B, T, 3 hidden)); see the module
    docstring. ``scale``: the sinusoid is of ``scale * t`` (Predict2: 1)."""

    def __init__(self, hidden: int, scale: float = 1.0, eps: float = 1e-6):
        super().__init__()
        self.hidden, self.scale = hidden, scale
        self.linear_1 = nn.Linear(hidden, hidden, bias=False)
        self.linear_2 = nn.Linear(hidden, 3 * hidden, bias=False)
        self.norm = nn.RMSNorm(hidden, eps=eps)
        nn.init.zeros_(self.linear_2.weight)  # adaLN-Zero: the shared gate starts at 0

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = sinusoidal(t.float() * self.scale, self.hidden).to(self.linear_1.weight.dtype)
        base = self.linear_2(F.silu(self.linear_1(feats)))
        return self.norm(feats), base


class AdaLNLoRA(nn.Module):
    """Low-rank AdaLN modulation: emb (B, T, hidden) -> ``chunks`` tensors (B, T, 1, hidden)."""

    def __init__(self, hidden: int, rank: int, chunks: int):
        super().__init__()
        if rank < 1 or chunks < 1:
            raise ValueError(f"rank and chunks must be >= 1, got rank={rank}, chunks={chunks}")
        self.chunks = chunks
        self.down = nn.Linear(hidden, rank, bias=False)
        self.up = nn.Linear(rank, chunks * hidden, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, emb: torch.Tensor, base: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """``base`` (B, T, chunks * hidden), optional: added before the split (Predict2)."""
        out = self.up(self.down(F.silu(emb)))
        if base is not None:
            out = out + base
        return tuple(c.unsqueeze(-2) for c in out.chunk(self.chunks, dim=-1))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x (B, T, N, D): LayerNorm without affine, then ``* (1 + scale) + shift`` (each (B, T, 1, D))."""
    return F.layer_norm(x, x.shape[-1:], eps=eps) * (1 + scale) + shift
