"""Pseudo-labelled RGB-D training data from ordinary videos.

``pseudo_label_videos(videos_dir, out_dir, depth_model=...)`` reads every video under
``videos_dir`` (mp4 / webm / mov / mkv / avi / gif files, and folders of image frames), splits it
into clips of ``frames`` frames, estimates per-frame relative depth with a model loaded from a
local path, makes the depth consistent over time within each clip, optionally captions each clip
with a local image-to-text model, and writes our shard format (``rgbd_world.data.shards``), one
shard per video, so ``RGBDVideoDataset`` and stage-2 training read the result like any other
shards.

Depth models (nothing is downloaded; ``depth_model`` is a local path):

* a Hugging Face depth-estimation directory (``transformers`` ``AutoModelForDepthEstimation`` +
  ``AutoImageProcessor``: DPT, Depth Anything, ...). These predict relative inverse depth
  (disparity, larger = nearer), one frame at a time;
* a TorchScript file taking float32 frames (N, 3, H, W) in [0, 1] and returning (N, H, W) or
  (N, 1, H, W). ``depth_output`` says whether it returns disparity or depth.

An image model's per-frame output has its own unknown scale and shift in every frame; a video
model's (``temporally_consistent=True``) does not. For image models each frame's disparity is
fitted (least squares, scale and shift) to the already-aligned previous frame on pixels that look
static (small RGB change between the two frames, refitted without the worst residuals): see
:func:`stabilize_disparity`. The manifest says which was done.

Stored depth is *relative*: ``depth = 1 / d`` where ``d`` is the clip's aligned disparity mapped
affinely onto [0.05, 1.05] (1st..99th percentile). Only affine-invariant uses are meaningful
(the affine-invariant disparity targets the models train on are); poses are unknown and not
stored (the dataset reports ``has_poses`` False), intrinsics are the default pinhole.

Resumable and atomic like ``make-data``: each shard is written through a temporary file and an
atomic rename, a rerun skips videos whose shard exists, and ``manifest.json`` (written first,
after every argument is validated) must match the settings of a rerun. Videos that cannot be
decoded or are shorter than one clip are skipped and counted in ``report.json``.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from rgbd_world.validation import InvalidArgument, check_int

from .readers import _natural_key, default_intrinsics
from .shards import (SHARD_FORMAT, progress_bar, remove_stale_temporaries, write_npz_atomic,
                     write_text_atomic)

__all__ = ["VIDEO_SUFFIXES", "IMAGE_SUFFIXES", "find_videos", "read_video", "split_clips",
           "DepthEstimator", "Captioner", "stabilize_disparity", "disparity_to_relative_depth",
           "pseudo_label_videos", "PSEUDO_LABEL_VERSION"]

PSEUDO_LABEL_VERSION = 1
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_MANIFEST = "manifest.json"
_REPORT = "report.json"


# ----------------------------------------------------------------------------- videos

def find_videos(root: str | os.PathLike) -> list[Path]:
    """Every video under ``root``, sorted: files with a video suffix, and folders that directly
    hold image frames (one folder = one video, frames in natural name order)."""
    root = Path(root)
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
            found.append(path)
        elif path.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()
                                   if p.is_file()):
            found.append(path)
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.iterdir() if p.is_file()):
        found.insert(0, root)
    return found


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode a video file or a folder of frames -> uint8 (T, H, W, 3). Raises ``ValueError``
    (saying why) for anything that is not a readable RGB video."""
    import imageio.v3 as iio

    path = Path(path)
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                       key=_natural_key)
        frames = [np.asarray(iio.imread(p)) for p in files]
        shapes = {f.shape[:2] for f in frames}
        if len(shapes) > 1:
            raise ValueError(f"frames of different sizes {sorted(shapes)}")
        video = np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)
    else:
        if path.stat().st_size == 0:
            raise ValueError("the file is empty")
        try:
            video = np.asarray(iio.imread(path, index=None))
        except Exception as err:  # noqa: BLE001 - every decoder error means "not a video"
            raise ValueError(" ".join(f"cannot decode it ({type(err).__name__}: {err})"
                                      .split())[:300]) from None
    if video.ndim == 3:                       # (T, H, W) grey, or a single (H, W, C) image
        video = video[..., None] if video.shape[-1] not in (3, 4) else video[None]
    if video.ndim != 4 or video.shape[-1] not in (1, 3, 4):
        raise ValueError(f"decoded to shape {video.shape}, not (T, H, W, 1|3|4)")
    if video.shape[-1] == 1:
        video = np.repeat(video, 3, axis=-1)
    video = video[..., :3]
    if video.dtype != np.uint8:
        if np.issubdtype(video.dtype, np.floating):
            video = (np.clip(video, 0, 1) * 255 + 0.5).astype(np.uint8)
        else:
            video = np.clip(video, 0, 255).astype(np.uint8)
    if min(video.shape[:3]) == 0:
        raise ValueError(f"no frames (shape {video.shape})")
    return np.ascontiguousarray(video)


