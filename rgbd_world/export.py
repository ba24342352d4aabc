"""Write a generated RGBD video to files a person (and other tools) can open.

``write_outputs(output, out_dir)`` writes:
  rgbd.mp4 (or rgbd.gif without an H.264 encoder)  RGB beside colorized disparity
  disparity/frame_0000.png ...                      16-bit PNG frames of the disparity
  rgbd.npz                                          rgb uint8 (T,H,W,3), disparity and depth float32
  pointcloud_frame<k>.ply                           coloured point cloud of frame k
Disparity PNGs map the clip's [min, max] normalized disparity onto 0..65535 (the range is in
the npz as ``disparity_png_range``).

The set is written atomically: everything is checked first, the files go into a temporary
directory ``.<out>.tmp-<pid>@<host>`` beside ``out_dir``, which then replaces ``out_dir`` in one
rename. A reader sees the old complete set or the new one, never a mix (no stale frames of an
earlier, longer result); a killed run leaves only its temporary directory, which the next run
removes. An existing ``out_dir`` is replaced only if it holds nothing but such a set.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from .atomic import remove_stale_temporaries, replace_directory, temporary_path
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


OUTPUT_NAMES = ("rgbd.mp4", "rgbd.gif", "rgbd.npz", "disparity")
PLY_PREFIX = "pointcloud_frame"


def check_output_set_dir(out_dir: str | os.PathLike, name: str = "out_dir") -> Path:
    """``out_dir`` can take an output set: a new path, an empty directory or one holding only
    an earlier set (which is replaced). Raises :class:`InvalidArgument` otherwise."""
    from rgbd_world.validation import InvalidArgument, check_output_dir

    out = check_output_dir(name, out_dir)
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_NAMES
                         and not (p.name.startswith(PLY_PREFIX) and p.suffix == ".ply"))
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise InvalidArgument(name, str(out), "a new or empty directory, or one holding only "
                                  "an earlier output set (it is replaced)", f"it holds {shown}")
    return out


def _temporary_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temporaries(out.parent, prefix=f".{out.name}.tmp-"):
        print(f"removed {stale} (left by an interrupted run)", file=sys.stderr)
    tmp = temporary_path(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def write_outputs(output, out_dir: str | os.PathLike, ply_frame: int = 0, fps: int = 8) -> dict[str, Path]:
    """Write every file of the module docstring (atomically, see there); returns their final
    paths by kind. ``ply_frame`` in [0, T - 1] and ``out_dir`` are checked before anything is
    written."""
    from rgbd_world.validation import check_int

    frames_total = output.rgb.shape[0]
    ply_frame = check_int("ply_frame", ply_frame, 0, frames_total - 1)
    check_int("fps", fps, 1, 1000)
    out = check_output_set_dir(out_dir)
    tmp = _temporary_dir(out)
    try:
        written = _write_set(output, tmp, ply_frame, fps)
        replace_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {kind: out / path.relative_to(tmp) for kind, path in written.items()}


def _write_set(output, out: Path, ply_frame: int, fps: int) -> dict[str, Path]:
    rgb = (output.rgb.clamp(0, 1) * 255).round().to(torch.uint8)          # (T, H, W, 3)
    disp = output.disparity.float()
    frames = torch.cat([rgb, colorize_disparity(disp)], dim=2)
    paths: dict[str, Path] = {}
    try:
        paths["video"] = write_video(frames, out / "rgbd.mp4", fps=fps)
    except RuntimeError:
        (out / "rgbd.mp4").unlink(missing_ok=True)
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
    paths["ply"] = write_ply(out / f"{PLY_PREFIX}{ply_frame}.ply",
                             output.depth[ply_frame].numpy(), rgb[ply_frame].numpy())
    return paths
