"""diffusers attention processors that run :func:`rgbd_kernels.attention`.

:class:`RgbdAttnProcessor` stands in for diffusers' ``CosmosAttnProcessor2_0`` (the attention of
``CosmosTransformer3DModel``: self-attention with RoPE, text cross-attention) and
``WanAttnProcessor`` (``WanTransformer3DModel``'s self- and cross-attention, with the image
branch of image-to-video models). It computes the same projections, per-head (Cosmos) or
per-layer (Wan) q/k RMSNorm and rotary embedding as the processor it replaces, then calls
``rk.attention`` with ``backend`` and
``fp8`` (Transformer Engine FP8 where it is available; SDPA otherwise). Calls it cannot serve
the same way go to the original processor, kept as ``.original``, so outputs never change:
an attention mask other than a boolean key-padding mask with a key for every sample, and
Wan's context-parallel mode.

``install_attention_processors(model)`` installs it on every module whose processor is one of
those two classes and returns how many it changed.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from ..dot_product_attention import ATTENTION_BACKENDS, attention
from ..optional_backends import warn_once as _warn_once

__all__ = ["RgbdAttnProcessor", "install_attention_processors"]

logger = logging.getLogger("rgbd_kernels.integrations")

_COSMOS = ("diffusers.models.transformers.transformer_cosmos", "CosmosAttnProcessor2_0")
_WAN = ("diffusers.models.transformers.transformer_wan", "WanAttnProcessor")
_KINDS = {_COSMOS: "cosmos", _WAN: "wan"}


def _key_padding_mask(mask: Optional[torch.Tensor], batch: int, kv_len: int):
    """(ok, key_padding_mask): a bool (B, 1, 1, S_kv) or (B, S_kv) mask with at least one key per
    sample becomes (B, S_kv); None stays None; anything else is not ok."""
    if mask is None:
        return True, None
    if mask.dtype != torch.bool:
        return False, None
    if mask.dim() == 4 and mask.shape[1:3] == (1, 1):
        mask = mask[:, 0, 0]
    if mask.dim() != 2 or mask.shape[1] != kv_len or mask.shape[0] not in (1, batch):
        return False, None
    mask = mask.expand(batch, kv_len)
    if not bool(mask.any(dim=1).all()):  # SDPA gives NaN rows there; rk.attention gives zeros
        return False, None
    return True, mask


def _rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on (B, S, H, D): pairs (x[2i], x[2i+1]) rotated by angle i."""
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack((even * c - odd * s, even * s + odd * c), dim=-1).flatten(-2).type_as(x)


