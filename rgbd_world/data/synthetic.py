"""Procedural RGB-D videos: scene sampling and an exact, vectorized PyTorch ray caster.

A scene is a plain JSON-serializable dict (see :func:`sample_scene`): a ground plane and an
optional back wall, spheres, boxes and cylinders with procedural textures (solid, checker,
stripes, noise), a directional light, and a moving pinhole camera (static, pan, tilt, orbit,
dolly); objects stay still or move on linear or circular paths (spheres roll).
:func:`render` casts one ray per pixel centre for every frame, vectorized over pixels and
objects with torch ops only (CPU or GPU tensors), and returns

- ``rgb`` (T, H, W, 3) float32 in [0, 1]: Lambertian shading, ambient term, cast shadows;
- ``depth`` (T, H, W) float32: planar (camera z) depth in metres, exact from the ray hits;
  ``inf`` where a ray hits nothing (sky);
- ``K`` (3, 3) float32 intrinsics and ``poses`` (T, 4, 4) float32 camera-to-world.

Conventions: world z is up, the ground is z = 0, the back wall is the plane y = ``wall.y``
facing -y. Cameras follow OpenCV: x right, y down, z forward. Pixel (row i, column j) has its
centre at image coordinates (j + 0.5, i + 0.5), so a world point X seen by frame t lands at
``K @ inv(poses[t])[:3] @ [X, 1]`` (after dividing by z) and ``depth`` is that z.

Everything is deterministic from the seed: :func:`sample_scene` uses NumPy's generator seeded
with ``(seed, 0)`` and the renderer uses no random numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["SCENE_VERSION", "PALETTE", "SHAPES", "TEXTURES", "CAMERA_MOTIONS", "SyntheticClip", "sample_scene",
           "scene_trajectories", "intrinsics", "render"]

PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10), "green": (0.16, 0.62, 0.22), "blue": (0.13, 0.30, 0.85),
    "yellow": (0.95, 0.83, 0.16), "orange": (0.95, 0.48, 0.10), "purple": (0.50, 0.22, 0.70),
    "pink": (0.95, 0.52, 0.72), "cyan": (0.12, 0.74, 0.80), "white": (0.92, 0.92, 0.90),
    "black": (0.08, 0.08, 0.09), "brown": (0.48, 0.30, 0.16), "teal": (0.05, 0.45, 0.42),
}
# surfaces behind the objects use their own colours, so a colour word names one object
SURFACE_PALETTE: dict[str, tuple[float, float, float]] = {
    "grey": (0.55, 0.55, 0.55), "beige": (0.82, 0.75, 0.60), "sand": (0.76, 0.66, 0.45),
    "slate": (0.36, 0.40, 0.46), "cream": (0.93, 0.90, 0.80), "olive": (0.45, 0.47, 0.25),
    "lavender": (0.70, 0.66, 0.85), "charcoal": (0.22, 0.22, 0.24),
}
# Version of the scene sampler: a seed gives the same scene only within one version.
# 2: an object's second texture colour is one no object in the scene has, so every colour word
#    of a caption names one object.
SCENE_VERSION = 2
SHAPES = ("sphere", "box", "cylinder")
TEXTURES = ("solid", "checker", "stripes", "noise")
CAMERA_MOTIONS = ("static", "pan", "tilt", "orbit", "dolly")
_CAMERA_DIRECTIONS = {"static": ("none",), "pan": ("left", "right"), "tilt": ("up", "down"),
                      "orbit": ("left", "right"), "dolly": ("in", "out")}
# per-frame rate ranges (radians, or a fraction of the eye-target distance for dolly) and the
# most motion a clip may have in total (longer clips move more slowly)
_CAMERA_RATES = {"pan": (0.008, 0.02), "tilt": (0.004, 0.01), "orbit": (0.01, 0.03),
                 "dolly": (0.006, 0.015)}
_CAMERA_TOTAL = {"pan": math.radians(35), "tilt": math.radians(12), "orbit": math.radians(60),
                 "dolly": 0.35}
_KIND = {"plane": 0, "sphere": 1, "box": 2, "cylinder": 3}
_TEX = {name: i for i, name in enumerate(TEXTURES)}
_EPS = 1e-4


@dataclass
class SyntheticClip:
    """One rendered clip (torch tensors on the render device) and its description."""

    rgb: torch.Tensor      # (T, H, W, 3) float32 in [0, 1]
    depth: torch.Tensor    # (T, H, W) float32 planar depth in metres, inf = nothing hit
    K: torch.Tensor        # (3, 3) float32
    poses: torch.Tensor    # (T, 4, 4) float32 camera-to-world (OpenCV camera axes)
    scene: dict
    caption: str = ""
    object_ids: torch.Tensor | None = field(default=None, repr=False)  # (T, H, W) int64


# ----------------------------------------------------------------------------- scene sampling

def _rgb(name: str) -> list[float]:
    return list(PALETTE.get(name) or SURFACE_PALETTE[name])


def _texture(rng: np.random.Generator, color: str, others: list[str], scale: tuple[float, float],
             types=TEXTURES, weights=None) -> dict:
    kind = str(rng.choice(types, p=weights))
    color2 = str(rng.choice([c for c in others if c != color]))
    axis = rng.normal(size=3)
    axis[2] *= 0.3
    axis /= np.linalg.norm(axis)
    return {"type": kind, "color": color, "rgb": _rgb(color), "color2": color2,
            "rgb2": _rgb(color2), "scale": float(rng.uniform(*scale)),
            "axis": axis.tolist(), "phase": rng.uniform(0, 10, size=3).tolist()}


def _object_extent(obj: dict) -> tuple[float, float]:
    """(footprint radius in the ground plane, bounding-sphere radius)."""
    s = obj["size"]
    if obj["shape"] == "sphere":
        return s[0], s[0]
    if obj["shape"] == "box":
        return math.hypot(s[0], s[1]), math.sqrt(s[0] ** 2 + s[1] ** 2 + s[2] ** 2)
    return s[0], math.hypot(s[0], s[2])


def sample_scene(seed: int, frames: int = 17, num_objects: int | None = None) -> dict:
    """Sample a scene description (a JSON-serializable dict) deterministically from ``seed``.

    ``num_objects`` defaults to a random count in 1..6. ``frames`` bounds the motion so that
    objects do not collide, cross the wall or pass through the camera during the clip; a
    longer clip moves more slowly.
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    rng = np.random.default_rng([int(seed), 0])
    n_obj = int(rng.integers(1, 7)) if num_objects is None else int(num_objects)
    if not 0 <= n_obj <= len(PALETTE):
        raise ValueError(f"num_objects must be in 0..{len(PALETTE)}, got {num_objects}")
    steps = max(frames - 1, 1)

    # camera: looks at a target near the origin from 4.5-7 m, slightly from above
    target = np.array([0.0, 0.0, rng.uniform(0.2, 0.6)])
    dist, elev = rng.uniform(4.5, 7.0), math.radians(rng.uniform(10, 28))
    azim = math.radians(rng.uniform(-20, 20))
    back = np.array([math.sin(azim), -math.cos(azim), 0.0])
    eye = target + dist * (math.cos(elev) * back + np.array([0, 0, math.sin(elev)]))
    motion = str(rng.choice(CAMERA_MOTIONS, p=[0.16, 0.21, 0.13, 0.3, 0.2]))
    direction = str(rng.choice(_CAMERA_DIRECTIONS[motion]))
    rate = 0.0
    if motion != "static":
        rate = min(rng.uniform(*_CAMERA_RATES[motion]), _CAMERA_TOTAL[motion] / steps)
    camera = {"hfov_deg": float(rng.uniform(50, 70)), "eye": eye.tolist(),
              "target": target.tolist(),
              "motion": {"type": motion, "direction": direction, "rate": float(rate)}}

    az, el = math.radians(rng.uniform(-60, 60)), math.radians(rng.uniform(35, 70))
    light = {"direction": [math.cos(el) * math.sin(az), -math.cos(el) * math.cos(az),
                           math.sin(el)],
             "ambient": float(rng.uniform(0.25, 0.4)), "intensity": float(rng.uniform(0.85, 1.1))}

    surfaces = list(SURFACE_PALETTE)
    floor_color = str(rng.choice(surfaces))
    ground = {"texture": _texture(rng, floor_color, surfaces, (0.4, 0.9),
                                  weights=[0.25, 0.35, 0.15, 0.25])}
    wall = None
    if rng.random() < 0.75:
        wall_color = str(rng.choice([c for c in surfaces if c != floor_color]))
        wall = {"y": float(rng.uniform(3.2, 5.0)),
                "texture": _texture(rng, wall_color, surfaces, (0.4, 1.0),
                                    weights=[0.4, 0.2, 0.25, 0.15])}
    sky = {"top": [0.35, 0.55, 0.9], "bottom": [0.8, 0.87, 0.95]}
    scene = {"version": SCENE_VERSION, "seed": int(seed), "frames": int(frames), "camera": camera,
             "light": light, "ground": ground, "wall": wall, "sky": sky, "objects": []}

    colors = [str(c) for c in rng.permutation(list(PALETTE))]
    unused = colors[n_obj:]  # second texture colours: never another object's colour
    cam_path = _camera_path(camera, frames)[:, :3, 3]
    wall_y = wall["y"] if wall else 1e9
    for i in range(n_obj):
        shape = str(rng.choice(SHAPES))
        if shape == "sphere":
            size = [rng.uniform(0.25, 0.6)] * 3
        elif shape == "box":
            size = [rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.5)]
        else:
            r = rng.uniform(0.15, 0.4)
            size = [r, r, rng.uniform(0.25, 0.7)]
        obj = {"shape": shape, "size": [float(s) for s in size],
               "texture": _texture(rng, colors[i], unused or list(PALETTE), (0.12, 0.35)),
               "yaw": float(rng.uniform(0, 2 * math.pi))}
        for attempt in range(40):
            kind = "static" if attempt >= 30 else str(rng.choice(
                ["static", "linear", "circular"], p=[0.35, 0.4, 0.25]))
            pos = [rng.uniform(-2.2, 2.2), rng.uniform(-1.5, 2.0), size[2]]
            if kind == "linear":
                speed = min(rng.uniform(0.01, 0.04), 2.0 / steps)
                ang = rng.uniform(0, 2 * math.pi)
                mot = {"type": "linear", "velocity": [speed * math.cos(ang),
                                                      speed * math.sin(ang), 0.0]}
            elif kind == "circular":
                radius = rng.uniform(0.4, 1.2)
                ang = rng.uniform(0, 2 * math.pi)
                center = [pos[0] + radius * math.cos(ang), pos[1] + radius * math.sin(ang)]
                w = min(rng.uniform(0.02, 0.06), 1.5 * math.pi / steps)
                mot = {"type": "circular", "center": center,
                       "angular_speed": float(w * rng.choice([-1.0, 1.0]))}
            else:
                mot = {"type": "static"}
            obj.update(position=[float(p) for p in pos], motion=mot)
            if _placement_ok(obj, scene["objects"], cam_path, wall_y, frames):
                scene["objects"].append(obj)
                break
    return scene


