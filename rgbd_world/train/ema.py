"""Exponential moving average of the trainable weights (works on FSDP2 shards as well)."""
from __future__ import annotations

import torch
from torch import nn


def init_ema(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every trainable parameter, keyed by its name in ``model``."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def update_ema(ema: dict[str, torch.Tensor], model: nn.Module, decay: float, step: int) -> None:
    """ema <- d * ema + (1 - d) * param, with d = min(decay, (1 + step) / (10 + step))."""
    d = min(decay, (1 + step) / (10 + step))
    params = dict(model.named_parameters())
    for name, value in ema.items():
        value.lerp_(params[name].detach(), 1.0 - d)
