"""Depth -> affine-invariant disparity, its normalization, alignment and depth metrics.

Conventions: disparity d = 1/depth on valid pixels (depth finite and > 0, inside an
optional range), 0 elsewhere. Normalization per group (a frame or a clip): shift t = median of
the valid values, scale s = mean |d - t| over them, normalized = 0.5 * (d - t) / s, so the valid
values get median 0 and mean absolute deviation 0.5; invalid pixels get 0.

Median: for an even number n of valid values it is the mean of the two middle order statistics
(0-based ranks n/2 - 1 and n/2), like ``numpy.median`` (``torch.median`` returns the lower one).
Its gradient is shared equally among values tied with a middle order statistic.

Paths: ``reference`` (PyTorch), ``cpp`` (CPU, ``csrc/disparity_cpu.cpp``: median by radix
selection over float keys, the default mask tested while reading the values), ``triton`` (GPU, or
CPU under ``TRITON_INTERPRET=1``; median by radix selection). All return float32 statistics.

Edge values: the midpoint of the two middle values, the deviations and (where float32 could
overflow) the output are evaluated in float64, so any finite input -- up to the float32 max, or
subnormal -- gives finite shift, scale and output on every path.

Metrics: :func:`abs_rel` and :func:`delta1` default to one value per clip, so clips evaluated
together equal the same clips evaluated apart; ``per="all"`` pools the pixels of the batch.
"""
from __future__ import annotations

import math
import numbers

import torch

from . import _buffers
from ._nvtx import nvtx_range
from ._validation import check_float
from .backend import select_backend

__all__ = ["depth_to_disparity", "normalize_disparity", "denormalize_disparity",
           "align_scale_shift", "abs_rel", "delta1",
           "depth_to_disparity_reference", "normalize_disparity_reference"]

_PER_DIMS = {"frame": 2, "clip": 3}
# stats columns of the internal op: shift, scale, lo, hi (middle order statistics), count
_STATS = 5


# ----------------------------------------------------------------------------- validation



def _check_per(per: object, t: torch.Tensor, name: str) -> int:
    if not isinstance(per, str) or per not in _PER_DIMS:
        raise ValueError(f"per must be 'frame' or 'clip', got {per!r}")
    nd = _PER_DIMS[per]
    if t.dim() < nd:
        shape = "(..., H, W)" if per == "frame" else "(..., T, H, W)"
        raise ValueError(f"{name} must have at least {nd} dims {shape} for per={per!r}, got "
                         f"shape {tuple(t.shape)}")
    return nd


def _check_valid(valid: object, like: torch.Tensor, name: str = "valid",
                 like_name: str = "disparity") -> torch.Tensor:
    if not isinstance(valid, torch.Tensor):
        raise ValueError(f"{name} must be a bool torch.Tensor, got {type(valid).__name__}")
    if valid.dtype != torch.bool:
        raise ValueError(f"{name} must have dtype torch.bool, got {valid.dtype}")
    if valid.shape != like.shape:
        raise ValueError(f"{name} must have the shape of {like_name} {tuple(like.shape)}, got "
                         f"{tuple(valid.shape)}")
    if valid.device != like.device:
        raise ValueError(f"{name} must be on {like_name}'s device {like.device}, got {valid.device}")
    return valid


def _real(name: str, value: object) -> float:
    """A real number (not bool) as float; ValueError naming the argument otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r} "
                         f"({type(value).__name__})")
    return float(value)


# ----------------------------------------------------------------------------- depth -> disparity

def depth_to_disparity_reference(depth: torch.Tensor, min_depth: float = 0.0,
                                 max_depth: float = math.inf) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: (1/depth on valid pixels else 0 in depth's dtype, valid bool), float32 math.

    A depth whose disparity overflows depth's dtype (fp16: below ~1.5e-5 m) is not valid."""
    z = depth.float()
    in_range = torch.isfinite(z) & (z > 0) & (z >= min_depth) & (z <= max_depth)
    safe = torch.where(in_range, z, torch.ones_like(z))
    disparity = torch.where(in_range, 1.0 / safe, torch.zeros_like(z)).to(depth.dtype)
    valid = in_range & torch.isfinite(disparity)
    return torch.where(valid, disparity, torch.zeros_like(disparity)), valid


