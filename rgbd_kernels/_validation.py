"""Argument checks shared by the public ops: errors name the argument and the value."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_float(name: str, t: object) -> torch.Tensor:
    """``t`` must be a real floating tensor; ValueError naming ``name`` and the dtype otherwise."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be a real floating tensor (float32, float16, bfloat16 or "
                         f"float64), got dtype {t.dtype}")
    return t
