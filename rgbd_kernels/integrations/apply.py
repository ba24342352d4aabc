"""``apply_rgbd_kernels(model)``: swap a video model's causal 3D convs (and attention) for ours.

Recognised layers (exact classes; subclasses, which may change the semantics, are left alone),
by family, each replaced by the class of the same name in ``rgbd_kernels.integrations``:

* ``wan``: diffusers ``WanCausalConv3d`` (AutoencoderKLWan);
* ``cogvideox``: diffusers ``CogVideoXCausalConv3d`` (AutoencoderKLCogVideoX and
  AutoencoderKLMochi);
* ``hunyuan_video``: diffusers ``HunyuanVideoCausalConv3d`` (AutoencoderKLHunyuanVideo);
* ``ltx_video``: diffusers ``LTXVideoCausalConv3d`` with ``is_causal=True``
  (AutoencoderKLLTXVideo);
* ``cosmos``: diffusers ``CosmosCausalConv3d`` (AutoencoderKLCosmos) and NVIDIA
  Cosmos-Tokenizer's ``CausalConv3d`` (replaced by ``CosmosCausalConv3d``).

Classes are matched by module path and name, so nothing imports diffusers until a diffusers
model is handed in. Every replacement is a :class:`rgbd_kernels.nn.CausalConv3d` subclass that
computes with the original layer's weight and bias ``Parameter`` objects and the model's own
padding and chunked-decoding cache, so outputs do not change (fp32 relative error <= 1e-5).
Anything else (non-causal layers such as LTX's symmetric decoder convs, plain ``nn.Conv3d``,
other models' causal conv classes) is left alone and logged at DEBUG level on the
``rgbd_kernels.integrations`` logger.

With ``attention=True`` the attention modules of diffusers' ``CosmosTransformer3DModel`` and
``WanTransformer3DModel`` get a processor that runs :func:`rgbd_kernels.attention`
(see :mod:`rgbd_kernels.integrations.attention`).
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable, Optional

from torch import nn

from ..nn import CausalConv3d
from .cogvideox import convert_cogvideox_conv
from .cosmos import convert_cosmos_conv, convert_cosmos_tokenizer_conv, is_cosmos_tokenizer_conv
from .hunyuan_video import convert_hunyuan_video_conv
from .ltx_video import convert_ltx_video_conv
from .wan import convert_wan_conv

__all__ = ["apply_rgbd_kernels", "apply_rgbd_kernels_to_wan", "apply_rgbd_kernels_to_cogvideox",
           "apply_rgbd_kernels_to_mochi", "apply_rgbd_kernels_to_hunyuan_video",
           "apply_rgbd_kernels_to_ltx_video", "apply_rgbd_kernels_to_cosmos", "FAMILIES"]

logger = logging.getLogger("rgbd_kernels.integrations")

_VAE = "diffusers.models.autoencoders."
# (module, class name) -> (family, converter)
_CONVS: dict[tuple[str, str], tuple[str, Callable]] = {
    (_VAE + "autoencoder_kl_wan", "WanCausalConv3d"): ("wan", convert_wan_conv),
    (_VAE + "autoencoder_kl_cogvideox", "CogVideoXCausalConv3d"):
        ("cogvideox", convert_cogvideox_conv),
    (_VAE + "autoencoder_kl_hunyuan_video", "HunyuanVideoCausalConv3d"):
        ("hunyuan_video", convert_hunyuan_video_conv),
    (_VAE + "autoencoder_kl_ltx", "LTXVideoCausalConv3d"): ("ltx_video", convert_ltx_video_conv),
    (_VAE + "autoencoder_kl_cosmos", "CosmosCausalConv3d"): ("cosmos", convert_cosmos_conv),
}
FAMILIES = ("wan", "cogvideox", "hunyuan_video", "ltx_video", "cosmos")


def _converter(module: nn.Module) -> Optional[tuple[str, Callable]]:
    cls = type(module)
    found = _CONVS.get((cls.__module__, cls.__name__))
    if found is None and is_cosmos_tokenizer_conv(module):
        found = ("cosmos", convert_cosmos_tokenizer_conv)
    return found


def _check_families(families: Optional[Iterable[str]]) -> frozenset:
    if families is None:
        return frozenset(FAMILIES)
    if isinstance(families, str):
        families = (families,)
    families = frozenset(families)
    unknown = sorted(families - set(FAMILIES))
    if unknown:
        raise ValueError(f"families must be among {FAMILIES}, got unknown {unknown}")
    return families


def _replace_convs(module: nn.Module, prefix: str, families: frozenset) -> int:
    count = 0
    for name, child in list(module.named_children()):
        path = f"{prefix}{name}"
        if isinstance(child, CausalConv3d):
            continue  # ours already (a second call, or a model built on rgbd_kernels)
        found = _converter(child)
        if found is not None:
            family, convert = found
            if family not in families:
                logger.debug("left %s (%s) alone: family %r not selected", path,
                             type(child).__name__, family)
                continue
            new, reason = convert(child)
            if new is None:
                logger.debug("left %s (%s) alone: %s", path, type(child).__name__, reason)
                continue
            setattr(module, name, new)
            count += 1
            continue
        if isinstance(child, nn.Conv3d) or "Conv3d" in type(child).__name__:
            logger.debug("left %s (%s) alone: not a recognised causal 3D convolution", path,
                         type(child).__name__)
            if isinstance(child, nn.Conv3d):
                continue
        count += _replace_convs(child, path + ".", families)
    return count


def apply_rgbd_kernels(model: nn.Module, attention: bool = False, *,
                       families: Optional[Iterable[str]] = None, attention_backend: str = "auto",
                       fp8: bool = False) -> int:
    """Replace ``model``'s causal 3D convs (and, with ``attention``, its attention) in place.

    Args:
        model: any ``nn.Module`` (a diffusers VAE, a pipeline's ``vae`` / ``transformer``, or a
            model containing them). Call it after loading weights and before wrapping the model
            (``torch.compile``, hooks, offloading).
        attention: also install :class:`~rgbd_kernels.integrations.attention.RgbdAttnProcessor`
            on the attention modules of diffusers' Cosmos and Wan transformers.
        families: limit the conv swap to these of :data:`FAMILIES` (default: all).
        attention_backend, fp8: passed to :func:`rgbd_kernels.attention` by the processors.
    Returns:
        The number of modules replaced (convs) plus attention processors installed.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    chosen = _check_families(families)
    if _converter(model) is not None:
        logger.debug("left the root module (%s) alone: call apply_rgbd_kernels on the model "
                     "that contains it", type(model).__name__)
    count = _replace_convs(model, "", chosen)
    if attention:
        from .attention import install_attention_processors

        count += install_attention_processors(model, backend=attention_backend, fp8=fp8)
    return count


def _family_helper(family: str, label: str):
    def helper(model: nn.Module, attention: bool = False, **kwargs) -> int:
        return apply_rgbd_kernels(model, attention, families=(family,), **kwargs)

    helper.__name__ = f"apply_rgbd_kernels_to_{label}"
    helper.__qualname__ = helper.__name__
    helper.__doc__ = (f":func:`apply_rgbd_kernels` limited to the {family!r} convs (the "
                      f"{label} VAE); returns the number of modules replaced.")
    return helper


apply_rgbd_kernels_to_wan = _family_helper("wan", "wan")
apply_rgbd_kernels_to_cogvideox = _family_helper("cogvideox", "cogvideox")
apply_rgbd_kernels_to_mochi = _family_helper("cogvideox", "mochi")
apply_rgbd_kernels_to_hunyuan_video = _family_helper("hunyuan_video", "hunyuan_video")
apply_rgbd_kernels_to_ltx_video = _family_helper("ltx_video", "ltx_video")
apply_rgbd_kernels_to_cosmos = _family_helper("cosmos", "cosmos")
