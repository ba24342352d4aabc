"""Triton kernels for flow-matching interpolation and loss (GPU, or CPU interpreter).

Every kernel sees a contiguous latent as ``rows`` rows of ``inner`` elements, where a row is a
run of elements sharing one per-row scalar (a timestep, a mask value, a gradient factor): for
video latents (B, C, T, H, W) with per-frame t or a (B, 1, T, 1, 1) mask a row is one H*W plane,
otherwise one whole sample. The 1-D grid is ``rows * cdiv(inner, BLOCK)`` programs, one block
each; the row and block come from two scalar integer ops per program, so no element pays an
integer division. Offsets are int64 (latents may exceed 2**31 elements).

Loss: one pass reads v_pred, x0 and noise once and writes the gradient w.r.t. v_pred for
grad_output = 1, ``2 * keep * err * w_b * inv_b`` (err = v_pred - (noise - x0), inv_b the inverse
of the reduction's denominator, known before the pass: float16 stores ``2 * keep * err`` instead,
so that tiny gradients do not underflow, and the backward applies the factor in float32), and one
partial sum of ``keep * err**2`` per program. Masked-out elements are never loaded. A
single-program finalize kernel reduces the partials per sample in a fixed order (no float
atomics: bit-identical across runs) and writes the loss and the per-sample (S_b, inv_b).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK = 2048
# constexpr codes
MASK_NONE, MASK_ROW, MASK_ELEMENT = 0, 1, 2
REDUCTION_CODES = {"none": 0, "mean": 1, "sum": 2}


def _geometry(inner: int) -> tuple[int, int, int]:
    """(BLOCK, blocks per row, num_warps) for rows of ``inner`` elements."""
    block = min(MAX_BLOCK, max(16, triton.next_power_of_2(inner)))
    return block, triton.cdiv(inner, block), 8 if block >= 2048 else 4


@triton.jit
def _row_block(inner, nblk, BLOCK: tl.constexpr):
    """(row, int64 element offsets, in-bounds mask) of this program's block."""
    pid = tl.program_id(0)
    row = pid // nblk
    blk = pid - row * nblk
    cols = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return row, row.to(tl.int64) * inner + cols, cols < inner


@triton.jit
def _load_acc(ptr, offs, mask, FP64: tl.constexpr):
    x = tl.load(ptr + offs, mask=mask, other=0.0)
    if FP64:
        y = x.to(tl.float64)
    else:
        y = x.to(tl.float32)
    return y


# ----------------------------------------------------------------------------- interpolation

