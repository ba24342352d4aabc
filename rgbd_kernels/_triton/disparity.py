"""Triton kernels for depth -> disparity and disparity normalization (GPU, or CPU interpreter).

Normalization of rows x (G, N) with a valid mask:
  1. median by radix selection over order-preserving uint32 keys of the float32 values: four
     passes of 8-bit digits, each a histogram of the valid values that match the prefix chosen so
     far (grid (G, chunks), integer atomics, so results are deterministic) and a tiny select
     kernel that picks the digit holding the wanted rank. The two middle order statistics (lo, hi)
     are selected side by side.
  2. one pass: per-chunk partial sums of |x - median| in float64 (no float atomics: partials are
     reduced in a fixed order), then a per-group finalize writing stats = [shift, scale, lo, hi,
     count]; the midpoint (lo + hi) / 2 is taken in float64, so values near 3e38 do not overflow.
  3. one pass writing 0.5 * (x - shift) / scale, in float64 for a group whose scale is subnormal
     (0.5 / scale would overflow) or whose deviations could overflow float32.
The backward does one reduction pass (sum g, sum g*y, sum sign, ties at lo and hi) and one
elementwise pass; see ``csrc/disparity_cpu.cpp`` for the same formulas in C++.
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

NBINS = 256
RADIX_SHIFTS = (24, 16, 8, 0)
MAX_CHUNKS = 64


@triton.jit
def _finite_positive(z, lo, hi):
    return (z > 0.0) & (z < float("inf")) & (z >= lo) & (z <= hi)


@triton.jit
def _depth_to_disparity_kernel(depth_ptr, disp_ptr, valid_ptr, n, lo, hi, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    z = tl.load(depth_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    in_range = _finite_positive(z, lo, hi)
    # a disparity that overflows the output dtype (fp16: depth below ~1.5e-5) is not valid
    disp = tl.where(in_range, 1.0 / tl.where(in_range, z, 1.0), 0.0).to(disp_ptr.dtype.element_ty)
    ok = in_range & (tl.abs(disp.to(tl.float32)) < float("inf"))
    tl.store(disp_ptr + offs, tl.where(ok, disp, 0.0).to(disp_ptr.dtype.element_ty), mask=inb)
    tl.store(valid_ptr + offs, ok, mask=inb)


def depth_to_disparity(depth: torch.Tensor, min_depth: float, max_depth: float,
                       disparity: torch.Tensor, valid: torch.Tensor) -> None:
    """depth, disparity: (n,) contiguous float; valid: (n,) bool. Writes the outputs."""
    n = depth.numel()
    if n == 0:
        return
    block = 1024
    _depth_to_disparity_kernel[(triton.cdiv(n, block),)](
        depth, disparity, valid, n, float(min_depth), float(max_depth), BLOCK=block)


# ----------------------------------------------------------------------------- normalization

@triton.jit
def _load_row_block(x_ptr, v_ptr, row, offs, n):
    """float32 values and the effective validity (mask, finite) of one block of a row."""
    inb = offs < n
    x = tl.load(x_ptr + row + offs, mask=inb, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + row + offs, mask=inb, other=0).to(tl.int1)
    use = inb & v & (x == x) & (tl.abs(x) < float("inf"))
    return tl.where(use, x, 0.0), use


@triton.jit
def _float_to_key(x):
    """Order-preserving map float32 -> uint32 (negative floats reversed, sign bit flipped)."""
    bits = x.to(tl.uint32, bitcast=True)
    neg = (bits >> 31) == 1
    return tl.where(neg, bits ^ 0xFFFFFFFF, bits ^ 0x80000000)


@triton.jit
def _key_to_float(key):
    pos = (key >> 31) == 1
    bits = tl.where(pos, key ^ 0x80000000, key ^ 0xFFFFFFFF)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _masked_histogram(digit, match, NB: tl.constexpr):
    """Histogram of digit over entries where match is true (tl.histogram has no mask in 3.6)."""
    h = tl.histogram(tl.where(match, digit, 0), NB)
    missing = tl.sum((match == 0).to(tl.int32), axis=0)
    return h - tl.where(tl.arange(0, NB) == 0, missing, 0)


@triton.jit
def _radix_hist_kernel(x_ptr, v_ptr, state_ptr, hist_ptr, n, chunk,
                       SHIFT: tl.constexpr, FIRST: tl.constexpr, BLOCK: tl.constexpr,
                       NB: tl.constexpr):
    g = tl.program_id(0)
    c = tl.program_id(1)
    row = g.to(tl.int64) * n
    prefix_lo = tl.load(state_ptr + g * 4 + 0)
    prefix_hi = tl.load(state_ptr + g * 4 + 1)
    h_lo = tl.zeros((NB,), dtype=tl.int32)
    h_hi = tl.zeros((NB,), dtype=tl.int32)
    start = c.to(tl.int64) * chunk
    for s in range(0, chunk, BLOCK):
        offs = start + s + tl.arange(0, BLOCK)
        x, use = _load_row_block(x_ptr, v_ptr, row, offs, n)
        key = _float_to_key(x)
        digit = ((key >> SHIFT) & 0xFF).to(tl.int32)
        if FIRST:
            h_lo += _masked_histogram(digit, use, NB)
        else:
            top = (key >> (SHIFT + 8)).to(tl.int64)
            h_lo += _masked_histogram(digit, use & (top == (prefix_lo >> (SHIFT + 8))), NB)
            h_hi += _masked_histogram(digit, use & (top == (prefix_hi >> (SHIFT + 8))), NB)
    bins = tl.arange(0, NB)
    tl.atomic_add(hist_ptr + (g * 2) * NB + bins, h_lo)
    if FIRST:
        tl.atomic_add(hist_ptr + (g * 2 + 1) * NB + bins, h_lo)
    else:
        tl.atomic_add(hist_ptr + (g * 2 + 1) * NB + bins, h_hi)


@triton.jit
def _pick_digit(h, k, NB: tl.constexpr):
    """Digit whose bucket holds rank k (0-based) and the rank within that bucket."""
    cum = tl.cumsum(h, 0)
    b = tl.minimum(tl.sum((cum <= k).to(tl.int32), axis=0), NB - 1)
    before = tl.sum(tl.where(tl.arange(0, NB) < b, h, 0), axis=0)
    return b, k - before


@triton.jit
def _radix_select_kernel(hist_ptr, state_ptr, count_ptr, SHIFT: tl.constexpr,
                         FIRST: tl.constexpr, NB: tl.constexpr):
    g = tl.program_id(0)
    bins = tl.arange(0, NB)
    h_lo = tl.load(hist_ptr + (g * 2) * NB + bins).to(tl.int64)
    h_hi = tl.load(hist_ptr + (g * 2 + 1) * NB + bins).to(tl.int64)
    if FIRST:
        total = tl.sum(h_lo, axis=0)
        tl.store(count_ptr + g, total)
        k_lo = tl.maximum(total - 1, 0) // 2
        k_hi = total // 2
    else:
        k_lo = tl.load(state_ptr + g * 4 + 2)
        k_hi = tl.load(state_ptr + g * 4 + 3)
    b_lo, k_lo = _pick_digit(h_lo, k_lo, NB)
    b_hi, k_hi = _pick_digit(h_hi, k_hi, NB)
    p_lo = tl.load(state_ptr + g * 4 + 0) | (b_lo.to(tl.int64) << SHIFT)
    p_hi = tl.load(state_ptr + g * 4 + 1) | (b_hi.to(tl.int64) << SHIFT)
    tl.store(state_ptr + g * 4 + 0, p_lo)
    tl.store(state_ptr + g * 4 + 1, p_hi)
    tl.store(state_ptr + g * 4 + 2, k_lo)
    tl.store(state_ptr + g * 4 + 3, k_hi)


@triton.jit
def _median(state_ptr, g):
    """lo, hi and their midpoint (float64 sum: no overflow near 3e38), rounded to float32."""
    lo = _key_to_float(tl.load(state_ptr + g * 4 + 0).to(tl.uint32))
    hi = _key_to_float(tl.load(state_ptr + g * 4 + 1).to(tl.uint32))
    return lo, hi, (0.5 * (lo.to(tl.float64) + hi.to(tl.float64))).to(tl.float32)


@triton.jit
def _abs_dev_partial_kernel(x_ptr, v_ptr, state_ptr, partial_ptr, n, chunk, n_chunks,
                            BLOCK: tl.constexpr):
    g = tl.program_id(0)
    c = tl.program_id(1)
    row = g.to(tl.int64) * n
    _, _, med = _median(state_ptr, g)
    med64 = med.to(tl.float64)
    acc = tl.zeros((BLOCK,), dtype=tl.float64)
    start = c.to(tl.int64) * chunk
    for s in range(0, chunk, BLOCK):
        offs = start + s + tl.arange(0, BLOCK)
        x, use = _load_row_block(x_ptr, v_ptr, row, offs, n)
        acc += tl.where(use, tl.abs(x.to(tl.float64) - med64), 0.0)
    tl.store(partial_ptr + g * n_chunks + c, tl.sum(acc, axis=0))


@triton.jit
def _finalize_stats_kernel(state_ptr, count_ptr, partial_ptr, stats_ptr, n_chunks,
                           CHUNKS: tl.constexpr):
    g = tl.program_id(0)
    lo, hi, med = _median(state_ptr, g)
    cs = tl.arange(0, CHUNKS)
    total = tl.sum(tl.load(partial_ptr + g * n_chunks + cs, mask=cs < n_chunks, other=0.0), axis=0)
    count = tl.load(count_ptr + g)
    countf = count.to(tl.float32)
    mad = (total / tl.maximum(count.to(tl.float64), 1.0)).to(tl.float32)
    ok = (count > 0) & (mad > 0.0)
    tl.store(stats_ptr + g * 5 + 0, tl.where(ok, med, 0.0))
    tl.store(stats_ptr + g * 5 + 1, tl.where(ok, mad, 1.0))
    tl.store(stats_ptr + g * 5 + 2, tl.where(count > 0, lo, 0.0))
    tl.store(stats_ptr + g * 5 + 3, tl.where(count > 0, hi, 0.0))
    tl.store(stats_ptr + g * 5 + 4, tl.where(ok, countf, 0.0))


@triton.jit
def _normalize_apply_kernel(x_ptr, v_ptr, stats_ptr, out_ptr, n, chunk, BLOCK: tl.constexpr):
    g = tl.program_id(0)
    c = tl.program_id(1)
    row = g.to(tl.int64) * n
    shift = tl.load(stats_ptr + g * 5 + 0)
    scale = tl.load(stats_ptr + g * 5 + 1)
    count = tl.load(stats_ptr + g * 5 + 4)
    ok = count > 0.0
    # Every |x - shift| <= count * scale: below 2^126 the float32 difference cannot overflow,
    # and a normal scale keeps 0.5 / scale finite. Otherwise write through float64.
    wide = ok & ((scale < 1.1754943508222875e-38)
                 | (count.to(tl.float64) * scale.to(tl.float64) > 8.507059173023462e37))
    start = c.to(tl.int64) * chunk
    if wide:
        half_inv_scale64 = 0.5 / scale.to(tl.float64)
        for s in range(0, chunk, BLOCK):
            offs = start + s + tl.arange(0, BLOCK)
            x, use = _load_row_block(x_ptr, v_ptr, row, offs, n)
            y = tl.where(use, ((x.to(tl.float64) - shift.to(tl.float64)) * half_inv_scale64)
                         .to(tl.float32), 0.0)
            tl.store(out_ptr + row + offs, y.to(out_ptr.dtype.element_ty), mask=offs < n)
    else:
        half_inv_scale = tl.where(ok, (0.5 / scale.to(tl.float64)).to(tl.float32), 0.0)
        for s in range(0, chunk, BLOCK):
            offs = start + s + tl.arange(0, BLOCK)
            x, use = _load_row_block(x_ptr, v_ptr, row, offs, n)
            y = tl.where(use, (x - shift) * half_inv_scale, 0.0)  # half_inv_scale = 0 unless ok
            tl.store(out_ptr + row + offs, y.to(out_ptr.dtype.element_ty), mask=offs < n)


def _launch_geometry(n: int) -> tuple[int, int, int]:
    """(BLOCK, chunk, n_chunks): chunk is a multiple of BLOCK, at most MAX_CHUNKS chunks a row."""
    block = min(1024, triton.next_power_of_2(max(n, 16)))
    chunk = max(4 * block, triton.cdiv(n, MAX_CHUNKS))
    chunk = triton.cdiv(chunk, block) * block
    return block, chunk, triton.cdiv(n, chunk)


def normalize_disparity(values: torch.Tensor, valid: torch.Tensor, out: torch.Tensor,
                        stats: torch.Tensor) -> None:
    """values (G, N) float contiguous, valid (G, N) bool -> out (G, N), stats (G, 5) float32."""
    groups, n = values.shape
    if groups == 0:
        return
    dev = values.device
    block, chunk, n_chunks = _launch_geometry(n)
    state = torch.zeros((groups, 4), dtype=torch.int64, device=dev)  # prefix lo/hi, rank lo/hi
    hist = torch.zeros((len(RADIX_SHIFTS), groups, 2, NBINS), dtype=torch.int32, device=dev)
    count = torch.zeros((groups,), dtype=torch.int64, device=dev)
    for i, shift in enumerate(RADIX_SHIFTS):
        first = i == 0
        _radix_hist_kernel[(groups, n_chunks)](values, valid, state, hist[i], n, chunk,
                                               SHIFT=shift, FIRST=first, BLOCK=block, NB=NBINS)
        _radix_select_kernel[(groups,)](hist[i], state, count, SHIFT=shift, FIRST=first, NB=NBINS)
    partial = torch.empty((groups, n_chunks), dtype=torch.float64, device=dev)
    _abs_dev_partial_kernel[(groups, n_chunks)](values, valid, state, partial, n, chunk, n_chunks,
                                                BLOCK=block)
    _finalize_stats_kernel[(groups,)](state, count, partial, stats, n_chunks,
                                      CHUNKS=triton.next_power_of_2(n_chunks))
    _normalize_apply_kernel[(groups, n_chunks)](values, valid, stats, out, n, chunk, BLOCK=block)


# ----------------------------------------------------------------------------- backward

@triton.jit
def _sign(x):
    return (x > 0.0).to(tl.float32) - (x < 0.0).to(tl.float32)


@triton.jit
def _bwd_partial_kernel(go_ptr, x_ptr, v_ptr, stats_ptr, partial_ptr, n, chunk, n_chunks,
                        BLOCK: tl.constexpr):
    g = tl.program_id(0)
    c = tl.program_id(1)
    row = g.to(tl.int64) * n
    shift = tl.load(stats_ptr + g * 5 + 0)
    scale = tl.load(stats_ptr + g * 5 + 1)
    lo = tl.load(stats_ptr + g * 5 + 2)
    hi = tl.load(stats_ptr + g * 5 + 3)
    s_g = tl.zeros((BLOCK,), dtype=tl.float32)
    s_gy = tl.zeros((BLOCK,), dtype=tl.float32)
    s_sign = tl.zeros((BLOCK,), dtype=tl.float32)
    n_lo = tl.zeros((BLOCK,), dtype=tl.float32)
    n_hi = tl.zeros((BLOCK,), dtype=tl.float32)
    start = c.to(tl.int64) * chunk
    for s in range(0, chunk, BLOCK):
        offs = start + s + tl.arange(0, BLOCK)
        x, use = _load_row_block(x_ptr, v_ptr, row, offs, n)
        gi = tl.where(use, tl.load(go_ptr + row + offs, mask=offs < n, other=0.0).to(tl.float32), 0.0)
        s_g += gi
        s_gy += gi * (0.5 * (x - shift) / scale)
        s_sign += tl.where(use, _sign(x - shift), 0.0)
        n_lo += (use & (x == lo)).to(tl.float32)
        n_hi += (use & (x == hi)).to(tl.float32)
    base = partial_ptr + (g * n_chunks + c) * 5
    tl.store(base + 0, tl.sum(s_g, axis=0))
    tl.store(base + 1, tl.sum(s_gy, axis=0))
    tl.store(base + 2, tl.sum(s_sign, axis=0))
    tl.store(base + 3, tl.sum(n_lo, axis=0))
    tl.store(base + 4, tl.sum(n_hi, axis=0))


@triton.jit
def _bwd_apply_kernel(go_ptr, gs_ptr, x_ptr, v_ptr, stats_ptr, partial_ptr, gx_ptr, n, chunk,
                      n_chunks, BLOCK: tl.constexpr, CHUNKS: tl.constexpr):
    g = tl.program_id(0)
    c = tl.program_id(1)
    row = g.to(tl.int64) * n
    shift = tl.load(stats_ptr + g * 5 + 0)
    scale = tl.load(stats_ptr + g * 5 + 1)
    lo = tl.load(stats_ptr + g * 5 + 2)
    hi = tl.load(stats_ptr + g * 5 + 3)
    count = tl.load(stats_ptr + g * 5 + 4)
    ok = (count > 0.0).to(tl.float32)  # 0 for a degenerate group: zero gradient
    cs = tl.arange(0, CHUNKS)
    pbase = partial_ptr + (g * n_chunks + cs) * 5
    pm = cs < n_chunks
    sum_g = tl.sum(tl.load(pbase + 0, mask=pm, other=0.0), axis=0)
    sum_gy = tl.sum(tl.load(pbase + 1, mask=pm, other=0.0), axis=0)
    sum_sign = tl.sum(tl.load(pbase + 2, mask=pm, other=0.0), axis=0)
    cnt_lo = tl.maximum(tl.sum(tl.load(pbase + 3, mask=pm, other=0.0), axis=0), 1.0)
    cnt_hi = tl.maximum(tl.sum(tl.load(pbase + 4, mask=pm, other=0.0), axis=0), 1.0)
    countf = tl.maximum(count, 1.0)
    grad_scale = tl.load(gs_ptr + g * 5 + 1) - sum_gy / scale
    grad_shift = tl.load(gs_ptr + g * 5 + 0) - 0.5 * sum_g / scale - grad_scale * sum_sign / countf
    w_lo = 0.5 * grad_shift / cnt_lo
    w_hi = 0.5 * grad_shift / cnt_hi
    start = c.to(tl.int64) * chunk
    for s in range(0, chunk, BLOCK):
        offs = start + s + tl.arange(0, BLOCK)
        inb = offs < n
        x, use = _load_row_block(x_ptr, v_ptr, row, offs, n)
        gi = tl.load(go_ptr + row + offs, mask=inb, other=0.0).to(tl.float32)
        r = gi * (0.5 / scale) + (grad_scale / countf) * _sign(x - shift)
        r += tl.where(x == lo, w_lo, 0.0) + tl.where(x == hi, w_hi, 0.0)
        r = tl.where(use, r * ok, 0.0)
        tl.store(gx_ptr + row + offs, r.to(gx_ptr.dtype.element_ty), mask=inb)


def normalize_disparity_backward(grad_out: torch.Tensor, grad_stats: torch.Tensor,
                                 values: torch.Tensor, valid: torch.Tensor, stats: torch.Tensor,
                                 grad_values: torch.Tensor) -> None:
    """Gradient w.r.t. values (G, N) given grad_out (G, N) and grad_stats (G, 5) float32."""
    groups, n = values.shape
    if groups == 0:
        return
    block, chunk, n_chunks = _launch_geometry(n)
    partial = torch.empty((groups, n_chunks, 5), dtype=torch.float32, device=values.device)
    _bwd_partial_kernel[(groups, n_chunks)](grad_out, values, valid, stats, partial, n, chunk,
                                            n_chunks, BLOCK=block)
    _bwd_apply_kernel[(groups, n_chunks)](grad_out, grad_stats, values, valid, stats, partial,
                                          grad_values, n, chunk, n_chunks, BLOCK=block,
                                          CHUNKS=triton.next_power_of_2(n_chunks))


__all__ = ["depth_to_disparity", "normalize_disparity", "normalize_disparity_backward"]
