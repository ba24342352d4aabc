"""Wan (diffusers ``AutoencoderKLWan``): ``WanCausalConv3d`` -> :class:`WanCausalConv3d`.

Wan's convention: an ``nn.Conv3d`` built with padding (pT, pH, pW) that pads time with
``2*pT`` zero frames on the left only and H, W with pH, pW zeros. Its chunked encode / decode
passes ``cache_x``, the last frames of the previous chunk: they replace that many of the zero
frames (all of them when the cache is long enough), and a layer without time padding ignores
the cache. The time-downsampling conv (kT=3, stride 2, no padding) gets its history
concatenated by the caller, so it is a plain unpadded conv here.
"""
from __future__ import annotations

from typing import Optional

import torch

from .padded_causal_conv3d import PaddedCausalConv3d

__all__ = ["WanCausalConv3d", "convert_wan_conv"]


class WanCausalConv3d(PaddedCausalConv3d):
    """Wan's causal conv on :func:`rgbd_kernels.causal_conv3d`: ``forward(x, cache_x=None)``.

    x: (B, C_in, T, H, W); cache_x: (B, C_in, T_c, H, W) frames preceding x (Wan's feature
    cache) or None. Returns (B, C_out, T_out, H_out, W_out) equal to Wan's layer.
    """

    def forward(self, x: torch.Tensor,  # type: ignore[override]
                cache_x: Optional[torch.Tensor] = None) -> torch.Tensor:
        p = self.head_zeros
        if cache_x is None or p == 0:
            return self.padded_conv(x)
        cache_x = cache_x.to(x.device)
        c = cache_x.shape[2]
        if c >= p:
            head = cache_x[:, :, c - p:]
        else:
            b, ch, _, h, w = cache_x.shape
            head = torch.cat([cache_x.new_zeros((b, ch, p - c, h, w)), cache_x], dim=2)
        return self.padded_conv(x, head)


def convert_wan_conv(module) -> tuple[Optional[WanCausalConv3d], str]:
    """(replacement, "") for a diffusers ``WanCausalConv3d``, or (None, why it is left alone)."""
    pw_l, pw_r, ph_t, ph_b, pt_l, pt_r = module._padding
    if pw_l != pw_r or ph_t != ph_b or pt_r != 0:
        return None, f"asymmetric spatial or right time padding {module._padding}"
    if tuple(module.padding) != (0, 0, 0):
        return None, f"inner padding {module.padding} besides its causal padding"
    if module.padding_mode != "zeros":
        return None, f"padding_mode={module.padding_mode!r}"
    return WanCausalConv3d.from_conv(module, extra_padding=(ph_t, pw_l), head_zeros=pt_l), ""
