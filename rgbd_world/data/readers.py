"""Readers for RGB-D video data on disk: our shards and the formats users already have.

Each ``find_*_clips(root, ...)`` indexes a directory tree without decoding frames and returns
``(clips, problems)``: ``clips`` are :class:`ClipSource` objects (picklable, so they work in
DataLoader workers) and ``problems`` are ``(path, reason)`` pairs for clips that cannot be used
(for example an RGB/depth frame-count mismatch). ``clip.read(indices)`` decodes the frames into
a :class:`RawClip`: RGB uint8, depth float32 in metres with invalid pixels as ``nan``/``inf``/0,
intrinsics per frame and camera-to-world poses in OpenCV axes (x right, y down, z forward) when
the format has them.

Layouts:

- ``shards``: ``shard-*.npz`` written by :func:`rgbd_world.data.shards.generate_dataset`.
- ``vkitti2``: Virtual KITTI 2, ``<Scene>/<variation>/frames/rgb/Camera_k/rgb_%05d.jpg`` and
  ``frames/depth/Camera_k/depth_%05d.png`` (uint16 centimetres; 65535 = sky/far, invalid),
  optional ``intrinsic.txt`` / ``extrinsic.txt`` (world-to-camera) next to ``frames``.
- ``tartanair``: ``<env>/<Easy|Hard>/Pxxx/image_left/%06d_left.png``,
  ``depth_left/%06d_left_depth.npy`` (float32 metres), ``pose_left.txt`` (``tx ty tz qx qy qz
  qw`` per line, camera-to-world in NED, camera x forward, y right, z down); K = (320, 320,
  320, 240).
- ``sintel``: MPI Sintel, ``<split>/depth/<scene>/frame_%04d.dpt`` (float32 tag 202021.25, int32
  width, int32 height, float32 depth), ``<split>/{final,clean}/<scene>/frame_%04d.png`` and
  optional ``<split>/camdata_left/<scene>/frame_%04d.cam`` (tag, 3x3 K and 3x4 world-to-camera,
  float64).
- ``folder``: any ``<clip>/frames/*.{png,jpg}`` with ``<clip>/depth/*.png`` (16-bit) or
  ``*.npy``; depth = stored value * ``depth_scale`` (default 0.001 for PNG, i.e. millimetres,
  and 1.0 for .npy), 0 = invalid. Optional ``caption.txt``, ``intrinsics.txt`` (3x3 matrix or
  ``fx fy cx cy``) and ``poses.txt``/``poses.npy`` ((T, 4, 4) camera-to-world, OpenCV axes).
  ``<root>`` may itself be one clip.
"""
from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .shards import SHARD_FORMAT, SHARD_GLOB

__all__ = ["RawClip", "ClipSource", "ShardClip", "FrameClip", "FORMATS", "find_clips",
           "detect_format", "find_shard_clips", "find_vkitti2_clips", "find_tartanair_clips",
           "find_sintel_clips", "find_folder_clips", "read_rgb", "read_png16", "write_png16",
           "read_dpt", "write_dpt", "read_sintel_cam", "write_sintel_cam", "default_intrinsics"]

DPT_TAG = 202021.25
_IMAGE_EXT = (".png", ".jpg", ".jpeg")
TARTANAIR_K = (320.0, 320.0, 320.0, 240.0)
VKITTI2_K = (725.0087, 725.0087, 620.5, 187.0)


@dataclass
class RawClip:
    rgb: np.ndarray               # (T, H, W, 3) uint8
    depth: np.ndarray             # (T, H, W) float32 metres; non-finite or <= 0 = invalid
    K: np.ndarray                 # (T, 3, 3) float32, pixel centres at +0.5
    poses: np.ndarray | None      # (T, 4, 4) float32 camera-to-world (OpenCV axes) or None
    caption: str = ""


class ClipSource:
    """One clip on disk. ``source`` names it in messages; ``read`` decodes chosen frames."""

    source: str
    num_frames: int
    caption: str

    def read(self, indices: Sequence[int]) -> RawClip:  # pragma: no cover - interface
        raise NotImplementedError


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _list(directory: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if p.suffix.lower() in suffixes
                   and not p.name.startswith(".")), key=_natural_key)


