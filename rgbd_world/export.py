"""Write a generated RGBD video to files a person (and other tools) can open.

``write_outputs(output, out_dir)`` writes:
  rgbd.mp4 (or rgbd.gif without an H.264 encoder)  RGB beside colorized disparity
  disparity/frame_0000.png ...                      16-bit PNG frames of the disparity
  rgbd.npz                                          rgb uint8 (T,H,W,3), disparity and depth float32
  pointcloud_frame<k>.ply                           coloured point cloud of frame k
Disparity PNGs map the clip's [min, max] normalized disparity onto 0..65535 (the range is in
the npz as ``disparity_png_range``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .viz import colorize_disparity, write_video


def default_intrinsics(height: int, width: int, fov_degrees: float = 60.0) -> np.ndarray:
    """Pinhole K with a horizontal field of view of ``fov_degrees`` (pixel centres at +0.5)."""
    f = 0.5 * width / np.tan(np.radians(fov_degrees) / 2)
    return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=np.float64)


def write_ply(path: str | os.PathLike, depth: np.ndarray, rgb: np.ndarray,
              K: np.ndarray | None = None) -> Path:
    """ASCII PLY of the back-projected pixels of one frame: depth (H, W), rgb (H, W, 3) uint8."""
    h, w = depth.shape
    K = default_intrinsics(h, w) if K is None else K
    v, u = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    ok = np.isfinite(depth) & (depth > 0)
    z = depth[ok]
    x = (u[ok] - K[0, 2]) / K[0, 0] * z
    y = (v[ok] - K[1, 2]) / K[1, 1] * z
    colors = rgb[ok]
    path = Path(path)
    with open(path, "w") as f:
        f.write(f"ply\nformat ascii 1.0\nelement vertex {len(z)}\nproperty float x\n"
                "property float y\nproperty float z\nproperty uchar red\nproperty uchar green\n"
                "property uchar blue\nend_header\n")
        for p, c in zip(np.stack([x, y, z], 1), colors):
            f.write(f"{p[0]:.5f} {p[1]:.5f} {p[2]:.5f} {c[0]} {c[1]} {c[2]}\n")
    return path


def write_outputs(output, out_dir: str | os.PathLike, ply_frame: int = 0, fps: int = 8) -> dict[str, Path]:
    """Write every file of the module docstring; returns their paths by kind."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rgb = (output.rgb.clamp(0, 1) * 255).round().to(torch.uint8)          # (T, H, W, 3)
    disp = output.disparity.float()
    frames = torch.cat([rgb, colorize_disparity(disp)], dim=2)
    paths: dict[str, Path] = {}
    try:
        paths["video"] = write_video(frames, out / "rgbd.mp4", fps=fps)
    except RuntimeError:
        paths["video"] = write_video(frames, out / "rgbd.gif", fps=fps)
    from PIL import Image

    lo, hi = float(disp.min()), float(disp.max())
    png_dir = out / "disparity"
    png_dir.mkdir(exist_ok=True)
    scaled = ((disp - lo) / max(hi - lo, 1e-12) * 65535).round().clamp(0, 65535).numpy().astype(np.uint16)
    for i, frame in enumerate(scaled):
        Image.fromarray(frame).save(png_dir / f"frame_{i:04d}.png")
    paths["disparity_png"] = png_dir
    paths["npz"] = out / "rgbd.npz"
    np.savez_compressed(paths["npz"], rgb=rgb.numpy(), disparity=disp.numpy(),
                        depth=output.depth.float().numpy(),
                        disparity_png_range=np.array([lo, hi], dtype=np.float32))
    if not 0 <= ply_frame < rgb.shape[0]:
        raise ValueError(f"ply_frame must be in [0, {rgb.shape[0] - 1}], got {ply_frame}")
    paths["ply"] = write_ply(out / f"pointcloud_frame{ply_frame}.ply",
                             output.depth[ply_frame].numpy(), rgb[ply_frame].numpy())
    return paths
