"""Geometric consistency of an RGB-D clip: does each frame's depth, moved with the intrinsics and
camera poses, agree with the other frames' depth? (:func:`reprojection_errors`; used to check
data and to measure generated geometry.)"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["reprojection_errors"]


def reprojection_errors(depth: torch.Tensor, K: torch.Tensor, poses: torch.Tensor, i: int,
                        j: int) -> tuple[torch.Tensor, float]:
    """How well frame ``i``'s depth, moved into frame ``j`` with ``K`` and ``poses``, agrees with
    frame ``j``'s depth: a consistency check of a clip's geometry (static scenes).

    ``depth`` (T, H, W) metres (non-finite or <= 0 invalid), ``K`` (T, 3, 3) or (3, 3)
    (pixel centres at +0.5), ``poses`` (T, 4, 4) camera-to-world. Each valid pixel of frame i is
    back-projected, transformed and projected into frame j; where it lands inside frame j on
    valid depth, the relative error of its disparity against frame j's bilinearly interpolated
    disparity (exact for planes) is returned. Also returns the mean pixel displacement.
    Occlusions and depth edges give large errors for a few points; look at quantiles.
    """
    depth = depth.double()
    T, H, W = depth.shape
    K = K.double().expand(T, 3, 3)
    poses = poses.double()
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5,
                          torch.arange(W, dtype=torch.float64) + 0.5, indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], -1)                      # (H, W, 3)
    valid_i = torch.isfinite(depth[i]) & (depth[i] > 0)
    zi = torch.where(valid_i, depth[i], torch.zeros_like(depth[i]))
    cam_i = (pix @ torch.linalg.inv(K[i]).T) * zi[..., None]
    world = cam_i @ poses[i, :3, :3].T + poses[i, :3, 3]
    cam_j = (world - poses[j, :3, 3]) @ poses[j, :3, :3]
    z = cam_j[..., 2]
    proj = cam_j @ K[j].T
    uv = proj[..., :2] / z.clamp_min(1e-9)[..., None]
    inside = valid_i & (z > 1e-6) & (uv[..., 0] >= 0.5) & (uv[..., 0] <= W - 0.5) & \
        (uv[..., 1] >= 0.5) & (uv[..., 1] <= H - 0.5)
    valid_j = torch.isfinite(depth[j]) & (depth[j] > 0)
    disp_j = torch.where(valid_j, 1 / torch.where(valid_j, depth[j], 1.0), 0.0)
    grid = torch.stack([uv[..., 0] / W * 2 - 1, uv[..., 1] / H * 2 - 1], -1)[None]
    sample = lambda img: F.grid_sample(img[None, None], grid, mode="bilinear",  # noqa: E731
                                       align_corners=False)[0, 0]
    disp = sample(disp_j)
    ok = inside & (sample(valid_j.double()) > 1 - 1e-9)
    rel = ((1 / z[ok]) - disp[ok]).abs() * z[ok]
    shift = (uv - pix[..., :2])[inside].norm(dim=-1).mean().item() if inside.any() else 0.0
    return rel.float(), shift