def default_intrinsics(height: int, width: int) -> np.ndarray:
    """Assumed K when a format stores none: focal = max(H, W) (about 53 degrees), centred."""
    f = float(max(height, width))
    return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], np.float32)


# ----------------------------------------------------------------------------- file formats

def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8. Raises OSError on a missing, truncated or unreadable image."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def read_png16(path: str | os.PathLike) -> np.ndarray:
    """(H, W) uint16 from a 16-bit grayscale PNG (ValueError for 8-bit or colour PNGs)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
            raise ValueError(f"{path}: expected a 16-bit grayscale PNG, got mode {im.mode}")
        arr = np.asarray(im)
    if arr.dtype != np.uint16:
        if arr.min() < 0 or arr.max() > 65535:
            raise ValueError(f"{path}: values outside uint16")
        arr = arr.astype(np.uint16)
    return arr


def write_png16(path: str | os.PathLike, values: np.ndarray) -> None:
    """Write (H, W) uint16 as a 16-bit grayscale PNG."""
    from PIL import Image

    values = np.asarray(values)
    if values.dtype != np.uint16 or values.ndim != 2:
        raise ValueError(f"need a 2-D uint16 array, got {values.dtype} {values.shape}")
    Image.fromarray(values).save(path, format="PNG")


def read_dpt(path: str | os.PathLike) -> np.ndarray:
    """MPI Sintel .dpt depth: float32 tag 202021.25, int32 width, int32 height, float32 data."""
    data = Path(path).read_bytes()
    if len(data) < 12:
        raise ValueError(f"{path}: truncated .dpt header ({len(data)} bytes)")
    tag, width, height = struct.unpack("<fii", data[:12])
    if tag != np.float32(DPT_TAG):
        raise ValueError(f"{path}: bad .dpt tag {tag} (expected {DPT_TAG}); wrong endianness?")
    if not (0 < width < 100_000 and 0 < height < 100_000):
        raise ValueError(f"{path}: implausible .dpt size {width}x{height}")
    expected = 12 + 4 * width * height
    if len(data) != expected:
        raise ValueError(f"{path}: .dpt is {len(data)} bytes, expected {expected} for "
                         f"{width}x{height} (truncated?)")
    return np.frombuffer(data, dtype="<f4", offset=12).reshape(height, width).copy()


def write_dpt(path: str | os.PathLike, depth: np.ndarray) -> None:
    depth = np.asarray(depth, dtype="<f4")
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got {depth.shape}")
    with open(path, "wb") as fh:
        fh.write(struct.pack("<fii", DPT_TAG, depth.shape[1], depth.shape[0]))
        fh.write(depth.tobytes())


def read_sintel_cam(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """MPI Sintel .cam: (K (3, 3), world-to-camera (3, 4)), float64."""
    data = Path(path).read_bytes()
    if len(data) != 4 + 8 * 21:
        raise ValueError(f"{path}: .cam is {len(data)} bytes, expected {4 + 8 * 21}")
    (tag,) = struct.unpack("<f", data[:4])
    if tag != np.float32(DPT_TAG):
        raise ValueError(f"{path}: bad .cam tag {tag}")
    vals = np.frombuffer(data, dtype="<f8", offset=4)
    return vals[:9].reshape(3, 3).copy(), vals[9:].reshape(3, 4).copy()


def write_sintel_cam(path: str | os.PathLike, K: np.ndarray, world_to_cam: np.ndarray) -> None:
    with open(path, "wb") as fh:
        fh.write(struct.pack("<f", DPT_TAG))
        fh.write(np.asarray(K, "<f8").reshape(9).tobytes())
        fh.write(np.asarray(world_to_cam, "<f8")[:3].reshape(12).tobytes())


def _invert_rigid(m: np.ndarray) -> np.ndarray:
    """Inverse of (..., 3|4, 4) rigid transforms as (..., 4, 4)."""
    r, t = m[..., :3, :3], m[..., :3, 3]
    out = np.zeros(m.shape[:-2] + (4, 4))
    out[..., :3, :3] = np.swapaxes(r, -1, -2)
    out[..., :3, 3] = -np.einsum("...ji,...j->...i", r, t)
    out[..., 3, 3] = 1
    return out


# ----------------------------------------------------------------------------- clip sources

@dataclass
class ShardClip(ClipSource):
    path: str
    name: str
    num_frames: int
    caption: str = ""

    @property
    def source(self) -> str:
        return f"{self.path}[{self.name}]"

    def read(self, indices: Sequence[int]) -> RawClip:
        idx = np.asarray(indices)
        with np.load(self.path, allow_pickle=False) as z:
            rgb = z[f"{self.name}/rgb"]
            depth = z[f"{self.name}/depth"]
            K = z[f"{self.name}/K"]
            poses = z[f"{self.name}/poses"] if f"{self.name}/poses" in z.files else None
        if rgb.shape[0] != depth.shape[0] or rgb.shape[0] != self.num_frames:
            raise ValueError(f"{self.source}: {rgb.shape[0]} RGB frames, {depth.shape[0]} depth "
                             f"frames, meta says {self.num_frames}")
        return RawClip(rgb=rgb[idx], depth=depth[idx].astype(np.float32),
                       K=np.broadcast_to(K.astype(np.float32), (len(idx), 3, 3)).copy(),
                       poses=None if poses is None else poses[idx].astype(np.float32),
                       caption=self.caption)


@dataclass
class FrameClip(ClipSource):
    """A clip stored as one file per frame (every non-shard format)."""

    rgb_paths: list[str]
    depth_paths: list[str]
    depth_format: str                       # "png16" | "npy" | "dpt"
    depth_scale: float = 1.0                # metres per stored unit
    invalid_values: tuple[float, ...] = (0.0,)
    K: np.ndarray | None = None             # (3, 3) or (T, 3, 3); None: default_intrinsics
    poses: np.ndarray | None = None         # (T, 4, 4) camera-to-world, OpenCV axes
    caption: str = ""
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.rgb_paths)

    def _depth(self, path: str) -> np.ndarray:
        if self.depth_format == "png16":
            raw = read_png16(path).astype(np.float32)
        elif self.depth_format == "npy":
            raw = np.load(path, allow_pickle=False).astype(np.float32)
        elif self.depth_format == "dpt":
            raw = read_dpt(path)
        else:
            raise ValueError(f"unknown depth format {self.depth_format!r}")
        if raw.ndim == 3 and raw.shape[-1] == 1:
            raw = raw[..., 0]
        if raw.ndim != 2:
            raise ValueError(f"{path}: depth must be (H, W), got shape {raw.shape}")
        bad = np.zeros(raw.shape, bool)
        for v in self.invalid_values:
            bad |= raw == v
        depth = raw * np.float32(self.depth_scale)
        depth[bad] = np.nan
        return depth

    def read(self, indices: Sequence[int]) -> RawClip:
        if len(self.rgb_paths) != len(self.depth_paths):
            raise ValueError(f"{self.source}: {len(self.rgb_paths)} RGB frames but "
                             f"{len(self.depth_paths)} depth frames")
        rgb = np.stack([read_rgb(self.rgb_paths[i]) for i in indices])
        depth = np.stack([self._depth(self.depth_paths[i]) for i in indices])
        if rgb.shape[1:3] != depth.shape[1:3]:
            raise ValueError(f"{self.source}: RGB frames are {rgb.shape[1:3]} but depth frames "
                             f"are {depth.shape[1:3]} ({self.depth_paths[indices[0]]})")
        idx = np.asarray(indices)
        if self.K is None:
            K = np.broadcast_to(default_intrinsics(*rgb.shape[1:3]), (len(idx), 3, 3))
        else:
            K = np.asarray(self.K, np.float32)
            K = K[idx] if K.ndim == 3 else np.broadcast_to(K, (len(idx), 3, 3))
        poses = None if self.poses is None else np.asarray(self.poses, np.float32)[idx]
        return RawClip(rgb=rgb, depth=depth, K=np.array(K, np.float32), poses=poses,
                       caption=self.caption)


def _pair(source: str, rgb: list[Path], depth: list[Path], problems: list) -> bool:
    if not rgb or not depth:
        problems.append((source, f"no {'RGB' if not rgb else 'depth'} frames found"))
        return False
    if len(rgb) != len(depth):
        problems.append((source, f"frame-count mismatch: {len(rgb)} RGB frames in "
                                 f"{rgb[0].parent}, {len(depth)} depth frames in {depth[0].parent}"))
        return False
    return True


# ----------------------------------------------------------------------------- finders

def find_shard_clips(root: str | os.PathLike) -> tuple[list[ClipSource], list]:
    clips, problems = [], []
    for path in sorted(Path(root).rglob(SHARD_GLOB)):
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
            if meta.get("format") != SHARD_FORMAT:
                raise ValueError(f"format {meta.get('format')!r} is not {SHARD_FORMAT!r}")
            for c in meta["clips"]:
                clips.append(ShardClip(str(path), c["name"], int(c["frames"]), c["caption"]))
        except Exception as err:  # noqa: BLE001 - any unreadable shard is skipped and counted
            problems.append((str(path), f"unreadable shard ({type(err).__name__}: {err})"))
    return clips, problems


def _read_matrix_file(path: Path) -> np.ndarray:
    return np.loadtxt(path, dtype=np.float64, ndmin=2)


def _vkitti2_caption(variation: str) -> str:
    weather = {"fog": " in fog", "rain": " in the rain", "morning": " in the morning",
               "sunset": " at sunset", "overcast": " on an overcast day"}.get(variation, "")
    return f"a car drives along a road through a small town{weather}, filmed from the car"


def find_vkitti2_clips(root: str | os.PathLike, camera: str | None = None):
    """Virtual KITTI 2 (see the module doc); ``camera`` e.g. "Camera_0" (default: all)."""
    clips, problems = [], []
    for rgb_dir in sorted(Path(root).rglob("frames/rgb/Camera_*")):
        if camera and rgb_dir.name != camera:
            continue
        base = rgb_dir.parents[2]                       # <Scene>/<variation>
        depth_dir = base / "frames" / "depth" / rgb_dir.name
        rgb, depth = _list(rgb_dir, _IMAGE_EXT), _list(depth_dir, (".png",))
        source = str(rgb_dir)
        if not _pair(source, rgb, depth, problems):
            continue
        cam_id = int(rgb_dir.name.split("_")[-1])
        frame_ids = [int(re.findall(r"\d+", p.stem)[-1]) for p in rgb]
        K = poses = None
        try:
            if (base / "intrinsic.txt").exists():
                rows = np.loadtxt(base / "intrinsic.txt", skiprows=1, ndmin=2)
                table = {(int(r[0]), int(r[1])): r[2:6] for r in rows}
                K = np.zeros((len(rgb), 3, 3), np.float32)
                for k, fid in enumerate(frame_ids):
                    fx, fy, cx, cy = table[(fid, cam_id)]
                    K[k] = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]
            if (base / "extrinsic.txt").exists():
                rows = np.loadtxt(base / "extrinsic.txt", skiprows=1, ndmin=2)
                table = {(int(r[0]), int(r[1])): r[2:18].reshape(4, 4) for r in rows}
                w2c = np.stack([table[(fid, cam_id)] for fid in frame_ids])
                poses = _invert_rigid(w2c).astype(np.float32)
        except (OSError, ValueError, KeyError) as err:
            problems.append((str(base), f"bad intrinsic/extrinsic file ({err})"))
            continue
        if K is None:
            fx, fy, cx, cy = VKITTI2_K
            K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float32)
        clips.append(FrameClip([str(p) for p in rgb], [str(p) for p in depth], "png16",
                               depth_scale=0.01, invalid_values=(0.0, 65535.0), K=K,
                               poses=poses, caption=_vkitti2_caption(base.name), source=source))
    return clips, problems


def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(N, 4) quaternions (x, y, z, w) -> (N, 3, 3) rotations."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    x, y, z, w = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], 1)


# OpenCV camera axes (x right, y down, z forward) expressed in TartanAir's NED camera axes
# (x forward, y right, z down)
_CV_TO_NED = np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]])


def tartanair_poses(lines: np.ndarray) -> np.ndarray:
    """TartanAir ``tx ty tz qx qy qz qw`` rows (NED) -> (N, 4, 4) camera-to-world, OpenCV axes."""
    lines = np.asarray(lines, np.float64).reshape(-1, 7)
    poses = np.zeros((len(lines), 4, 4))
    poses[:, :3, :3] = _quat_to_matrix(lines[:, 3:]) @ _CV_TO_NED
    poses[:, :3, 3] = lines[:, :3]
    poses[:, 3, 3] = 1
    return poses


def find_tartanair_clips(root: str | os.PathLike, camera: str = "left"):
    clips, problems = [], []
    for rgb_dir in sorted(Path(root).rglob(f"image_{camera}")):
        base = rgb_dir.parent
        rgb = _list(rgb_dir, _IMAGE_EXT)
        depth = _list(base / f"depth_{camera}", (".npy",))
        source = str(base)
        if not _pair(source, rgb, depth, problems):
            continue
        poses = None
        pose_file = base / f"pose_{camera}.txt"
        if pose_file.exists():
            try:
                poses = tartanair_poses(np.loadtxt(pose_file, ndmin=2)).astype(np.float32)
            except ValueError as err:
                problems.append((str(pose_file), f"unreadable poses ({err})"))
                continue
            if len(poses) != len(rgb):
                problems.append((str(pose_file), f"{len(poses)} poses for {len(rgb)} frames"))
                continue
        fx, fy, cx, cy = TARTANAIR_K
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float32)
        clips.append(FrameClip([str(p) for p in rgb], [str(p) for p in depth], "npy",
                               invalid_values=(), K=K, poses=poses,
                               caption=f"a camera flies through a {base.parts[-3] if len(base.parts) >= 3 else 'simulated'} environment",  # noqa: E501
                               source=source))
    return clips, problems


def find_sintel_clips(root: str | os.PathLike, render_pass: str = "final"):
    clips, problems = [], []
    for depth_root in sorted(p for p in Path(root).rglob("depth") if p.is_dir()):
        split = depth_root.parent
        for scene in sorted(p for p in depth_root.iterdir() if p.is_dir()):
            depth = _list(scene, (".dpt",))
            if not depth:
                continue
            rgb_dir = split / render_pass / scene.name
            if not rgb_dir.is_dir():
                rgb_dir = split / ("clean" if render_pass == "final" else "final") / scene.name
            rgb = _list(rgb_dir, _IMAGE_EXT)
            if not _pair(str(scene), rgb, depth, problems):
                continue
            K = poses = None
            cams = _list(split / "camdata_left" / scene.name, (".cam",))
            if cams:
                try:
                    pairs = [read_sintel_cam(p) for p in cams]
                except (OSError, ValueError) as err:
                    problems.append((str(scene), f"bad camera file ({err})"))
                    continue
                if len(pairs) != len(rgb):
                    problems.append((str(scene), f"{len(pairs)} camera files for {len(rgb)} frames"))
                    continue
                K = np.stack([k for k, _ in pairs]).astype(np.float32)
                poses = _invert_rigid(np.stack([n for _, n in pairs])).astype(np.float32)
            clips.append(FrameClip([str(p) for p in rgb], [str(p) for p in depth], "dpt",
                                   invalid_values=(), K=K, poses=poses,
                                   caption=f"an animated film scene ({scene.name.replace('_', ' ')})",
                                   source=str(scene)))
    return clips, problems


def _read_intrinsics(path: Path) -> np.ndarray:
    vals = np.loadtxt(path, dtype=np.float64).reshape(-1)
    if vals.size == 4:
        fx, fy, cx, cy = vals
        return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float32)
    if vals.size == 9:
        return vals.reshape(3, 3).astype(np.float32)
    raise ValueError(f"{path}: expected 'fx fy cx cy' or a 3x3 matrix, got {vals.size} numbers")


def _poses_array(arr: np.ndarray, path: Path) -> np.ndarray:
    """Poses as stored -> (T, 4, 4) float32: (T, 4, 4), (T, 3, 4) (last row implied) or one pose
    per line of 16 or 12 numbers (row-major)."""
    arr = np.asarray(arr, np.float32)
    if arr.ndim == 2 and arr.shape[1] in (12, 16):
        arr = arr.reshape(len(arr), -1, 4)
    if arr.ndim == 3 and arr.shape[1:] == (3, 4):
        full = np.zeros((len(arr), 4, 4), np.float32)
        full[:, :3], full[:, 3, 3] = arr, 1
        arr = full
    if arr.ndim != 3 or arr.shape[1:] != (4, 4):
        raise ValueError(f"{path}: poses must be (T, 4, 4), (T, 3, 4) or T lines of 12 or 16 "
                         f"numbers, got shape {arr.shape}")
    return arr


def find_folder_clips(root: str | os.PathLike, depth_scale: float | None = None):
    clips, problems = [], []
    root = Path(root)
    frame_dirs = [root / "frames"] if (root / "frames").is_dir() else \
        sorted(p for p in root.rglob("frames") if p.is_dir())
    for frames_dir in frame_dirs:
        base = frames_dir.parent
        rgb = _list(frames_dir, _IMAGE_EXT)
        npy, png = _list(base / "depth", (".npy",)), _list(base / "depth", (".png",))
        if npy and png:
            problems.append((str(base / "depth"), "depth/ holds both .npy and .png frames"))
            continue
        depth, fmt = (npy, "npy") if npy else (png, "png16")
        if not _pair(str(base), rgb, depth, problems):
            continue
        scale = depth_scale if depth_scale is not None else (1.0 if fmt == "npy" else 0.001)
        try:
            caption = (base / "caption.txt").read_text().strip() \
                if (base / "caption.txt").exists() else ""
            K = _read_intrinsics(base / "intrinsics.txt") \
                if (base / "intrinsics.txt").exists() else None
            poses = None
            if (base / "poses.npy").exists():
                poses = _poses_array(np.load(base / "poses.npy", allow_pickle=False),
                                     base / "poses.npy")
            elif (base / "poses.txt").exists():
                poses = _poses_array(np.loadtxt(base / "poses.txt", ndmin=2), base / "poses.txt")
            if poses is not None and len(poses) != len(rgb):
                raise ValueError(f"{len(poses)} poses for {len(rgb)} frames")
        except (OSError, ValueError) as err:
            problems.append((str(base), f"bad metadata ({err})"))
            continue
        clips.append(FrameClip([str(p) for p in rgb], [str(p) for p in depth], fmt,
                               depth_scale=scale, invalid_values=(0.0,), K=K, poses=poses,
                               caption=caption, source=str(base)))
    return clips, problems


FORMATS = {"shards": find_shard_clips, "vkitti2": find_vkitti2_clips,
           "tartanair": find_tartanair_clips, "sintel": find_sintel_clips,
           "folder": find_folder_clips}


def detect_format(root: str | os.PathLike) -> str | None:
    """Guess the layout under ``root`` (None if nothing recognizable)."""
    root = Path(root)
    checks = (("shards", SHARD_GLOB), ("sintel", "*.dpt"), ("tartanair", "image_left"),
              ("vkitti2", "Camera_*"), ("folder", "frames"))
    for name, pattern in checks:
        for p in root.rglob(pattern):
            if name == "vkitti2" and p.parent.name != "rgb":
                continue
            return name
    return None


def find_clips(root: str | os.PathLike, format: str = "auto", **options):
    """Index ``root`` in ``format`` ("auto" detects it); returns ``(clips, problems)``.

    Raises FileNotFoundError if ``root`` does not exist and ValueError for an unknown format or
    a tree with nothing recognizable.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset root {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"dataset root {root} is not a directory")
    if format == "auto":
        detected = detect_format(root)
        if detected is None:
            raise ValueError(f"no RGB-D data recognized under {root}: looked for {SHARD_GLOB} "
                             "shards, Sintel .dpt, TartanAir image_left/, Virtual KITTI 2 "
                             "frames/rgb/Camera_*/ and <clip>/frames/ + <clip>/depth/ folders")
        format = detected
    if format not in FORMATS:
        raise ValueError(f"format must be 'auto' or one of {sorted(FORMATS)}, got {format!r}")
    finder = FORMATS[format]
    accepted = {"vkitti2": {"camera"}, "tartanair": {"camera"}, "sintel": {"render_pass"},
                "folder": {"depth_scale"}, "shards": set()}[format]
    kwargs = {k: v for k, v in options.items() if k in accepted and v is not None}
    return finder(root, **kwargs)
