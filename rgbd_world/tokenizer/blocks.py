"""Building blocks of the Cosmos-style causal video tokenizer.

Every block takes ``(x, stream=None)`` with x (B, C, T, H, W). ``stream=None`` processes a whole
video. A :class:`StreamState` processes one temporal chunk of a longer video and carries what the
next chunk needs (the frames each causal temporal conv still reads, the keys and values of the
causal temporal attention, whether this is the first chunk), so chunk by chunk equals whole.

Module and parameter names follow Cosmos's ``layers3d`` (``conv1.0``, ``mid.attn_1.1.q``, ...)
except that our causal conv keeps ``weight``/``bias`` where Cosmos nests ``conv3d.weight``:
:mod:`rgbd_world.tokenizer.cosmos_compat` maps between the two.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import rgbd_kernels

from .conv import CausalConv3d

__all__ = ["StreamState", "CausalSequential", "CausalGroupNorm", "ResnetBlockFactorized",
           "SpatialAttention", "TemporalAttention", "HybridDownsample", "HybridUpsample",
           "run_conv"]


class StreamState:
    """Caches of one streamed pass over a video (one for the encoder, one for the decoder)."""

    def __init__(self):
        self.first = True           # the chunk being processed is the video's first
        self.cache: dict[nn.Module, object] = {}

    def nbytes(self) -> int:
        """Bytes held by the caches (the state carried from chunk to chunk)."""
        total = 0
        for v in self.cache.values():
            for t in (v if isinstance(v, tuple) else (v,)):
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return total


def run_conv(conv: CausalConv3d, x: torch.Tensor, stream: StreamState | None) -> torch.Tensor:
    """``conv(x)``, streamed through ``stream``'s cache when the conv looks back in time."""
    if stream is None or (conv.kernel_size[0] == 1 and conv.stride[0] == 1):
        return conv(x)  # no temporal receptive field: a chunk is independent
    y, stream.cache[conv] = conv.stream(x, stream.cache.get(conv))
    return y


class CausalSequential(nn.Sequential):
    """``nn.Sequential`` (same state-dict keys) that forwards the stream state."""

    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        for m in self:
            x = run_conv(m, x, stream) if isinstance(m, CausalConv3d) else m(x, stream)
        return x


class CausalGroupNorm(nn.Module):
    """GroupNorm(1 group, eps 1e-6) applied to each frame separately (causal). Cosmos's
    ``CausalNormalize``: the ``GroupNorm`` lives in ``.norm``."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.GroupNorm(1, channels, eps=eps, affine=True)

    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        B, C, T, H, W = x.shape
        y = self.norm(x.transpose(1, 2).reshape(B * T, C, H, W))
        return y.reshape(B, T, C, H, W).transpose(1, 2)


def _factorized(cin: int, cout: int) -> CausalSequential:
    return CausalSequential(CausalConv3d(cin, cout, (1, 3, 3), padding=1),
                            CausalConv3d(cout, cout, (3, 1, 1), padding=0))


class ResnetBlockFactorized(nn.Module):
    """norm -> SiLU -> conv(1,3,3) -> conv(3,1,1), twice, plus a (1x1x1 when widening) shortcut."""

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.norm1 = CausalGroupNorm(in_channels)
        self.conv1 = _factorized(in_channels, out_channels)
        self.norm2 = CausalGroupNorm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _factorized(out_channels, out_channels)
        self.nin_shortcut = (CausalConv3d(in_channels, out_channels, 1)
                             if in_channels != out_channels else None)

    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), stream)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))), stream)
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class _AttentionBase(nn.Module):
    """Single-head attention with 1x1x1 conv projections q, k, v, proj_out and a residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = CausalGroupNorm(channels)
        self.q = CausalConv3d(channels, channels, 1)
        self.k = CausalConv3d(channels, channels, 1)
        self.v = CausalConv3d(channels, channels, 1)
        self.proj_out = CausalConv3d(channels, channels, 1)

    def _qkv(self, x):
        h = self.norm(x)
        return self.q(h), self.k(h), self.v(h)


class SpatialAttention(_AttentionBase):
    """Attention over the H*W positions of each frame (Cosmos ``CausalAttnBlock``)."""

    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        B, C, T, H, W = x.shape
        q, k, v = (t.permute(0, 2, 3, 4, 1).reshape(B * T, 1, H * W, C) for t in self._qkv(x))
        o = rgbd_kernels.attention(q, k, v, layout="bhsd")
        o = o.reshape(B, T, H, W, C).permute(0, 4, 1, 2, 3)
        return x + self.proj_out(o)


