"""Training losses of the RGBD tokenizer (stage 1).

* :func:`rgb_l1`: mean |x_hat - x| over the RGB channels.
* :func:`disparity_l1`: mean |d_hat - d| over valid pixels, both affine-normalised per frame
  (median 0, mean absolute deviation 0.5: ``rgbd_kernels.normalize_disparity``) so the loss
  ignores a global scale and shift of the predicted disparity.
* :func:`gradient_matching_loss`: MiDaS multi-scale gradient matching on the normalised
  disparity residual R = d_hat - d: at scales k = 0..3 (every 2^k-th pixel), the sum over valid
  neighbour pairs of |R_x| + |R_y| divided by the number of valid pixels at that scale, summed
  over scales (MiDaS' batch-based reduction). Sharpens depth boundaries.
* :func:`boundary_loss`: a depth-edge term on the disparity residual R = d_hat - d: at the
  target's edges (4-neighbour jumps above ``threshold`` in the disparity's units, widened by one
  pixel), the mean |R| plus the mean |R_x| + |R_y| over the neighbour pairs touching an edge.
  Gradient matching averages over every pixel, where edges are a few percent; this term averages
  over the edges alone, so a blurred boundary costs as much as a wrong plane.
* :func:`distillation_loss`: MSE(student latent[:, :C_teacher], teacher latent), where the
  teacher is the frozen RGB tokenizer encoding the RGB channels (keeps the latent space aligned
  with the RGB prior).
* :class:`PerceptualLoss`: only with a feature network the user supplies locally (an
  ``nn.Module`` or the path of a TorchScript file); nothing is ever downloaded.
* :class:`TokenizerLoss`: the weighted sum, weights in :class:`LossWeights`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from rgbd_kernels import normalize_disparity

__all__ = ["rgb_l1", "disparity_l1", "gradient_matching_loss", "boundary_loss", "distillation_loss",
           "PerceptualLoss", "LossWeights", "TokenizerLoss"]


def rgb_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (e.g. over (B, 3, T, H, W) RGB in [-1, 1])."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    return (pred.float() - target.float()).abs().mean()


def _normalized_pair(pred, target, valid):
    """Per-frame normalised (pred, target) over the valid pixels; (..., H, W) inputs."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target disparity must have the same shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    if valid is None:
        valid = torch.isfinite(target)
    elif valid.shape != target.shape or valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor of shape {tuple(target.shape)}, got "
                         f"{valid.dtype} {tuple(valid.shape)}")
    valid = valid & torch.isfinite(target) & torch.isfinite(pred)
    p = normalize_disparity(torch.where(valid, pred, 0.0), valid)[0]
    t = normalize_disparity(torch.where(valid, target, 0.0), valid)[0]
    return p, t, valid


def disparity_l1(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
                 normalize: bool = True) -> torch.Tensor:
    """L1 between disparities (..., H, W) over valid pixels (default: finite target), after
    per-frame affine normalisation of both (``normalize=False``: as given). 0 with no valid pixel.
    """
    if normalize:
        p, t, valid = _normalized_pair(pred, target, valid)
    else:
        valid = torch.isfinite(target) if valid is None else valid & torch.isfinite(target)
        p, t = pred.float(), torch.where(valid, target.float(), 0.0)
    n = valid.sum()
    return torch.where(valid, (p - t).abs(), 0.0).sum() / n.clamp_min(1)


def gradient_matching_loss(pred: torch.Tensor, target: torch.Tensor,
                           valid: torch.Tensor | None = None, scales: int = 4,
                           normalize: bool = True) -> torch.Tensor:
    """MiDaS multi-scale gradient-matching loss on disparities (..., H, W) (see module doc)."""
    if normalize:
        p, t, valid = _normalized_pair(pred, target, valid)
    else:
        valid = torch.isfinite(target) if valid is None else valid & torch.isfinite(target)
        p, t = pred.float(), torch.where(valid, target.float(), 0.0)
    total = p.new_zeros(())
    for k in range(scales):
        step = 2 ** k
        r = torch.where(valid, p - t, 0.0)[..., ::step, ::step]
        m = valid[..., ::step, ::step]
        mx = m[..., :, 1:] & m[..., :, :-1]
        my = m[..., 1:, :] & m[..., :-1, :]
        gx = torch.where(mx, (r[..., :, 1:] - r[..., :, :-1]).abs(), 0.0).sum()
        gy = torch.where(my, (r[..., 1:, :] - r[..., :-1, :]).abs(), 0.0).sum()
        n = m.sum()
        total = total + torch.where(n > 0, (gx + gy) / n.clamp_min(1), 0.0)
    return total


