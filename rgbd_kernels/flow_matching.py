"""Flow matching (rectified flow): fused interpolation and fused loss.

Conventions: ``x_t = (1 - t) * x0 + t * noise`` with t in [0, 1] (t = 0: data,
t = 1: noise); the network predicts the velocity ``v = noise - x0``; the loss is the squared
error of ``v_pred`` against it.

Loss reductions, with keep_i the mask (1 where an element counts, broadcast to the latent),
w_b the per-sample weight (default 1), S_b = sum_i keep_i (v_pred_i - (noise_i - x0_i))**2 over
sample b's elements and c_b = sum_i keep_i its kept-element count:

* ``"mean"``: ``sum_b w_b S_b / max(sum_b c_b, 1)`` -- the mean over all kept elements of the
  batch, each sample's terms scaled by its weight (no mask, no weight: ``F.mse_loss``).
* ``"none"``: per-sample ``(B,)`` loss ``w_b S_b / max(c_b, 1)``: the mean over that sample's kept
  elements, times its weight.
* ``"sum"``: ``sum_b w_b S_b``.

A sample without kept elements contributes 0 (loss, gradient), never NaN. Losses are float32
(float64 for float64 inputs) whatever the input dtype, with float32 accumulation.

The fused loss (Liger's trick) computes the gradient w.r.t. ``v_pred`` in its forward pass
(``2 keep_i err_i w_b / denominator_b``, the final gradient for grad_output = 1) while it reads
the inputs; the backward only scales it by ``grad_output``, and when grad_output is exactly 1
(``loss.backward()``; checked on the host in eager mode, as Liger does) it hands the forward's
buffer back without touching memory. float16 keeps ``2 keep_i err_i`` instead (the scaled value
underflows float16 for large latents) and always scales in float32 in the backward. Gradients
w.r.t. ``x0`` (``+dL/dv_pred``), ``noise`` (``-dL/dv_pred``) and the weight
(``S_b / denominator_b``) are computed only when those require grad. Reductions are
deterministic (no float atomics): repeated runs are bit-identical.

Caveat of the buffer hand-back: the gradient of ``v_pred`` may be the forward's buffer itself;
accumulating into it in place (a leaf ``v_pred`` with ``retain_graph=True`` and a second
backward) can make that second backward fail autograd's saved-tensor version check; it never
returns a wrong gradient. Model outputs (non-leaf) are unaffected.

Paths: ``reference`` (PyTorch) and ``triton`` (GPU, or CPU under ``TRITON_INTERPRET=1``).
"""
from __future__ import annotations

import math

import torch

from . import _buffers
from ._nvtx import nvtx_range
from ._validation import check_float
from .backend import select_backend

__all__ = ["flow_interpolate", "flow_matching_loss", "flow_interpolate_reference",
           "flow_matching_loss_reference"]

_REDUCTIONS = ("mean", "none", "sum")
# a mask constant over trailing runs shorter than this is expanded to one value per element
_MIN_ROW = 256


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _compiling() -> bool:
    return torch.compiler.is_compiling()


# ----------------------------------------------------------------------------- validation

def _check_like(name: str, t: object, ref_name: str, ref: torch.Tensor) -> torch.Tensor:
    check_float(name, t)
    if t.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got "
                         f"{tuple(t.shape)}")
    if t.dtype != ref.dtype:
        raise ValueError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name} must be on {ref_name}'s device {ref.device}, got {t.device}")
    return t


def _check_latent(name: str, t: torch.Tensor) -> None:
    if t.dim() < 1:
        raise ValueError(f"{name} must have a leading batch dim (B, ...), got a 0-dim tensor")