def _resize_crop(video: np.ndarray, height: int | None, width: int | None) -> np.ndarray:
    """Resize (bilinear, shorter side first) and centre-crop to (height, width); None keeps it."""
    if height is None and width is None:
        return video
    from PIL import Image

    T, H, W, _ = video.shape
    height, width = height or H, width or W
    scale = max(height / H, width / W)
    h, w = max(height, round(H * scale)), max(width, round(W * scale))
    top, left = (h - height) // 2, (w - width) // 2
    out = np.empty((T, height, width, 3), np.uint8)
    for t in range(T):
        img = Image.fromarray(video[t]).resize((w, h), Image.BILINEAR)
        out[t] = np.asarray(img)[top:top + height, left:left + width]
    return out


def split_clips(video: np.ndarray, frames: int, stride: int | None = None) -> list[np.ndarray]:
    """Consecutive windows of ``frames`` frames every ``stride`` frames (default: no overlap);
    a tail shorter than ``frames`` is dropped."""
    stride = stride or frames
    return [video[s:s + frames] for s in range(0, video.shape[0] - frames + 1, stride)]


# ----------------------------------------------------------------------------- models

@dataclass
class DepthEstimator:
    """A per-frame relative depth model loaded from a local path.

    ``estimator(frames)``: uint8 (N, H, W, 3) -> float32 disparity (N, H, W) at the input size
    (relative inverse depth, larger = nearer; a depth output is inverted)."""

    predict: Callable[[np.ndarray], np.ndarray]
    record: dict

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str = "cpu", depth_output: str = "disparity",
             temporally_consistent: bool = False) -> "DepthEstimator":
        import torch

        path = Path(path)
        if depth_output not in ("disparity", "depth"):
            raise InvalidArgument("depth_output", depth_output, "'disparity' or 'depth'")
        if not path.exists():
            raise InvalidArgument("depth_model", str(path), "a local Hugging Face depth-estimation "
                                  "directory or a TorchScript file", "no such file or directory")
        record = {"path": str(path.resolve()), "output": depth_output,
                  "temporally_consistent": bool(temporally_consistent)}
        if path.is_dir():
            try:
                import transformers
                from transformers import AutoImageProcessor, AutoModelForDepthEstimation

                processor = AutoImageProcessor.from_pretrained(path)
                model = AutoModelForDepthEstimation.from_pretrained(path).to(device).eval()
            except Exception as err:  # noqa: BLE001 - any loading failure is a bad argument
                raise InvalidArgument("depth_model", str(path), "a local Hugging Face "
                                      "depth-estimation directory (config.json, weights, "
                                      "preprocessor_config.json)",
                                      f"cannot load it ({type(err).__name__}: {err})"[:300]) from None
            record.update(kind="transformers", model_type=model.config.model_type,
                          architecture=type(model).__name__, library_version=transformers.__version__)

            def raw(frames: np.ndarray) -> torch.Tensor:
                inputs = processor(images=list(frames), return_tensors="pt").to(device)
                return model(**inputs).predicted_depth
        else:
            try:
                module = torch.jit.load(str(path), map_location=device).eval()
            except Exception as err:  # noqa: BLE001
                raise InvalidArgument("depth_model", str(path), "a TorchScript file or a Hugging "
                                      "Face depth-estimation directory",
                                      f"cannot load it ({type(err).__name__}: {err})"[:300]) from None
            record.update(kind="torchscript", library_version=torch.__version__)

            def raw(frames: np.ndarray) -> torch.Tensor:
                x = torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float() / 255
                return module(x)

        def predict(frames: np.ndarray) -> np.ndarray:
            H, W = frames.shape[1:3]
            with torch.no_grad():
                out = raw(frames).float()
                if out.ndim == 4:
                    out = out[:, 0]
                if out.ndim != 3 or out.shape[0] != frames.shape[0]:
                    raise RuntimeError(f"depth model returned shape {tuple(out.shape)} for "
                                       f"{frames.shape[0]} frames; expected (N, H, W)")
                if out.shape[1:] != (H, W):
                    out = torch.nn.functional.interpolate(out[:, None], size=(H, W),
                                                          mode="bilinear", align_corners=False)[:, 0]
            out = out.cpu().numpy().astype(np.float32)
            if depth_output == "depth":
                with np.errstate(divide="ignore", invalid="ignore"):
                    out = np.where((out > 0) & np.isfinite(out), 1.0 / out, np.nan).astype(np.float32)
            return out

        return cls(predict=predict, record=record)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return self.predict(frames)


