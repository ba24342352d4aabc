"""Triton implicit-GEMM kernels for the causal 3D convolution (GPU; CPU under TRITON_INTERPRET=1).

Every tensor is addressed through its five logical (b, c, t, h, w) strides, so NCDHW,
channels-last (NDHWC) and strided views all run without a copy; NDHWC is the fast layout (the
channel dim is the GEMM's K or N dim and is contiguous there).

The convolution reads a *virtual* sequence of ``TH + T`` frames: ``TH`` head frames followed by
the ``T`` frames of ``x``. The head is never materialized; it is resolved in the address
computation (``HEAD``):

* ``HEAD_ZEROS`` (0): head frames are zeros (mask),
* ``HEAD_REPLICATE`` (1): head frames are copies of frame 0 of ``x`` (time index clamped to 0),
* ``HEAD_CACHE`` (2): head frames come from the ``cache`` tensor (streaming).

Spatial zero padding is a mask as well. Kernels (fp32 accumulation; fp32 inputs use tf32 dots on
GPUs unless ``torch.backends.cudnn.conv.fp32_precision == "ieee"``; the CPU interpreter is exact):

* ``_fwd_kernel``: y = act(conv(seq, w) + bias); rows M = B*TO*HO*WO output positions,
  N = C_out, K = taps * C_in. Optionally stores the pre-activation z (SiLU backward input).
* ``_dgrad_kernel``: gradient of the virtual sequence; rows are (b, frame, h, w) input positions,
  N = C_in, K = taps * C_out, each tap's output position found by inverting the stride (masked
  when it does not divide). Head rows go to the cache gradient (``HEAD_CACHE``); with
  ``HEAD_REPLICATE`` the rows of frame 0 also sum the head positions (frame 0 was copied there).
  The SiLU backward ``g * silu'(z)`` is recomputed from z while loading.
* ``_wgrad_kernel``: per tap, dW[co, ci] = sum_rows g[row, co] * seq[row', ci]; rows split over a
  second grid axis into fp32 partials that the launcher sums in a fixed order (deterministic, no
  atomics). The bias gradient is the row sum of g, accumulated by the programs of tap 0.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..backend import triton_interpret

HEAD_ZEROS, HEAD_REPLICATE, HEAD_CACHE = 0, 1, 2
_GROUP_M = 8


def _dot_precision(dtype: torch.dtype) -> str:
    """tf32 for fp32 inputs (like cuDNN's default) unless cuDNN conv is set to "ieee"."""
    if dtype != torch.float32:
        return "tf32"  # Triton's default; it only affects fp32 operands
    conv = getattr(torch.backends.cudnn, "conv", None)
    return "ieee" if getattr(conv, "fp32_precision", "tf32") == "ieee" else "tf32"


def _upcast(dtype: torch.dtype) -> bool:
    return dtype == torch.bfloat16 and triton_interpret()


def _configs(kind: str):
    """One config under the interpreter (large row tiles: its cost is per program and op), a
    handful to autotune on GPUs."""
    if triton_interpret():
        if kind == "wgrad":
            return [triton.Config({"BM": 32, "BN": 32, "BK": 512}, num_warps=4)]
        return [triton.Config({"BM": 512, "BN": 32, "BK": 32}, num_warps=4)]
    return [triton.Config({"BM": bm, "BN": bn, "BK": bk}, num_warps=warps, num_stages=stages)
            for bm, bn, bk, warps, stages in _GPU_CONFIGS[kind]]


# (BM, BN, BK, num_warps, num_stages) per kernel. Each one compiles for sm_80, sm_90 and sm_100
# in fp32, fp16 and bf16 within the shared-memory limit and without register spills (checked
# ahead of time by tests/kernels/test_aot_compile.py; benchmarks/results/aot-sm90.json has the
# static profile). Tiles that spilled or overflowed shared memory there were removed: 128x256
# (all kernels), 128x128x64 (dgrad, and wgrad: 228 KiB of shared memory in fp32 on sm_90), for
# dgrad and wgrad the 4-warp tiles of more than 64x64 and the 4-stage pipelines, and dgrad's
# 128-row tiles (its strided and no-SiLU variants spill on sm_100 in fp32, or on sm_80 in halves
# with 2 stages).
_GPU_CONFIGS = {
    "fwd": [(128, 128, 32, 8, 3), (128, 128, 64, 8, 3), (128, 64, 32, 4, 4), (64, 128, 32, 8, 3),
            (128, 64, 32, 8, 3), (64, 64, 32, 4, 4), (64, 64, 64, 4, 3), (32, 64, 32, 4, 4)],
    "dgrad": [(64, 128, 32, 8, 3), (64, 64, 32, 8, 2)],
    "wgrad": [(128, 128, 32, 8, 2), (128, 64, 32, 8, 3), (64, 128, 32, 8, 3), (64, 64, 32, 4, 2)],
}


_KEY = ["CI", "CO", "M_CLASS", "KT", "KH", "KW", "ST", "SH", "SW"]


def _size_class(n: int) -> int:
    return max(0, int(n).bit_length() - 1)  # log2 bucket: autotune once per size class


@triton.jit
def _mma(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc += a @ b (fp32 accumulation). UPCAST: feed fp32 copies (the CPU interpreter's bf16
    dot is wrong in triton 3.9; bf16 values are exact in fp32, so the result is the same)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _silu_grad(g, z):
    s = tl.sigmoid(z)
    return g * (s * (1.0 + z * (1.0 - s)))


@triton.jit
def _tile_order(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """Grouped ordering of (m, n) tiles so consecutive programs share A rows in L2."""
    group = GROUP_M * num_n
    gid = pid // group
    first_m = gid * GROUP_M
    gsize = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % gsize
    pid_n = (pid % group) // gsize
    return pid_m, pid_n


@triton.jit
def _seq_rows(b, p, hh, ww, ok, TH, T, H, W, sxb, sxt, sxh, sxw, scb, sct, sch, scw,
              HEAD: tl.constexpr):
    """Row offsets (int64) and masks into x and the cache for virtual frame p at (hh, ww)."""
    sp = ok & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
    hc = tl.where(sp, hh, 0).to(tl.int64)
    wc = tl.where(sp, ww, 0).to(tl.int64)
    t = p - TH
    if HEAD == 1:
        x_ok = sp
    else:
        x_ok = sp & (t >= 0)
    tc = tl.where(x_ok & (t > 0), t, 0).to(tl.int64)
    b64 = b.to(tl.int64)
    x_off = b64 * sxb + tc * sxt + hc * sxh + wc * sxw
    c_ok = sp & (p < TH) & (p >= 0)
    pc = tl.where(c_ok, p, 0).to(tl.int64)
    c_off = b64 * scb + pc * sct + hc * sch + wc * scw
    return x_off, x_ok, c_off, c_ok


@triton.jit
def _fwd_kernel(x_ptr, c_ptr, w_ptr, bias_ptr, y_ptr, z_ptr,
                B, CI, CO, T, H, W, TO, HO, WO, TH, PH, PW,
                sxb, sxc, sxt, sxh, sxw, scb, scc, sct, sch, scw,
                swo, swi, swt, swh, sww,
                syb, syc, syt, syh, syw, szb, szc, szt, szh, szw, M_CLASS,
                KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                ST: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                DT: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
                HEAD: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
                SAVE_PRE: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    M = B * TO * HO * WO
    pid_m, pid_n = _tile_order(tl.program_id(0), tl.cdiv(M, BM), tl.cdiv(CO, BN), GROUP_M)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    row_ok = rm < M
    n_ok = rn < CO
    ow = rm % WO
    r = rm // WO
    oh = r % HO
    r = r // HO
    j = r % TO
    b = r // TO
    rn64 = rn.to(tl.int64)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for tap in range(KT * KH * KW):
        i = tap // (KH * KW)
        kh = (tap // KW) % KH
        kw = tap % KW
        p = j * ST + i * DT
        hh = oh * SH - PH + kh * DH
        ww = ow * SW - PW + kw * DW
        x_off, x_ok, c_off, c_ok = _seq_rows(b, p, hh, ww, row_ok, TH, T, H, W, sxb, sxt, sxh,
                                             sxw, scb, sct, sch, scw, HEAD)
        if HEAD == 2:
            live = x_ok | c_ok
        else:
            live = x_ok
        if tl.max(live.to(tl.int32), axis=0) > 0:  # skip taps that only read padding
            w_tap = i.to(tl.int64) * swt + kh * swh + kw * sww
            for k0 in range(0, CI, BK):
                ci = k0 + tl.arange(0, BK)
                ci_ok = ci < CI
                ci64 = ci.to(tl.int64)
                a = tl.load(x_ptr + x_off[:, None] + ci64[None, :] * sxc,
                            mask=x_ok[:, None] & ci_ok[None, :], other=0.0)
                if HEAD == 2:
                    a += tl.load(c_ptr + c_off[:, None] + ci64[None, :] * scc,
                                 mask=c_ok[:, None] & ci_ok[None, :], other=0.0)
                wt = tl.load(w_ptr + w_tap + ci64[:, None] * swi + rn64[None, :] * swo,
                             mask=ci_ok[:, None] & n_ok[None, :], other=0.0)
                acc = _mma(a, wt, acc, PRECISION, UPCAST)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    mask = row_ok[:, None] & n_ok[None, :]
    b64 = b.to(tl.int64)
    if SAVE_PRE:
        z_off = b64 * szb + j.to(tl.int64) * szt + oh.to(tl.int64) * szh + ow.to(tl.int64) * szw
        tl.store(z_ptr + z_off[:, None] + rn64[None, :] * szc,
                 acc.to(z_ptr.dtype.element_ty), mask=mask)
    if ACT:
        acc = acc * tl.sigmoid(acc)
    y_off = b64 * syb + j.to(tl.int64) * syt + oh.to(tl.int64) * syh + ow.to(tl.int64) * syw
    tl.store(y_ptr + y_off[:, None] + rn64[None, :] * syc, acc.to(y_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _dgrad_kernel(g_ptr, z_ptr, w_ptr, dx_ptr, dc_ptr,
                  B, CI, CO, T, H, W, TO, HO, WO, TH, P0, NP, PH, PW,
                  sgb, sgc, sgt, sgh, sgw, szb, szc, szt, szh, szw,
                  swo, swi, swt, swh, sww,
                  sxb, sxc, sxt, sxh, sxw, scb, scc, sct, sch, scw, M_CLASS,
                  KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                  ST: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                  DT: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
                  HEAD: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr,
                  UPCAST: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    M = B * NP * H * W
    pid_m, pid_n = _tile_order(tl.program_id(0), tl.cdiv(M, BM), tl.cdiv(CI, BN), GROUP_M)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    row_ok = rm < M
    n_ok = rn < CI
    w_ = rm % W
    r = rm // W
    h_ = r % H
    r = r // H
    p = r % NP + P0  # virtual frame of this row
    b = r // NP
    b64 = b.to(tl.int64)
    rn64 = rn.to(tl.int64)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    # With a replicated head, frame 0 (p == TH) was also read at head positions 0..TH-1.
    n_extra = 1
    if HEAD == 1:
        has0 = tl.max((row_ok & (p == TH)).to(tl.int32), axis=0)
        n_extra = 1 + has0 * TH
    for e in range(0, n_extra):
        pe = tl.where(e == 0, p, e - 1)
        ok_e = row_ok & ((e == 0) | (p == TH))
        for tap in range(KT * KH * KW):
            i = tap // (KH * KW)
            kh = (tap // KW) % KH
            kw = tap % KW
            jn = pe - i * DT
            hn = h_ + PH - kh * DH
            wn = w_ + PW - kw * DW
            jq = jn // ST
            hq = hn // SH
            wq = wn // SW
            ok = ok_e & (jn >= 0) & (hn >= 0) & (wn >= 0)
            ok = ok & (jq * ST == jn) & (hq * SH == hn) & (wq * SW == wn)
            ok = ok & (jq < TO) & (hq < HO) & (wq < WO)
            if tl.max(ok.to(tl.int32), axis=0) > 0:
                jc = tl.where(ok, jq, 0).to(tl.int64)
                hc = tl.where(ok, hq, 0).to(tl.int64)
                wc = tl.where(ok, wq, 0).to(tl.int64)
                g_off = b64 * sgb + jc * sgt + hc * sgh + wc * sgw
                z_off = b64 * szb + jc * szt + hc * szh + wc * szw
                w_tap = i.to(tl.int64) * swt + kh * swh + kw * sww
                for k0 in range(0, CO, BK):
                    co = k0 + tl.arange(0, BK)
                    co_ok = co < CO
                    co64 = co.to(tl.int64)
                    m2 = ok[:, None] & co_ok[None, :]
                    g = tl.load(g_ptr + g_off[:, None] + co64[None, :] * sgc, mask=m2, other=0.0)
                    if ACT:
                        z = tl.load(z_ptr + z_off[:, None] + co64[None, :] * szc, mask=m2,
                                    other=0.0)
                        g = _silu_grad(g.to(tl.float32), z.to(tl.float32))
                        g = g.to(w_ptr.dtype.element_ty)
                    wt = tl.load(w_ptr + w_tap + co64[:, None] * swo + rn64[None, :] * swi,
                                 mask=co_ok[:, None] & n_ok[None, :], other=0.0)
                    acc = _mma(g, wt, acc, PRECISION, UPCAST)
    is_x = p >= TH
    tx = tl.where(is_x, p - TH, 0).to(tl.int64)
    hw_x = h_.to(tl.int64) * sxh + w_.to(tl.int64) * sxw
    mask = row_ok[:, None] & n_ok[None, :]
    tl.store(dx_ptr + (b64 * sxb + tx * sxt + hw_x)[:, None] + rn64[None, :] * sxc,
             acc.to(dx_ptr.dtype.element_ty), mask=mask & is_x[:, None])
    if HEAD == 2:
        pc = tl.where(is_x, 0, p).to(tl.int64)
        c_off = b64 * scb + pc * sct + h_.to(tl.int64) * sch + w_.to(tl.int64) * scw
        tl.store(dc_ptr + c_off[:, None] + rn64[None, :] * scc,
                 acc.to(dc_ptr.dtype.element_ty), mask=mask & (~is_x)[:, None])


@triton.jit
def _wgrad_kernel(g_ptr, z_ptr, x_ptr, c_ptr, part_ptr, bpart_ptr,
                  B, CI, CO, T, H, W, TO, HO, WO, TH, PH, PW, ROWS_PER_SPLIT,
                  sgb, sgc, sgt, sgh, sgw, szb, szc, szt, szh, szw,
                  sxb, sxc, sxt, sxh, sxw, scb, scc, sct, sch, scw, M_CLASS,
                  KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                  ST: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                  DT: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
                  HEAD: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
                  PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """part[s, tap, co, ci] = sum over rows of split s of g[row, co] * seq[row at tap, ci]."""
    num_m = tl.cdiv(CO, BM)
    num_n = tl.cdiv(CI, BN)
    pid = tl.program_id(0)
    split = tl.program_id(1)
    tap = pid // (num_m * num_n)
    rem = pid % (num_m * num_n)
    pid_m = rem // num_n
    pid_n = rem % num_n
    i = tap // (KH * KW)
    kh = (tap // KW) % KH
    kw = tap % KW
    co = pid_m * BM + tl.arange(0, BM)
    ci = pid_n * BN + tl.arange(0, BN)
    co_ok = co < CO
    ci_ok = ci < CI
    co64 = co.to(tl.int64)
    ci64 = ci.to(tl.int64)
    K = B * TO * HO * WO
    k_start = split * ROWS_PER_SPLIT
    k_end = tl.minimum(K, k_start + ROWS_PER_SPLIT)
    do_bias = (tap == 0) & (pid_n == 0)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    bacc = tl.zeros((BM,), dtype=tl.float32)
    for k0 in range(k_start, k_end, BK):
        rk = k0 + tl.arange(0, BK)
        r_ok = rk < k_end
        ow = rk % WO
        r = rk // WO
        oh = r % HO
        r = r // HO
        j = r % TO
        b = r // TO
        b64 = b.to(tl.int64)
        jo = j.to(tl.int64)
        oh64 = oh.to(tl.int64)
        ow64 = ow.to(tl.int64)
        m2 = co_ok[:, None] & r_ok[None, :]
        g_rows = b64 * sgb + jo * sgt + oh64 * sgh + ow64 * sgw
        g = tl.load(g_ptr + co64[:, None] * sgc + g_rows[None, :], mask=m2, other=0.0)
        if ACT:
            z = tl.load(z_ptr + co64[:, None] * szc
                        + (b64 * szb + jo * szt + oh64 * szh + ow64 * szw)[None, :],
                        mask=m2, other=0.0)
            g32 = _silu_grad(g.to(tl.float32), z.to(tl.float32))
            g = g32.to(x_ptr.dtype.element_ty)
        else:
            g32 = g.to(tl.float32)
        if HAS_BIAS:
            bacc += tl.where(do_bias, tl.sum(g32, axis=1), 0.0)
        p = j * ST + i * DT
        hh = oh * SH - PH + kh * DH
        ww = ow * SW - PW + kw * DW
        x_off, x_ok, c_off, c_ok = _seq_rows(b, p, hh, ww, r_ok, TH, T, H, W, sxb, sxt, sxh, sxw,
                                             scb, sct, sch, scw, HEAD)
        a = tl.load(x_ptr + x_off[:, None] + ci64[None, :] * sxc,
                    mask=x_ok[:, None] & ci_ok[None, :], other=0.0)
        if HEAD == 2:
            a += tl.load(c_ptr + c_off[:, None] + ci64[None, :] * scc,
                         mask=c_ok[:, None] & ci_ok[None, :], other=0.0)
        acc = _mma(g, a, acc, PRECISION, UPCAST)
    taps = KT * KH * KW
    base = (split.to(tl.int64) * taps + tap) * CO * CI
    tl.store(part_ptr + base + co64[:, None] * CI + ci64[None, :], acc,
             mask=co_ok[:, None] & ci_ok[None, :])
    if HAS_BIAS:
        if do_bias:
            tl.store(bpart_ptr + split.to(tl.int64) * CO + co64, bacc, mask=co_ok)


_fwd = triton.autotune(configs=_configs("fwd"), key=_KEY)(_fwd_kernel)
_dgrad = triton.autotune(configs=_configs("dgrad"), key=_KEY)(_dgrad_kernel)
_wgrad = triton.autotune(configs=_configs("wgrad"), key=_KEY)(_wgrad_kernel)


# ----------------------------------------------------------------------------- launchers

def _strides(t: torch.Tensor | None) -> tuple[int, ...]:
    return (0, 0, 0, 0, 0) if t is None else tuple(t.stride())


def _geometry(kernel, stride, dilation):
    kt, kh, kw = kernel
    return dict(KT=kt, KH=kh, KW=kw, ST=stride[0], SH=stride[1], SW=stride[2],
                DT=dilation[0], DH=dilation[1], DW=dilation[2])


def _weight_k_major(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, kT, kH, kW) view of a (kT, kH, kW, C_in, C_out) copy: C_out contiguous."""
    return weight.permute(2, 3, 4, 1, 0).contiguous().permute(4, 3, 0, 1, 2)


def _weight_n_major(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, kT, kH, kW) view of a (kT, kH, kW, C_out, C_in) copy: C_in contiguous."""
    return weight.permute(2, 3, 4, 0, 1).contiguous().permute(3, 4, 0, 1, 2)


def _check_rows(m: int) -> None:
    if m >= 2**31:
        raise ValueError(f"causal_conv3d (triton): {m} GEMM rows exceed the int32 row index; "
                         "split the batch")


def forward(x, weight, bias, cache, y, z, stride, padding, dilation, head, th,
            activation: bool) -> None:
    """Write y = act(conv + bias) for x (B, C_in, T, H, W), any strides; z (the pre-activation)
    too when it is given."""
    B, CI, T, H, W = x.shape
    _, CO, TO, HO, WO = y.shape
    M = B * TO * HO * WO
    if M == 0 or CO == 0:
        return
    _check_rows(M)
    w = _weight_k_major(weight)
    save_pre = z is not None
    grid = lambda meta: (triton.cdiv(M, meta["BM"]) * triton.cdiv(CO, meta["BN"]),)  # noqa: E731
    _fwd[grid](x, cache if cache is not None else x, w, bias if bias is not None else x, y,
               z if save_pre else y,
               B, CI, CO, T, H, W, TO, HO, WO, th, padding[0], padding[1],
               *x.stride(), *_strides(cache), *w.stride(), *y.stride(),
               *_strides(z),
               _size_class(M), **_geometry(weight.shape[2:], stride, dilation), HEAD=head,
               HAS_BIAS=bias is not None, ACT=activation, SAVE_PRE=save_pre,
               PRECISION=_dot_precision(x.dtype), UPCAST=_upcast(x.dtype), GROUP_M=_GROUP_M)


def dgrad(grad, z, weight, dx, dcache, stride, padding, dilation, head, th) -> None:
    """Write dx (B, C_in, T, H, W) and, with a cache head, dcache (B, C_in, TH, H, W).

    ``grad`` is the gradient of y; with ``z`` (SiLU pre-activation) it is multiplied by silu'(z).
    """
    B, CI, T, H, W = dx.shape
    _, CO, TO, HO, WO = grad.shape
    p0 = 0 if head == HEAD_CACHE else th
    n_frames = th + T - p0
    M = B * n_frames * H * W
    if M == 0 or CI == 0:
        return
    _check_rows(M)
    w = _weight_n_major(weight)
    grid = lambda meta: (triton.cdiv(M, meta["BM"]) * triton.cdiv(CI, meta["BN"]),)  # noqa: E731
    _dgrad[grid](grad, z if z is not None else grad, w, dx, dcache if dcache is not None else dx,
                 B, CI, CO, T, H, W, TO, HO, WO, th, p0, n_frames, padding[0], padding[1],
                 *grad.stride(), *_strides(z), *w.stride(), *dx.stride(), *_strides(dcache),
                 _size_class(M), **_geometry(weight.shape[2:], stride, dilation), HEAD=head,
                 ACT=z is not None, PRECISION=_dot_precision(dx.dtype),
                 UPCAST=_upcast(dx.dtype), GROUP_M=_GROUP_M)


def _num_splits(tiles: int, rows: int) -> int:
    if triton_interpret():
        return 1
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    want = max(1, math.ceil(2 * sms / max(tiles, 1)))
    return max(1, min(want, rows // 2048, 64))


def wgrad(grad, z, x, cache, weight_shape, has_bias: bool, stride, padding, dilation, head, th,
          out_dtype: torch.dtype, alloc) -> tuple[torch.Tensor, torch.Tensor | None]:
    """dW (C_out, C_in, kT, kH, kW) in ``out_dtype`` and db (C_out,) (None without bias).

    ``alloc(shape, dtype)`` allocates (poisonable) buffers. Partials are fp32, summed here.
    """
    B, CI, T, H, W = x.shape
    _, CO, TO, HO, WO = grad.shape
    kt, kh, kw = weight_shape[2:]
    taps = kt * kh * kw
    K = B * TO * HO * WO
    _check_rows(max(K, 1))
    nominal = taps * triton.cdiv(CO, 128) * triton.cdiv(CI, 128)
    splits = _num_splits(nominal, K)
    rows_per_split = triton.cdiv(triton.cdiv(max(K, 1), splits), 256) * 256
    splits = triton.cdiv(max(K, 1), rows_per_split)
    part = alloc((splits, taps, CO, CI), torch.float32)
    bpart = alloc((splits, CO), torch.float32) if has_bias else None
    def grid(meta):
        return (taps * triton.cdiv(CO, meta["BM"]) * triton.cdiv(CI, meta["BN"]), splits)

    _wgrad[grid](grad, z if z is not None else grad, x, cache if cache is not None else x, part,
                 bpart if bpart is not None else part,
                 B, CI, CO, T, H, W, TO, HO, WO, th, padding[0], padding[1], rows_per_split,
                 *grad.stride(), *_strides(z), *x.stride(), *_strides(cache), _size_class(K),
                 **_geometry((kt, kh, kw), stride, dilation), HEAD=head, HAS_BIAS=has_bias,
                 ACT=z is not None, PRECISION=_dot_precision(x.dtype),
                 UPCAST=_upcast(x.dtype))
    dw = part.sum(0) if splits > 1 else part[0]
    dw = dw.view(kt, kh, kw, CO, CI).permute(3, 4, 0, 1, 2).to(out_dtype).contiguous()
    db = None
    if has_bias:
        db = (bpart.sum(0) if splits > 1 else bpart[0]).to(out_dtype)
    return dw, db