def _canonical_t(t: object, x0: torch.Tensor, check_range: bool) -> torch.Tensor:
    """t as a contiguous (B,) or (B, T) tensor in the compute dtype of x0."""
    batch = x0.shape[0]
    acc = _acc_dtype(x0.dtype)
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        if not 0.0 <= float(t) <= 1.0:
            raise ValueError(f"t must be in [0, 1], got {t!r}")
        return torch.full((batch,), float(t), dtype=acc, device=x0.device)
    check_float("t", t)
    if t.device != x0.device:
        raise ValueError(f"t must be on x0's device {x0.device}, got {t.device}")
    frames = x0.shape[2] if x0.dim() == 5 else None
    shape = tuple(t.shape)
    if t.dim() == 0:
        t = t.expand(batch)
    elif t.dim() == 1 and shape == (batch,):
        pass
    elif t.dim() == 2 and frames is not None and shape == (batch, frames):
        pass
    elif t.dim() == x0.dim() and x0.dim() > 1 and shape == (batch,) + (1,) * (x0.dim() - 1):
        t = t.reshape(batch)
    elif frames is not None and shape == (batch, 1, frames, 1, 1):
        t = t.reshape(batch, frames)
    else:
        per_frame = (f", (B, T) = {(batch, frames)} or (B, 1, T, 1, 1)" if frames is not None
                     else "")
        raise ValueError(f"t must have shape (B,) = {(batch,)}{per_frame} (or broadcast like "
                         f"(B, 1, ..., 1)) for latents of shape {tuple(x0.shape)}, got {shape}")
    if check_range and not _compiling() and t.numel():
        bad = ~((t >= 0) & (t <= 1))  # NaN is out of range too
        if bool(bad.any()):
            value = t.reshape(-1)[bad.reshape(-1).nonzero()[0, 0]].item()
            raise ValueError(f"t must be in [0, 1], got a value {value!r}")
    return t.to(acc).contiguous()


