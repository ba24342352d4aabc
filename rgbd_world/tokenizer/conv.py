"""The tokenizer's causal 3D convolution: ``rgbd_kernels.nn.CausalConv3d``.

``CausalConv3d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
time_pad="replicate")``: ``weight``/``bias`` like ``nn.Conv3d``; time left-padded with
``dilation_t*(kT-1) + (1-stride_t)`` copies of frame 0; ``padding`` = zero (H, W) padding (Cosmos
``CausalConv3d`` semantics, GUIDE §7). ``conv(x)`` convolves a whole video and
``conv.stream(x, cache) -> (y, new_cache)`` one chunk of a stream (``cache=None`` first).

If ``rgbd_kernels`` cannot provide the module (an older install), a plain ``F.pad`` +
``F.conv3d`` module with the same constructor, semantics, keys and streaming API stands in.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CausalConv3d", "FallbackCausalConv3d", "KERNEL_AVAILABLE"]


class FallbackCausalConv3d(nn.Conv3d):
    """Stand-in: nn.Conv3d parameters and init, causal time padding done here."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, bias=True, time_pad="replicate"):
        if time_pad != "replicate":
            raise ValueError(f"time_pad={time_pad!r} needs rgbd_kernels.nn.CausalConv3d")
        pad = tuple(padding) if isinstance(padding, (tuple, list)) else (padding, padding)
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, dilation,
                         bias=bias)
        self.spatial_padding = pad
        self.time_pad = time_pad

    def stream(self, x: torch.Tensor, cache: torch.Tensor | None = None):
        st, dt, kt = self.stride[0], self.dilation[0], self.kernel_size[0]
        span = dt * (kt - 1) + 1
        head = cache if cache is not None else x[:, :, :1].expand(-1, -1, span - st, -1, -1)
        seq = torch.cat([head, x], dim=2)
        n = 0 if seq.shape[2] < span else (seq.shape[2] - span) // st + 1
        ph, pw = self.spatial_padding
        used = F.pad(seq[:, :, :max(n - 1, 0) * st + span], (pw, pw, ph, ph))
        y = self._conv_forward(used, self.weight, self.bias) if n else \
            x.new_empty((x.shape[0], self.out_channels, 0) + x.shape[3:])
        return y, seq[:, :, n * st:].clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stream(x)[0]


try:
    from rgbd_kernels.nn import CausalConv3d
    KERNEL_AVAILABLE = True
except Exception:  # pragma: no cover - only without the rgbd_kernels op (issue 3)
    CausalConv3d = FallbackCausalConv3d
    KERNEL_AVAILABLE = False
