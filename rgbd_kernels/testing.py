"""Parity helpers shared by tests and benchmarks.

* :func:`rel_error` -- ``||out - ref|| / ||ref||`` in float64 (and :func:`max_abs_error`).
* :data:`TOLERANCES` -- per-dtype relative-error budgets (GUIDE §4).
* :func:`assert_parity` -- compare a fast path against the reference, NaN/inf-aware.
* :func:`poisoned_outputs` -- NaN-fill every output buffer the ops allocate, so an element a
  kernel forgets to write fails the comparison.
* :func:`noncontiguous` -- the same values as a strided view into a larger tensor.
"""
from __future__ import annotations

import torch

from ._buffers import poisoned as poisoned_outputs

__all__ = ["TOLERANCES", "TF32_TOLERANCE", "FP8_TOLERANCE", "tolerance", "rel_error",
           "max_abs_error", "assert_parity", "poisoned_outputs", "noncontiguous"]

TOLERANCES = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 2e-2, torch.float16: 5e-3}
TF32_TOLERANCE = 5e-3
FP8_TOLERANCE = 6e-2


def tolerance(dtype: torch.dtype) -> float:
    """Relative-error budget for results computed from inputs of ``dtype``."""
    if dtype not in TOLERANCES:
        raise ValueError(f"no parity tolerance for dtype {dtype}")
    return TOLERANCES[dtype]


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref||_2 / ||ref||_2 in float64 over finite reference entries (0 if both are 0)."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    finite = torch.isfinite(ref64)
    diff = torch.linalg.vector_norm((out64 - ref64)[finite]).item()
    norm = torch.linalg.vector_norm(ref64[finite]).item()
    if norm == 0.0:
        return diff
    return diff / norm


def max_abs_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    finite = torch.isfinite(ref64)
    if not finite.any():
        return 0.0
    return (out64 - ref64)[finite].abs().max().item()


def assert_parity(out: torch.Tensor, ref: torch.Tensor, *, dtype: torch.dtype | None = None,
                  rtol: float | None = None, name: str = "output") -> float:
    """Assert ``out`` matches ``ref``: same shape, same non-finite pattern, rel_error <= rtol.

    ``rtol`` defaults to :func:`tolerance` of ``dtype`` (default: ``out.dtype``). Booleans and
    integers must match exactly. Returns the measured relative error.
    """
    if out.shape != ref.shape:
        raise AssertionError(f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    if not out.is_floating_point():
        mismatch = (out.cpu() != ref.cpu()).sum().item()
        if mismatch:
            raise AssertionError(f"{name}: {mismatch} of {out.numel()} elements differ")
        return 0.0
    o, r = out.detach().cpu(), ref.detach().cpu()
    bad_pattern = (torch.isnan(o) != torch.isnan(r)) | (torch.isinf(o) != torch.isinf(r))
    if bad_pattern.any():
        idx = bad_pattern.nonzero()[0].tolist()
        raise AssertionError(
            f"{name}: non-finite pattern differs at {int(bad_pattern.sum())} elements, first at "
            f"{idx}: got {o[tuple(idx)].item()}, reference {r[tuple(idx)].item()} "
            "(NaN where the reference is finite usually means an unwritten output)")
    rtol = tolerance(dtype or out.dtype) if rtol is None else rtol
    err = rel_error(o, r)
    if not err <= rtol:
        raise AssertionError(f"{name}: relative error {err:.3e} > {rtol:.1e} "
                             f"(max abs error {max_abs_error(o, r):.3e})")
    return err


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as a non-contiguous view: every other element of a 2x wider last dim."""
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    wide.fill_(float("nan") if t.is_floating_point() else 0)
    view = wide[..., ::2]
    view.copy_(t)
    assert not view.is_contiguous() or t.numel() <= 1
    return view