def _t_view(t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Canonical t (B,) or (B, T) viewed to broadcast against x0."""
    if t.dim() == 1:
        return t.reshape((t.shape[0],) + (1,) * (x0.dim() - 1))
    return t.reshape(t.shape[0], 1, t.shape[1], 1, 1)


# ----------------------------------------------------------------------------- interpolation

def flow_interpolate_reference(x0: torch.Tensor, noise: torch.Tensor,
                               t: torch.Tensor) -> torch.Tensor:
    """Reference: ``(1 - t) * x0 + t * noise`` in float32 (float64 for float64), x0's dtype.

    t: (B,) or (B, T) for (B, C, T, H, W) latents, or already broadcastable against x0.
    """
    acc = _acc_dtype(x0.dtype)
    tv = t.to(acc)
    if tv.dim() < x0.dim():
        tv = _t_view(tv, x0)
    return ((1 - tv) * x0.to(acc) + tv * noise.to(acc)).to(x0.dtype)


@torch.library.custom_op("rgbd::flow_interpolate", mutates_args=())
def _interpolate_op(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    backend = select_backend("flow_interpolate", x0.device, ("triton",))
    if backend == "reference":
        return flow_interpolate_reference(x0, noise, t).contiguous()
    x0c, noisec = x0.contiguous(), noise.contiguous()
    out = _buffers.empty_like(x0c)
    from ._triton import flow_matching as tk

    tk.interpolate(x0c, noisec, t.contiguous(), out)
    return out


@_interpolate_op.register_fake
def _(x0, noise, t):
    return torch.empty_like(x0, memory_format=torch.contiguous_format)


def _interp_setup(ctx, inputs, output):
    x0, noise, t = inputs
    if ctx.needs_input_grad[2]:
        ctx.save_for_backward(t, x0, noise)
    else:
        ctx.save_for_backward(t)


def _interp_backward(ctx, grad):
    t = ctx.saved_tensors[0]
    acc = t.dtype
    g = grad.to(acc)
    tv = _t_view(t, grad)
    grad_x0 = grad_noise = grad_t = None
    if ctx.needs_input_grad[0]:
        grad_x0 = (g * (1 - tv)).to(grad.dtype)
    if ctx.needs_input_grad[1]:
        grad_noise = (g * tv).to(grad.dtype)
    if ctx.needs_input_grad[2]:  # d x_t / dt = noise - x0, summed over t's broadcast dims
        _, x0, noise = ctx.saved_tensors
        prod = g * (noise.to(acc) - x0.to(acc))
        dims = [d for d in range(grad.dim()) if tv.shape[d] == 1]
        grad_t = prod.sum(dims).reshape(t.shape)
    return grad_x0, grad_noise, grad_t


_interpolate_op.register_autograd(_interp_backward, setup_context=_interp_setup)


def flow_interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | float, *,
                     check_range: bool = True) -> torch.Tensor:
    """Point on the straight path from data to noise: ``x_t = (1 - t) * x0 + t * noise``.

    Args:
        x0: clean latents (B, ...), any float dtype and layout; video latents (B, C, T, H, W).
        noise: like x0 (same shape, dtype, device).
        t: per sample (B,), or per sample and latent frame (B, T) for 5-D video latents; views
            (B, 1, ..., 1) and (B, 1, T, 1, 1) and a Python float are accepted too. Values in
            [0, 1]; any float dtype (math in float32, float64 for float64 latents).
        check_range: raise ValueError for t outside [0, 1] (NaN included). This reads t back
            to the host (one sync on GPU); pass False in a hot loop whose t is known good. The
            check is skipped inside ``torch.compile``.
    Returns:
        x_t in x0's dtype, contiguous. Differentiable w.r.t. x0, noise and t.
    """
    check_float("x0", x0)
    _check_latent("x0", x0)
    _check_like("noise", noise, "x0", x0)
    tc = _canonical_t(t, x0, check_range)
    with nvtx_range("rgbd.flow_interpolate"):
        return _interpolate_op(x0, noise, tc)


# ----------------------------------------------------------------------------- loss: reference

def flow_matching_loss_reference(v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
                                 weight: torch.Tensor | None = None,
                                 mask: torch.Tensor | None = None,
                                 reduction: str = "mean") -> torch.Tensor:
    """Reference: ``F.mse_loss`` of v_pred on the explicit target ``noise - x0`` (float32 math).

    Same semantics as :func:`flow_matching_loss`; differentiable through plain autograd.
    """
    acc = _acc_dtype(v_pred.dtype)
    target = noise.to(acc) - x0.to(acc)
    vp = v_pred.to(acc)
    batch = v_pred.shape[0]
    if mask is None and weight is None and reduction == "mean" and vp.numel():
        return torch.nn.functional.mse_loss(vp, target)
    sq = torch.nn.functional.mse_loss(vp, target, reduction="none")
    if mask is None:
        keep = torch.ones_like(sq, dtype=torch.bool)
    else:
        keep = (mask != 0).expand(sq.shape)
        sq = torch.where(keep, sq, torch.zeros_like(sq))
    n = math.prod(sq.shape[1:])
    per_sample = sq.reshape(batch, n).sum(1)
    count = keep.reshape(batch, n).sum(1).to(acc)
    w = torch.ones_like(per_sample) if weight is None else weight.to(acc)
    if reduction == "none":
        return w * per_sample / count.clamp_min(1)
    if reduction == "sum":
        return (w * per_sample).sum()
    return (w * per_sample).sum() / count.sum().clamp_min(1)


def _prescaled(dtype: torch.dtype) -> bool:
    """Whether the forward stores the final gradient (for grad_output = 1) rather than 2 * err.

    Not for float16: 2 * err / count underflows its range for large latents; the backward then
    applies the per-sample factor in float32 (also correct under a GradScaler's large
    grad_output).
    """
    return dtype != torch.float16


def _inv_denominators(counts: torch.Tensor, reduction: str) -> torch.Tensor:
    """inv_b (float64): 1/max(c_b, 1) ("none"), 1/max(sum c, 1) ("mean"), 1 ("sum")."""
    c = counts.to(torch.float64)
    if reduction == "none":
        return 1.0 / c.clamp_min(1)
    if reduction == "sum":
        return torch.ones_like(c)
    return (1.0 / c.sum().clamp_min(1)).expand(c.shape)


def _loss_forward_reference(v_pred, x0, noise, weight, mask, reduction, compute_grad):
    """(loss, gradient or empty, stats (B, 2) = [S_b, inv_b]) in PyTorch; see :func:`_loss_op`."""
    acc = _acc_dtype(v_pred.dtype)
    batch = v_pred.shape[0]
    err = v_pred.to(acc) - (noise.to(acc) - x0.to(acc))
    if mask is None:
        keep = torch.ones_like(err, dtype=torch.bool)
    else:
        keep = (mask != 0).expand(err.shape)
    err = torch.where(keep, err, torch.zeros_like(err))
    n = math.prod(err.shape[1:])
    per_sample = (err * err).reshape(batch, n).sum(1)
    inv = _inv_denominators(keep.reshape(batch, n).sum(1), reduction).to(acc)
    w = torch.ones_like(per_sample) if weight is None else weight.to(acc)
    contrib = w * per_sample * inv
    loss = contrib if reduction == "none" else contrib.sum()
    if not compute_grad:
        grad = v_pred.new_empty((0,))
    elif _prescaled(v_pred.dtype):
        view = (batch,) + (1,) * (v_pred.dim() - 1)
        grad = (2 * err * (w * inv).reshape(view)).to(v_pred.dtype).contiguous()
    else:
        grad = (2 * err).to(v_pred.dtype).contiguous()
    return loss, grad, torch.stack([per_sample, inv], dim=1)


# ----------------------------------------------------------------------------- loss: fused op

def _mask_layout(mask: torch.Tensor, shape: torch.Size):
    """(mode, mask buffer, inner) for a mask with len(shape) dims broadcastable to shape."""
    from ._triton import flow_matching as tk

    ndim = len(shape)
    k = ndim
    while k > 1 and mask.shape[k - 1] == 1:
        k -= 1
    inner = math.prod(shape[k:])
    keep = mask != 0
    if inner >= _MIN_ROW:  # one mask value per row of `inner` elements
        lead = keep[(slice(None),) * k + (0,) * (ndim - k)]
        return tk.MASK_ROW, lead.expand(shape[:k]).reshape(-1).to(torch.uint8).contiguous(), inner
    per_sample = math.prod(shape[1:])
    return tk.MASK_ELEMENT, keep.expand(shape).to(torch.uint8).contiguous(), per_sample


@torch.library.custom_op("rgbd::flow_matching_loss", mutates_args=())
def _loss_op(v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
             weight: torch.Tensor | None, mask: torch.Tensor | None, reduction: str,
             compute_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused loss forward: (loss, gradient w.r.t. v_pred or an empty tensor, stats (B, 2)).

    The gradient is the final one for grad_output = 1 (``2 keep err w_b inv_b``), except for
    float16 (``2 keep err``; see :func:`_prescaled`). stats[b] = (S_b, inv_b), inv_b the inverse
    of the reduction's denominator. weight: (B,) in the accumulation dtype; mask: bool with
    v_pred's number of dims.
    """
    backend = _pick_loss_backend(v_pred.device)
    if backend == "reference":
        return _loss_forward_reference(v_pred, x0, noise, weight, mask, reduction, compute_grad)
    from ._triton import flow_matching as tk

    acc = _acc_dtype(v_pred.dtype)
    batch = v_pred.shape[0]
    shape = v_pred.shape
    per_sample = math.prod(shape[1:])
    if mask is None:
        mode, mask_buf, inner = tk.MASK_NONE, None, per_sample
        denominator = {"none": per_sample, "mean": batch * per_sample, "sum": 1}[reduction]
        inv = 1.0 / max(denominator, 1)
        if acc == torch.float64:  # keep the scalar exact: pass it as a float64 tensor
            inv = torch.full((batch,), inv, dtype=acc, device=v_pred.device)
    else:
        mode, mask_buf, inner = _mask_layout(mask, shape)
        counts = mask_buf.view(batch, mask_buf.numel() // max(batch, 1)).sum(1, dtype=torch.int64)
        if mode == tk.MASK_ROW:
            counts = counts * inner
        inv = _inv_denominators(counts, reduction).to(acc).contiguous()
    v, x, n = v_pred.contiguous(), x0.contiguous(), noise.contiguous()
    grad = _buffers.empty_like(v) if compute_grad else v.new_empty((0,))
    loss = _buffers.empty((batch,) if reduction == "none" else (), dtype=acc, device=v.device)
    stats = _buffers.empty((batch, 2), dtype=acc, device=v.device)
    tk.loss_forward(v, x, n, None if weight is None else weight.contiguous(), inv, mask_buf, mode,
                    batch, inner, reduction, grad if compute_grad else None,
                    _prescaled(v.dtype), loss, stats)
    return loss, grad, stats


@_loss_op.register_fake
def _(v_pred, x0, noise, weight, mask, reduction, compute_grad):
    acc = _acc_dtype(v_pred.dtype)
    batch = v_pred.shape[0]
    loss = v_pred.new_empty((batch,) if reduction == "none" else (), dtype=acc)
    grad = (torch.empty_like(v_pred, memory_format=torch.contiguous_format) if compute_grad
            else v_pred.new_empty((0,)))
    return loss, grad, v_pred.new_empty((batch, 2), dtype=acc)


def _loss_backward_reference(grad: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    view = (factor.shape[0],) + (1,) * (grad.dim() - 1)
    return (grad.to(factor.dtype) * factor.reshape(view)).to(grad.dtype)


_LOSS_BACKENDS = ("reference", "triton")


def _pick_loss_backend(device: torch.device) -> str:
    return select_backend("flow_matching_loss", device, ("triton",))


@torch.library.custom_op("rgbd::flow_matching_loss_backward", mutates_args=())
def _loss_backward_op(grad: torch.Tensor, factor: torch.Tensor, backend: str) -> torch.Tensor:
    """grad (B, ...) scaled per sample by factor (B,), in grad's dtype. backend: the forward's
    (chosen with it, see :func:`_loss_setup`)."""
    if backend not in _LOSS_BACKENDS:
        raise ValueError(f"flow_matching_loss backward: backend must be one of {_LOSS_BACKENDS}, "
                         f"got {backend!r}")
    if backend == "reference":
        return _loss_backward_reference(grad, factor).contiguous()
    from ._triton import flow_matching as tk

    g = grad.contiguous()
    out = _buffers.empty_like(g)
    tk.scale_rows(g, factor.contiguous(), out)
    return out


@_loss_backward_op.register_fake
def _(grad, factor, backend):
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


def _loss_setup(ctx, inputs, output):
    v_pred, _, _, weight, _, _, compute_grad = inputs
    _, grad, stats = output
    ctx.computed_grad = compute_grad
    ctx.prescaled = _prescaled(v_pred.dtype)
    ctx.save_for_backward(grad, stats, weight)
    # Chosen with the forward, inside its use_backend block: the backward may run after the
    # block has exited, and must use the forward's path.
    ctx.backend = _pick_loss_backend(v_pred.device)


# Hand the forward's gradient buffer back when grad_output is exactly 1 (costs one host read of
# grad_output, saves a read + write pass over the latent). Module switch for benchmarking.
HAND_BACK_WHEN_ONE = True


def _is_exactly_one(t: torch.Tensor) -> bool:
    """True when every element of t is 1 -- only checked in eager mode on real tensors (reads
    t back to the host, as Liger does); False while tracing or capturing a CUDA graph."""
    if type(t) is not torch.Tensor or torch.compiler.is_compiling():
        return False
    if t.is_cuda and torch.cuda.is_current_stream_capturing():
        return False
    return bool((t == 1).all())


def _loss_backward(ctx, grad_loss, grad_grad, grad_stats):
    grad, stats, weight = ctx.saved_tensors
    need_v, need_x0, need_noise, need_w = ctx.needs_input_grad[:4]
    batch = stats.shape[0]
    go = grad_loss.to(stats.dtype)  # () or (B,) for "none"
    grad_v = grad_x0 = grad_noise = grad_w = None
    if need_v or need_x0 or need_noise:
        if not ctx.computed_grad:
            raise RuntimeError("flow_matching_loss: the forward ran without computing the "
                               "gradient (compute_grad=False) but a gradient was requested")
        if ctx.prescaled and HAND_BACK_WHEN_ONE and _is_exactly_one(go):
            scaled = grad  # the forward already wrote the final gradient: no pass over memory
        else:
            factor = go.expand(batch) if go.dim() == 0 else go
            if not ctx.prescaled:
                factor = factor * stats[:, 1]
                if weight is not None:
                    factor = factor * weight.to(stats.dtype)
            scaled = _loss_backward_op(grad, factor.contiguous(), ctx.backend)
        grad_v = scaled if need_v else None
        if need_x0:  # err = v_pred - noise + x0: d/dx0 = +d/dv_pred
            grad_x0 = scaled.clone() if need_v else scaled
        if need_noise:
            grad_noise = -scaled
    if need_w:  # d(w_b S_b inv_b)/dw_b
        grad_w = (go * stats[:, 0] * stats[:, 1]).to(weight.dtype)
    return grad_v, grad_x0, grad_noise, grad_w, None, None, None


_loss_op.register_autograd(_loss_backward, setup_context=_loss_setup)


def _prepare_mask(mask: object, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.device != like.device:
        raise ValueError(f"mask must be on v_pred's device {like.device}, got {mask.device}")
    if mask.is_complex():
        raise ValueError(f"mask must be bool or real, got dtype {mask.dtype}")
    shape = tuple(like.shape)
    ms = tuple(mask.shape)
    ok = len(ms) <= len(shape) and all(m in (1, s) for m, s in zip(ms[::-1], shape[::-1]))
    if not ok:
        raise ValueError(f"mask of shape {ms} is not broadcastable to the latent shape {shape} "
                         "(e.g. (B, 1, T, 1, 1) to mask latent frames)")
    keep = mask if mask.dtype == torch.bool else mask != 0
    return keep.reshape((1,) * (len(shape) - len(ms)) + ms)


def flow_matching_loss(v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
                       weight: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                       reduction: str = "mean") -> torch.Tensor:
    """Fused rectified-flow loss: squared error of ``v_pred`` against ``noise - x0``.

    Args:
        v_pred: predicted velocity (B, ...), any float dtype and layout.
        x0, noise: like v_pred (same shape, dtype and device).
        weight: optional per-sample weight (B,), any float dtype; multiplies sample b's terms.
        mask: optional mask broadcastable to the latent, True (or nonzero) where an element
            counts; (B, 1, T, 1, 1) takes conditioning frames out of the loss.
        reduction: "mean" | "none" | "sum" (see the module docstring; "none" gives (B,)).
    Returns:
        The loss, float32 (float64 for float64 inputs): a scalar, or (B,) for "none".
    Differentiable w.r.t. v_pred, x0, noise and weight; the forward pass already computes the
    gradient w.r.t. v_pred (when grad mode is on and any of v_pred, x0, noise requires grad),
    which costs one extra latent of memory until the backward.
    """
    check_float("v_pred", v_pred)
    _check_latent("v_pred", v_pred)
    _check_like("x0", x0, "v_pred", v_pred)
    _check_like("noise", noise, "v_pred", v_pred)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    batch = v_pred.shape[0]
    if weight is not None:
        check_float("weight", weight)
        if tuple(weight.shape) != (batch,):
            raise ValueError(f"weight must have shape (B,) = {(batch,)}, got "
                             f"{tuple(weight.shape)}")
        if weight.device != v_pred.device:
            raise ValueError(f"weight must be on v_pred's device {v_pred.device}, got "
                             f"{weight.device}")
        weight = weight.to(_acc_dtype(v_pred.dtype))
    if mask is not None:
        mask = _prepare_mask(mask, v_pred)
    compute_grad = torch.is_grad_enabled() and (v_pred.requires_grad or x0.requires_grad
                                                or noise.requires_grad)
    with nvtx_range("rgbd.flow_matching_loss"):
        loss, _, _ = _loss_op(v_pred, x0, noise, weight, mask, reduction, compute_grad)
    return loss