@torch.library.custom_op("rgbd::depth_to_disparity", mutates_args=())
def _depth_to_disparity_op(depth: torch.Tensor, min_depth: float,
                           max_depth: float) -> tuple[torch.Tensor, torch.Tensor]:
    # "auto" on GPUs keeps Triton ahead of the CUDA kernel until a GPU benchmark ranks them.
    backend = select_backend("depth_to_disparity", depth.device, ("cpp", "cuda", "triton"),
                             auto_order={"cpu": ("cpp",), "cuda": ("triton", "cuda")})
    if backend == "reference":
        return depth_to_disparity_reference(depth, min_depth, max_depth)
    flat = depth.contiguous().view(-1)
    disparity = _buffers.empty_like(flat)
    valid = _buffers.empty_like(flat, dtype=torch.bool)
    if backend in ("cpp", "cuda"):  # the dispatcher picks csrc/ (CPU) or csrc/cuda/ (CUDA)
        torch.ops.rgbd_C.depth_to_disparity(flat, min_depth, max_depth, disparity, valid)
    else:
        from ._triton import disparity as tk

        tk.depth_to_disparity(flat, min_depth, max_depth, disparity, valid)
    return disparity.view(depth.shape), valid.view(depth.shape)


@_depth_to_disparity_op.register_fake
def _(depth, min_depth, max_depth):
    return torch.empty_like(depth, memory_format=torch.contiguous_format), \
        torch.empty_like(depth, dtype=torch.bool, memory_format=torch.contiguous_format)


def _d2d_setup(ctx, inputs, output):
    disparity, valid = output
    ctx.save_for_backward(disparity, valid)


def _d2d_backward(ctx, grad_disparity, grad_valid):
    disparity, valid = ctx.saved_tensors
    d = disparity.float()  # d(1/z)/dz = -1/z^2 = -d^2 on valid pixels, 0 elsewhere
    grad = torch.where(valid, -grad_disparity.float() * d * d, torch.zeros_like(d))
    return grad.to(disparity.dtype), None, None


_depth_to_disparity_op.register_autograd(_d2d_backward, setup_context=_d2d_setup)