@dataclass
class Captioner:
    """A local image-to-text model: ``captioner(frame)`` with uint8 (H, W, 3) -> str."""

    caption: Callable[[np.ndarray], str]
    record: dict

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str = "cpu",
             max_new_tokens: int = 30) -> "Captioner":
        import torch

        path = Path(path)
        if not path.is_dir():
            raise InvalidArgument("captioner", str(path), "a local Hugging Face image-to-text "
                                  "model directory", "no such directory")
        try:
            import transformers

            config = transformers.AutoConfig.from_pretrained(path)
            if config.model_type == "vision-encoder-decoder":
                model = transformers.VisionEncoderDecoderModel.from_pretrained(path)
                image_processor = transformers.AutoImageProcessor.from_pretrained(path)
                tokenizer = transformers.AutoTokenizer.from_pretrained(path)

                def inputs_of(frame):
                    return image_processor(images=frame, return_tensors="pt")
            else:
                model = transformers.AutoModelForImageTextToText.from_pretrained(path)
                processor = transformers.AutoProcessor.from_pretrained(path)
                tokenizer = getattr(processor, "tokenizer", processor)

                def inputs_of(frame):
                    return processor(images=frame, return_tensors="pt")
            model = model.to(device).eval()
        except Exception as err:  # noqa: BLE001
            raise InvalidArgument("captioner", str(path), "a local Hugging Face image-to-text model "
                                  "directory (weights, config, processor/tokenizer)",
                                  f"cannot load it ({type(err).__name__}: {err})"[:300]) from None

        def caption(frame: np.ndarray) -> str:
            with torch.no_grad():
                inputs = inputs_of(frame).to(device)
                ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            return " ".join(tokenizer.decode(ids[0], skip_special_tokens=True).split())

        record = {"path": str(path.resolve()), "model_type": config.model_type,
                  "library_version": transformers.__version__, "max_new_tokens": max_new_tokens,
                  "frame": "middle"}
        return cls(caption=caption, record=record)

    def __call__(self, frame: np.ndarray) -> str:
        return self.caption(frame)


# ----------------------------------------------------------------------------- alignment

