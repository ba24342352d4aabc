"""Prompt adherence of generated RGB-D videos to the procedural scene their caption describes.

Captions of procedural clips (:mod:`rgbd_world.data.captions`) name every object by colour and
shape, say how it moves and where it is relative to another object. :func:`adherence_scores`
checks a generated video against the scene description (the ``scene`` dict stored in the
shards) by re-rendering the scene at the video's size with the project's ray caster
(:func:`rgbd_world.data.synthetic.render`, exact per-object masks and depth) and comparing what
the caption states with what the generation shows. Every check is a 0/1 indicator; each
component is the mean of its indicators (NaN when the scene offers none):

- ``presence``: the object's colour is in the video. Each generated pixel is classified to the
  nearest colour of ``PALETTE`` + ``SURFACE_PALETTE`` + the scene's sky gradient, each colour
  scaled by its best brightness factor in [0.25, 1.2] (Lambertian shading: the sampler's
  ambient term is >= 0.25); a pixel further than 0.12 (RGB units in [0, 1]) from every scaled
  colour, or with fewer than 2 of its 4 neighbours in its class (speckle, noise), is
  unclassified. Only the main ``texture.color`` counts (a textured object's ``color2`` does
  not). The object's "shown area" in a frame is the number of pixels of the true render, inside
  its true mask, classified as that colour (textures, shading and occlusion lower it below the
  visible area: at 32x32 a checkered object's cells are sub-pixel). An object is present when
  the generated pixels of its colour (anywhere in the frame) cover at least
  ``max(3 px, 50% of its true mean shown area)`` in at least half the frames. Objects whose
  true shown area is below that minimum in more than half the frames (too small, hidden, or a
  texture that hides the main colour at this size) are not checked, by any component: a
  check the true render itself fails would only measure the resolution. Consequently the
  true render scores (nearly: 8-bit rounding can tip a borderline object) 1 on presence by
  construction; place and motion compare the generated colour masks with the true geometry.
- ``place``: for each pair of checked objects that the true render shows in the first frame,
  the axis along which their centres differ more in the first frame's camera coordinates (as
  the caption's relation: left/right or in front/behind). Left/right: the order of the
  generated colour masks' centroid columns must match that of the true masks' centroids;
  front/behind: the order of the generated disparity averaged in each colour mask (larger =
  nearer) must match that of the true disparity averaged in the true masks. Generated masks
  are taken at the first frame of the first half where both reach their minimum area. Pairs
  the truth cannot call (centroids < 8% of the width apart, or mean true disparities within
  10%) are skipped. An object absent from the generation scores 0 for its pairs.
- ``motion``: for each checked object whose true mask centroid moves more than 8% of the width
  horizontally (mean column over the present frames of the last third of the clip minus that
  of the first third; camera motion included: it is image-space motion), the generated colour
  mask's centroid must move the same way (sign of the same difference). Absent: 0.
- ``adherence``: the mean of all indicators above (every check counts once).

Chance level: a video unrelated to the scene scores about the fraction of scene colours it
shows by accident for presence, and about 0.5 for place and motion among present objects (the
sign of an unrelated order); :func:`prompt_adherence` measures it directly by scoring every
video against another clip's scene (``*_shuffled``). All scores are unitless in [0, 1].
"""
from __future__ import annotations

import math

import numpy as np
import torch

from rgbd_world.data.synthetic import PALETTE, SURFACE_PALETTE, render, scene_trajectories
from rgbd_world.validation import InvalidArgument, check_int, check_seed

__all__ = ["adherence_scores", "prompt_adherence", "classify_colors", "COMPONENTS"]

COMPONENTS = ("presence", "place", "motion")
BRIGHTNESS_RANGE = (0.25, 1.2)   # shading factors a palette colour may appear at
MAX_COLOR_DISTANCE = 0.12        # RGB distance (units of [0, 1]) to the best-scaled colour
MIN_AREA_PX = 3                  # an object must cover at least this many pixels ...
MIN_AREA_FRACTION = 0.5          # ... and this fraction of what the true render shows
MIN_SHIFT_FRACTION = 0.08        # horizontal separation / motion, fraction of the width
MIN_DEPTH_FRACTION = 0.10        # relative disparity difference for a front/behind call
_SKY_SAMPLES = 5


