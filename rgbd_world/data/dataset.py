"""RGB-D video datasets for training: fixed-length clips, normalized disparity, robust to bad data.

:class:`RGBDVideoDataset` reads any layout of :mod:`rgbd_world.data.readers` and returns, per
clip (``T = frames``, ``(H, W) = size``):

=====================  ======================  ===============================================
key                    shape, dtype            meaning
=====================  ======================  ===============================================
``rgb``                (3, T, H, W) float32    colour in [-1, 1]
``disparity``          (1, T, H, W) float32    1/depth normalized per clip with
                                               :func:`rgbd_kernels.normalize_disparity`: median 0,
                                               mean absolute deviation 0.5 over valid pixels; 0
                                               on invalid pixels
``valid``              (1, T, H, W) bool       depth finite, > 0 and inside [min_depth, max_depth]
``depth``              (1, T, H, W) float32    metres (0 on invalid pixels)
``disparity_shift``    () float32              median of 1/depth (undo the normalization with
``disparity_scale``    () float32              :func:`rgbd_kernels.denormalize_disparity`)
``K``                  (T, 3, 3) float32       intrinsics of the returned pixels (pixel centres
                                               at +0.5), after resize, crop and flip
``poses``              (T, 4, 4) float32       camera-to-world, OpenCV axes (identity if the
                                               source has none: see ``has_poses``)
``has_poses``          () bool
``caption``            str                     "" if the source has none
``source``, ``index``  str, int                the clip actually returned
``frame_indices``      (T,) int64              frames taken from the source clip
=====================  ======================  ===============================================

Augmentation (``augment=True``): a random temporal crop of ``frames`` frames (``1 + 8k`` for the
Cosmos tokenizer), a random spatial crop after resizing to cover ``size``, and a horizontal flip
with probability ``flip_prob``. A flip mirrors the world too (x -> -x), so poses stay proper
rotations and depth stays consistent with them. Without augmentation: the first frames, a
centre crop, no flip.

Bad data never crashes an epoch: a clip whose files are missing, truncated or unreadable, whose
RGB and depth disagree, or whose depth has no valid pixel (less than ``min_valid_fraction``) is
skipped with a :class:`BadSampleWarning` naming its file and replaced by the next good clip. The
count (``num_skipped``) is shared with DataLoader worker processes. A wrong root or a dataset
without usable clips raises at construction.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import struct
import warnings
import zipfile
import zlib
from multiprocessing import context as mp_context
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rgbd_kernels import depth_to_disparity, normalize_disparity
from rgbd_world.validation import InvalidArgument, check_int

from .readers import ClipSource, RawClip, find_clips

__all__ = ["BadSampleWarning", "BadSampleError", "SkippingDataset", "RGBDVideoDataset",
           "resize_and_crop", "flip_horizontal"]


class BadSampleWarning(UserWarning):
    """A sample was skipped; the message names its file and the reason."""


class BadSampleError(ValueError):
    """Raised by a loader for data that is readable but unusable (e.g. no valid depth)."""


# What a bad file raises while being decoded. Programming errors (TypeError, ...) still raise.
SKIPPABLE_ERRORS = (OSError, ValueError, EOFError, KeyError, IndexError, zipfile.BadZipFile,
                    zlib.error, struct.error)


class SkippingDataset(torch.utils.data.Dataset):
    """Map-style dataset base: ``_load(i)`` failures skip to the next sample and are counted.

    Subclasses set ``self.sources`` (one name per sample, for messages) and implement
    ``_load(i)``. Flags of bad samples live in shared memory, so ``num_skipped`` read in the main
    process includes what DataLoader workers found.
    """

    max_consecutive_skips = 32

    def _init_skipping(self, sources: Sequence[str], problems: Sequence[tuple[str, str]] = ()):
        self.sources = list(sources)
        self._bad = mp.RawArray("b", max(len(self.sources), 1))
        self.construction_problems = list(problems)
        self.skipped: list[tuple[str, str]] = []   # what this process skipped, with reasons
        for path, reason in self.construction_problems:
            warnings.warn(f"{type(self).__name__}: skipping {path}: {reason}", BadSampleWarning,
                          stacklevel=3)

    @property
    def num_skipped(self) -> int:
        """Bad clips so far: found while indexing plus found while loading (in any worker)."""
        return len(self.construction_problems) + int(np.frombuffer(self._bad, np.int8).sum())

    def __len__(self) -> int:
        return len(self.sources)

    def _load(self, index: int) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def _mark_bad(self, index: int, err: BaseException) -> None:
        self._bad[index] = 1
        reason = f"{type(err).__name__}: {err}"
        self.skipped.append((self.sources[index], reason))
        warnings.warn(f"{type(self).__name__}: skipping bad sample {index} "
                      f"({self.sources[index]}): {reason} [{self.num_skipped} skipped so far]",
                      BadSampleWarning, stacklevel=3)

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        index %= n
        tried = 0
        for k in range(n):
            i = (index + k) % n
            if self._bad[i]:
                continue
            try:
                return self._load(i)
            except SKIPPABLE_ERRORS as err:
                self._mark_bad(i, err)
            tried += 1
            if tried > self.max_consecutive_skips:
                break
        raise RuntimeError(f"{type(self).__name__}: no loadable sample found from index {index} "
                           f"({self.num_skipped} bad samples so far; see the BadSampleWarnings)")

    # shared flags travel to spawned workers; a plain pickle gets a private copy
    def __getstate__(self):
        state = self.__dict__.copy()
        if mp_context.get_spawning_popen() is None:
            state["_bad"] = bytes(self._bad)
        return state

    def __setstate__(self, state):
        if isinstance(state["_bad"], bytes):
            flags = state["_bad"]
            state["_bad"] = mp.RawArray("b", len(flags))
            state["_bad"][:] = list(flags)
        self.__dict__.update(state)


# ----------------------------------------------------------------------------- transforms

def rgb_to_unit(rgb: np.ndarray, source: str = "") -> np.ndarray:
    """(..., 3) RGB -> float32 in [0, 1]: uint8 / 255, uint16 / 65535, other integers in
    0..255 / 255, floats as they are (they must already be in [0, 1]). Anything else (NaN,
    out-of-range values) raises :class:`BadSampleError`."""
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8:
        return rgb.astype(np.float32) / 255
    if rgb.dtype == np.uint16:
        return rgb.astype(np.float32) / 65535
    if rgb.size and np.issubdtype(rgb.dtype, np.integer):
        lo, hi = int(rgb.min()), int(rgb.max())
        if lo < 0 or hi > 255:
            raise BadSampleError(f"{source}: integer RGB ({rgb.dtype}) outside 0..255 "
                                 f"(min {lo}, max {hi})")
        return rgb.astype(np.float32) / 255
    if np.issubdtype(rgb.dtype, np.floating):
        out = rgb.astype(np.float32)
        if out.size and not (np.isfinite(out).all() and out.min() >= -1e-3
                             and out.max() <= 1 + 1e-3):
            raise BadSampleError(f"{source}: float RGB must be finite and in [0, 1], got "
                                 f"min {np.nanmin(out):.4g}, max {np.nanmax(out):.4g}")
        return np.clip(out, 0, 1)
    if rgb.size == 0 and np.issubdtype(rgb.dtype, np.integer):
        return rgb.astype(np.float32)
    raise BadSampleError(f"{source}: RGB of dtype {rgb.dtype} (need uint8, uint16, integers "
                         "in 0..255 or floats in [0, 1])")


def as_poses_4x4(poses: np.ndarray, frames: int, source: str = "") -> np.ndarray:
    """Camera-to-world poses (T, 4, 4) or (T, 3, 4) (the last row [0, 0, 0, 1] implied) ->
    (T, 4, 4) float32; any other shape or non-finite values raise :class:`BadSampleError`."""
    poses = np.asarray(poses, np.float32)
    if poses.shape == (frames, 3, 4):
        full = np.zeros((frames, 4, 4), np.float32)
        full[:, :3] = poses
        full[:, 3, 3] = 1
        poses = full
    if poses.shape != (frames, 4, 4):
        raise BadSampleError(f"{source}: poses must be ({frames}, 4, 4) or ({frames}, 3, 4), "
                             f"got {poses.shape}")
    if not np.isfinite(poses).all():
        raise BadSampleError(f"{source}: poses hold non-finite values")
    return poses


def resize_and_crop(rgb: torch.Tensor, depth: torch.Tensor, K: torch.Tensor,
                    size: tuple[int, int], offset: tuple[int, int] | str = "center"):
    """Resize (T, 3, h, w) RGB and (T, 1, h, w) depth to cover ``size``, then crop to it.

    RGB: antialiased bilinear; depth: nearest (no blending across edges; invalid stays
    invalid). ``K`` (T, 3, 3) is scaled per axis and shifted by the crop (pixel centres at
    +0.5). ``offset``: (y0, x0) in the resized frame, "center" or "random". Returns
    (rgb, depth, K).
    """
    H, W = size
    h, w = rgb.shape[-2:]
    s = max(H / h, W / w)
    nh, nw = max(H, round(h * s)), max(W, round(w * s))
    K = K.clone()
    if (nh, nw) != (h, w):
        rgb = F.interpolate(rgb, size=(nh, nw), mode="bilinear", align_corners=False,
                            antialias=True).clamp(0, 1)
        depth = F.interpolate(depth, size=(nh, nw), mode="nearest-exact")
        K[:, 0, :] *= nw / w
        K[:, 1, :] *= nh / h
    if offset == "random":
        y0 = int(torch.randint(0, nh - H + 1, ()))
        x0 = int(torch.randint(0, nw - W + 1, ()))
    elif offset == "center":
        y0, x0 = (nh - H) // 2, (nw - W) // 2
    else:
        y0, x0 = offset
    K[:, 0, 2] -= x0
    K[:, 1, 2] -= y0
    return rgb[..., y0:y0 + H, x0:x0 + W], depth[..., y0:y0 + H, x0:x0 + W], K


_MIRROR = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0]))


def flip_horizontal(rgb, depth, K, poses):
    """Mirror frames left-right. K: cx -> W - cx; poses -> M @ poses @ M with M = diag(-1, 1, 1,
    1), i.e. the world is mirrored in x as well, which keeps rotations proper."""
    width = rgb.shape[-1]
    K = K.clone()
    K[:, 0, 2] = width - K[:, 0, 2]
    K[:, 0, 1] = -K[:, 0, 1]
    m = _MIRROR.to(poses)
    return rgb.flip(-1), depth.flip(-1), K, m @ poses @ m


# ----------------------------------------------------------------------------- dataset

class RGBDVideoDataset(SkippingDataset):
    """Clips of ``frames`` RGB-D frames at ``size`` from one or more roots (see the module doc).

    Args:
        root: a directory (or a list of them) in any layout of :mod:`rgbd_world.data.readers`.
        frames: frames per clip; must be ``1 + temporal_compression * k``.
        size: (H, W) of the returned frames, or None to keep the source size (then every clip
            must have the same size to be batched).
        format: "auto" or one of :data:`rgbd_world.data.readers.FORMATS`.
        augment: random temporal crop, random spatial crop and flips (else first frames,
            centre crop).
        frame_stride: take every ``frame_stride``-th source frame.
        depth_scale: metres per stored unit for the ``folder`` layout.
        min_depth, max_depth: valid depth range in metres (outside: invalid).
        min_valid_fraction: a clip with fewer valid depth pixels is bad (at least one needed).
    """

    def __init__(self, root: str | os.PathLike | Sequence[str | os.PathLike], frames: int = 17,
                 size: tuple[int, int] | None = (256, 256), *, format: str = "auto",
                 augment: bool = True, flip_prob: float = 0.5, frame_stride: int = 1,
                 temporal_compression: int = 8, depth_scale: float | None = None,
                 min_depth: float | None = None, max_depth: float | None = None,
                 min_valid_fraction: float = 0.01, camera: str | None = None,
                 render_pass: str = "final"):
        frames = check_int("frames", frames, 1)
        if temporal_compression > 1 and (frames - 1) % temporal_compression:
            raise InvalidArgument("frames", frames, f"1 + {temporal_compression}k (the "
                                  "tokenizer's temporal compression)")
        check_int("frame_stride", frame_stride, 1)
        if size is not None:
            if len(size) != 2:
                raise InvalidArgument("size", size, "(H, W) with positive entries, or None")
            check_int("height", size[0], 1)
            check_int("width", size[1], 1)
        self.frames, self.size, self.augment = int(frames), size, augment
        self.flip_prob, self.frame_stride = float(flip_prob), int(frame_stride)
        self.min_depth, self.max_depth = min_depth, max_depth
        self.min_valid_fraction = float(min_valid_fraction)
        roots = [root] if isinstance(root, (str, os.PathLike)) else list(root)
        if not roots:
            raise ValueError("root must name at least one directory")
        clips: list[ClipSource] = []
        problems: list[tuple[str, str]] = []
        for r in roots:
            found, bad = find_clips(r, format, depth_scale=depth_scale, camera=camera,
                                    render_pass=render_pass)
            clips += found
            problems += bad
        span = self.span
        self.clips = [c for c in clips if c.num_frames >= span]
        self.num_too_short = len(clips) - len(self.clips)
        if not self.clips:
            detail = f"{len(clips)} clips found, {self.num_too_short} shorter than {span} frames " \
                     f"(frames={frames}, frame_stride={frame_stride}), {len(problems)} unusable"
            if problems:
                detail += f" (first: {problems[0][0]}: {problems[0][1]})"
            raise ValueError(f"RGBDVideoDataset: no usable clips under "
                             f"{', '.join(map(str, roots))}: {detail}")
        if self.num_too_short:
            warnings.warn(f"RGBDVideoDataset: ignoring {self.num_too_short} clips shorter than "
                          f"{span} frames", stacklevel=2)
        self.roots = [Path(r) for r in roots]
        self._init_skipping([c.source for c in self.clips], problems)

    @property
    def span(self) -> int:
        """Source frames one sample covers."""
        return (self.frames - 1) * self.frame_stride + 1

    def __repr__(self) -> str:
        return (f"RGBDVideoDataset({len(self)} clips from {[str(r) for r in self.roots]}, "
                f"frames={self.frames}, size={self.size}, augment={self.augment}, "
                f"skipped={self.num_skipped})")

    def _frame_indices(self, clip: ClipSource) -> list[int]:
        last_start = clip.num_frames - self.span
        start = int(torch.randint(0, last_start + 1, ())) if self.augment and last_start else 0
        return list(range(start, start + self.span, self.frame_stride))

    def _load(self, index: int) -> dict:
        clip = self.clips[index]
        indices = self._frame_indices(clip)
        raw = clip.read(indices)
        return self.transform(raw, indices, source=clip.source, index=index,
                              caption=raw.caption or getattr(clip, "caption", ""))

    def transform(self, raw: RawClip, indices: Sequence[int], *, source: str = "",
                  index: int = -1, caption: str = "") -> dict:
        """Turn a decoded clip into a training sample (crop, resize, flip, disparity)."""
        T = len(indices)
        if raw.rgb.ndim != 4 or raw.rgb.shape[0] != T or raw.rgb.shape[-1] != 3:
            raise ValueError(f"{source}: RGB must be ({T}, H, W, 3), got {raw.rgb.shape}")
        if raw.depth.shape != raw.rgb.shape[:3]:
            raise ValueError(f"{source}: depth {raw.depth.shape} does not match RGB "
                             f"{raw.rgb.shape[:3]}")
        if min(raw.rgb.shape[1:3]) < 1:
            raise BadSampleError(f"{source}: frames of size {raw.rgb.shape[1]}x{raw.rgb.shape[2]}")
        rgb = torch.from_numpy(rgb_to_unit(raw.rgb, source)).permute(0, 3, 1, 2)
        depth = torch.from_numpy(np.ascontiguousarray(raw.depth, np.float32))[:, None]
        K = torch.from_numpy(np.array(raw.K, np.float32)).expand(T, 3, 3).clone()
        has_poses = raw.poses is not None
        poses = torch.from_numpy(as_poses_4x4(raw.poses, T, source)) if has_poses \
            else torch.eye(4).expand(T, 4, 4).clone()
        if self.size is not None:
            rgb, depth, K = resize_and_crop(rgb, depth, K, self.size,
                                            "random" if self.augment else "center")
        flipped = bool(self.augment and torch.rand(()) < self.flip_prob)
        if flipped:
            rgb, depth, K, poses = flip_horizontal(rgb, depth, K, poses)
        depth = depth.permute(1, 0, 2, 3).contiguous()                 # (1, T, H, W)
        disparity, valid = depth_to_disparity(depth, self.min_depth, self.max_depth)
        count = int(valid.sum())
        if count == 0 or count < self.min_valid_fraction * valid.numel():
            raise BadSampleError(f"{source}: {count} of {valid.numel()} depth pixels valid "
                                 f"(need a fraction >= {self.min_valid_fraction})")
        disparity, shift, scale = normalize_disparity(disparity, valid, per="clip")
        return {
            "rgb": (rgb.permute(1, 0, 2, 3) * 2 - 1).contiguous(),
            "disparity": disparity,
            "valid": valid,
            "depth": torch.where(valid, depth, torch.zeros_like(depth)),
            "disparity_shift": shift.reshape(()),
            "disparity_scale": scale.reshape(()),
            "K": K,
            "poses": poses,
            "has_poses": torch.tensor(has_poses),
            "caption": caption,
            "source": source,
            "index": index,
            "frame_indices": torch.tensor(list(indices), dtype=torch.long),
            "flipped": torch.tensor(flipped),
        }
