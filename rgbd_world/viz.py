"""Pictures a person would rather look at: colorized disparity, RGB | depth video strips, GIF/MP4.

All functions take torch tensors and return uint8 tensors (..., H, W, 3) or write files.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

# Anchor colours of the disparity colormap (far = dark purple ... near = bright yellow).
_ANCHORS = torch.tensor([
    [0.05, 0.03, 0.20], [0.30, 0.06, 0.45], [0.60, 0.15, 0.45], [0.88, 0.35, 0.25],
    [0.98, 0.65, 0.15], [0.99, 0.95, 0.55]])


def colorize_disparity(disparity: torch.Tensor, valid: torch.Tensor | None = None,
                       lo: float | None = None, hi: float | None = None) -> torch.Tensor:
    """(..., H, W) disparity -> (..., H, W, 3) uint8; near is bright. Invalid pixels are black.

    The range defaults to the 2nd..98th percentile of the valid values of the whole input, so
    a video keeps one colour scale across frames.
    """
    d = disparity.detach().float().cpu()
    ok = torch.isfinite(d) if valid is None else (valid.detach().cpu().bool() & torch.isfinite(d))
    vals = d[ok]
    if vals.numel() == 0:
        return torch.zeros(*d.shape, 3, dtype=torch.uint8)
    if vals.numel() > 1_000_000:
        vals = vals[torch.randperm(vals.numel())[:1_000_000]]
    lo = torch.quantile(vals, 0.02).item() if lo is None else lo
    hi = torch.quantile(vals, 0.98).item() if hi is None else hi
    t = ((d - lo) / max(hi - lo, 1e-12)).clamp(0, 1).nan_to_num(0.0)
    pos = t * (len(_ANCHORS) - 1)
    i0 = pos.floor().long().clamp(max=len(_ANCHORS) - 2)
    frac = (pos - i0.float()).unsqueeze(-1)
    rgb = _ANCHORS[i0] * (1 - frac) + _ANCHORS[i0 + 1] * frac
    rgb = torch.where(ok.unsqueeze(-1), rgb, torch.zeros_like(rgb))
    return (rgb * 255).round().to(torch.uint8)


def rgb_to_uint8(rgb: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """(3, T, H, W) float in ``value_range`` -> (T, H, W, 3) uint8."""
    lo, hi = value_range
    x = ((rgb.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    return (x.permute(1, 2, 3, 0) * 255).round().to(torch.uint8)


def rgbd_strip(rgb: torch.Tensor, disparity: torch.Tensor, valid: torch.Tensor | None = None,
               value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """RGB (3, T, H, W) beside colorized disparity (T, H, W) -> (T, H, 2W, 3) uint8 frames."""
    return torch.cat([rgb_to_uint8(rgb, value_range), colorize_disparity(disparity, valid)], dim=2)


def side_by_side(*videos: torch.Tensor) -> torch.Tensor:
    """Stack (T, H, W_i, 3) uint8 videos horizontally with a 2-pixel white gap."""
    t, h = videos[0].shape[:2]
    gap = torch.full((t, h, 2, 3), 255, dtype=torch.uint8)
    parts = []
    for i, v in enumerate(videos):
        parts += [v] if i == 0 else [gap, v]
    return torch.cat(parts, dim=2)


def gif_bytes(frames: torch.Tensor, fps: int = 8) -> bytes:
    """(T, H, W, 3) uint8 frames -> an animated GIF, in memory."""
    import io

    from PIL import Image

    images = [Image.fromarray(f) for f in frames.cpu().numpy().astype(np.uint8)]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                   duration=int(1000 / fps), loop=0)
    return buf.getvalue()


def add_tensorboard_video(writer, tag: str, frames: torch.Tensor, step: int, fps: int = 8) -> None:
    """Log (T, H, W, 3) uint8 frames to a ``SummaryWriter`` as an animated GIF (what
    ``add_video`` writes, without needing moviepy); TensorBoard plays it in its Images tab."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    t, h, w, c = frames.shape
    image = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=gif_bytes(frames, fps))
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]),
                                          step)


def write_video(frames: torch.Tensor, path: str | os.PathLike, fps: int = 8) -> Path:
    """Write (T, H, W, 3) uint8 frames as .gif (Pillow) or .mp4 (imageio's ffmpeg plugin)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = frames.cpu().numpy().astype(np.uint8)
    if path.suffix.lower() == ".gif":
        path.write_bytes(gif_bytes(frames, fps))
        return path
    import imageio.v3 as iio

    try:
        iio.imwrite(path, arr, fps=fps, codec="libx264")
    except Exception as exc:  # no ffmpeg backend: say so instead of writing nothing
        raise RuntimeError(f"cannot write {path}: {exc}; install imageio-ffmpeg or use a .gif path") from exc
    return path
