"""Forward FLOPs of a model on an input, counted from its convolutions and linear layers.

Used for MFU when a model has no closed-form count (the tokenizer). Each multiply-add is 2
FLOPs: a convolution costs ``2 * out.numel() * C_in / groups * prod(kernel)``, a linear layer
``2 * out.numel() * in_features``. Attention score products and elementwise work are left out
(small next to the convolutions of a video tokenizer), so MFU from this count is a slight
underestimate.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from rgbd_kernels.nn import CausalConv3d


def _layer_flops(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, (CausalConv3d, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        weight = module.weight  # (C_out, C_in / groups, *kernel)
        return 2 * out.numel() * math.prod(weight.shape[1:])
    if isinstance(module, nn.Linear):
        return 2 * out.numel() * module.in_features
    return 0


@torch.no_grad()
def forward_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of ``model(x)``'s convolutions and linear layers (runs the forward once, on one
    sample, and scales by the batch size)."""
    total = 0

    def hook(module, args, out):
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += _layer_flops(module, out)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (CausalConv3d, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        model(x[:1])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total * x.shape[0]
