"""The DiT attention block: fused projections, per-head QK RMSNorm, optional RoPE, any backend."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from ..dot_product_attention import ATTENTION_BACKENDS, attention
from ..optional_backends import missing_reason as _missing
from ..optional_backends import te_autocast as _te_autocast
from ..optional_backends import transformer_engine as _te
from ..optional_backends import warn_once as _warn_once
from ..backend import BackendUnavailableError

Rope = Callable[[torch.Tensor], torch.Tensor]


class Attention(nn.Module):
    """Multi-head self- or cross-attention as in Cosmos-Predict2's DiT.

    Self-attention (``context_dim=None``): one fused QKV projection. Cross-attention: a Q
    projection of ``x`` and a fused KV projection of ``context``. No biases. q and k get a
    per-head RMSNorm (``qk_norm``), then ``rope`` if given, then :func:`rgbd_kernels.attention`.

    Args:
        dim: model width; heads: number of heads; head_dim: default dim // heads.
        context_dim: width of the cross-attention context (e.g. 1024 for T5), or None.
        causal: causal mask (self-attention only). backend, fp8: as in :func:`attention`.
        te_linear: run the linear layers as Transformer Engine ``te.Linear`` (FP8 under the
            same recipe when ``fp8``); needs transformer-engine.
    Shapes: x (B, S, dim), context (B, S_ctx, context_dim) -> (B, S, dim).
    """

    def __init__(self, dim: int, heads: int, head_dim: int | None = None,
                 context_dim: int | None = None, qk_norm: bool = True, eps: float = 1e-6,
                 causal: bool = False, backend: str = "auto", fp8: bool = False,
                 te_linear: bool = False):
        super().__init__()
        for name, value in (("dim", dim), ("heads", heads), ("head_dim", head_dim),
                            ("context_dim", context_dim)):
            if value is None and name in ("head_dim", "context_dim"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if head_dim is None:
            if dim % heads:
                raise ValueError(f"dim={dim} is not divisible by heads={heads}; pass head_dim")
            head_dim = dim // heads
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
        if causal and context_dim is not None:
            raise ValueError("causal=True is for self-attention; got a context_dim (cross-attention)")
        if te_linear and _te() is None:
            raise BackendUnavailableError(f"Attention(te_linear=True): {_missing('te')}")
        if fp8 and backend not in ("auto", "te"):
            raise ValueError(f"fp8=True needs backend 'te' or 'auto', got backend={backend!r}")
        linear = _te().Linear if te_linear else nn.Linear
        self.dim, self.context_dim = dim, context_dim
        self.heads, self.head_dim, self.causal = heads, head_dim, causal
        self.backend, self.fp8, self.te_linear = backend, fp8, te_linear
        inner = heads * head_dim
        self.is_cross = context_dim is not None
        if self.is_cross:
            self.q_proj = linear(dim, inner, bias=False)
            self.kv_proj = linear(context_dim, 2 * inner, bias=False)
        else:
            self.qkv_proj = linear(dim, 3 * inner, bias=False)
        self.q_norm = nn.RMSNorm(head_dim, eps=eps) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(head_dim, eps=eps) if qk_norm else nn.Identity()
        self.out_proj = linear(inner, dim, bias=False)

    def _check_inputs(self, x, context, context_mask) -> None:
        """Errors naming the argument before torch's own (a shape or dtype deep in a matmul)."""
        weight = (self.q_proj if self.is_cross else self.qkv_proj).weight
        # autocast (and TE's linears, with their own params_dtype) mix dtypes by design
        cast = self.te_linear or torch.is_autocast_enabled(weight.device.type)
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.dim:
            got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be (B, S, dim={self.dim}), got {got}")
        if not cast and x.dtype != weight.dtype:
            raise ValueError(f"x must have the module's dtype {weight.dtype}, got {x.dtype} "
                             "(convert the module with .to(dtype), or run under torch.autocast)")
        if x.device != weight.device:
            raise ValueError(f"x must be on the module's device {weight.device}, got {x.device}")
        if not self.is_cross:
            if context is not None:
                raise ValueError("this is a self-attention block: context must be None")
            if context_mask is not None:
                raise ValueError("context_mask is for cross-attention; this is a self-attention "
                                 "block")
            return
        if context is None:
            raise ValueError(f"this is a cross-attention block: pass context "
                             f"(B, S_ctx, context_dim={self.context_dim})")
        if (not isinstance(context, torch.Tensor) or context.dim() != 3
                or context.shape[0] != x.shape[0] or context.shape[-1] != self.context_dim):
            got = (f"shape {tuple(context.shape)}" if isinstance(context, torch.Tensor)
                   else type(context).__name__)
            raise ValueError(f"context must be (B={x.shape[0]}, S_ctx, context_dim="
                             f"{self.context_dim}), got {got}")
        if not cast and context.dtype != weight.dtype:
            raise ValueError(f"context must have the module's dtype {weight.dtype}, got "
                             f"{context.dtype}")
        if context.device != weight.device:
            raise ValueError(f"context must be on the module's device {weight.device}, got "
                             f"{context.device}")
        if context_mask is not None and (
                not isinstance(context_mask, torch.Tensor) or context_mask.dtype != torch.bool
                or tuple(context_mask.shape) != tuple(context.shape[:2])):
            got = (f"{context_mask.dtype} {tuple(context_mask.shape)}"
                   if isinstance(context_mask, torch.Tensor) else type(context_mask).__name__)
            raise ValueError(f"context_mask must be bool (B, S_ctx) = {tuple(context.shape[:2])}, "
                             f"got {got}")

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                rope: Rope | None = None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``context_mask`` (B, S_ctx) bool: context tokens to attend (cross-attention only)."""
        self._check_inputs(x, context, context_mask)
        b, s, _ = x.shape
        h, d = self.heads, self.head_dim
        linear_ctx = _te_autocast(self.fp8) if self.te_linear else contextlib.nullcontext()
        with linear_ctx:
            if self.is_cross:
                q = self.q_proj(x).view(b, s, h, d)
                k, v = self.kv_proj(context).view(b, context.shape[1], 2, h, d).unbind(2)
            else:
                q, k, v = self.qkv_proj(x).view(b, s, 3, h, d).unbind(2)
            q, k = self.q_norm(q), self.k_norm(k)
            if rope is not None:
                q, k = rope(q), rope(k)
            if context_mask is not None:
                if self.fp8 or self.backend in ("te", "flash"):
                    _warn_once(f"rgbd_kernels.nn.Attention: a context_mask runs the masked "
                               f"attention on sdpa/reference, not backend={self.backend!r}"
                               f"{' with FP8' if self.fp8 else ''} (key-padding masks are not "
                               "wired to TE / flash-attn yet)")
                out = attention(q, k, v, layout="bshd", key_padding_mask=context_mask,
                                backend="auto" if self.backend in ("te", "flash") else self.backend)
            else:
                out = attention(q, k, v, layout="bshd", causal=self.causal, backend=self.backend,
                                fp8=self.fp8)
            return self.out_proj(out.reshape(b, s, h * d))
