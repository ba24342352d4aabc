"""Output allocation for every op. Tests switch on NaN poisoning so an unwritten element fails.

Ops allocate their outputs here (never with bare ``torch.empty``) and hand them to the kernel.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

_poison = False


def _fill(t: torch.Tensor) -> torch.Tensor:
    if not _poison or t.numel() == 0:
        return t
    if t.is_floating_point() or t.is_complex():
        return t.fill_(float("nan"))
    if t.dtype == torch.bool:
        return t.fill_(True)
    return t.fill_(-1 if t.dtype.is_signed else torch.iinfo(t.dtype).max)


def empty(shape, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return _fill(torch.empty(shape, dtype=dtype, device=device))


def empty_like(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return _fill(torch.empty(t.shape, dtype=dtype or t.dtype, device=t.device))


@contextlib.contextmanager
def poisoned() -> Iterator[None]:
    """Fill every output buffer the ops allocate with NaN (bool: True, ints: -1) inside the block."""
    global _poison
    old, _poison = _poison, True
    try:
        yield
    finally:
        _poison = old


def poisoning() -> bool:
    return _poison