def _class_colors(scene: dict) -> tuple[list[str], torch.Tensor]:
    names = list(PALETTE) + list(SURFACE_PALETTE)
    colors = [PALETTE[n] for n in PALETTE] + [SURFACE_PALETTE[n] for n in SURFACE_PALETTE]
    sky = scene.get("sky") or {}
    if "top" in sky and "bottom" in sky:
        top, bottom = np.asarray(sky["top"], float), np.asarray(sky["bottom"], float)
        for i, a in enumerate(np.linspace(0, 1, _SKY_SAMPLES)):
            names.append(f"sky{i}")
            colors.append(tuple(bottom * (1 - a) + top * a))
    return names, torch.tensor(colors, dtype=torch.float32)


def classify_colors(rgb: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
    """Class index (T, H, W) int64 of each pixel of ``rgb`` (T, H, W, 3) in [0, 1] among
    ``colors`` (C, 3), -1 for unclassified (see the module doc: best brightness factor per
    colour, a distance threshold, and at least 2 of 4 neighbours in the same class)."""
    T, H, W, _ = rgb.shape
    lo, hi = BRIGHTNESS_RANGE
    pp = (colors * colors).sum(1)                                     # (C,)
    labels = torch.empty(T, H, W, dtype=torch.long)
    for t in range(T):                                                # bounded memory
        c = rgb[t].reshape(-1, 3).float()
        cp = c @ colors.T                                             # (P, C)
        k = (cp / pp).clamp(lo, hi)
        d2 = (c * c).sum(1, keepdim=True) - 2 * k * cp + k * k * pp
        dmin, lab = d2.min(1)
        lab[dmin > MAX_COLOR_DISTANCE ** 2] = -1
        labels[t] = lab.view(H, W)
    pad = torch.nn.functional.pad(labels, (1, 1, 1, 1), value=-2)
    same = ((pad[:, :-2, 1:-1] == labels).int() + (pad[:, 2:, 1:-1] == labels).int()
            + (pad[:, 1:-1, :-2] == labels).int() + (pad[:, 1:-1, 2:] == labels).int())
    return torch.where((labels >= 0) & (same >= 2), labels, torch.full_like(labels, -1))


class _Reference:
    """What the truth says about one scene at a given video size (rendered once, reused)."""

    def __init__(self, scene: dict, frames: int, height: int, width: int):
        clip = render(scene, frames, height, width, return_ids=True)
        ids, depth = clip.object_ids, clip.depth
        n = len(scene["objects"])
        self.scene, self.n = scene, n
        self.names, self.colors = _class_colors(scene)
        self.cls = [self.names.index(o["texture"]["color"]) for o in scene["objects"]]
        hit = torch.isfinite(depth) & (depth > 0)
        disp = torch.where(hit, 1.0 / depth, torch.zeros_like(depth))
        masks = torch.stack([ids == 2 + j for j in range(n)], 1) if n else \
            torch.zeros(frames, 0, height, width, dtype=torch.bool)       # (T, N, H, W)
        area = masks.sum((2, 3)).float()                                   # (T, N)
        # the main colour as the same classifier sees it on the true render, in the true mask
        labels = classify_colors(clip.rgb, self.colors)
        shown = torch.stack([(masks[:, j] & (labels == c)).sum((1, 2)) for j, c in
                             enumerate(self.cls)], 1).float() if n else area      # (T, N)
        self.min_area = (MIN_AREA_FRACTION * shown.mean(0)).clamp_min(MIN_AREA_PX)  # (N,)
        self.visible = (shown >= self.min_area).sum(0) >= frames / 2       # (N,) checkable
        self.cx = _centroid_columns(masks, shown >= self.min_area)         # (T, N), nan = absent
        self.disp0 = (disp[0] * masks[0]).sum((1, 2)) / area[0].clamp_min(1)
        self.present0 = shown[0] >= self.min_area
        # axis of each pair's relation, as the caption decides it (first frame, camera coords)
        traj = scene_trajectories(scene, frames)
        pose = traj["poses"][0]
        cam = (pose[:3, :3].T @ (traj["centers"][0] - pose[:3, 3]).T).T if n else np.zeros((0, 3))
        self.cam0 = cam
        self.track = _track(self.cx)                                       # (N, 2)


def _centroid_columns(masks: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean column (pixel centres at j + 0.5) of masks (T, N, H, W); NaN where not present."""
    W = masks.shape[-1]
    cols = torch.arange(W, dtype=torch.float32) + 0.5
    area = masks.sum((2, 3)).float()
    cx = (masks.sum(2).float() * cols).sum(-1) / area.clamp_min(1)
    return torch.where(present, cx, torch.full_like(cx, math.nan))


def _track(cx: torch.Tensor) -> torch.Tensor:
    """(start, end) column per object: mean over the present frames of the first / last third."""
    T = cx.shape[0]
    third = max(1, math.ceil(T / 3))
    return torch.stack([cx[:third].nanmean(0), cx[T - third:].nanmean(0)], 1)


def _as_tensor(name: str, value, shape: tuple[int, ...]) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value)
    if not x.is_floating_point():
        raise InvalidArgument(name, f"tensor of dtype {x.dtype}", "floating point values")
    if tuple(x.shape) != shape:
        raise InvalidArgument(name, f"tensor of shape {tuple(x.shape)}", f"shape {shape}")
    return x.detach().float().cpu()


def _check_size(frames, height, width) -> tuple[int, int, int]:
    return (check_int("frames", frames, 1), check_int("height", height, 1),
            check_int("width", width, 1))


def _check_scene(name: str, scene) -> dict:
    if not isinstance(scene, dict) or not isinstance(scene.get("objects"), list) \
            or "camera" not in scene:
        raise InvalidArgument(name, type(scene).__name__ if not isinstance(scene, dict) else
                              f"dict with keys {sorted(scene)}",
                              "a scene dict as stored in the shards (sample_scene's output)")
    return scene


def _score(ref: _Reference, rgb: torch.Tensor, disparity: torch.Tensor) -> dict[str, float]:
    T, H, W, _ = rgb.shape
    labels = classify_colors(rgb, ref.colors)
    checks: dict[str, list[float]] = {c: [] for c in COMPONENTS}
    n = ref.n
    if n:
        masks = torch.stack([labels == c for c in ref.cls], 1)             # (T, N, H, W)
        area = masks.sum((2, 3)).float()
        ok = area >= ref.min_area                                          # (T, N)
        present = ok.sum(0) >= T / 2
        cx = _centroid_columns(masks, ok)
        finite = torch.isfinite(disparity)
        disp = torch.where(finite, disparity, torch.zeros_like(disparity))
    for j in range(n):
        if ref.visible[j]:
            checks["presence"].append(float(present[j]))
    for a in range(n):
        for b in range(a + 1, n):
            if not (ref.visible[a] and ref.visible[b] and ref.present0[a] and ref.present0[b]):
                continue
            dx, _, dz = ref.cam0[a] - ref.cam0[b]
            if abs(dz) > abs(dx):                                          # front / behind
                da, db = ref.disp0[a].item(), ref.disp0[b].item()
                if abs(da - db) < MIN_DEPTH_FRACTION * max(da, db):
                    continue
            else:                                                          # left / right
                true_dx = (ref.cx[0, a] - ref.cx[0, b]).item()
                if abs(true_dx) < MIN_SHIFT_FRACTION * W:
                    continue
            frames = (ok[: math.ceil(T / 2), a] & ok[: math.ceil(T / 2), b]).nonzero()
            if not (present[a] and present[b]) or not len(frames):
                checks["place"].append(0.0)
                continue
            f = int(frames[0])
            if abs(dz) > abs(dx):
                ma, mb = masks[f, a] & finite[f], masks[f, b] & finite[f]
                if not (ma.any() and mb.any()):
                    checks["place"].append(0.0)
                    continue
                ga, gb = disp[f][ma].mean().item(), disp[f][mb].mean().item()
                checks["place"].append(float((ga - gb) * (da - db) > 0))
            else:
                checks["place"].append(float((cx[f, a] - cx[f, b]).item() * true_dx > 0))
    if n:
        gen_track = _track(cx)
    for j in range(n):
        start, end = ref.track[j]
        true_move = (end - start).item()
        if not ref.visible[j] or not math.isfinite(true_move) \
                or abs(true_move) <= MIN_SHIFT_FRACTION * W:
            continue
        move = (gen_track[j, 1] - gen_track[j, 0]).item()
        ok_move = present[j] and math.isfinite(move) and move * true_move > 0
        checks["motion"].append(float(ok_move))
    out = {c: (sum(v) / len(v) if v else math.nan) for c, v in checks.items()}
    every = [x for v in checks.values() for x in v]
    out["adherence"] = sum(every) / len(every) if every else math.nan
    out |= {f"{c}_checks": float(len(v)) for c, v in checks.items()}
    return out


def adherence_scores(rgb, disparity, scene: dict, frames: int, height: int,
                     width: int) -> dict[str, float]:
    """Scores of one generated video against one scene description (see the module doc).

    Args:
        rgb: (T, H, W, 3) float in [0, 1] (tensor or array), T = ``frames``, H x W =
            ``height`` x ``width``.
        disparity: (T, H, W) float, affine-invariant (only orders are used), larger = nearer;
            non-finite values are ignored.
        scene: the scene dict stored in the shards (:func:`rgbd_world.data.synthetic.sample_scene`).

    Returns ``presence``, ``place``, ``motion``, ``adherence`` in [0, 1] (NaN when the scene
    offers no check of that kind) and ``presence_checks``, ``place_checks``, ``motion_checks``
    (how many checks each component averaged).
    """
    frames, height, width = _check_size(frames, height, width)
    rgb = _as_tensor("rgb", rgb, (frames, height, width, 3))
    disparity = _as_tensor("disparity", disparity, (frames, height, width))
    if not bool(torch.isfinite(rgb).all()) or rgb.min() < -1e-3 or rgb.max() > 1 + 1e-3:
        raise InvalidArgument("rgb", f"values in [{rgb.min().item():.3g}, {rgb.max().item():.3g}]",
                              "finite values in [0, 1]")
    ref = _Reference(_check_scene("scene", scene), frames, height, width)
    return _score(ref, rgb.clamp(0, 1), disparity)


def _derangement(n: int, seed: int) -> list[int]:
    rng = np.random.default_rng([int(seed), 7])
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return [int(p) for p in perm]


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def prompt_adherence(videos, scenes, frames: int, height: int, width: int,
                     seed: int = 0) -> dict[str, float]:
    """Mean adherence of ``videos[i]`` to ``scenes[i]``, and to a shuffled scene (chance level).

    Args:
        videos: a sequence of (rgb (T, H, W, 3) in [0, 1], disparity (T, H, W)) pairs, at least 2.
        scenes: the matching scene dicts (same length).
        seed: draws the derangement ``perm`` (no clip keeps its own scene) of the shuffled scores.

    Returns ``adherence``, ``adherence_presence``, ``adherence_place``, ``adherence_motion``
    (video i against scene i, means over the clips that have such checks) and the same keys
    with ``_shuffled`` appended (video i against scene ``perm[i]``).
    """
    frames, height, width = _check_size(frames, height, width)
    check_seed(seed)
    videos, scenes = list(videos), list(scenes)
    if len(videos) < 2:
        raise InvalidArgument("num_clips", len(videos), "at least 2 videos (the shuffled score "
                              "pairs every video with another clip's scene)")
    if len(scenes) != len(videos):
        raise InvalidArgument("scenes", f"{len(scenes)} scenes", f"one per video ({len(videos)})")
    refs = [_Reference(_check_scene(f"scenes[{i}]", s), frames, height, width)
            for i, s in enumerate(scenes)]
    data = []
    for i, video in enumerate(videos):
        if not isinstance(video, (tuple, list)) or len(video) != 2:
            raise InvalidArgument(f"videos[{i}]", type(video).__name__, "an (rgb, disparity) pair")
        rgb = _as_tensor(f"videos[{i}] rgb", video[0], (frames, height, width, 3))
        disp = _as_tensor(f"videos[{i}] disparity", video[1], (frames, height, width))
        if not bool(torch.isfinite(rgb).all()) or rgb.min() < -1e-3 or rgb.max() > 1 + 1e-3:
            raise InvalidArgument(f"videos[{i}] rgb", f"values in [{rgb.min().item():.3g}, "
                                  f"{rgb.max().item():.3g}]", "finite values in [0, 1]")
        data.append((rgb.clamp(0, 1), disp))
    perm = _derangement(len(videos), seed)
    own = [_score(refs[i], *data[i]) for i in range(len(data))]
    shuffled = [_score(refs[perm[i]], *data[i]) for i in range(len(data))]
    out = {}
    for suffix, scores in (("", own), ("_shuffled", shuffled)):
        out[f"adherence{suffix}"] = _mean([s["adherence"] for s in scores])
        for c in COMPONENTS:
            out[f"adherence_{c}{suffix}"] = _mean([s[c] for s in scores])
    return out