def depth_to_disparity(depth: torch.Tensor, min_depth: float | None = None,
                       max_depth: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Disparity 1/depth and the valid mask.

    Args:
        depth: (...) float tensor in metres (any float dtype, any layout). NaN, inf, 0 and negative
            values are data: they are marked invalid, and so is a depth whose disparity would
            overflow the dtype (fp16: depth below ~1.5e-5 m).
        min_depth, max_depth: optional inclusive range of valid depths (metres).
    Returns:
        disparity (...) in depth's dtype, 1/metres, 0 on invalid pixels; valid (...) bool.
    """
    check_float("depth", depth)
    lo = 0.0 if min_depth is None else _real("min_depth", min_depth)
    hi = math.inf if max_depth is None else _real("max_depth", max_depth)
    if math.isnan(lo) or math.isnan(hi) or lo < 0 or lo > hi:
        raise ValueError(f"need 0 <= min_depth <= max_depth, got min_depth={min_depth!r}, "
                         f"max_depth={max_depth!r}")
    with nvtx_range("rgbd.depth_to_disparity"):
        return _depth_to_disparity_op(depth, lo, hi)


# ----------------------------------------------------------------------------- normalization

def _median_pair(x: torch.Tensor, valid: torch.Tensor, count: torch.Tensor):
    """Middle order statistics (lo, hi) of the valid values of each row of x (G, N); 0 if none."""
    ranked = torch.where(valid, x, torch.full_like(x, math.inf)).sort(dim=1).values
    last = x.shape[1] - 1
    lo_rank = ((count - 1).clamp_min(0) // 2).clamp_max(last)
    hi_rank = (count // 2).clamp_max(last)
    lo = ranked.gather(1, lo_rank[:, None]).squeeze(1)
    hi = ranked.gather(1, hi_rank[:, None]).squeeze(1)
    empty = count == 0
    return torch.where(empty, 0.0, lo), torch.where(empty, 0.0, hi)


def _default_valid(values: torch.Tensor) -> torch.Tensor:
    """The default mask: finite and > 0."""
    return torch.isfinite(values) & (values > 0)


def _midpoint(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(lo + hi) / 2 for lo <= hi without overflow: hi - lo cannot overflow when the signs agree,
    lo + hi cannot when they differ."""
    same_sign = (lo >= 0) == (hi >= 0)
    return torch.where(same_sign, lo + 0.5 * (hi - lo), 0.5 * (lo + hi))


def _normalize_rows_reference(values: torch.Tensor, valid: torch.Tensor | None):
    """Reference on rows: values (G, N) float, valid (G, N) bool or None (finite and > 0)
    -> (out (G, N), stats (G, 5)).

    Statistics in float32 (float64 for float64 values), returned in that dtype; the midpoint,
    the deviations and the output are evaluated in float64, so values near the float32 limits
    (3e38, or subnormal 1e-39) give finite statistics and output.
    """
    stat_dtype = torch.promote_types(values.dtype, torch.float32)
    x_raw = values.double()
    if valid is None:
        valid = _default_valid(values)
    use = valid & torch.isfinite(x_raw)
    x = torch.where(use, x_raw, torch.zeros_like(x_raw))  # invalid entries carry no gradient
    count = use.sum(dim=1)
    lo, hi = _median_pair(x.detach(), use, count)
    # The median's value is (lo + hi) / 2, rounded to the statistics' dtype; its gradient goes
    # half to the lo value and half to the hi value, each shared equally among the valid entries
    # tied with it.
    at_lo = (use & (x.detach() == lo[:, None])).double()
    at_hi = (use & (x.detach() == hi[:, None])).double()
    weight = 0.5 * at_lo / at_lo.sum(1, keepdim=True).clamp_min(1) \
        + 0.5 * at_hi / at_hi.sum(1, keepdim=True).clamp_min(1)
    median = _midpoint(lo, hi).to(stat_dtype).double() + (weight * (x - x.detach())).sum(dim=1)
    deviation = torch.where(use, (x - median[:, None]).abs(), torch.zeros_like(x))
    mad = (deviation.sum(dim=1) / count.clamp_min(1)).to(stat_dtype).double()
    ok = (count > 0) & (mad > 0)
    shift = torch.where(ok, median, torch.zeros_like(median))
    scale = torch.where(ok, mad, torch.ones_like(mad))
    out = torch.where(use & ok[:, None], 0.5 * ((x - shift[:, None]) / scale[:, None]),
                      torch.zeros_like(x))
    stats = torch.stack([shift, scale, lo, hi, torch.where(ok, count.double(), 0.0)], dim=1)
    return out.to(values.dtype), stats.to(stat_dtype)


def _rows(disparity: torch.Tensor, valid: torch.Tensor | None, nd: int):
    groups = math.prod(disparity.shape[: disparity.dim() - nd])
    n = math.prod(disparity.shape[disparity.dim() - nd:])
    return disparity.reshape(groups, n), None if valid is None else valid.reshape(groups, n)


def normalize_disparity_reference(disparity: torch.Tensor, valid: torch.Tensor | None = None,
                                  per: str = "frame"):
    """Reference path of :func:`normalize_disparity` (plain PyTorch, differentiable).

    Statistics in float32 (float64 for float64 input, so gradcheck can use it).
    """
    nd = _PER_DIMS[per]
    if valid is None:
        valid = _default_valid(disparity)
    x, v = _rows(disparity, valid, nd)
    out, stats = _normalize_rows_reference(x, v)
    lead = disparity.shape[: disparity.dim() - nd]
    return out.view(disparity.shape), stats[:, 0].reshape(lead), stats[:, 1].reshape(lead)


_FLOAT32_ONLY = "computes in float32; float64 input needs the reference path " \
                "(use_backend('reference') or 'auto')"


def _normalize_backend(values: torch.Tensor) -> str:
    """The backend for these rows. The fast paths compute in float32, so float64 input (which
    the reference keeps in float64) goes to the reference under "auto" and is refused by an
    explicitly requested fast backend."""
    unsupported = ({"cpp": _FLOAT32_ONLY, "triton": _FLOAT32_ONLY}
                   if values.dtype == torch.float64 else None)
    return select_backend("normalize_disparity", values.device, ("cpp", "triton"),
                          unsupported=unsupported)


@torch.library.custom_op("rgbd::normalize_disparity_rows", mutates_args=())
def _normalize_rows_op(values: torch.Tensor,
                       valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """values (G, N), valid (G, N) bool or None (finite and > 0; the C++ op tests it while
    reading the values) -> (normalized (G, N), stats (G, 5) float32)."""
    backend = _normalize_backend(values)
    if backend == "reference":
        out, stats = _normalize_rows_reference(values, valid)
        return out, stats.float()
    values = values.contiguous()
    if valid is not None:
        valid = valid.contiguous()
    out = _buffers.empty_like(values)
    stats = _buffers.empty((values.shape[0], _STATS), dtype=torch.float32, device=values.device)
    if backend == "cpp":
        torch.ops.rgbd_C.normalize_disparity(values, valid, out, stats)
    else:
        from ._triton import disparity as tk

        tk.normalize_disparity(values, _default_valid(values) if valid is None else valid,
                               out, stats)
    return out, stats


@_normalize_rows_op.register_fake
def _(values, valid):
    return (torch.empty_like(values, memory_format=torch.contiguous_format),
            values.new_empty((values.shape[0], _STATS), dtype=torch.float32))


def _sign(x: torch.Tensor) -> torch.Tensor:
    return (x > 0).float() - (x < 0).float()


def _normalize_rows_backward_reference(grad_out, grad_stats, values, valid, stats):
    """Closed-form gradient of :func:`_normalize_rows_reference` w.r.t. values (G, N).

    With y = 0.5 (x - m) / s, s = mean|x - m|, m = (lo + hi) / 2 (ties share lo's and hi's
    halves equally): dL/ds = g_s - sum(g y) / s, dL/dm = g_m - 0.5 sum(g) / s - dL/ds sum(sign) / n,
    dL/dx_i = 0.5 g_i / s + dL/ds sign_i / n + dL/dm (0.5 [x_i = lo] / n_lo + 0.5 [x_i = hi] / n_hi).
    """
    x = values.float()
    if valid is None:
        valid = _default_valid(values)
    use = valid & torch.isfinite(x)
    x = torch.where(use, x, 0.0)
    shift, scale, lo, hi, count = (stats[:, i:i + 1] for i in range(_STATS))
    ok = count > 0
    g = torch.where(use, grad_out.float(), 0.0)
    sign = torch.where(use, _sign(x - shift), 0.0)
    at_lo, at_hi = (use & (x == lo)).float(), (use & (x == hi)).float()
    n = count.clamp_min(1)
    grad_scale = grad_stats[:, 1:2] - (g * 0.5 * (x - shift) / scale).sum(1, keepdim=True) / scale
    grad_shift = (grad_stats[:, 0:1] - 0.5 * g.sum(1, keepdim=True) / scale
                  - grad_scale * sign.sum(1, keepdim=True) / n)
    grad = (0.5 * g / scale + grad_scale * sign / n
            + 0.5 * grad_shift * (at_lo / at_lo.sum(1, keepdim=True).clamp_min(1)
                                  + at_hi / at_hi.sum(1, keepdim=True).clamp_min(1)))
    return torch.where(use & ok, grad, 0.0).to(values.dtype)


@torch.library.custom_op("rgbd::normalize_disparity_rows_backward", mutates_args=())
def _normalize_rows_backward_op(grad_out: torch.Tensor, grad_stats: torch.Tensor,
                                values: torch.Tensor, valid: torch.Tensor | None,
                                stats: torch.Tensor, backend: str) -> torch.Tensor:
    """d values; ``backend`` is the forward's (chosen on the caller's thread in setup)."""
    if backend not in ("reference", "cpp", "triton"):
        raise ValueError(f"normalize_disparity backward: backend must be 'reference', 'cpp' or "
                         f"'triton', got {backend!r}")
    if backend == "reference":
        return _normalize_rows_backward_reference(grad_out, grad_stats, values, valid, stats)
    grad_values = _buffers.empty_like(values)
    if valid is None and backend != "cpp":
        valid = _default_valid(values)
    args = (grad_out.contiguous(), grad_stats.contiguous(), values.contiguous(),
            None if valid is None else valid.contiguous(), stats.contiguous(), grad_values)
    if backend == "cpp":
        torch.ops.rgbd_C.normalize_disparity_backward(*args)
    else:
        from ._triton import disparity as tk

        tk.normalize_disparity_backward(*args)
    return grad_values


@_normalize_rows_backward_op.register_fake
def _(grad_out, grad_stats, values, valid, stats, backend):
    return torch.empty_like(values, memory_format=torch.contiguous_format)


def _norm_setup(ctx, inputs, output):
    values, valid = inputs
    ctx.save_for_backward(values, valid, output[1])
    # Chosen on the caller's thread: autograd may run the backward on a device thread where
    # use_backend's context variable is not set.
    ctx.backend = _normalize_backend(values)


def _norm_backward(ctx, grad_out, grad_stats):
    values, valid, stats = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(values)
    if grad_stats is None:
        grad_stats = torch.zeros_like(stats)
    grad = _normalize_rows_backward_op(grad_out.to(values.dtype), grad_stats.float(), values,
                                       valid, stats, ctx.backend)
    return grad, None


_normalize_rows_op.register_autograd(_norm_backward, setup_context=_norm_setup)


def normalize_disparity(disparity: torch.Tensor, valid: torch.Tensor | None = None,
                        per: str = "frame") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Affine-invariant normalization: median 0 and mean absolute deviation 0.5 per group.

    Args:
        disparity: (..., H, W) for ``per="frame"``, (..., T, H, W) for ``per="clip"``; any float
            dtype and layout. Values are disparities (1/metres, or any affine-invariant scale).
        valid: bool mask of the same shape and device; default ``isfinite & > 0`` (0 marks holes,
            as :func:`depth_to_disparity` writes them). Non-finite values are always invalid.
        per: "frame" (statistics over H, W) or "clip" (over T, H, W).
    Returns:
        normalized (same shape and dtype; 0 on invalid pixels), shift and scale (float32, shaped
        like the leading dims). A group without valid values, or whose valid values are all
        equal (scale 0), gets shift 0, scale 1 and zeros. Never NaN or inf, also for values
        near the float32 max or subnormal ones.
    Differentiable w.r.t. ``disparity`` (shift and scale are functions of it too).
    """
    check_float("disparity", disparity)
    nd = _check_per(per, disparity, "disparity")
    if valid is not None:
        _check_valid(valid, disparity)
    with nvtx_range("rgbd.normalize_disparity"):
        x, v = _rows(disparity, valid, nd)
        if x.shape[1] == 0:
            raise ValueError(f"disparity has no pixels per {per}: shape {tuple(disparity.shape)}")
        out, stats = _normalize_rows_op(x, v)
    lead = disparity.shape[: disparity.dim() - nd]
    return out.view(disparity.shape), stats[:, 0].reshape(lead), stats[:, 1].reshape(lead)


def denormalize_disparity(normalized: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                          valid: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of :func:`normalize_disparity`: ``normalized * 2 * scale + shift``.

    ``shift`` and ``scale`` are shaped like the leading dims (as returned), so ``per`` is implied
    by how many trailing dims they lack (2: frame, 3: clip). Exact inverse on valid pixels;
    pixels where ``valid`` is False (if given) are set to 0. Computed in float32, returned in
    ``normalized``'s dtype.
    """
    check_float("normalized", normalized)
    check_float("shift", shift)
    check_float("scale", scale)
    for name, t in (("shift", shift), ("scale", scale)):
        if t.device != normalized.device:
            raise ValueError(f"{name} must be on normalized's device {normalized.device}, got "
                             f"{t.device}")
    if shift.shape != scale.shape:
        raise ValueError(f"shift and scale must have the same shape, got {tuple(shift.shape)} "
                         f"and {tuple(scale.shape)}")
    nd = normalized.dim() - shift.dim()
    if nd not in (2, 3) or normalized.shape[: shift.dim()] != shift.shape:
        raise ValueError(f"shift/scale of shape {tuple(shift.shape)} do not match normalized "
                         f"{tuple(normalized.shape)}: expected its leading dims without the last "
                         "2 (per='frame') or 3 (per='clip')")
    view = (*shift.shape, *([1] * nd))
    out = normalized.float() * (2.0 * scale.float()).view(view) + shift.float().view(view)
    if valid is not None:
        _check_valid(valid, normalized, like_name="normalized")
        out = torch.where(valid, out, torch.zeros_like(out))
    return out.to(normalized.dtype)


# ----------------------------------------------------------------------------- evaluation

_ALIGN_DIMS = {"frame": 2, "clip": 3, "all": None}


def _group_dims(t: torch.Tensor, per: str | None, name: str):
    if per is None or per == "all":
        return tuple(range(t.dim()))
    if not isinstance(per, str) or per not in _PER_DIMS:
        raise ValueError(f"per must be 'clip', 'frame', 'all' or None, got {per!r}")
    nd = _check_per(per, t, name)
    return tuple(range(t.dim() - nd, t.dim()))


def _max_abs(x: torch.Tensor, dims) -> torch.Tensor:
    """Per-group max |x| (detached, 1 where it is 0): a scale that keeps sums of squares finite."""
    a = x.detach().abs().amax(dims, keepdim=True)
    return torch.where(a > 0, a, torch.ones_like(a))


def _check_pair(pred, target, valid, names):
    check_float(names[0], pred)
    check_float(names[1], target)
    if pred.shape != target.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.device != target.device:
        raise ValueError(f"{names[0]} and {names[1]} must be on the same device, got "
                         f"{pred.device} and {target.device}")
    base = torch.isfinite(pred) & torch.isfinite(target)
    if valid is None:
        return base
    return _check_valid(valid, pred, like_name=names[0]) & base


def align_scale_shift(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
                      per: str = "clip") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares scale s and shift t so that ``s * pred + t`` best fits ``target`` on valid pixels.

    The Marigold / DepthCrafter protocol aligns in disparity space: pass predicted and ground-truth
    disparities. ``per``: "frame" ((..., H, W) groups), "clip" ((..., T, H, W), per video), or
    "all" (one fit). Returns (aligned, s, t): aligned like pred (float32), s and t float32 shaped
    like the leading dims. A group with fewer than 2 distinct valid predictions gets s = 0 and
    t = mean target (s = 1, t = 0 with no valid pixel). Differentiable (plain PyTorch).
    """
    use = _check_pair(pred, target, valid, ("pred", "target"))
    if not isinstance(per, str) or per not in _ALIGN_DIMS:
        raise ValueError(f"per must be 'frame', 'clip' or 'all', got {per!r}")
    dims = _group_dims(pred, per, "pred")
    # float64, and every group centred and scaled to max |.| = 1 before the normal equations, so
    # predictions of any magnitude (1e20 against targets of 1..4) give the exact fit. The scales
    # are detached constants: the fit is invariant to them, so gradients are unchanged.
    n = use.double().sum(dims, keepdim=True)
    n1 = n.clamp_min(1)
    p = torch.where(use, pred.double(), 0.0)
    g = torch.where(use, target.double(), 0.0)
    ap, ag = _max_abs(p, dims), _max_abs(g, dims)
    mp = (p / ap).sum(dims, keepdim=True) / n1  # means in units of ap and ag
    mg = (g / ag).sum(dims, keepdim=True) / n1
    dp = torch.where(use, p / ap - mp, 0.0)
    dg = torch.where(use, g / ag - mg, 0.0)
    cp, cg = _max_abs(dp, dims), _max_abs(dg, dims)
    dp, dg = dp / cp, dg / cg
    var = (dp * dp).sum(dims, keepdim=True)
    cov = (dp * dg).sum(dims, keepdim=True)
    ratio = torch.where(var > 0, cov / torch.where(var > 0, var, 1.0), 0.0)
    s = ratio * ((cg / cp) * (ag / ap))
    t = mg * ag - s * (mp * ap)
    s = torch.where(n > 0, s, 1.0)
    t = torch.where(n > 0, t, 0.0)
    aligned = (s * pred.double() + t).float()
    s, t = s.float(), t.float()
    return aligned, s.squeeze(dims) if dims else s, t.squeeze(dims) if dims else t


def _depth_metric(pred_depth, gt_depth, valid, per, fn):
    use = _check_pair(pred_depth, gt_depth, valid, ("pred_depth", "gt_depth"))
    use = use & (gt_depth > 0)
    dims = _group_dims(pred_depth, per, "pred_depth")
    values = torch.where(use, fn(pred_depth.float(), torch.where(use, gt_depth.float(), 1.0)), 0.0)
    n = use.float().sum(dims)
    return torch.where(n > 0, values.sum(dims) / n.clamp_min(1), torch.nan)


def abs_rel(pred_depth: torch.Tensor, gt_depth: torch.Tensor, valid: torch.Tensor | None = None,
            per: str | None = "clip") -> torch.Tensor:
    """Absolute relative error mean |pred - gt| / gt over valid pixels (gt finite and > 0).

    Args:
        pred_depth, gt_depth: (..., T, H, W) depths (metres) for ``per="clip"``, (..., H, W) for
            ``per="frame"``; any float dtype, same shape and device.
        valid: optional bool mask of that shape (and-ed with finite pred and finite, > 0 gt).
        per: "clip" (default: one value per clip, over its T, H, W), "frame" (one per frame), or
            "all" / None (one value pooling the valid pixels of the whole batch, so clips with
            more valid pixels weigh more). Under "clip" and "frame" each group's value depends
            only on that group: clips evaluated together equal the same clips evaluated apart.
    Returns:
        float32, shaped like the leading dims (0-d for one clip or for "all"); NaN for a group
        without valid pixels.
    """
    return _depth_metric(pred_depth, gt_depth, valid, per, lambda p, g: (p - g).abs() / g)


def delta1(pred_depth: torch.Tensor, gt_depth: torch.Tensor, valid: torch.Tensor | None = None,
           per: str | None = "clip", threshold: float = 1.25) -> torch.Tensor:
    """Fraction of valid pixels with max(pred/gt, gt/pred) < threshold (a finite number > 1,
    default 1.25). Shapes, ``valid`` and ``per`` as in :func:`abs_rel`.

    Non-positive predictions count as failures.
    """
    thr = _real("threshold", threshold)
    if not (math.isfinite(thr) and thr > 1):
        raise ValueError(f"threshold must be a finite number > 1, got {threshold!r}")

    def hit(p, g):
        safe_p = torch.where(p > 0, p, 1.0)
        ratio = torch.maximum(safe_p / g, g / safe_p)
        return ((ratio < thr) & (p > 0)).float()

    return _depth_metric(pred_depth, gt_depth, valid, per, hit)
