"""Reconstruction quality of a tokenizer on held-out RGB-D clips.

RGB: PSNR and SSIM on [-1, 1] pixels. Depth, under two protocols (keys say which):

* ``abs_rel``, ``delta1``, ``boundary_f1`` (and ``boundary_precision``, ``boundary_recall``):
  this project's own protocol ("rgbd",
  :func:`rgbd_world.eval.disparity_metrics`): the reconstructed disparity channel (normalized,
  signed units) is scale-shift aligned per clip to the ground-truth disparity 1/depth, depth is
  clipped to the clip's ground-truth range, AbsRel and delta1 over all the clip's valid pixels;
  the depth-boundary F1 (1-pixel tolerance) on the aligned disparity.
* ``abs_rel_depthcrafter``, ``delta1_depthcrafter``: DepthCrafter's published video protocol
  (:func:`rgbd_world.eval.video_depth_metrics`) on what the pipeline would export for the
  reconstruction: the positive disparity 1 / :func:`rgbd_world.pipeline.relative_depth`, with
  the depth range (1e-3, ``PROCEDURAL_MAX_DEPTH``) m.

With ``teacher`` (the frozen RGB tokenizer an RGBD tokenizer was distilled from), the latent's
agreement with it on the RGB channels: ``teacher_rel_mse`` = ||z[:, :C] - z_teacher||^2 /
||z_teacher||^2 and ``teacher_cosine`` (over the whole latent of each clip); near 0 and 1 mean a
diffusion prior trained on the teacher's latents still fits.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

import rgbd_kernels as rk

from .depth_protocols import video_depth_metrics
from .metrics import boundary_f1, disparity_metrics, psnr, ssim

# The depth range the published protocols evaluate on the procedural clips (metres): 70, as
# DepthCrafter's evaluation uses for Sintel (the clips' ground plane reaches the horizon, so
# their far pixels are unbounded; those beyond it are left out, as a benchmark's would be).
PROCEDURAL_MAX_DEPTH = 70.0


@torch.no_grad()
def evaluate_tokenizer(model, dataset: Dataset, device: str | torch.device = "cpu",
                       max_clips: int | None = None, progress: bool = True,
                       teacher=None) -> dict[str, float]:
    """Mean metrics over clips: psnr, ssim (RGB); abs_rel, delta1, boundary_f1 /
    _precision / _recall (ours) and abs_rel_depthcrafter, delta1_depthcrafter (RGBD models);
    teacher_rel_mse, teacher_cosine with ``teacher`` (module docstring)."""
    from tqdm.auto import tqdm

    from rgbd_world.pipeline import relative_depth

    model = model.to(device).eval()
    if teacher is not None:
        teacher = teacher.to(device).eval()
    rgbd = model.config.in_channels >= 4
    totals: dict[str, float] = {}
    n = 0
    loader = DataLoader(dataset, batch_size=1, shuffle=False)
    total = len(dataset) if max_clips is None else min(max_clips, len(dataset))
    for batch in tqdm(loader, total=total, desc="eval", disable=not progress):
        if n >= total:
            break
        rgb = batch["rgb"].to(device)
        x = torch.cat([rgb, batch["disparity"].to(device)], 1) if rgbd else rgb
        out = model(x)
        recon = out.reconstruction
        values = {"psnr": psnr(recon[:, :3].clamp(-1, 1), rgb).item(),
                  "ssim": ssim(recon[:, :3].clamp(-1, 1), rgb).item()}
        if rgbd:
            gt_depth = batch["depth"][:, 0].to(device)
            gt_disp, valid = rk.depth_to_disparity(gt_depth)
            valid = valid & batch["valid"][:, 0].to(device)
            dm = disparity_metrics(recon[:, 3], gt_disp, valid, per="clip")
            values["abs_rel"] = dm["abs_rel"].item()
            values["delta1"] = dm["delta1"].item()
            bf = boundary_f1(dm["aligned"], gt_disp, valid, align=False)
            values["boundary_f1"] = bf["f1"].item()
            values["boundary_precision"] = bf["precision"].item()
            values["boundary_recall"] = bf["recall"].item()
            exported = torch.stack([1.0 / relative_depth(d) for d in recon[:, 3]])
            dc = video_depth_metrics(exported, gt_depth, valid, protocol="depthcrafter",
                                     max_depth=PROCEDURAL_MAX_DEPTH)
            values["abs_rel_depthcrafter"] = dc["abs_rel"].item()
            values["delta1_depthcrafter"] = dc["delta1"].item()
        if teacher is not None:
            zt = teacher.encode(rgb).float()
            zs = out.latent[:, : zt.shape[1]].float()
            if zs.shape != zt.shape:
                raise ValueError(f"teacher latent {tuple(zt.shape)} does not match the model's "
                                 f"first channels {tuple(zs.shape)}")
            values["teacher_rel_mse"] = ((zs - zt).square().sum() / zt.square().sum()).item()
            values["teacher_cosine"] = torch.nn.functional.cosine_similarity(
                zs.flatten(), zt.flatten(), dim=0).item()
        for k, v in values.items():
            totals[k] = totals.get(k, 0.0) + v
        n += 1
    if n == 0:
        raise ValueError("the evaluation dataset is empty")
    return {k: v / n for k, v in totals.items()} | {"clips": n}
