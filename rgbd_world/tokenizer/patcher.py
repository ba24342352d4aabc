"""3D Haar wavelet patcher and unpatcher (Cosmos continuous video tokenizer).

Patcher, for a video x (B, C, T, H, W) and patch size p (a power of two):

1. frame 0 is repeated p times (T -> T + p - 1 frames), so the causal first frame fills a whole
   temporal patch;
2. log2(p) levels of the separable 3D Haar transform, each on every channel: along time, height
   and width a pair (x0, x1) becomes low = a*(x0 + x1), high = a*(x0 - x1) with a = 1/sqrt(2);
   the 8 subbands (t, h, w) in {low, high}^3 are concatenated in the order lll, llh, lhl, lhh,
   hll, hlh, hhl, hhh (subband-major, channel-minor) and the level is scaled by 1/(2*sqrt(2)).

Output: (B, C * p**3, (T + p - 1) / p, H / p, W / p). Channel ``S * C + c`` holds input channel c
in the multi-level subband S (``S = s_1 + 8 s_2 + ...``, s_l the subband of level l):
:func:`patch_channel_index` gives the map, used to inflate RGB weights to RGBD.

The unpatcher inverts each level exactly (up to rounding) and drops the p - 1 extra frames.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["HaarPatcher3D", "HaarUnpatcher3D", "haar_patch", "haar_unpatch",
           "patch_channel_index"]

_A = 0.7071067811865476  # the Haar filter tap 1/sqrt(2)


def _levels(patch_size: int) -> int:
    if patch_size < 1 or patch_size & (patch_size - 1):
        raise ValueError(f"patch_size must be a power of two >= 1, got {patch_size}")
    return int(math.log2(patch_size))


def _rescale(dtype: torch.dtype) -> torch.Tensor:
    return 2 * torch.sqrt(torch.tensor(2.0, dtype=dtype))


def _dwt(x: torch.Tensor) -> torch.Tensor:
    """One level: (B, C, T, H, W) with even T, H, W -> (B, 8C, T/2, H/2, W/2)."""
    B, C, T, H, W = x.shape
    x = x.reshape(B, C, T // 2, 2, H // 2, 2, W // 2, 2)
    for dim in (3, 5, 7):  # time, height, width: pair axis -> (low, high) axis
        x0, x1 = x.select(dim, 0), x.select(dim, 1)
        x = torch.stack([x0 * _A + x1 * _A, x0 * _A - x1 * _A], dim=dim)
    # (B, C, T2, st, H2, sh, W2, sw) -> (B, st, sh, sw, C, T2, H2, W2)
    x = x.permute(0, 3, 5, 7, 1, 2, 4, 6).reshape(B, 8 * C, T // 2, H // 2, W // 2)
    return x / _rescale(x.dtype)


def _idwt(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_dwt`: (B, 8C, T, H, W) -> (B, C, 2T, 2H, 2W)."""
    B, C8, T, H, W = x.shape
    C = C8 // 8
    x = x.reshape(B, 2, 2, 2, C, T, H, W).permute(0, 4, 5, 1, 6, 2, 7, 3)  # B C T st H sh W sw
    for dim in (7, 5, 3):  # width, height, time
        lo, hi = x.select(dim, 0), x.select(dim, 1)
        x = torch.stack([lo * _A + hi * _A, lo * _A - hi * _A], dim=dim)
    return x.reshape(B, C, 2 * T, 2 * H, 2 * W) * _rescale(x.dtype)


def haar_patch(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C*p^3, (T+p-1)/p, H/p, W/p); see the module docstring."""
    levels = _levels(patch_size)
    if x.dim() != 5:
        raise ValueError(f"x must be (B, C, T, H, W), got shape {tuple(x.shape)}")
    T, H, W = x.shape[2:]
    if (T - 1) % patch_size or H % patch_size or W % patch_size:
        raise ValueError(f"the Haar patcher needs (T - 1), H and W divisible by patch_size="
                         f"{patch_size}, got T={T}, H={H}, W={W}")
    if patch_size > 1:
        x = torch.cat([x[:, :, :1].expand(-1, -1, patch_size - 1, -1, -1), x], dim=2)
    for _ in range(levels):
        x = _dwt(x)
    return x


def haar_unpatch(x: torch.Tensor, patch_size: int, drop_first: bool = True) -> torch.Tensor:
    """Inverse of :func:`haar_patch`; ``drop_first=False`` keeps the p - 1 repeated frames
    (a streamed chunk after the first one has none to drop)."""
    levels = _levels(patch_size)
    if x.dim() != 5 or x.shape[1] % (8 ** levels):
        raise ValueError(f"x must be (B, C*{8 ** levels}, T, H, W), got shape {tuple(x.shape)}")
    for _ in range(levels):
        x = _idwt(x)
    return x[:, :, patch_size - 1:] if drop_first else x


def patch_channel_index(channels: int, patch_size: int) -> torch.Tensor:
    """(p^3, channels) long tensor: entry [S, c] is the patched channel of input channel c in
    subband S (``S * channels + c``). Widening C -> C + 1 maps old [S, c] to new [S, c]."""
    n = 8 ** _levels(patch_size)
    return torch.arange(n * channels).reshape(n, channels)


class HaarPatcher3D(nn.Module):
    """Module form of :func:`haar_patch` (no parameters). ``first=False`` (a streamed chunk after
    the first) skips the frame-0 repetition: the chunk must then have a multiple of p frames."""

    def __init__(self, patch_size: int):
        super().__init__()
        _levels(patch_size)
        self.patch_size = patch_size

    def forward(self, x: torch.Tensor, first: bool = True) -> torch.Tensor:
        if first:
            return haar_patch(x, self.patch_size)
        # a later chunk: frames are already aligned to temporal patches
        p = self.patch_size
        if x.shape[2] % p:
            raise ValueError(f"a streamed chunk after the first needs a multiple of {p} frames, "
                             f"got {x.shape[2]}")
        for _ in range(_levels(p)):
            x = _dwt(x)
        return x

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}"


class HaarUnpatcher3D(nn.Module):
    """Module form of :func:`haar_unpatch` (no parameters)."""

    def __init__(self, patch_size: int):
        super().__init__()
        _levels(patch_size)
        self.patch_size = patch_size

    def forward(self, x: torch.Tensor, first: bool = True) -> torch.Tensor:
        return haar_unpatch(x, self.patch_size, drop_first=first)

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}"
