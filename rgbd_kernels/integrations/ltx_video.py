"""LTX-Video (diffusers ``LTXVideoCausalConv3d``) -> :class:`LTXVideoCausalConv3d`.

diffusers' layer wraps an ``nn.Conv3d`` (``.conv``, zero H/W padding ``k // 2``). With
``is_causal=True`` (LTX's encoder) it puts ``kT - 1`` copies of frame 0 before x whatever the
stride and dilation; with ``is_causal=False`` (LTX's decoder by default) it pads both ends of
time symmetrically, which is not causal: such layers are left alone.
"""
from __future__ import annotations

from typing import Optional

from .padded_causal_conv3d import PaddedCausalConv3d

__all__ = ["LTXVideoCausalConv3d", "convert_ltx_video_conv"]


class LTXVideoCausalConv3d(PaddedCausalConv3d):
    """LTX-Video's causal conv: ``forward(x) -> y``, x (B, C_in, T, H, W)."""


def convert_ltx_video_conv(module) -> tuple[Optional[LTXVideoCausalConv3d], str]:
    """(replacement, "") for a causal diffusers ``LTXVideoCausalConv3d``, or (None, why not)."""
    if not module.is_causal:
        return None, "is_causal=False (symmetric time padding, not causal)"
    conv = module.conv
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None, f"inner conv padding {conv.padding!r} / mode {conv.padding_mode!r}"
    return LTXVideoCausalConv3d.from_conv(conv, head_replicas=module.kernel_size[0] - 1,
                                          state_prefix="conv."), ""
