"""Cosmos tokenizer convs -> :class:`CosmosCausalConv3d`.

Two sources with one convention: diffusers' ``CosmosCausalConv3d`` (an ``nn.Conv3d``, used by
``AutoencoderKLCosmos``, including its factorized (1, 3, 3) spatial + (3, 1, 1) temporal
pairs and 1x1x1 attention projections) and NVIDIA's Cosmos-Tokenizer ``CausalConv3d``
(``cosmos_tokenizer.modules.layers3d``, weights in ``.conv3d``). Both put
``dilation_t*(kT - 1) + 1 - stride_t`` copies of frame 0 before x (exactly the op's
``time_pad="replicate"``) and pad H and W by ``padding`` pixels with ``F.pad(mode=pad_mode)``:
zeros for "constant", else that mode.
"""
from __future__ import annotations

from typing import Optional

from .padded_causal_conv3d import PaddedCausalConv3d

__all__ = ["CosmosCausalConv3d", "convert_cosmos_conv", "convert_cosmos_tokenizer_conv",
           "is_cosmos_tokenizer_conv"]


class CosmosCausalConv3d(PaddedCausalConv3d):
    """Cosmos' causal conv: ``forward(x) -> y``, x (B, C_in, T, H, W)."""


def _convert(conv, time_pad: int, spatial_pad, pad_mode: str, state_prefix: str):
    left, right, top, bottom = spatial_pad
    if left != right or top != bottom:
        return None, f"asymmetric spatial padding {tuple(spatial_pad)}"
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None, f"inner conv padding {conv.padding!r} / mode {conv.padding_mode!r}"
    if time_pad < 0:
        return None, f"negative time padding {time_pad}"
    if pad_mode == "constant":
        kwargs = dict(extra_padding=(top, left))
    elif pad_mode in ("replicate", "reflect", "circular"):
        kwargs = dict(pre_pad=(top, left), pre_pad_mode=pad_mode)
    else:
        return None, f"pad_mode={pad_mode!r}"
    return CosmosCausalConv3d.from_conv(conv, head_replicas=time_pad, state_prefix=state_prefix,
                                        **kwargs), ""


def convert_cosmos_conv(module) -> tuple[Optional[CosmosCausalConv3d], str]:
    """(replacement, "") for diffusers' ``CosmosCausalConv3d``, or (None, why not)."""
    return _convert(module, module.temporal_pad, module.spatial_pad, module.pad_mode, "")


def is_cosmos_tokenizer_conv(module) -> bool:
    """Whether ``module`` is Cosmos-Tokenizer's ``CausalConv3d`` (matched without importing it)."""
    cls = type(module)
    return (cls.__name__ == "CausalConv3d" and cls.__module__.split(".")[0] == "cosmos_tokenizer"
            and all(hasattr(module, a) for a in ("conv3d", "time_pad", "spatial_pad", "pad_mode")))


def convert_cosmos_tokenizer_conv(module) -> tuple[Optional[CosmosCausalConv3d], str]:
    """(replacement, "") for Cosmos-Tokenizer's ``CausalConv3d``, or (None, why not)."""
    return _convert(module.conv3d, module.time_pad, module.spatial_pad, module.pad_mode,
                    "conv3d.")
