"""``CausalConv3d``: a drop-in ``nn.Conv3d`` whose time axis is causal (Cosmos semantics).

    conv = CausalConv3d(256, 256, (3, 3, 3), padding=1)           # time_pad="replicate"
    y = conv(x)                                                    # whole video
    y0, cache = conv.stream(x[:, :, :5])                          # chunk by chunk ...
    y1, cache = conv.stream(x[:, :, 5:], cache)                   # ... == conv(x) split in time

The module is stateless: the streaming cache is returned, not kept, so one module can serve many
streams and the module stays friendly to ``torch.compile`` and checkpointing. ``state_dict`` keys
are ``weight`` (C_out, C_in, kT, kH, kW) and ``bias`` (C_out,), like ``nn.Conv3d``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..causal_conv3d import (_tuple, causal_conv3d, causal_conv3d_stream, causal_time_pad)

__all__ = ["CausalConv3d"]


def _spatial_padding(padding) -> tuple[int, int]:
    """int p -> (p, p); (pH, pW); (pT, pH, pW) with pT == 0 (time padding is always causal)."""
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int, (pH, pW) or (0, pH, pW), got {padding!r} "
                         "(string paddings are not supported: time padding is causal)")
    if isinstance(padding, (tuple, list)) and len(padding) == 3:
        if padding[0] != 0:
            raise ValueError(f"padding[0] (time) must be 0, got {tuple(padding)}: the time "
                             "padding of a causal conv is dilation_t*(kT-1) + 1 - stride_t "
                             "frames on the left, set by kernel_size, dilation and stride")
        padding = tuple(padding[1:])
    return _tuple("padding", padding, 2, 0)


class CausalConv3d(nn.Module):
    """Causal 3D convolution with ``nn.Conv3d``'s constructor and parameters.

    Args (as ``nn.Conv3d``): in_channels, out_channels, kernel_size, stride, padding (zero
    spatial padding: int, (pH, pW) or (0, pH, pW)), dilation, groups (> 1: reference / cuDNN paths), bias,
    padding_mode (must be "zeros"), device, dtype. Extra keyword arguments:
        time_pad: "replicate" (left-pad time with copies of frame 0: Cosmos, LTX, Hunyuan) or
            "zeros" (Wan).
        activation: None or "silu", fused after the bias.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None, *, time_pad: str = "replicate",
                 activation: Optional[str] = None):
        super().__init__()
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode must be 'zeros' (spatial), got {padding_mode!r}; "
                             "time padding is chosen with time_pad")
        if time_pad not in ("replicate", "zeros"):
            raise ValueError(f"time_pad must be 'replicate' or 'zeros', got {time_pad!r}")
        if activation not in (None, "silu"):
            raise ValueError(f"activation must be None or 'silu', got {activation!r}")
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels={in_channels} and out_channels={out_channels} must be "
                             f"divisible by groups={groups}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _tuple("kernel_size", kernel_size, 3, 1)
        self.stride = _tuple("stride", stride, 3, 1)
        self.dilation = _tuple("dilation", dilation, 3, 1)
        self.padding = _spatial_padding(padding)
        self.time_pad, self.activation = time_pad, activation
        self.time_padding = causal_time_pad(self.kernel_size[0], self.stride[0], self.dilation[0])
        if self.time_padding < 0:
            raise ValueError(f"stride[0]={self.stride[0]} exceeds the temporal receptive field "
                             f"{self.dilation[0] * (self.kernel_size[0] - 1) + 1}")
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty((out_channels, in_channels // groups,
                                                *self.kernel_size),
                                               **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The ``nn.Conv3d`` initialization (kaiming-uniform weight, uniform bias)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_channels // self.groups * math.prod(self.kernel_size)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def _kwargs(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    time_pad=self.time_pad, activation=self.activation, groups=self.groups)

    def forward(self, x: torch.Tensor, cache: Optional[torch.Tensor] = None) -> torch.Tensor:
        """y for x (B, C_in, T, H, W); ``cache`` (from :meth:`stream`) continues a stream."""
        return causal_conv3d(x, self.weight, self.bias, cache=cache, **self._kwargs())

    def stream(self, x: torch.Tensor, cache: Optional[torch.Tensor] = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk of a stream: ``(y, new_cache)``; pass ``cache=None`` for the first chunk."""
        return causal_conv3d_stream(x, self.weight, self.bias, cache=cache, **self._kwargs())

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
             f"time_pad={self.time_pad!r}")
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.activation:
            s += f", activation={self.activation!r}"
        return s + ("" if self.bias is not None else ", bias=False")
