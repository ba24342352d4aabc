"""Metrics for RGBD video reconstruction.

* :func:`psnr`: 10 log10(range^2 / MSE) per image (frame), averaged.
* :func:`ssim`: Wang et al. SSIM with an 11-tap Gaussian window (sigma 1.5), K1 0.01, K2 0.03,
  per channel over the fully-covered ("valid") window positions, averaged; equal to
  ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=...)`` per frame.
* :func:`disparity_metrics`: least-squares scale and shift of the predicted disparity to the
  ground truth (per video, valid pixels, ``rgbd_kernels.align_scale_shift``), then depth
  AbsRel and delta1 (``rgbd_kernels.abs_rel`` / ``delta1``) on depth = 1 / disparity,
  clipped to the ground truth's depth range (Marigold's protocol).
* :func:`boundary_f1`: depth-boundary F1. An edge separates two valid 4-neighbours whose
  disparity ratio exceeds ``1 + threshold`` (relative gradient; both pixels of the pair are
  marked); predicted (aligned) and ground-truth edge maps are matched with a 1-pixel tolerance
  (3x3 neighbourhood): precision = predicted edges near a true edge, recall = true edges near a
  predicted edge, F1 = 2PR / (P + R).

Videos are (B, C, T, H, W) or images (B, C, H, W); disparities (..., H, W).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rgbd_kernels import abs_rel, align_scale_shift, delta1

__all__ = ["psnr", "ssim", "disparity_metrics", "depth_edges", "boundary_f1"]


def _frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W); images pass through."""
    if x.dim() == 5:
        return x.transpose(1, 2).flatten(0, 1)
    if x.dim() == 4:
        return x
    raise ValueError(f"expected (B, C, T, H, W) or (B, C, H, W), got shape {tuple(x.shape)}")


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Mean per-frame PSNR in dB (``data_range`` 2 for [-1, 1] pixels, 1 for [0, 1])."""
    if pred.shape != target.shape:
        raise ValueError(f"shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    p, t = _frames(pred).double(), _frames(target).double()
    mse = (p - t).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(data_range ** 2 / mse)).mean().float()


def _gaussian(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0,
         sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM over frames and channels (see the module docstring)."""
    if pred.shape != target.shape:
        raise ValueError(f"shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    p, t = _frames(pred).double(), _frames(target).double()
    n, c, h, w = p.shape
    g = _gaussian(sigma)
    if h < g.numel() or w < g.numel():
        raise ValueError(f"SSIM needs frames of at least {g.numel()}x{g.numel()}, got {h}x{w}")
    kx = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    ky = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(x):
        return F.conv2d(F.conv2d(x, kx, groups=c), ky, groups=c)

    mp, mt = blur(p), blur(t)
    vp = blur(p * p) - mp * mp
    vt = blur(t * t) - mt * mt
    cov = blur(p * t) - mp * mt
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mp * mt + c1) * (2 * cov + c2)) / ((mp * mp + mt * mt + c1) * (vp + vt + c2))
    return s.mean().float()


def disparity_metrics(pred_disparity: torch.Tensor, gt_disparity: torch.Tensor,
                      valid: torch.Tensor | None = None, per: str = "clip"
                      ) -> dict[str, torch.Tensor]:
    """AbsRel and delta1 (depth) after scale-shift alignment in disparity space.

    ``per``: alignment groups ("clip": one fit per video over (T, H, W), "frame", "all").
    ``valid`` defaults to finite, positive ground truth. Returns the aligned disparity too.
    """
    if valid is None:
        valid = torch.isfinite(gt_disparity) & (gt_disparity > 0)
    valid = valid & torch.isfinite(gt_disparity) & (gt_disparity > 0)
    aligned, _, _ = align_scale_shift(pred_disparity, gt_disparity, valid, per=per)
    eps = 1e-8
    gt_depth = torch.where(valid, 1.0 / gt_disparity.float().clamp_min(eps), 0.0)
    # As in Marigold's protocol, predicted depth is clipped to the ground truth's depth range
    # (a slightly negative aligned disparity must not become a depth of 1e8).
    if valid.any():
        lo, hi = gt_depth[valid].min(), gt_depth[valid].max()
        pred_depth = (1.0 / aligned.clamp_min(eps)).clamp(lo, hi)
    else:
        pred_depth = 1.0 / aligned.clamp_min(eps)
    return {"abs_rel": abs_rel(pred_depth, gt_depth, valid),
            "delta1": delta1(pred_depth, gt_depth, valid), "aligned": aligned}


def depth_edges(disparity: torch.Tensor, valid: torch.Tensor | None = None,
                threshold: float = 0.1) -> torch.Tensor:
    """Bool edge map (..., H, W): pixels in a valid 4-neighbour pair whose disparity ratio
    max(a/b, b/a) exceeds 1 + threshold (non-positive disparities clamp to a tiny value)."""
    d = disparity.float().clamp_min(1e-6)
    v = torch.isfinite(disparity) if valid is None else valid & torch.isfinite(disparity)
    e = torch.zeros_like(v)
    for dim in (-1, -2):
        a = d.narrow(dim, 0, d.shape[dim] - 1)
        b = d.narrow(dim, 1, d.shape[dim] - 1)
        pv = v.narrow(dim, 0, v.shape[dim] - 1) & v.narrow(dim, 1, v.shape[dim] - 1)
        hit = pv & (torch.maximum(a / b, b / a) > 1 + threshold)
        pad = [0, 0, 0, 0]
        pad[0 if dim == -1 else 2] = 1
        e |= F.pad(hit, [pad[1], pad[0], pad[3], pad[2]])  # mark the first pixel of the pair
        e |= F.pad(hit, pad)                                # and the second
    return e


def _dilate(e: torch.Tensor) -> torch.Tensor:
    lead = e.shape[:-2]
    x = e.reshape(-1, 1, *e.shape[-2:]).float()
    return (F.max_pool2d(x, 3, 1, 1) > 0).reshape(*lead, *e.shape[-2:])


def boundary_f1(pred_disparity: torch.Tensor, gt_disparity: torch.Tensor,
                valid: torch.Tensor | None = None, threshold: float = 0.1,
                align: bool = True) -> dict[str, torch.Tensor]:
    """Depth-boundary precision, recall and F1 with a 1-pixel tolerance (module docstring).
    ``align``: scale-shift align the prediction to the ground truth (per clip) first."""
    if valid is None:
        valid = torch.isfinite(gt_disparity) & (gt_disparity > 0)
    pred = pred_disparity
    if align:
        pred = align_scale_shift(pred_disparity, gt_disparity, valid, per="all")[0]
    pe = depth_edges(pred, valid, threshold)
    ge = depth_edges(gt_disparity, valid, threshold)
    npe, nge = pe.sum(), ge.sum()
    precision = (pe & _dilate(ge)).sum() / npe.clamp_min(1)
    recall = (ge & _dilate(pe)).sum() / nge.clamp_min(1)
    precision = torch.where(npe > 0, precision, (nge == 0).float())
    recall = torch.where(nge > 0, recall, (npe == 0).float())
    f1 = torch.where(precision + recall > 0,
                     2 * precision * recall / (precision + recall).clamp_min(1e-12), 0.0)
    return {"precision": precision.float(), "recall": recall.float(), "f1": f1.float()}
