"""Scaled dot-product attention with FP8 through Transformer Engine, and bf16 fallbacks.

``attention(q, k, v, layout="bshd"|"bhsd", causal=False, scale=None, backend="auto", fp8=False)``

Backends:
* ``"te"``: ``transformer_engine.pytorch.DotProductAttention`` (cached per configuration). With
  ``fp8=True`` it runs inside TE's autocast with a ``DelayedScaling(fp8_dpa=True)`` recipe
  (sm90 FP8 attention needs cuDNN's fused backend; head dim 128 for training).
* ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` (flash / cuDNN / efficient).
* ``"flash"``: ``flash_attn.flash_attn_func`` when flash-attn imports.
* ``"reference"``: float32 math attention, the parity baseline.
* ``"auto"``: with ``fp8=True``, TE FP8 when TE imports, the GPU is sm90+ and the shape is
  supported, else (warning once with the reason) the best bf16 path: flash-attn on CUDA if it
  imports, else SDPA. ``use_backend("reference")`` also routes "auto" to the reference;
  ``use_backend("triton" | "cpp" | "cuda")`` names a kernel backend attention does not have, so
  "auto" raises :class:`~rgbd_kernels.backend.BackendUnavailableError` there rather than run
  something else (an explicit ``backend=`` argument is not affected by ``use_backend``).

Non-finite values propagate as in the reference: a query row holding NaN gives a NaN output
row (torch's CPU SDPA kernel alone gives zeros, so the SDPA path restores the NaN on CPU; a GPU
test checks that the CUDA SDPA kernels propagate it themselves).
Optional libraries are imported on first use only; asking for a missing one explicitly raises
:class:`~rgbd_kernels.backend.BackendUnavailableError` naming the package to install.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ._nvtx import nvtx_range
from .optional_backends import IMPORT_ERRORS as _IMPORT_ERRORS  # noqa: F401 - tests patch these
from .optional_backends import INSTALL_HINTS as _INSTALL  # noqa: F401
from .optional_backends import WARNED as _warned  # noqa: F401
from .optional_backends import flash_attn as _flash
from .optional_backends import missing_reason as _missing
from .optional_backends import optional_module as _module  # noqa: F401
from .optional_backends import te_autocast as _te_autocast
from .optional_backends import te_fp8_recipe
from .optional_backends import transformer_engine as _te
from .optional_backends import warn_once as _warn_once
from .backend import ENV_VAR, BackendUnavailableError, get_backend

__all__ = ["attention", "attention_reference", "ATTENTION_BACKENDS", "te_fp8_recipe"]

ATTENTION_BACKENDS = ("auto", "te", "sdpa", "flash", "reference")
LAYOUTS = ("bshd", "bhsd")


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                        scale: float | None = None,
                        key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Math attention in float32 on (B, H, S, D) tensors; returns q's dtype.

    ``key_padding_mask`` (B, S_kv) bool: True = attend. A sample with no key to attend gives
    exactly 0 (whatever its values).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * scale
    if key_padding_mask is not None:
        keep = key_padding_mask[:, None, None, :]
        scores = scores.masked_fill(~keep, float("-inf"))
        any_key = key_padding_mask.any(dim=1).view(-1, 1, 1, 1)
        scores = torch.where(any_key, scores, 0.0)
        probs = scores.softmax(dim=-1) * any_key
        out = torch.einsum("bhqk,bhkd->bhqd", probs, v.float())
        return torch.where(any_key, out, 0.0).to(q.dtype)
    if causal:
        s_q, s_k = scores.shape[-2:]
        keep = torch.ones(s_q, s_k, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", scores.softmax(dim=-1), v.float()).to(q.dtype)


# ----------------------------------------------------------------------------- availability
# (the optional libraries themselves: rgbd_kernels.optional_backends)

def _te_fp8_unsupported_reason(q: torch.Tensor, causal: bool) -> str | None:
    if _te() is None:
        return _missing("te")
    if q.device.type != "cuda":
        return f"FP8 attention needs a CUDA tensor, got one on {q.device}"
    major, minor = torch.cuda.get_device_capability(q.device)
    if major < 9:
        return f"FP8 attention needs sm90 or newer, this GPU is sm{major}{minor}"
    if q.dtype not in (torch.bfloat16, torch.float16):
        return f"FP8 attention takes bf16/fp16 inputs, got {q.dtype}"
    if q.shape[-1] not in (64, 128) or (q.requires_grad and q.shape[-1] != 128):
        return f"FP8 attention supports head dim 128 for training (64 or 128 forward), got {q.shape[-1]}"
    return None


def _global_choice() -> str:
    """The ``use_backend`` choice as it applies to attention: "auto" or "reference"; the kernel
    backends attention does not have raise BackendUnavailableError."""
    requested = get_backend()
    if requested in ("auto", "reference"):
        return requested
    raise BackendUnavailableError(
        f"attention: backend {requested!r} (from use_backend / ${ENV_VAR}) is not implemented "
        f"for attention; it runs 'reference' or, by its own backend= argument, one of "
        f"{ATTENTION_BACKENDS} (use_backend('auto') picks the best available)")


def _resolve(backend: str, q: torch.Tensor, causal: bool, fp8: bool) -> str:
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    if backend == "auto":
        if _global_choice() == "reference":
            return "reference"
        if fp8:
            reason = _te_fp8_unsupported_reason(q, causal)
            if reason is None:
                return "te"
            fallback = "flash" if (q.device.type == "cuda" and _flash() is not None
                                   and q.dtype in (torch.bfloat16, torch.float16)) else "sdpa"
            _warn_once(f"rgbd_kernels.attention: fp8=True falls back to {fallback} without FP8: "
                       f"{reason}")
            return fallback
        return "flash" if (q.device.type == "cuda" and _flash() is not None
                           and q.dtype in (torch.bfloat16, torch.float16)) else "sdpa"
    if backend == "te":
        if _te() is None:
            raise BackendUnavailableError(f"attention: backend 'te' cannot run: {_missing('te')}")
        if q.device.type != "cuda":
            raise BackendUnavailableError(f"attention: backend 'te' needs CUDA tensors, got {q.device}")
        if fp8:
            reason = _te_fp8_unsupported_reason(q, causal)
            if reason is not None:
                raise BackendUnavailableError(f"attention: FP8 through TE cannot run: {reason}")
    if backend == "flash":
        if _flash() is None:
            raise BackendUnavailableError(f"attention: backend 'flash' cannot run: {_missing('flash')}")
        if q.device.type != "cuda":
            raise BackendUnavailableError(f"attention: backend 'flash' needs CUDA tensors, got {q.device}")
    if fp8 and backend in ("sdpa", "flash", "reference"):
        raise ValueError(f"fp8=True needs backend 'te' or 'auto', got backend={backend!r}")
    return backend


# ----------------------------------------------------------------------------- TE path

@functools.lru_cache(maxsize=64)
def _te_module(heads: int, head_dim: int, causal: bool, scale: float, device: torch.device):
    te = _te()
    module = te.DotProductAttention(
        num_attention_heads=heads, kv_channels=head_dim, attention_dropout=0.0,
        qkv_format="bshd", attn_mask_type="causal" if causal else "no_mask",  # TE defaults to causal
        softmax_scale=scale)
    return module.to(device)


def _te_attention(q, k, v, causal, scale, fp8):
    b, s, h, d = q.shape
    module = _te_module(h, d, causal, float(scale), q.device)
    with _te_autocast(fp8):
        out = module(q, k, v)
    return out.view(b, s, h, d)


# ----------------------------------------------------------------------------- public

def _check(q, k, v, layout, causal, scale):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D ({layout}), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got dtype {t.dtype}")
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"{name} must match q's dtype {q.dtype} and device {q.device}, "
                             f"got {t.dtype} on {t.device}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'bshd' or 'bhsd', got {layout!r}")
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be a bool, got {causal!r}")
    hdim = 2 if layout == "bshd" else 1
    sdim = 1 if layout == "bshd" else 2
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if (q.shape[0], q.shape[hdim], q.shape[3]) != (k.shape[0], k.shape[hdim], k.shape[3]):
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch, heads "
                         f"and head dim (layout {layout!r})")
    if causal and q.shape[sdim] != k.shape[sdim]:
        raise ValueError(f"causal=True needs as many queries as keys, got {q.shape[sdim]} and "
                         f"{k.shape[sdim]}")
    if scale is not None and not (isinstance(scale, (int, float)) and not isinstance(scale, bool)
                                  and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite positive number or None, got {scale!r}")


def _restore_nan_rows(out: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """NaN where q's row (B, H, S, D) holds a NaN, as in the reference: torch's CPU SDPA kernel
    returns zeros for a query row whose scores are all NaN."""
    if q.device.type != "cpu":
        return out
    return out.masked_fill(torch.isnan(q.detach()).any(dim=-1, keepdim=True), float("nan"))


def _sdpa(q, k, v, causal, scale):
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    return _restore_nan_rows(out, q)


def _sdpa_padded(q, k, v, key_padding_mask, scale):
    """SDPA with a (B, S_kv) key mask; rows of a sample with no key to attend give 0."""
    any_key = key_padding_mask.any(dim=1)
    keep = key_padding_mask | ~any_key[:, None]  # an all-masked sample attends everywhere ...
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :], scale=scale)
    out = _restore_nan_rows(out, q)
    return torch.where(any_key.view(-1, 1, 1, 1), out, 0.0)  # ... and then gives exactly 0


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layout: str = "bshd",
              causal: bool = False, scale: float | None = None, backend: str = "auto",
              fp8: bool = False, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale [+ causal mask]) v.

    Args:
        q: (B, S_q, H, D) for layout "bshd" or (B, H, S_q, D) for "bhsd"; k, v: same with S_kv
            (S_kv == S_q when causal). Any float dtype; all three on one device.
        causal: mask keys after the query position (top-left aligned).
        scale: softmax scale, default 1/sqrt(D).
        backend, fp8: see the module docstring.
        key_padding_mask: optional (B, S_kv) bool, True for keys to attend (text padding in
            cross-attention); served by "sdpa" and "reference" ("auto" picks SDPA). A sample
            with no key to attend gets zeros.
    Returns:
        (B, S_q, H, D) or (B, H, S_q, D), the input layout, in q's dtype.
    """
    _check(q, k, v, layout, causal, scale)
    if not isinstance(fp8, bool):
        raise ValueError(f"fp8 must be a bool, got {fp8!r}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if key_padding_mask is not None:
        s_kv = k.shape[1 if layout == "bshd" else 2]
        if key_padding_mask.dtype != torch.bool or key_padding_mask.shape != (k.shape[0], s_kv):
            raise ValueError(f"key_padding_mask must be bool (B, S_kv) = {(k.shape[0], s_kv)}, got "
                             f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
        if causal:
            raise ValueError("key_padding_mask is for cross-attention; causal must be False")
        if backend in ("te", "flash") or fp8:
            raise ValueError(f"key_padding_mask is served by backends 'sdpa' and 'reference', "
                             f"got backend={backend!r}, fp8={fp8}")
        if backend == "auto":
            backend = "reference" if _global_choice() == "reference" else "sdpa"
        qh, kh, vh = (t if layout == "bhsd" else t.transpose(1, 2) for t in (q, k, v))
        mask = key_padding_mask.to(q.device)
        out = (_sdpa_padded(qh, kh, vh, mask, scale) if backend == "sdpa" else
               attention_reference(qh, kh, vh, scale=scale, key_padding_mask=mask))
        return out if layout == "bhsd" else out.transpose(1, 2)
    chosen = _resolve(backend, q, causal, fp8)
    with nvtx_range(f"rgbd.attention.{chosen}"):
        if chosen in ("te", "flash"):  # both take bshd
            qs, ks, vs = (t if layout == "bshd" else t.transpose(1, 2) for t in (q, k, v))
            if chosen == "te":
                out = _te_attention(qs, ks, vs, causal, scale, fp8)
            else:
                out = _flash().flash_attn_func(qs, ks, vs, softmax_scale=scale, causal=causal)
            return out if layout == "bshd" else out.transpose(1, 2)
        qh, kh, vh = (t if layout == "bhsd" else t.transpose(1, 2) for t in (q, k, v))
        if chosen == "sdpa":
            out = _sdpa(qh, kh, vh, causal, scale)
        else:
            out = attention_reference(qh, kh, vh, causal=causal, scale=scale)
        return out if layout == "bhsd" else out.transpose(1, 2)