def _fit_scale_shift(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least squares ``s * x + b ~ y`` in float64, centred and scaled (exact at any magnitude)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    mx, my = x.mean(), y.mean()
    xc, yc = x - mx, y - my
    sx = np.abs(xc).max()
    if not np.isfinite(sx) or sx == 0:
        return 1.0, float(my - mx)
    xs = xc / sx
    s = float((xs * yc).sum() / (xs * xs).sum()) / sx
    return s, float(my - s * mx)


def stabilize_disparity(disparity: np.ndarray, rgb: np.ndarray, *, static_fraction: float = 0.5,
                        keep_fraction: float = 0.8, min_pixels: int = 16) -> tuple[np.ndarray, list]:
    """Align each frame's disparity to the already-aligned previous one (scale and shift).

    disparity: float (T, H, W), each frame with its own unknown scale and shift (non-finite =
    invalid); rgb: (T, H, W, 3) uint8 or float. For frame t the fit uses pixels whose RGB change
    from frame t-1 is within the lowest ``static_fraction`` (static-looking pixels), then refits
    on the ``keep_fraction`` with the smallest residuals (moving objects and occlusions drop out).
    A fit with a non-positive or non-finite scale falls back to all valid pixels, then to the
    identity. Returns the aligned float32 (T, H, W) and a per-frame list of (scale, shift).
    """
    d = np.asarray(disparity, np.float64)
    if d.ndim != 3:
        raise InvalidArgument("disparity", f"shape {d.shape}", "a (T, H, W) array")
    if rgb.shape[:3] != d.shape:
        raise InvalidArgument("rgb", f"shape {rgb.shape}", f"(T, H, W, 3) with (T, H, W) = {d.shape}")
    colour = np.asarray(rgb, np.float64)
    aligned = np.empty_like(d)
    aligned[0] = d[0]
    fits = [(1.0, 0.0)]
    for t in range(1, d.shape[0]):
        valid = np.isfinite(d[t]) & np.isfinite(aligned[t - 1])
        change = np.abs(colour[t] - colour[t - 1]).mean(-1)
        fit = None
        if valid.sum() >= min_pixels:
            threshold = np.quantile(change[valid], static_fraction)
            static = valid & (change <= threshold)
            for mask in (static, valid):
                if mask.sum() < min_pixels:
                    continue
                x, y = d[t][mask], aligned[t - 1][mask]
                s, b = _fit_scale_shift(x, y)
                residual = np.abs(s * x + b - y)
                keep = residual <= np.quantile(residual, keep_fraction)
                if keep.sum() >= min_pixels:
                    s, b = _fit_scale_shift(x[keep], y[keep])
                if np.isfinite(s) and np.isfinite(b) and s > 0:
                    fit = (s, b)
                    break
        fit = fit or (1.0, 0.0)
        fits.append(fit)
        aligned[t] = fit[0] * d[t] + fit[1]
    return aligned.astype(np.float32), fits


def disparity_to_relative_depth(disparity: np.ndarray) -> np.ndarray:
    """Aligned disparity (T, H, W) -> float32 relative depth 1 / d, with d the disparity mapped
    affinely so its 1st..99th percentile spans [0.05, 1.05] (clamped below at 0.01); invalid
    pixels -> inf. Any positive affine map gives the same affine-invariant disparity."""
    d = np.asarray(disparity, np.float64)
    valid = np.isfinite(d)
    if not valid.any():
        return np.full(d.shape, np.inf, np.float32)
    lo, hi = np.quantile(d[valid], [0.01, 0.99])
    span = hi - lo if hi > lo else 1.0
    mapped = np.clip((d - lo) / span + 0.05, 0.01, None)
    return np.where(valid, 1.0 / mapped, np.inf).astype(np.float32)


# ----------------------------------------------------------------------------- the command

def _read_captions_file(path: Path) -> dict[str, str]:
    """Captions given by the user: JSON ``{"<video name>": "caption"}`` or text lines
    ``<video name><TAB>caption``; a video's name is its file or folder name."""
    if not path.is_file():
        raise InvalidArgument("captions", str(path), "a JSON or tab-separated text file",
                              "no such file")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InvalidArgument("captions", str(path), "a JSON object {video name: caption}",
                                  f"not valid JSON ({err})") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise InvalidArgument("captions", str(path), "a JSON object {video name: caption}",
                                  f"got a {type(data).__name__}")
        return data
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise InvalidArgument("captions", str(path), "lines '<video name><TAB><caption>'",
                                  f"line {n} has no tab")
        name, caption = line.split("\t", 1)
        out[name.strip()] = caption.strip()
    return out


def pseudo_label_videos(videos: str | os.PathLike, out_dir: str | os.PathLike, *,
                        depth_model: str | os.PathLike | DepthEstimator,
                        captioner: str | os.PathLike | Captioner | None = None,
                        captions: str | os.PathLike | None = None, frames: int = 17,
                        stride: int | None = None, height: int | None = None,
                        width: int | None = None, depth_output: str = "disparity",
                        temporally_consistent: bool = False, batch_frames: int = 8,
                        device: str = "cpu", progress: bool = True,
                        on_shard: Callable[[int], None] | None = None) -> dict:
    """Turn every video under ``videos`` into pseudo-labelled RGB-D shards in ``out_dir``.

    One shard per video (``shard-<video index>.npz``), clips of ``frames`` frames every ``stride``
    frames, resized/cropped to ``height`` x ``width`` when given. Returns the report (also written
    to ``report.json``): videos found, shards written or already present, clips, and skipped videos
    with their reasons. ``on_shard(index)`` is called after each shard (tests use it to simulate
    a kill)."""
    videos = Path(videos)
    if not videos.is_dir():
        raise InvalidArgument("videos", str(videos), "a directory of videos", "no such directory")
    check_int("frames", frames, 1)
    check_int("stride", stride, 1, allow_none=True)
    check_int("height", height, 8, allow_none=True)
    check_int("width", width, 8, allow_none=True)
    check_int("batch_frames", batch_frames, 1)
    given_captions = _read_captions_file(Path(captions)) if captions is not None else None
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidArgument("out", str(out), "a directory (new or from an earlier run)",
                              "it is a file")
    # every model is loaded (and so validated) before anything is written
    estimator = depth_model if isinstance(depth_model, DepthEstimator) else DepthEstimator.load(
        depth_model, device=device, depth_output=depth_output,
        temporally_consistent=temporally_consistent)
    captioner_model = captioner if (captioner is None or isinstance(captioner, Captioner)) \
        else Captioner.load(captioner, device=device)
    if captioner_model is None and given_captions is None:
        warnings.warn("no captioner and no captions file: clips get empty captions",
                      stacklevel=2)
    stabilised = not estimator.record.get("temporally_consistent", False)
    record = {"version": PSEUDO_LABEL_VERSION, "depth_model": estimator.record,
              "temporal_stabilisation": ("per-frame scale and shift fitted to the previous frame "
                                         "on static-looking pixels") if stabilised else "none "
                                        "(the depth model is temporally consistent)",
              "captions": ({"captioner": captioner_model.record} if captioner_model is not None
                           else {"file": str(Path(captions).resolve())} if given_captions is not None
                           else "none"),
              "depth": "relative: 1 / (clip disparity mapped to [0.05, 1.05]); no metric scale",
              "poses": "unknown (not stored)", "intrinsics": "default pinhole"}
    config = {"format": SHARD_FORMAT, "version": 1, "kind": "pseudo-labelled", "frames": frames,
              "stride": stride or frames, "height": height, "width": width,
              "videos": str(videos.resolve()), "pseudo_label": record}
    found = find_videos(videos)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / _MANIFEST
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise InvalidArgument("out", str(out), "an empty directory or one from an earlier "
                                  "pseudo-label run", f"unreadable {manifest} ({err})") from None
        if old != config:
            differ = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise InvalidArgument("out", str(out), "an empty directory or one from a run with the "
                                  "same settings", f"{manifest} was written with other settings "
                                  f"({', '.join(differ)})")
    else:
        write_text_atomic(manifest, json.dumps(config, indent=1))
    remove_stale_temporaries(out)

    report = {"videos": len(found), "shards_written": 0, "shards_present": 0, "clips": 0,
              "skipped": []}
    with progress_bar(total=len(found), desc="pseudo-label", unit="video",
                      disable=not progress) as bar:
        for index, video_path in enumerate(found):
            path = out / f"shard-{index:06d}.npz"
            name = video_path.name if video_path != videos else "."
            if path.exists():
                report["shards_present"] += 1
                bar.update()
                continue
            try:
                video = _resize_crop(read_video(video_path), height, width)
            except Exception as err:  # noqa: BLE001 - a bad video is skipped and counted
                report["skipped"].append({"video": str(video_path),
                                          "reason": f"{type(err).__name__}: {err}"[:300]})
                bar.update()
                continue
            clips = split_clips(video, frames, stride)
            if not clips:
                report["skipped"].append({"video": str(video_path), "reason": f"{video.shape[0]} "
                                          f"frames, shorter than one clip of {frames}"})
                bar.update()
                continue
            arrays, metas = {}, []
            for c, clip in enumerate(clips):
                disparity = np.concatenate([estimator(clip[s:s + batch_frames])
                                            for s in range(0, clip.shape[0], batch_frames)])
                fits = None
                if stabilised:
                    disparity, fits = stabilize_disparity(disparity, clip)
                if captioner_model is not None:
                    caption = captioner_model(clip[clip.shape[0] // 2])
                elif given_captions is not None:
                    caption = given_captions.get(name, "")
                else:
                    caption = ""
                clip_name = f"clip-{index:06d}-{c:04d}"
                T, H, W, _ = clip.shape
                arrays[f"{clip_name}/rgb"] = clip
                arrays[f"{clip_name}/depth"] = disparity_to_relative_depth(disparity)
                arrays[f"{clip_name}/K"] = np.asarray(default_intrinsics(H, W), np.float32)
                metas.append({"name": clip_name, "frames": T, "height": H, "width": W,
                              "caption": caption, "scene": None, "seed": None,
                              "video": str(video_path.relative_to(videos)) if video_path != videos
                              else ".", "start_frame": c * (stride or frames),
                              "pseudo_label": {"version": PSEUDO_LABEL_VERSION,
                                               "frame_fits": fits}})
            meta = {"format": SHARD_FORMAT, "version": 1, "clips": metas, "pseudo_label": record}
            arrays["meta"] = np.array(json.dumps(meta))
            write_npz_atomic(path, arrays)
            report["shards_written"] += 1
            report["clips"] += len(clips)
            bar.update()
            if on_shard is not None:
                on_shard(index)
    write_text_atomic(out / _REPORT, json.dumps(report, indent=1))
    return report
