"""CogVideoX and Mochi (diffusers ``CogVideoXCausalConv3d``) -> :class:`CogVideoXCausalConv3d`.

diffusers' ``CogVideoXCausalConv3d`` wraps a "safe" ``nn.Conv3d`` (``.conv``) and returns
``(output, conv_cache)``. Its time padding is ``kT - 1`` frames on the left whatever the stride
and dilation; ``pad_mode`` (read on every call, as diffusers does) chooses:

* ``"replicate"`` (Mochi): ``F.pad(..., mode="replicate")`` of time (left) and of H, W by
  ``(k - 1) // 2`` on both sides; no cache (returns None).
* anything else (CogVideoX's "first"/"constant"): copies of frame 0, or the ``conv_cache`` of the
  previous chunk, before x; H and W zero-padded by the inner conv. The returned cache is the last
  ``kT - 1`` frames of [cache, x], which is what the next chunk needs (None for kT = 1: such a
  layer needs no history).

The safe conv splits inputs over 2 GiB (counted in 16-bit elements) into time chunks to bound
memory; here they are streamed through the op in as many chunks, with the same output.
"""
from __future__ import annotations

from typing import Optional

import torch

from .padded_causal_conv3d import PaddedCausalConv3d

__all__ = ["CogVideoXCausalConv3d", "convert_cogvideox_conv"]


class CogVideoXCausalConv3d(PaddedCausalConv3d):
    """CogVideoX's / Mochi's causal conv: ``forward(inputs, conv_cache=None) -> (y, conv_cache)``.

    inputs: (B, C_in, T, H, W); conv_cache: (B, C_in, kT - 1, H, W) or None.
    Attributes as diffusers': ``pad_mode``, ``height_pad``, ``width_pad``, ``time_kernel_size``.
    ``split_gib``: the safe conv's memory threshold (GiB of 16-bit elements).
    """

    split_gib = 2.0

    def _splits(self, x: torch.Tensor, head_frames: int) -> int:
        b, c, t, h, w = x.shape
        gib = b * c * (t + head_frames) * h * w * 2 / 1024 ** 3
        return int(gib / self.split_gib) + 1 if gib > self.split_gib else 1

    def forward(self, inputs: torch.Tensor,  # type: ignore[override]
                conv_cache: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        k = self.time_kernel_size
        if self.pad_mode == "replicate":
            pre = (self.height_pad, self.width_pad)
            x = self.spatial_pre_pad(inputs, pre, "replicate")
            y = self.padded_conv(x, pre_pad=(0, 0), splits=self._splits(x, k - 1))
            return y, None
        if k == 1:
            return self.padded_conv(inputs, splits=self._splits(inputs, 0)), None
        y = self.padded_conv(inputs, conv_cache, splits=self._splits(inputs, k - 1))
        t = inputs.shape[2]
        if t >= k - 1:
            new_cache = inputs[:, :, t - (k - 1):].clone()
        else:
            head = conv_cache if conv_cache is not None else self.default_head(inputs)
            new_cache = torch.cat([head[:, :, head.shape[2] - (k - 1 - t):], inputs], dim=2)
        return y, new_cache


def convert_cogvideox_conv(module) -> tuple[Optional[CogVideoXCausalConv3d], str]:
    """(replacement, "") for a diffusers ``CogVideoXCausalConv3d``, or (None, why not)."""
    conv = module.conv
    if conv.padding_mode != "zeros" or conv.padding[0] != 0:
        return None, f"inner conv padding {conv.padding} / mode {conv.padding_mode!r}"
    if tuple(module.time_causal_padding[4:]) != (module.time_kernel_size - 1, 0):
        return None, f"time padding {module.time_causal_padding[4:]} is not (kT - 1, 0)"
    layer = CogVideoXCausalConv3d.from_conv(conv, head_replicas=module.time_kernel_size - 1,
                                            state_prefix="conv.")
    layer.pad_mode = module.pad_mode
    layer.height_pad, layer.width_pad = module.height_pad, module.width_pad
    layer.time_kernel_size = module.time_kernel_size
    if "split_gib" in vars(conv):
        layer.split_gib = conv.split_gib
    return layer, ""
