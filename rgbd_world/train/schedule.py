"""Learning-rate schedule: linear warmup, then cosine decay to ``min_lr_ratio`` of the peak."""
from __future__ import annotations

import math

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """Multiplier (step + 1) / warmup during warmup, then cosine from 1 to ``min_lr_ratio``."""
    if total_steps <= 0 or warmup_steps < 0 or not 0 <= min_lr_ratio <= 1:
        raise ValueError(f"need total_steps > 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1; got "
                         f"{total_steps}, {warmup_steps}, {min_lr_ratio}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
