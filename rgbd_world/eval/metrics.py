"""Metrics for RGBD video reconstruction.

* :func:`psnr`: 10 log10(range^2 / MSE) per image (frame), averaged.
* :func:`ssim`: Wang et al. SSIM with an 11-tap Gaussian window (sigma 1.5), K1 0.01, K2 0.03,
  per channel over the fully-covered ("valid") window positions, averaged; equal to
  ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=...)`` per frame.
* :func:`disparity_metrics`: this project's own depth protocol ("rgbd"; not a published one:
  :func:`rgbd_world.eval.video_depth_metrics` reproduces DepthCrafter's and Marigold's). Per
  group (a clip by default): least-squares scale and shift of the predicted disparity to the
  ground-truth disparity over the group's valid pixels (``rgbd_kernels.align_scale_shift``),
  depth = 1 / max(aligned, 1e-8) clipped to the group's own ground-truth depth range, then
  AbsRel and delta1 (``rgbd_kernels.abs_rel`` / ``delta1``) over all the group's valid pixels
  at once; the result is the mean over groups. Groups never pool pixels with each other.
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

__all__ = ["psnr", "ssim", "disparity_metrics", "rgbd_protocol", "depth_edges", "boundary_f1"]


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


_GROUP_NDIM = {"frame": 2, "clip": 3}


def rgbd_protocol(pred_disparity: torch.Tensor, gt_disparity: torch.Tensor, valid: torch.Tensor,
                  per: str = "clip") -> dict[str, torch.Tensor]:
    """The "rgbd" protocol per group (module docstring). ``valid`` (bool, like the inputs) is
    combined with finite positive ground truth and finite predictions. Returns float32 per-group
    "abs_rel", "delta1" (NaN for a group without valid pixels; 0-d for per="all"), "scale",
    "shift", the "aligned" disparity and the clipped "pred_depth" (like the inputs)."""
    if per not in ("frame", "clip", "all"):
        raise ValueError(f"per must be 'frame', 'clip' or 'all', got {per!r}")
    aligned, s, t = align_scale_shift(pred_disparity, gt_disparity, valid, per=per)
    use = (valid & torch.isfinite(gt_disparity) & (gt_disparity > 0)
           & torch.isfinite(pred_disparity))
    eps = 1e-8
    gt_depth = torch.where(use, 1.0 / gt_disparity.float().clamp_min(eps), 0.0)
    nd = gt_depth.dim() if per == "all" else _GROUP_NDIM[per]
    dims = tuple(range(gt_depth.dim() - nd, gt_depth.dim()))
    has = use.any(dim=dims, keepdim=True) if dims else use
    lo = torch.where(use, gt_depth, torch.inf).amin(dim=dims, keepdim=True)
    hi = torch.where(use, gt_depth, -torch.inf).amax(dim=dims, keepdim=True)
    # a slightly negative aligned disparity must not become a depth of 1e8: predicted depth is
    # clipped to the group's own ground-truth depth range
    pred_depth = 1.0 / aligned.clamp_min(eps)
    pred_depth = torch.where(has, torch.minimum(torch.maximum(pred_depth, lo), hi), pred_depth)
    metric_per = None if per == "all" else per
    return {"abs_rel": abs_rel(pred_depth, gt_depth, use, per=metric_per),
            "delta1": delta1(pred_depth, gt_depth, use, per=metric_per),
            "scale": s, "shift": t, "aligned": aligned, "pred_depth": pred_depth}


def disparity_metrics(pred_disparity: torch.Tensor, gt_disparity: torch.Tensor,
                      valid: torch.Tensor | None = None, per: str = "clip"
                      ) -> dict[str, torch.Tensor]:
    """AbsRel and delta1 (depth) under this project's "rgbd" protocol (module docstring).

    pred_disparity, gt_disparity: (..., T, H, W) float (per="clip"; (..., H, W) for "frame").
    ``per``: the groups evaluated alone ("clip": one fit and one value per video over (T, H, W),
    "frame", "all": everything as one group). ``valid`` (bool) defaults to finite, positive
    ground truth. Returns float32 0-d "abs_rel" and "delta1" (the mean over groups with valid
    pixels; NaN if none) and the "aligned" disparity (like pred_disparity).
    """
    finite = torch.isfinite(gt_disparity) & (gt_disparity > 0)
    valid = finite if valid is None else valid & finite
    r = rgbd_protocol(pred_disparity, gt_disparity, valid, per=per)
    out = {"aligned": r["aligned"]}
    for key in ("abs_rel", "delta1"):
        v = r[key].reshape(-1)
        has = ~torch.isnan(v)
        out[key] = torch.where(has.any(), torch.where(has, v, 0.0).sum() / has.sum().clamp_min(1),
                               torch.nan)
    return out


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