class RgbdAttnProcessor:
    """Processor for Cosmos' and Wan's diffusers attention running :func:`rgbd_kernels.attention`.

    Args:
        original: the processor it replaces (a ``CosmosAttnProcessor2_0`` or ``WanAttnProcessor``),
            used for the calls listed in the module docstring.
        kind: "cosmos" or "wan" (the original's convention).
        backend, fp8: as in :func:`rgbd_kernels.attention`.
    """

    _attention_backend = None  # diffusers' set_attention_backend writes these; Wan reads them
    _parallel_config = None

    def __init__(self, original, kind: str, backend: str = "auto", fp8: bool = False):
        if kind not in ("cosmos", "wan"):
            raise ValueError(f"kind must be 'cosmos' or 'wan', got {kind!r}")
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
        if fp8 and backend not in ("auto", "te"):
            raise ValueError(f"fp8=True needs backend 'auto' or 'te', got {backend!r}")
        self.original, self.kind, self.backend, self.fp8 = original, kind, backend, fp8

    def _attend(self, q, k, v, mask, layout: str) -> torch.Tensor:
        if mask is None:
            return attention(q, k, v, layout=layout, backend=self.backend, fp8=self.fp8)
        if self.fp8 or self.backend in ("te", "flash"):
            _warn_once("RgbdAttnProcessor: a key-padding mask runs on sdpa/reference, not "
                       f"backend={self.backend!r}{' with FP8' if self.fp8 else ''}")
        backend = "auto" if self.backend in ("te", "flash") else self.backend
        return attention(q, k, v, layout=layout, backend=backend, key_padding_mask=mask)

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor,
                 encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, rotary_emb=None, *,
                 image_rotary_emb=None) -> torch.Tensor:
        """hidden_states (B, S, dim), encoder_hidden_states (B, S_ctx, dim_ctx) or None ->
        (B, S, dim). The rotary embedding comes positionally (Wan) or as ``image_rotary_emb``
        (Cosmos)."""
        if self.kind == "cosmos":
            rope = image_rotary_emb if image_rotary_emb is not None else rotary_emb
            return self._cosmos(attn, hidden_states, encoder_hidden_states, attention_mask, rope)
        return self._wan(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)

    # ------------------------------------------------------------------------------ Cosmos

    def _cosmos(self, attn, hidden_states, encoder_hidden_states, attention_mask,
                image_rotary_emb):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        ok, mask = _key_padding_mask(attention_mask, hidden_states.shape[0], context.shape[1])
        if not ok:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask,
                                 image_rotary_emb=image_rotary_emb)
        heads = attn.heads
        # (B, S, heads*D) -> (B, heads, S, D), the layout Cosmos normalizes and rotates in
        q = attn.to_q(hidden_states).unflatten(2, (heads, -1)).transpose(1, 2)
        k = attn.to_k(context).unflatten(2, (heads, -1)).transpose(1, 2)
        v = attn.to_v(context).unflatten(2, (heads, -1)).transpose(1, 2)
        q, k = attn.norm_q(q), attn.norm_k(k)
        if image_rotary_emb is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            q = apply_rotary_emb(q, image_rotary_emb, use_real=True, use_real_unbind_dim=-2)
            k = apply_rotary_emb(k, image_rotary_emb, use_real=True, use_real_unbind_dim=-2)
        # grouped key/value heads (fewer channels per head in k, v) are repeated like diffusers
        k = k.repeat_interleave(q.shape[3] // k.shape[3], dim=3)
        v = v.repeat_interleave(q.shape[3] // v.shape[3], dim=3)
        out = self._attend(q, k, v, mask, "bhsd")
        out = out.transpose(1, 2).flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))

    # ------------------------------------------------------------------------------- Wan

    def _wan(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb):
        image_context = None
        if getattr(attn, "add_k_proj", None) is not None:
            # image-to-video: the context is [image tokens, 512 text tokens] (Wan's layout)
            split = encoder_hidden_states.shape[1] - 512
            image_context = encoder_hidden_states[:, :split]
            encoder_hidden_states = encoder_hidden_states[:, split:]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        ok, mask = _key_padding_mask(attention_mask, hidden_states.shape[0], context.shape[1])
        parallel = (getattr(self.original, "_parallel_config", None) is not None
                    or self._parallel_config is not None)
        if not ok or parallel:
            if image_context is not None:
                encoder_hidden_states = torch.cat([image_context, encoder_hidden_states], dim=1)
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask,
                                 rotary_emb)
        fused = getattr(attn, "fused_projections", False)
        if fused and not attn.is_cross_attention:
            q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        elif fused:
            q = attn.to_q(hidden_states)
            k, v = attn.to_kv(context).chunk(2, dim=-1)
        else:
            q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        q, k = attn.norm_q(q), attn.norm_k(k)
        heads = attn.heads
        q, k, v = (t.unflatten(2, (heads, -1)) for t in (q, k, v))  # (B, S, heads, D)
        if rotary_emb is not None:
            q, k = _rope_interleaved(q, *rotary_emb), _rope_interleaved(k, *rotary_emb)
        out = self._attend(q, k, v, mask, "bshd").flatten(2, 3).type_as(q)
        if image_context is not None:
            if fused:
                k_img, v_img = attn.to_added_kv(image_context).chunk(2, dim=-1)
            else:
                k_img, v_img = attn.add_k_proj(image_context), attn.add_v_proj(image_context)
            k_img = attn.norm_added_k(k_img)
            k_img, v_img = (t.unflatten(2, (heads, -1)) for t in (k_img, v_img))
            out = out + self._attend(q, k_img, v_img, None, "bshd").flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


def _processor_kind(processor) -> Optional[str]:
    cls = type(processor)
    return _KINDS.get((cls.__module__, cls.__name__))


def install_attention_processors(model: nn.Module, backend: str = "auto",
                                 fp8: bool = False) -> int:
    """Give each Cosmos / Wan diffusers attention module of ``model`` an :class:`RgbdAttnProcessor`.

    Returns the number of processors installed (modules already converted are skipped).
    """
    count = 0
    for name, module in model.named_modules():
        processor = getattr(module, "processor", None)
        if processor is None or not hasattr(module, "set_processor"):
            continue
        if isinstance(processor, RgbdAttnProcessor):
            continue
        kind = _processor_kind(processor)
        if kind is None:
            logger.debug("left the attention of %s (%s) alone: processor %s not recognised", name,
                         type(module).__name__, type(processor).__name__)
            continue
        module.set_processor(RgbdAttnProcessor(processor, kind, backend=backend, fp8=fp8))
        count += 1
    return count