class TemporalAttention(_AttentionBase):
    """Causal attention over the frames of each pixel (Cosmos ``CausalTemporalAttnBlock``).
    Streamed, the keys and values of earlier chunks are cached (latent resolution only in the
    published configs: 2*C*h*w values per frame)."""

    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        B, C, T, H, W = x.shape
        q, k, v = (t.permute(0, 3, 4, 2, 1).reshape(B * H * W, 1, T, C) for t in self._qkv(x))
        if stream is None:
            o = rgbd_kernels.attention(q, k, v, layout="bhsd", causal=True)
        else:
            past = stream.cache.get(self)
            if past is not None:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            stream.cache[self] = (k, v)
            n0 = k.shape[2] - T  # frames before this chunk
            if n0 == 0:
                o = rgbd_kernels.attention(q, k, v, layout="bhsd", causal=True)
            else:  # query i (absolute n0 + i) sees keys 0 .. n0 + i
                keep = torch.ones(T, k.shape[2], dtype=torch.bool, device=x.device).tril(n0)
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        o = o.reshape(B, H, W, T, C).permute(0, 4, 3, 1, 2)
        return x + self.proj_out(o)


class HybridDownsample(nn.Module):
    """Spatial: conv(1,3,3) stride 2 after zero pad (0,1,0,1) + 2x2 average pool; temporal:
    conv(3,1,1) stride 2 + 2-frame average pool after repeating frame 0 once; then 1x1x1 conv.
    With neither, the identity (the parameters still exist, as in Cosmos)."""

    def __init__(self, channels: int, spatial_down: bool = True, temporal_down: bool = True):
        super().__init__()
        self.conv1 = CausalConv3d(channels, channels, (1, 3, 3), stride=(1, 2, 2), padding=0)
        self.conv2 = CausalConv3d(channels, channels, (3, 1, 1), stride=(2, 1, 1), padding=0)
        self.conv3 = CausalConv3d(channels, channels, 1)
        self.spatial_down = spatial_down
        self.temporal_down = temporal_down

    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        if not (self.spatial_down or self.temporal_down):
            return x
        if self.spatial_down:
            x = F.pad(x, (0, 1, 0, 1, 0, 0))
            x = self.conv1(x) + F.avg_pool3d(x, (1, 2, 2), (1, 2, 2))
        if self.temporal_down:
            if stream is None or stream.first:
                x = torch.cat([x[:, :, :1], x], dim=2)
            if x.shape[2] % 2:
                raise ValueError(f"temporal downsample got an odd chunk of {x.shape[2]} frames "
                                 "(padded); streamed chunks must follow the frame rule")
            x = run_conv(self.conv2, x, stream) + F.avg_pool3d(x, (2, 1, 1), (2, 1, 1))
        return self.conv3(x)

    def extra_repr(self) -> str:
        return f"spatial_down={self.spatial_down}, temporal_down={self.temporal_down}"


class HybridUpsample(nn.Module):
    """Temporal: each frame twice except frame 0, then + conv(3,1,1); spatial: nearest 2x, then
    + conv(1,3,3); then 1x1x1 conv. With neither, the identity."""

    def __init__(self, channels: int, spatial_up: bool = True, temporal_up: bool = True):
        super().__init__()
        self.conv1 = CausalConv3d(channels, channels, (3, 1, 1), padding=0)
        self.conv2 = CausalConv3d(channels, channels, (1, 3, 3), padding=1)
        self.conv3 = CausalConv3d(channels, channels, 1)
        self.spatial_up = spatial_up
        self.temporal_up = temporal_up

    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        if not (self.spatial_up or self.temporal_up):
            return x
        if self.temporal_up:
            x = x.repeat_interleave(2, dim=2)
            if stream is None or stream.first:
                x = x[:, :, 1:]
            x = run_conv(self.conv1, x, stream) + x
        if self.spatial_up:
            x = x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
            x = self.conv2(x) + x
        return self.conv3(x)

    def extra_repr(self) -> str:
        return f"spatial_up={self.spatial_up}, temporal_up={self.temporal_up}"