@triton.jit
def _interpolate_kernel(x0_ptr, noise_ptr, t_ptr, out_ptr, inner, nblk, rows_per_sample,
                        t_frames, FP64: tl.constexpr, BLOCK: tl.constexpr):
    row, offs, inb = _row_block(inner, nblk, BLOCK)
    # per sample: row = b (rows_per_sample = t_frames = 1); per frame: row = (b * C + c) * T + f
    # (rows_per_sample = C * T, t_frames = T) and t is (B, T)
    t = tl.load(t_ptr + (row // rows_per_sample) * t_frames + row % t_frames)
    x0 = _load_acc(x0_ptr, offs, inb, FP64)
    noise = _load_acc(noise_ptr, offs, inb, FP64)
    out = (1.0 - t) * x0 + t * noise
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=inb)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> None:
    """x0, noise, out contiguous (B, ...); t contiguous (B,), or (B, T) for (B, C, T, H, W),
    in the compute dtype."""
    n = x0.numel()
    if n == 0:
        return
    batch = x0.shape[0]
    if t.dim() == 1:  # one row per sample
        rows, t_frames = batch, 1
    else:  # one row per (sample, channel, frame) plane
        rows, t_frames = batch * x0.shape[1] * x0.shape[2], x0.shape[2]
    inner = n // rows
    block, nblk, warps = _geometry(inner)
    _interpolate_kernel[(rows * nblk,)](
        x0, noise, t, out, inner, nblk, rows // batch, t_frames,
        FP64=x0.dtype == torch.float64, BLOCK=block, num_warps=warps)


# ----------------------------------------------------------------------------- loss forward

@triton.jit
def _loss_fwd_kernel(v_ptr, x0_ptr, noise_ptr, mask_ptr, weight_ptr, inv_ptr, inv_scalar,
                     grad_ptr, partial_ptr, inner, nblk, rows_per_sample,
                     MASK_MODE: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                     INV_PER_SAMPLE: tl.constexpr, GRAD_MODE: tl.constexpr,
                     FP64: tl.constexpr, BLOCK: tl.constexpr):
    row, offs, inb = _row_block(inner, nblk, BLOCK)
    if MASK_MODE == 1:
        keep = (inb.to(tl.int32) * tl.load(mask_ptr + row).to(tl.int32)) != 0
    elif MASK_MODE == 2:
        keep = inb & (tl.load(mask_ptr + offs, mask=inb, other=0) != 0)
    else:
        keep = inb
    # masked-out elements are not loaded (zeros instead): no traffic for conditioning frames
    v = _load_acc(v_ptr, offs, keep, FP64)
    x0 = _load_acc(x0_ptr, offs, keep, FP64)
    noise = _load_acc(noise_ptr, offs, keep, FP64)
    err = v - (noise - x0)
    tl.store(partial_ptr + tl.program_id(0), tl.sum(err * err, axis=0))
    if GRAD_MODE == 1:  # unscaled: 2 * err
        tl.store(grad_ptr + offs, (2.0 * err).to(grad_ptr.dtype.element_ty), mask=inb)
    elif GRAD_MODE == 2:  # final gradient for grad_output = 1: 2 * err * w_b * inv_b
        b = row // rows_per_sample
        factor = 2.0 * inv_scalar
        if INV_PER_SAMPLE:
            factor = 2.0 * tl.load(inv_ptr + b)
        if HAS_WEIGHT:
            factor = factor * tl.load(weight_ptr + b)
        tl.store(grad_ptr + offs, (err * factor).to(grad_ptr.dtype.element_ty), mask=inb)


@triton.jit
def _loss_finalize_kernel(partial_ptr, weight_ptr, inv_ptr, inv_scalar, loss_ptr, stats_ptr,
                          batch, per, HAS_WEIGHT: tl.constexpr, INV_PER_SAMPLE: tl.constexpr,
                          REDUCTION: tl.constexpr, BB: tl.constexpr, PB: tl.constexpr):
    """One program: partials (batch, per) -> S_b in a fixed order; stats[b] = (S_b, inv_b);
    loss_b = w_b S_b inv_b ("none") or the sum of those over b ("mean", "sum")."""
    acc_dtype = partial_ptr.dtype.element_ty
    total = tl.zeros((BB,), dtype=acc_dtype)
    for b0 in range(0, batch, BB):
        bs = b0 + tl.arange(0, BB)
        bm = bs < batch
        s_acc = tl.zeros((BB, PB), dtype=acc_dtype)
        for j0 in range(0, per, PB):
            js = j0 + tl.arange(0, PB)
            m2 = bm[:, None] & (js < per)[None, :]
            s_acc += tl.load(partial_ptr + bs.to(tl.int64)[:, None] * per + js[None, :], mask=m2,
                             other=0.0)
        s = tl.sum(s_acc, axis=1)
        if INV_PER_SAMPLE:
            inv = tl.load(inv_ptr + bs, mask=bm, other=0.0)
        else:
            inv = tl.where(bm, inv_scalar, 0.0).to(acc_dtype)
        contrib = s * inv
        if HAS_WEIGHT:
            contrib = contrib * tl.load(weight_ptr + bs, mask=bm, other=0.0)
        tl.store(stats_ptr + bs * 2, s, mask=bm)
        tl.store(stats_ptr + bs * 2 + 1, inv, mask=bm)
        if REDUCTION == 0:
            tl.store(loss_ptr + bs, contrib, mask=bm)
        else:
            total += tl.where(bm, contrib, 0.0)
    if REDUCTION != 0:
        tl.store(loss_ptr, tl.sum(total, axis=0))


def loss_forward(v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
                 weight: torch.Tensor | None, inv: torch.Tensor | float, mask: torch.Tensor | None,
                 mask_mode: int, batch: int, inner: int, reduction: str,
                 grad: torch.Tensor | None, prescale: bool, loss: torch.Tensor,
                 stats: torch.Tensor) -> None:
    """Fused loss forward on contiguous latents viewed as (rows, inner), rows a multiple of batch.

    mask: (rows,) uint8 for MASK_ROW, like the latent (uint8) for MASK_ELEMENT, else None.
    inv: per-sample denominators' inverses (batch,) or one number for all samples.
    grad (like v_pred), when given, receives ``2 * keep * err`` times ``w_b * inv_b`` if
    ``prescale``. loss () or (batch,) and stats (batch, 2) in the accumulation dtype.
    """
    n = v_pred.numel()
    acc = stats.dtype
    block, nblk, warps = _geometry(max(inner, 1))
    rows = n // inner if n else 0
    programs = rows * nblk
    partial = torch.empty((max(programs, 1),), dtype=acc, device=v_pred.device)
    per_sample = isinstance(inv, torch.Tensor)
    inv_ptr, inv_scalar = (inv, 1.0) if per_sample else (stats, float(inv))
    w_ptr = stats if weight is None else weight
    if programs:
        _loss_fwd_kernel[(programs,)](
            v_pred, x0, noise, v_pred if mask is None else mask, w_ptr, inv_ptr, inv_scalar,
            v_pred if grad is None else grad, partial, inner, nblk, rows // batch,
            MASK_MODE=mask_mode, HAS_WEIGHT=weight is not None, INV_PER_SAMPLE=per_sample,
            GRAD_MODE=0 if grad is None else (2 if prescale else 1),
            FP64=acc == torch.float64, BLOCK=block, num_warps=warps)
    bb = min(triton.next_power_of_2(max(batch, 1)), 64)
    _loss_finalize_kernel[(1,)](
        partial, w_ptr, inv_ptr, inv_scalar, loss, stats, batch,
        programs // batch if batch else 0, HAS_WEIGHT=weight is not None,
        INV_PER_SAMPLE=per_sample, REDUCTION=REDUCTION_CODES[reduction], BB=bb,
        PB=max(16, 2048 // bb), num_warps=4)


# ----------------------------------------------------------------------------- loss backward

@triton.jit
def _scale_rows_kernel(g_ptr, factor_ptr, out_ptr, inner, nblk, FP64: tl.constexpr,
                       BLOCK: tl.constexpr):
    row, offs, inb = _row_block(inner, nblk, BLOCK)
    f = tl.load(factor_ptr + row)
    g = _load_acc(g_ptr, offs, inb, FP64)
    tl.store(out_ptr + offs, (g * f).to(out_ptr.dtype.element_ty), mask=inb)


def scale_rows(grad: torch.Tensor, factor: torch.Tensor, out: torch.Tensor) -> None:
    """out = grad * factor[row] for contiguous grad viewed as (factor.numel(), -1)."""
    n = grad.numel()
    if n == 0:
        return
    inner = n // factor.numel()
    block, nblk, warps = _geometry(inner)
    _scale_rows_kernel[(factor.numel() * nblk,)](
        grad, factor, out, inner, nblk, FP64=factor.dtype == torch.float64, BLOCK=block,
        num_warps=warps)


__all__ = ["interpolate", "loss_forward", "scale_rows", "MASK_NONE", "MASK_ROW", "MASK_ELEMENT"]