def boundary_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
                  threshold: float = 0.1) -> torch.Tensor:
    """Depth-edge loss on disparities (..., H, W) as given (module doc); ``threshold`` in the
    disparity's units (the tokenizer's normalised disparity: MAD 0.5 per clip). 0 when the
    target has no edge."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target disparity must have the same shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    valid = torch.isfinite(target) if valid is None else valid & torch.isfinite(target)
    p, t = pred.float(), torch.where(valid, target.float(), 0.0)
    r = torch.where(valid, p - t, 0.0)
    edge = torch.zeros_like(valid)
    grad_terms, grad_count = p.new_zeros(()), p.new_zeros(())
    pairs = []
    for dim in (-1, -2):
        n = t.shape[dim] - 1
        pv = valid.narrow(dim, 0, n) & valid.narrow(dim, 1, n)
        jump = pv & ((t.narrow(dim, 1, n) - t.narrow(dim, 0, n)).abs() > threshold)
        pad = [0, 1, 0, 0] if dim == -1 else [0, 0, 0, 1]
        edge |= F.pad(jump, pad) | F.pad(jump, [pad[1], pad[0], pad[3], pad[2]])
        pairs.append((dim, n, pv))
    lead = edge.shape[:-2]
    band = F.max_pool2d(edge.reshape(-1, 1, *edge.shape[-2:]).float(), 3, 1, 1) > 0
    band = band.reshape(*lead, *edge.shape[-2:]) & valid
    for dim, n, pv in pairs:
        near = pv & (band.narrow(dim, 0, n) | band.narrow(dim, 1, n))
        g = (r.narrow(dim, 1, n) - r.narrow(dim, 0, n)).abs()
        grad_terms = grad_terms + torch.where(near, g, 0.0).sum()
        grad_count = grad_count + near.sum()
    nb = band.sum()
    value = torch.where(band, r.abs(), 0.0).sum() / nb.clamp_min(1) \
        + grad_terms / grad_count.clamp_min(1)
    return torch.where(nb > 0, value, 0.0)


def distillation_loss(student_latent: torch.Tensor, teacher_latent: torch.Tensor) -> torch.Tensor:
    """MSE between the first C_teacher channels of the student latent and the (detached)
    teacher latent."""
    c = teacher_latent.shape[1]
    s = student_latent[:, :c]
    if s.shape != teacher_latent.shape:
        raise ValueError(f"student latent {tuple(student_latent.shape)} does not cover teacher "
                         f"latent {tuple(teacher_latent.shape)}")
    return F.mse_loss(s.float(), teacher_latent.detach().float())


class PerceptualLoss(nn.Module):
    """Mean L1 between features of a user-supplied, frozen network, per frame.

    ``net``: an ``nn.Module`` or the path of a local TorchScript file mapping (N, 3, H, W) in
    [-1, 1] to a tensor or a list/tuple of feature tensors. Nothing is downloaded: without a
    network there is no perceptual loss.
    """

    def __init__(self, net: nn.Module | str | Path):
        super().__init__()
        if isinstance(net, (str, Path)):
            path = Path(net)
            if not path.is_file():
                raise FileNotFoundError(f"perceptual network weights not found at {path} (give a "
                                        "local TorchScript file; nothing is downloaded)")
            net = torch.jit.load(str(path), map_location="cpu")
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        def frames(x):  # (B, 3, T, H, W) -> (B*T, 3, H, W)
            return x.transpose(1, 2).flatten(0, 1) if x.dim() == 5 else x

        fp, ft = self.net(frames(pred)), self.net(frames(target))
        fp = fp if isinstance(fp, (list, tuple)) else [fp]
        ft = ft if isinstance(ft, (list, tuple)) else [ft]
        return sum((a - b.detach()).abs().mean() for a, b in zip(fp, ft)) / len(fp)


@dataclass
class LossWeights:
    rgb: float = 1.0
    disparity: float = 1.0
    gradient: float = 0.5
    boundary: float = 0.0
    distill: float = 1.0
    perceptual: float = 0.0


class TokenizerLoss(nn.Module):
    """Weighted sum of the stage-1 losses for RGBD videos (B, 4, T, H, W): RGB channels 0..2,
    disparity channel 3 (in the tokenizer's normalised units).

    ``forward(pred, target, valid=None, student_latent=None, teacher=None)`` returns a dict of
    the terms (unweighted, detached) and ``"total"`` (weighted, differentiable). The
    distillation term needs ``student_latent`` and either ``teacher`` (a frozen RGB tokenizer,
    run on the RGB channels under ``no_grad``) or ``teacher_latent``.
    """

    def __init__(self, weights: LossWeights | None = None,
                 perceptual: nn.Module | str | Path | None = None,
                 renormalize_disparity: bool = False):
        super().__init__()
        self.weights = weights or LossWeights()
        # The tokenizer's disparity channel is already normalized (median 0, MAD 0.5 per clip),
        # so by default the reconstruction is compared as it is. Renormalizing the prediction
        # (affine-invariant losses) gives no gradient while the prediction is constant, e.g.
        # right after inflate_to_rgbd, when the new output channel starts flat.
        self.renormalize = renormalize_disparity
        if self.weights.perceptual > 0 and perceptual is None:
            raise ValueError("weights.perceptual > 0 needs a local perceptual network "
                             "(perceptual=nn.Module or a TorchScript path); nothing is "
                             "downloaded")
        self.perceptual = PerceptualLoss(perceptual) if perceptual is not None else None

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                valid: torch.Tensor | None = None, student_latent: torch.Tensor | None = None,
                teacher: Callable | nn.Module | None = None,
                teacher_latent: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        w = self.weights
        terms: dict[str, torch.Tensor] = {"rgb": rgb_l1(pred[:, :3], target[:, :3])}
        if pred.shape[1] > 3:
            v = valid[:, 0] if valid is not None and valid.dim() == 5 else valid
            terms["disparity"] = disparity_l1(pred[:, 3], target[:, 3], v,
                                              normalize=self.renormalize)
            terms["gradient"] = gradient_matching_loss(pred[:, 3], target[:, 3], v,
                                                       normalize=self.renormalize)
            if w.boundary > 0:
                terms["boundary"] = boundary_loss(pred[:, 3], target[:, 3], v)
        if w.distill > 0 and student_latent is not None:
            if teacher_latent is None:
                if teacher is None:
                    raise ValueError("distillation needs teacher= or teacher_latent=")
                with torch.no_grad():
                    teacher_latent = teacher.encode(target[:, :3])
            terms["distill"] = distillation_loss(student_latent, teacher_latent)
        if self.perceptual is not None and w.perceptual > 0:
            terms["perceptual"] = self.perceptual(pred[:, :3], target[:, :3])
        total = sum(getattr(w, k) * v for k, v in terms.items())
        out = {k: v.detach() for k, v in terms.items()}
        out["total"] = total
        return out
