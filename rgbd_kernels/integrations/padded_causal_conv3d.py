"""``PaddedCausalConv3d``: a :class:`rgbd_kernels.nn.CausalConv3d` with another model's padding.

Video VAEs pad the time axis of their causal convolutions in their own ways. This module covers
them all with one description of the frame sequence the convolution reads::

    S = [zeros * head_zeros] + [frame 0 * head_replicas] + x + [zeros * tail_zeros]

(or, when a model passes cached frames from the previous chunk, ``[cache] + x + tail``), every
frame spatially padded first by ``pre_pad`` pixels with ``pre_pad_mode`` ("replicate",
"reflect" or "circular"; a model's zero spatial padding is the op's ``padding`` instead), then
convolved with the layer's stride, dilation and groups. Output frame j reads
``S[j*stride_t + i*dilation_t]``: nothing after the frames it covers, so the layer stays causal
(a tail of zero frames only adds positions at the end).

When ``head`` is the op's own causal padding (``dilation_t*(kT-1) + 1 - stride_t`` copies of
frame 0, or zeros) the op pads in its address computation and nothing is copied. Any other head
(a cache, a longer or shorter head) and the tail are fed through the op's streaming form
(:func:`rgbd_kernels.causal_conv3d_stream`), which gives exactly the whole-sequence output for
any split, so the input video is never copied to be padded in time.

``weight`` and ``bias`` are the replaced layer's own ``Parameter`` objects. When the model kept
them in a child (``conv.weight``), ``state_prefix="conv."`` keeps that name in ``state_dict``
and accepts it in ``load_state_dict``, so checkpoints stay interchangeable with the original.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..causal_conv3d import causal_conv3d, causal_conv3d_stream
from ..nn import CausalConv3d

__all__ = ["PaddedCausalConv3d"]

_PRE_PAD_MODES = ("replicate", "reflect", "circular")


def _save_with_prefix(module, state_dict, prefix, local_metadata) -> None:
    """state_dict post-hook: ``weight`` -> ``<state_prefix>weight`` (the original model's key)."""
    if not module.state_prefix:
        return
    for name in ("weight", "bias"):
        key = prefix + name
        if key in state_dict:
            state_dict[prefix + module.state_prefix + name] = state_dict.pop(key)


def _load_with_prefix(module, state_dict, prefix, local_metadata, strict, missing_keys,
                      unexpected_keys, error_msgs) -> None:
    """load_state_dict pre-hook: accept the original model's ``<state_prefix>weight`` key."""
    if not module.state_prefix:
        return
    for name in ("weight", "bias"):
        key = prefix + module.state_prefix + name
        if key in state_dict:
            state_dict[prefix + name] = state_dict.pop(key)


class PaddedCausalConv3d(CausalConv3d):
    """A causal conv whose frame sequence is ``[zeros, frame-0 copies, x, zeros]`` (see module doc).

    Build it with :meth:`from_conv`, which shares the ``nn.Conv3d``'s weight and bias.

    Args (besides :class:`~rgbd_kernels.nn.CausalConv3d`'s):
        head_zeros, head_replicas: frames of zeros, then copies of frame 0, before x.
        tail_zeros: frames of zeros after x.
        pre_pad: (pH, pW) pixels of non-zero spatial padding applied before the conv's zero
            ``padding``; pre_pad_mode: its mode ("replicate", "reflect" or "circular").
        state_prefix: where the original model kept weight and bias ("" or e.g. "conv.").
    Shapes: x (B, C_in, T, H, W) -> (B, C_out, T_out, H_out, W_out), T_out from the length of S.
    Layout: contiguous on CPU (as ``nn.Conv3d`` there), else the op's (x's layout).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, device=None, dtype=None, *,
                 head_zeros: int = 0, head_replicas: int = 0, tail_zeros: int = 0,
                 pre_pad: Sequence[int] = (0, 0), pre_pad_mode: str = "replicate",
                 state_prefix: str = ""):
        for name, v in (("head_zeros", head_zeros), ("head_replicas", head_replicas),
                        ("tail_zeros", tail_zeros)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if pre_pad_mode not in _PRE_PAD_MODES:
            raise ValueError(f"pre_pad_mode must be one of {_PRE_PAD_MODES}, got {pre_pad_mode!r}")
        pre_pad = tuple(pre_pad)
        if len(pre_pad) != 2 or any(not isinstance(p, int) or p < 0 for p in pre_pad):
            raise ValueError(f"pre_pad must be (pH, pW) ints >= 0, got {pre_pad!r}")
        native = "zeros" if head_replicas == 0 else "replicate"
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, device=device, dtype=dtype, time_pad=native)
        self.head_zeros, self.head_replicas, self.tail_zeros = head_zeros, head_replicas, tail_zeros
        self.pre_pad, self.pre_pad_mode, self.state_prefix = pre_pad, pre_pad_mode, state_prefix
        self.register_state_dict_post_hook(_save_with_prefix)
        self.register_load_state_dict_pre_hook(_load_with_prefix)

    @classmethod
    def from_conv(cls, conv: nn.Conv3d, extra_padding: Sequence[int] = (0, 0),
                  **kwargs) -> "PaddedCausalConv3d":
        """A layer computing with ``conv``'s own weight and bias ``Parameter`` objects.

        ``conv`` must have ``padding_mode="zeros"``. Its zero time padding pT (applied by the
        conv around everything the model padded) is folded in: pT more zero frames at the very
        start of the head and at the end of the tail. Its spatial padding plus
        ``extra_padding`` (pH, pW: zeros the model adds before calling it) becomes the op's
        zero ``padding``. ``kwargs``: the constructor's keyword arguments (head, tail, pre_pad,
        state_prefix).
        """
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"conv must have numeric padding and padding_mode='zeros', got "
                             f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r}")
        pt = conv.padding[0]
        kwargs["head_zeros"] = kwargs.get("head_zeros", 0) + pt
        kwargs["tail_zeros"] = kwargs.get("tail_zeros", 0) + pt
        padding = (conv.padding[1] + extra_padding[0], conv.padding[2] + extra_padding[1])
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    padding, conv.dilation, conv.groups, conv.bias is not None,
                    device="meta", dtype=conv.weight.dtype, **kwargs)
        layer.weight = conv.weight
        if conv.bias is not None:
            layer.bias = conv.bias
        layer.train(conv.training)
        return layer

    # ------------------------------------------------------------------------------- compute

    @property
    def head_frames(self) -> int:
        """Frames before x in S when no cache is given."""
        return self.head_zeros + self.head_replicas

    def _native_head(self) -> Optional[str]:
        """The op's ``time_pad`` when the default head is exactly the op's own padding."""
        if self.head_zeros == 0 and self.head_replicas == self.time_padding:
            return "replicate"
        if self.head_replicas == 0 and self.head_zeros == self.time_padding:
            return "zeros"
        return None

    def default_head(self, x: torch.Tensor) -> torch.Tensor:
        """The head frames for x (already spatially pre-padded): zeros, then copies of frame 0."""
        b, c, _, h, w = x.shape
        parts = []
        if self.head_zeros:
            parts.append(x.new_zeros((b, c, self.head_zeros, h, w)))
        if self.head_replicas:
            parts.append(x[:, :, :1].expand(b, c, self.head_replicas, h, w))
        if not parts:
            return x[:, :, :0]
        return torch.cat(parts, dim=2)

    def spatial_pre_pad(self, x: torch.Tensor, pre_pad=None, mode=None) -> torch.Tensor:
        """x with the non-zero spatial padding applied (x itself when there is none)."""
        ph, pw = self.pre_pad if pre_pad is None else pre_pad
        if ph == 0 and pw == 0:
            return x
        return F.pad(x, (pw, pw, ph, ph, 0, 0), mode=mode or self.pre_pad_mode)

    def padded_conv(self, x: torch.Tensor, head: Optional[torch.Tensor] = None, *,
                    pre_pad=None, pre_pad_mode=None, splits: int = 1) -> torch.Tensor:
        """The conv over ``S = head + x + tail`` (see the module docstring).

        Args:
            x: (B, C_in, T, H, W), not yet spatially pre-padded.
            head: frames to put before x (a model's cache, already in the pre-padded size when
                there is a pre-pad), or None for the default head (zeros, then frame-0 copies).
            pre_pad, pre_pad_mode: override this layer's (pH, pW) and mode for this call.
            splits: process x in this many time chunks (same output, less peak memory).
        Returns: (B, C_out, T_out, H_out, W_out).
        """
        x = self.spatial_pre_pad(x, pre_pad, pre_pad_mode)
        th = self.time_padding
        native = self._native_head() if head is None else None
        if native is not None:
            cache, chunks = None, [x]
        else:
            if head is None:
                head = self.default_head(x)
            p = head.shape[2]
            if p >= th:  # the op's cache holds th .. th+stride_t-1 frames; the rest streams
                keep = min(p, th + self.stride[0] - 1)
                cache, chunks = head[:, :, :keep], [head[:, :, keep:], x]
            else:  # too few head frames: the first frames of x complete the cache
                need = th - p
                cache = torch.cat([head, x[:, :, :need]], dim=2)
                chunks = [x[:, :, need:]]
        if splits > 1:
            chunks = chunks[:-1] + list(torch.chunk(chunks[-1], splits, dim=2))
        if self.tail_zeros:
            b, c, _, h, w = x.shape
            chunks.append(x.new_zeros((b, c, self.tail_zeros, h, w)))
        chunks = [c for c in chunks if c.shape[2] > 0]
        if not chunks:
            raise ValueError(f"x has {x.shape[2]} frames: too few for kernel "
                             f"{self.kernel_size} with stride {self.stride}")
        kwargs = self._kwargs()
        kwargs["time_pad"] = native or self.time_pad
        if len(chunks) == 1:
            y = causal_conv3d(chunks[0], self.weight, self.bias, cache=cache, **kwargs)
        else:
            outs = []
            for chunk in chunks:
                y, cache = causal_conv3d_stream(chunk, self.weight, self.bias, cache=cache,
                                                **kwargs)
                if y.shape[2]:
                    outs.append(y)
            if not outs:
                raise ValueError(f"x has {x.shape[2]} frames: too few for kernel "
                                 f"{self.kernel_size} with stride {self.stride}")
            y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        # nn.Conv3d returns contiguous outputs on CPU whatever the input's layout; the op keeps
        # x's. Downstream kernels (GroupNorm, ...) round differently per layout, so match it.
        return y.contiguous() if y.device.type == "cpu" else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """y for x (B, C_in, T, H, W) over the default head and tail."""
        return self.padded_conv(x)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        s += f", head_zeros={self.head_zeros}, head_replicas={self.head_replicas}"
        if self.tail_zeros:
            s += f", tail_zeros={self.tail_zeros}"
        if any(self.pre_pad):
            s += f", pre_pad={self.pre_pad}, pre_pad_mode={self.pre_pad_mode!r}"
        return s
