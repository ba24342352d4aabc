"""HunyuanVideo (diffusers ``HunyuanVideoCausalConv3d``) -> :class:`HunyuanVideoCausalConv3d`.

diffusers' layer wraps an ``nn.Conv3d`` (``.conv``) and first applies
``F.pad(x, time_causal_padding, mode=pad_mode)``: ``kT - 1`` frames on the left of time and
``k // 2`` pixels on both sides of H and W, replicated (the default ``pad_mode="replicate"``:
copies of frame 0 and of the border pixels) or zeros (``"constant"``). The inner conv may add
its own zero padding in all three dims (the encoder's downsampling conv pads 1): in time that is
one zero frame before the replicated ones and one after the last frame, so the layer stays
causal and is served exactly (the trailing zero frame goes through the op as a last chunk).
"""
from __future__ import annotations

from typing import Optional

from .padded_causal_conv3d import PaddedCausalConv3d

__all__ = ["HunyuanVideoCausalConv3d", "convert_hunyuan_video_conv"]


class HunyuanVideoCausalConv3d(PaddedCausalConv3d):
    """HunyuanVideo's causal conv: ``forward(x) -> y``, x (B, C_in, T, H, W)."""


def convert_hunyuan_video_conv(module) -> tuple[Optional[HunyuanVideoCausalConv3d], str]:
    """(replacement, "") for a diffusers ``HunyuanVideoCausalConv3d``, or (None, why not)."""
    pw_l, pw_r, ph_t, ph_b, pt_l, pt_r = module.time_causal_padding
    if pw_l != pw_r or ph_t != ph_b or pt_r != 0:
        return None, f"asymmetric padding {module.time_causal_padding}"
    conv = module.conv
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None, f"inner conv padding {conv.padding!r} / mode {conv.padding_mode!r}"
    if module.pad_mode == "replicate":
        kwargs = dict(head_replicas=pt_l, pre_pad=(ph_t, pw_l), pre_pad_mode="replicate")
    elif module.pad_mode == "constant":
        kwargs = dict(head_zeros=pt_l, extra_padding=(ph_t, pw_l))
    else:
        return None, f"pad_mode={module.pad_mode!r}"
    return HunyuanVideoCausalConv3d.from_conv(conv, state_prefix="conv.", **kwargs), ""