def _placement_ok(obj, placed, cam_path, wall_y, frames) -> bool:
    path = _object_path(obj, frames)
    foot, bound = _object_extent(obj)
    if np.any(path[:, 1] + foot > wall_y - 0.1):
        return False
    if np.min(np.linalg.norm(cam_path - path, axis=1)) < bound + 0.8:
        return False
    for other in placed:
        other_path = _object_path(other, frames)
        gap = np.linalg.norm((path - other_path)[:, :2], axis=1)
        if np.min(gap) < foot + _object_extent(other)[0] + 0.08:
            return False
    return True


# ----------------------------------------------------------------------------- trajectories

def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_axis(axis: np.ndarray, a: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    x = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(a) * x + (1 - math.cos(a)) * (x @ x)


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, eye
    return pose


def _camera_path(camera: dict, frames: int) -> np.ndarray:
    eye0, target0 = np.array(camera["eye"], float), np.array(camera["target"], float)
    motion = camera["motion"]
    kind, direction, rate = motion["type"], motion["direction"], motion["rate"]
    poses = np.empty((frames, 4, 4))
    right0 = _look_at(eye0, target0)[:3, 0]
    for i in range(frames):
        eye, target = eye0, target0
        if kind == "pan":   # turn about the vertical through the eye; left = counter-clockwise
            a = rate * i * (1 if direction == "left" else -1)
            target = eye0 + _rot_z(a) @ (target0 - eye0)
        elif kind == "tilt":
            a = rate * i * (1 if direction == "up" else -1)
            target = eye0 + _rot_axis(right0, a) @ (target0 - eye0)
        elif kind == "orbit":  # the eye circles the target; right = the camera moves to its right
            a = rate * i * (1 if direction == "right" else -1)
            eye = target0 + _rot_z(a) @ (eye0 - target0)
        elif kind == "dolly":
            s = rate * i * (1 if direction == "in" else -1)
            eye = eye0 + s * (target0 - eye0)
        poses[i] = _look_at(eye, target)
    return poses


def _object_path(obj: dict, frames: int) -> np.ndarray:
    p0 = np.array(obj["position"], float)
    i = np.arange(frames, dtype=float)[:, None]
    motion = obj["motion"]
    if motion["type"] == "linear":
        return p0 + i * np.array(motion["velocity"], float)
    if motion["type"] == "circular":
        c = np.array([*motion["center"], p0[2]])
        a = motion["angular_speed"] * i[:, 0]
        rel = p0 - c
        x = c[0] + np.cos(a) * rel[0] - np.sin(a) * rel[1]
        y = c[1] + np.sin(a) * rel[0] + np.cos(a) * rel[1]
        return np.stack([x, y, np.full_like(x, p0[2])], axis=1)
    return np.repeat(p0[None], frames, axis=0)


def _object_rotations(obj: dict, path: np.ndarray) -> np.ndarray:
    """Object-to-world rotations per frame: spheres roll without slipping, boxes keep their yaw,
    cylinders on a circular path turn with it."""
    frames = path.shape[0]
    rot = np.empty((frames, 3, 3))
    rot[0] = _rot_z(obj["yaw"])
    for i in range(1, frames):
        step = path[i] - path[i - 1]
        if obj["shape"] == "sphere" and np.linalg.norm(step) > 0:
            axis = np.cross([0.0, 0.0, 1.0], step)
            rot[i] = _rot_axis(axis, np.linalg.norm(step) / obj["size"][0]) @ rot[i - 1]
        elif obj["shape"] == "cylinder" and obj["motion"]["type"] == "circular":
            rot[i] = _rot_z(obj["motion"]["angular_speed"]) @ rot[i - 1]
        else:
            rot[i] = rot[i - 1]
    return rot


def scene_trajectories(scene: dict, frames: int) -> dict[str, np.ndarray]:
    """Per-frame camera poses (T, 4, 4), object centres (T, N, 3) and rotations (T, N, 3, 3)."""
    objs = scene["objects"]
    centers = np.zeros((frames, len(objs), 3))
    rots = np.zeros((frames, len(objs), 3, 3))
    for j, obj in enumerate(objs):
        centers[:, j] = _object_path(obj, frames)
        rots[:, j] = _object_rotations(obj, centers[:, j])
    return {"poses": _camera_path(scene["camera"], frames), "centers": centers, "rotations": rots}


def intrinsics(scene: dict, height: int, width: int) -> torch.Tensor:
    """Pinhole K (3, 3) float32 from the scene's horizontal field of view; square pixels."""
    fx = 0.5 * width / math.tan(math.radians(scene["camera"]["hfov_deg"]) / 2)
    return torch.tensor([[fx, 0.0, width / 2], [0.0, fx, height / 2], [0.0, 0.0, 1.0]])


# ----------------------------------------------------------------------------- ray casting

# packed per-surface columns (one gather fetches everything a hit needs)
_C, _R, _S, _N, _RGB1, _RGB2, _SCALE, _AXIS, _PHASE, _KINDC, _TEXC = (
    slice(0, 3), slice(3, 12), slice(12, 15), slice(15, 18), slice(18, 21), slice(21, 24),
    slice(24, 25), slice(25, 28), slice(28, 31), 31, 32)
_WIDTH = 33


class _Tables:
    """Per-surface parameters per frame, packed as (T, n, 33): rows 0 and 1 are the ground and
    the wall, then spheres, boxes and cylinders (each type contiguous, so the broad phase can
    slice them); ``scene_id`` maps rows back to surface ids (2 + index in ``scene["objects"]``).
    """

    def __init__(self, scene: dict, traj: dict, device, dtype):
        objs = scene["objects"]
        order = sorted(range(len(objs)), key=lambda j: SHAPES.index(objs[j]["shape"]))
        frames = traj["poses"].shape[0]
        n = 2 + len(objs)
        fallback = {"type": "solid", "rgb": [0.5] * 3, "rgb2": [0.5] * 3, "scale": 1.0,
                    "axis": [1, 0, 0], "phase": [0, 0, 0]}
        rows = np.zeros((frames, n, _WIDTH))
        surfaces = [("plane", [1, 1, 1], [0, 0, 1], scene["ground"]),
                    ("plane", [1, 1, 1], [0, -1, 0], scene["wall"])]
        for r, (kind, size, normal, surf) in enumerate(surfaces):
            tex = surf["texture"] if surf else fallback
            rows[:, r, _R] = np.eye(3).reshape(9)
            self._fill(rows[:, r], kind, size, normal, tex)
        for r, j in enumerate(order, start=2):
            rows[:, r, _C] = traj["centers"][:, j]
            rows[:, r, _R] = traj["rotations"][:, j].reshape(frames, 9)
            self._fill(rows[:, r], objs[j]["shape"], objs[j]["size"], [0, 0, 0],
                       objs[j]["texture"])
        self.packed = torch.as_tensor(rows, dtype=dtype, device=device)
        self.centers = self.packed[:, 2:, _C].contiguous()                       # (T, N, 3)
        self.bound = torch.tensor([_object_extent(objs[j])[1] for j in order], dtype=dtype,
                                  device=device)
        self.scene_id = torch.tensor([0, 1] + [2 + j for j in order], device=device)
        count = [sum(objs[j]["shape"] == k for j in order) for k in SHAPES]
        self.n = n
        # column ranges of the object columns (0-based, objects only) per type
        self.spheres = slice(0, count[0])
        self.boxes = slice(count[0], count[0] + count[1])
        self.cylinders = slice(count[0] + count[1], n - 2)

    @staticmethod
    def _fill(row, kind, size, normal, tex):
        row[:, _S], row[:, _N] = size, normal
        row[:, _RGB1], row[:, _RGB2] = tex["rgb"], tex["rgb2"]
        row[:, _SCALE], row[:, _AXIS], row[:, _PHASE] = tex["scale"], tex["axis"], tex["phase"]
        row[:, _KINDC], row[:, _TEXC] = _KIND[kind], _TEX[tex["type"]]


def _to_local(v, rot):
    """R^T v for rows: v (M, 3) world vectors, rot (M, 3, 3) object-to-world rotations."""
    return v[:, 0:1] * rot[:, 0] + v[:, 1:2] * rot[:, 1] + v[:, 2:3] * rot[:, 2]


def _to_world(v, rot):
    """R v for rows."""
    return rot[:, :, 0] * v[:, 0:1] + rot[:, :, 1] * v[:, 1:2] + rot[:, :, 2] * v[:, 2:3]


def _hit_box(o, d, half):
    """Nearest ray parameter > eps for boxes in their frames (o, d, half: (M, 3)); inf on miss."""
    inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t1, t2 = (-half - o) * inv, (half - o) * inv
    t_near = torch.minimum(t1, t2).amax(dim=1)
    t_far = torch.maximum(t1, t2).amin(dim=1)
    t = torch.where(t_near > _EPS, t_near, t_far)
    hit = (t_far >= t_near) & (t > _EPS)
    return torch.where(hit, t, torch.full_like(t, math.inf))


def _hit_cylinder(o, d, size):
    """Vertical capped cylinders (radius size[:, 0], half-height size[:, 2]) in their frames."""
    r, hh = size[:, 0], size[:, 2]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
    c = o[:, 0] ** 2 + o[:, 1] ** 2 - r * r
    disc = b * b - a * c
    sq = disc.clamp_min(0).sqrt()
    safe_a = torch.where(a > 1e-12, a, torch.ones_like(a))
    inf = torch.full_like(a, math.inf)
    best = inf
    for root in ((-b - sq) / safe_a, (-b + sq) / safe_a):
        z = o[:, 2] + root * d[:, 2]
        ok = (disc > 0) & (a > 1e-12) & (root > _EPS) & (z.abs() <= hh)
        best = torch.minimum(best, torch.where(ok, root, inf))
    safe_dz = torch.where(d[:, 2].abs() > 1e-12, d[:, 2], torch.full_like(a, 1e-12))
    for cap in (hh, -hh):
        root = (cap - o[:, 2]) / safe_dz
        x, y = o[:, 0] + root * d[:, 0], o[:, 1] + root * d[:, 1]
        ok = (root > _EPS) & (x * x + y * y <= r * r)
        best = torch.minimum(best, torch.where(ok, root, inf))
    return best


def _intersect_objects(tab: _Tables, f: int, origins, dirs, exclude=None, any_hit=False):
    """Ray parameters against every object, as a dense (M, N) matrix over the objects (inf on
    miss). Broad phase: bounding spheres of all objects at once; narrow phase: exact boxes and
    cylinders on the candidate (ray, object) pairs only (spheres are exact already).

    ``origins`` (M, 3) or (3,) (shared), ``dirs`` (M, 3) or (3,) (shared). ``exclude`` (M,)
    table rows to skip (a shadow ray's own surface). ``any_hit``: (M,) bool "hits something".
    """
    shared_origin = origins.dim() == 1
    m = dirs.shape[0] if shared_origin else origins.shape[0]
    c, bound = tab.centers[f], tab.bound
    # |o + t d - c|^2 = R^2:  a t^2 + 2 b t + cc = 0
    if shared_origin:
        o, d = origins.expand(m, 3), dirs
        oc = origins - c                                          # (N, 3)
        a = (d * d).sum(1, keepdim=True)
        b = d @ oc.T                                              # (M, N)
        cc = ((oc * oc).sum(1) - bound * bound)[None]             # (1, N)
    else:                                                         # shared unit direction
        o, d = origins, dirs.expand(m, 3)
        a = torch.ones((), dtype=o.dtype, device=o.device)
        b = (o @ dirs)[:, None] - (c @ dirs)[None]
        cc = (o * o).sum(1, keepdim=True) - 2 * (o @ c.T) + ((c * c).sum(1) - bound * bound)[None]
    disc = b * b - a * cc
    cand = (disc > 0) & ((cc < 0) | (b < 0))
    t_obj = torch.full((m, tab.n - 2), math.inf, dtype=o.dtype, device=o.device)
    sph = tab.spheres
    if sph.stop > sph.start:  # the bounding sphere is exact for spheres
        sq = disc[:, sph].clamp_min(0).sqrt()
        near = (-b[:, sph] - sq) / a
        t = torch.where(near > _EPS, near, (-b[:, sph] + sq) / a)
        t_obj[:, sph] = torch.where(cand[:, sph] & (t > _EPS), t, t_obj[:, sph])
    for cols, fn in ((tab.boxes, _hit_box), (tab.cylinders, _hit_cylinder)):
        if cols.stop <= cols.start:
            continue
        ray, col = cand[:, cols].nonzero(as_tuple=True)
        if not ray.numel():
            continue
        col = col + cols.start
        g = tab.packed[f].index_select(0, col + 2)
        rot = g[:, _R].reshape(-1, 3, 3)
        lo = _to_local(o.index_select(0, ray) - g[:, _C], rot)
        ld = _to_local(d.index_select(0, ray), rot)
        t_obj[ray, col] = fn(lo, ld, g[:, _S])
    if exclude is not None:
        own = exclude - 2
        rows = (own >= 0).nonzero(as_tuple=True)[0]
        t_obj[rows, own[rows]] = math.inf
    if any_hit:
        return t_obj.amin(dim=1) < math.inf
    return t_obj


def _normals(g, local):
    """World normals at hit points from packed rows ``g`` (M, 33) and local coordinates."""
    kind, rot = g[:, _KINDC], g[:, _R].reshape(-1, 3, 3)
    scaled = local / g[:, _S]
    # box: the face whose slab coordinate is largest
    axis = scaled.abs().argmax(dim=1, keepdim=True)
    n_box = torch.zeros_like(local).scatter_(1, axis, scaled.gather(1, axis).sign())
    # cylinder: cap if |z| / half-height beats radial / radius, else side
    radial = torch.sqrt(scaled[:, 0] ** 2 + scaled[:, 1] ** 2)
    cap = scaled[:, 2].abs() >= radial
    zero = torch.zeros_like(radial)
    n_cyl = torch.where(cap[:, None], torch.stack([zero, zero, scaled[:, 2].sign()], 1),
                        torch.stack([scaled[:, 0], scaled[:, 1], zero], 1))
    n_local = torch.where((kind == _KIND["sphere"])[:, None], local,
                          torch.where((kind == _KIND["box"])[:, None], n_box, n_cyl))
    n = torch.where((kind == _KIND["plane"])[:, None], g[:, _N], _to_world(n_local, rot))
    return n / n.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _albedo(g, local):
    """Procedural solid textures evaluated at object-local coordinates."""
    tex = g[:, _TEXC]
    q = local / g[:, _SCALE] + g[:, _PHASE]
    checker = torch.remainder(torch.floor(q).sum(1), 2.0)
    stripes = torch.remainder(torch.floor((q * g[:, _AXIS]).sum(1)), 2.0)
    p = q * 1.7
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    smooth = (torch.sin(x + 1.3 * y + 0.4 * z) * torch.sin(0.8 * x - 1.1 * y + 1.7 * z)
              + 0.5 * torch.sin(2.3 * x + 2.9 * z - 0.7 * y))
    grain = torch.frac(torch.sin(torch.floor(q * 5.0) @ q.new_tensor([12.9898, 78.233, 37.719]))
                       * 43758.5453).abs()
    noise = (0.5 + 0.3 * smooth + 0.25 * (grain - 0.5)).clamp(0, 1)
    mix = torch.where(tex == _TEX["checker"], checker,
                      torch.where(tex == _TEX["stripes"], stripes,
                                  torch.where(tex == _TEX["noise"], noise,
                                              torch.zeros_like(noise))))[:, None]
    return g[:, _RGB1] * (1 - mix) + g[:, _RGB2] * mix


def _render_frame(scene, tab: _Tables, f: int, pose, d_cam, light, sky_top, sky_bottom):
    R, eye = pose[:3, :3], pose[:3, 3]
    d = d_cam @ R.T                                     # (P, 3) world directions, camera z = 1
    p = d.shape[0]
    t_all = torch.full((p, tab.n), math.inf, dtype=d.dtype, device=d.device)
    t_all[:, 2:] = _intersect_objects(tab, f, eye, d)
    if scene["ground"] is not None:
        dz = d[:, 2]
        t_all[:, 0] = torch.where(dz < 0, -eye[2] / dz.clamp(max=-1e-12), t_all[:, 0])
    if scene["wall"] is not None:
        dy = d[:, 1]
        t_all[:, 1] = torch.where(dy > 0, (scene["wall"]["y"] - eye[1]) / dy.clamp(min=1e-12),
                                  t_all[:, 1])
    t, rows = t_all.min(dim=1)
    hit = t < math.inf

    # sky for the misses
    up = (d[:, 2] / d.norm(dim=1)).clamp(0, 1)[:, None]
    rgb = sky_bottom * (1 - up) + sky_top * up

    idx = hit.nonzero(as_tuple=True)[0]
    if idx.numel():
        sid = rows.index_select(0, idx)
        g = tab.packed[f].index_select(0, sid)
        points = eye + t.index_select(0, idx)[:, None] * d.index_select(0, idx)
        local = _to_local(points - g[:, _C], g[:, _R].reshape(-1, 3, 3))
        normal = _normals(g, local)
        albedo = _albedo(g, local)
        ndl = (normal @ light).clamp_min(0)
        li = (ndl > 0).nonzero(as_tuple=True)[0]
        if li.numel() and tab.n > 2:
            origins = points.index_select(0, li) + 1e-3 * normal.index_select(0, li)
            shadowed = _intersect_objects(tab, f, origins, light, exclude=sid.index_select(0, li),
                                          any_hit=True)
            ndl[li[shadowed]] = 0
        amb, inten = scene["light"]["ambient"], scene["light"]["intensity"]
        rgb[idx] = albedo * (amb + (1 - amb) * inten * ndl)[:, None]
    ids = torch.where(hit, tab.scene_id[rows], torch.full_like(rows, -1))
    return rgb.clamp(0, 1), t, ids


@torch.no_grad()
def render(scene: dict, frames: int, height: int, width: int, *,
           device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
           return_ids: bool = False) -> SyntheticClip:
    """Ray-cast ``frames`` frames of ``scene`` at ``height`` x ``width`` (see the module doc).

    One primary ray per pixel centre and one shadow ray per lit hit, vectorized over pixels and
    objects; frames are cast one after another (each frame is a few dozen tensor ops).
    ``return_ids`` also returns the surface id per pixel (-1 sky, 0 ground, 1 wall, 2+j object j).
    """
    if frames < 1 or height < 1 or width < 1:
        raise ValueError(f"need frames, height, width >= 1, got {frames}, {height}, {width}")
    device = torch.device(device)
    traj = scene_trajectories(scene, frames)
    tab = _Tables(scene, traj, device, dtype)
    K = intrinsics(scene, height, width)
    fx, fy, cx, cy = K[0, 0].item(), K[1, 1].item(), K[0, 2].item(), K[1, 2].item()
    xs = (torch.arange(width, dtype=dtype, device=device) + 0.5 - cx) / fx
    ys = (torch.arange(height, dtype=dtype, device=device) + 0.5 - cy) / fy
    d_cam = torch.stack([xs[None].expand(height, width), ys[:, None].expand(height, width),
                         torch.ones(height, width, dtype=dtype, device=device)], -1).reshape(-1, 3)
    poses = torch.as_tensor(traj["poses"], dtype=dtype, device=device)
    light = torch.as_tensor(scene["light"]["direction"], dtype=dtype, device=device)
    light = light / light.norm()
    sky_top = torch.as_tensor(scene["sky"]["top"], dtype=dtype, device=device)
    sky_bottom = torch.as_tensor(scene["sky"]["bottom"], dtype=dtype, device=device)
    rgb = torch.empty(frames, height * width, 3, dtype=dtype, device=device)
    depth = torch.empty(frames, height * width, dtype=dtype, device=device)
    ids = torch.empty(frames, height * width, dtype=torch.long, device=device)
    for f in range(frames):
        rgb[f], depth[f], ids[f] = _render_frame(scene, tab, f, poses[f], d_cam, light,
                                                  sky_top, sky_bottom)
    return SyntheticClip(rgb=rgb.view(frames, height, width, 3).float(),
                         depth=depth.view(frames, height, width).float(), K=K,
                         poses=poses.float(), scene=scene,
                         object_ids=ids.view(frames, height, width) if return_ids else None)
