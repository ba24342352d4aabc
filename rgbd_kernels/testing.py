"""Parity helpers shared by tests and benchmarks.

* :func:`rel_error` -- ``||out - ref|| / ||ref||`` in float64 (and :func:`max_abs_error`).
* :data:`TOLERANCES` -- per-dtype relative-error budgets.
* :func:`assert_parity` -- compare a fast path against the reference, NaN/inf-aware.
* :func:`poisoned_outputs` -- NaN-fill every output buffer the ops allocate, so an element a
  kernel forgets to write fails the comparison.
* :func:`noncontiguous` -- the same values as a strided view into a larger tensor.
* :data:`EDGE_CASES` / :func:`edge_cases` -- the standard edge values every op's parity tests
  run through (NaN, inf, values near the dtype's max, subnormals, constants, signed zeros,
  and, by name, :data:`RANGE_EDGE_CASES`: the top of the range where a + b overflows,
  magnitudes whose squares overflow):
  ``for name, x in edge_cases(x): assert_parity(op(x), reference(x), ...)``.
* :func:`range_endpoints` -- the ends of a value range and their nearest inner neighbours.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch

from ._buffers import poisoned as poisoned_outputs

__all__ = ["TOLERANCES", "TF32_TOLERANCE", "FP8_TOLERANCE", "tolerance", "rel_error",
           "max_abs_error", "assert_parity", "poisoned_outputs", "noncontiguous", "EDGE_CASES",
           "RANGE_EDGE_CASES", "edge_cases", "range_endpoints"]

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


# ----------------------------------------------------------------------------- edge values

EdgeCase = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _index(t: torch.Tensor, g: torch.Generator) -> int:
    return int(torch.randint(t.numel(), (1,), generator=g))


def _set_one(value: float) -> EdgeCase:
    def make(t, g):
        out = t.clone()
        out.view(-1)[_index(t, g)] = value
        return out
    return make


def _nan_row(t, g):
    """One whole row of the last dim NaN (e.g. an attention query row)."""
    out = t.clone()
    rows = out.view(-1, t.shape[-1])
    rows[int(torch.randint(rows.shape[0], (1,), generator=g))] = float("nan")
    return out


def _scaled_magnitudes(lo_of: Callable[[torch.dtype], float],
                       hi_of: Callable[[torch.dtype], float]) -> EdgeCase:
    """t's signs with magnitudes drawn log-uniformly in [lo, hi] of t's dtype."""
    def make(t, g):
        lo, hi = lo_of(t.dtype), hi_of(t.dtype)
        u = torch.rand(t.shape, generator=g, dtype=torch.float64)
        mag = torch.exp(torch.log(torch.tensor(lo, dtype=torch.float64)) * (1 - u)
                        + torch.log(torch.tensor(hi, dtype=torch.float64)) * u)
        sign = torch.where(t.detach().cpu().double() < 0, -1.0, 1.0)
        return (sign * mag).to(t.dtype).to(t.device)
    return make


def _constant(t, g):
    return t.detach().reshape(-1)[:1].expand(t.shape).clone()


def _signed_zeros(t, g):
    """About a third of the elements +0.0, a third -0.0."""
    u = torch.rand(t.shape, generator=g).to(t.device)
    out = t.clone()
    out[u < 1 / 3] = 0.0
    out[(u >= 1 / 3) & (u < 2 / 3)] = -0.0
    return out


EDGE_CASES: dict[str, EdgeCase] = {
    "nan_element": _set_one(float("nan")),
    "nan_row": _nan_row,
    "pos_inf": _set_one(float("inf")),
    "neg_inf": _set_one(float("-inf")),
    # near the largest finite value: sums and products overflow here
    "near_max": _scaled_magnitudes(lambda d: torch.finfo(d).max / 8,
                                   lambda d: torch.finfo(d).max / 2),
    # below the smallest normal value: divisions and reciprocals overflow here
    "subnormal": _scaled_magnitudes(lambda d: torch.finfo(d).smallest_normal / 64,
                                    lambda d: torch.finfo(d).smallest_normal / 2),
    "constant": _constant,
    "signed_zeros": _signed_zeros,
}
"""Standard edge-value cases: name -> ``make(t, generator)`` returning a copy of the random float
tensor ``t`` with edge values put in (same shape, dtype, device). Ops extend this dict with a
case any op should face; an op skips a case that does not apply to it by name."""

RANGE_EDGE_CASES: dict[str, EdgeCase] = {
    # the top of the range: the sum of two values (a midpoint lo + hi) overflows here
    "top_of_range": _scaled_magnitudes(lambda d: torch.finfo(d).max / 2,
                                       lambda d: torch.finfo(d).max),
    # far above 1 but far below the max: squares and dot products (normal equations) overflow
    "squares_overflow": _scaled_magnitudes(lambda d: torch.finfo(d).max ** 0.5 * 2,
                                           lambda d: torch.finfo(d).max ** 0.5 * 64),
}
"""Range edge cases, chosen by name (``edge_cases(t, names=[...])``): not yet in the default set,
because the attention, causal_conv3d and flow_matching paths do not yet agree with their
references there (overflow to inf on one side only)."""


def edge_cases(t: torch.Tensor, *, names: Iterable[str] | None = None,
               skip: Iterable[str] = (), seed: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, input)`` for each standard edge case (all, or ``names``; minus ``skip``) applied
    to the float tensor ``t``; reproducible for a given ``seed``."""
    if not t.is_floating_point():
        raise ValueError(f"edge cases need a floating tensor, got dtype {t.dtype}")
    known = {**EDGE_CASES, **RANGE_EDGE_CASES}
    chosen = list(EDGE_CASES) if names is None else list(names)
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise ValueError(f"unknown edge cases {unknown}; known: {list(known)}")
    skipped = set(skip)
    for name in chosen:
        if name not in skipped:
            yield name, known[name](t.detach(), torch.Generator().manual_seed(seed))


def range_endpoints(lo: float, hi: float, dtype: torch.dtype) -> torch.Tensor:
    """lo, hi, their nearest neighbours inside [lo, hi] in ``dtype``, and the midpoint: the
    values where a formula mapping [lo, hi] onto itself most easily rounds outside it."""
    ends = torch.tensor([lo, hi], dtype=dtype)
    inner = torch.nextafter(ends, torch.tensor([hi, lo], dtype=dtype))
    mid = ((ends[0].double() + ends[1].double()) / 2).to(dtype).reshape(1)
    return torch.cat([ends, inner, mid])
