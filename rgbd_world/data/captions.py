"""Captions from scene descriptions: every object by colour and shape, relations, motion, camera.

Wording varies (templates, synonyms, clause order) but is deterministic: :func:`caption_scene`
draws its choices from the scene's seed, and ``rng`` gives more variants of the same scene
(for caption augmentation). Directions ("left", "toward the camera") are as seen by the camera
in the first frame. Example: "a red sphere rolls left in front of a blue box on a checkered
floor while the camera orbits right".
"""
from __future__ import annotations

import numpy as np

from .synthetic import scene_trajectories

__all__ = ["SHAPE_NOUNS", "caption_scene", "caption_variants", "object_phrase"]

SHAPE_NOUNS = {"sphere": ("sphere", "ball"), "box": ("box", "cube", "block"),
               "cylinder": ("cylinder", "pillar", "column")}
_MOVE_VERBS = {"sphere": ("rolls", "rolls", "moves"), "box": ("slides", "moves", "glides"),
               "cylinder": ("slides", "glides", "moves")}
_STILL = ("sits still", "rests", "stays in place", "stands still")
_CIRCLE = ("moves in a circle", "circles around", "travels in a loop", "goes round in a circle")
_PATTERN = {"checker": ("checkered", "checked"), "stripes": ("striped",),
            "noise": ("speckled", "mottled")}
_CAMERA = {
    ("static", "none"): ("the camera stays still", "the camera holds still",
                         "the camera does not move"),
    ("pan", "left"): ("the camera pans left", "the camera turns to the left"),
    ("pan", "right"): ("the camera pans right", "the camera turns to the right"),
    ("tilt", "up"): ("the camera tilts up", "the camera tilts upward"),
    ("tilt", "down"): ("the camera tilts down", "the camera tilts downward"),
    ("orbit", "left"): ("the camera orbits left", "the camera circles to the left"),
    ("orbit", "right"): ("the camera orbits right", "the camera circles to the right"),
    ("dolly", "in"): ("the camera dollies in", "the camera pushes in", "the camera moves closer"),
    ("dolly", "out"): ("the camera dollies out", "the camera pulls back",
                       "the camera moves away"),
}
_CONNECT = ("while", "as")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(obj: dict, rng: np.random.Generator, definite: bool = False) -> str:
    """"a red sphere", "a blue and white striped box", "the green pillar"."""
    tex = obj["texture"]
    noun = str(rng.choice(SHAPE_NOUNS[obj["shape"]]))
    words = [tex["color"]]
    if tex["type"] in _PATTERN:
        if rng.random() < 0.5:
            words += ["and", tex["color2"]]
        words.append(str(rng.choice(_PATTERN[tex["type"]])))
    phrase = " ".join(words + [noun])
    return ("the " if definite else _article(phrase) + " ") + phrase


def _surface_phrase(tex: dict, noun: str, rng) -> str:
    if tex["type"] == "solid":
        words = tex["color"]
    else:
        words = str(rng.choice(_PATTERN[tex["type"]]))
        if rng.random() < 0.5:
            words = f"{tex['color']} {words}" if tex["type"] != "checker" or rng.random() < 0.5 \
                else f"{tex['color']} and {tex['color2']} {words}"
    return f"{_article(words)} {words} {noun}"


def _camera_frame(scene: dict):
    traj = scene_trajectories(scene, 2)
    pose = traj["poses"][0]
    rot, eye = pose[:3, :3], pose[:3, 3]
    return rot, eye, traj["centers"][0]


def _motion_clause(obj: dict, rot: np.ndarray, rng) -> str:
    motion = obj["motion"]
    if motion["type"] == "static":
        return str(rng.choice(_STILL))
    if motion["type"] == "circular":
        return str(rng.choice(_CIRCLE))
    v = rot.T @ np.asarray(motion["velocity"], float)      # camera frame: x right, z forward
    verb = str(rng.choice(_MOVE_VERBS[obj["shape"]]))
    if abs(v[0]) >= abs(v[2]):
        return f"{verb} {'right' if v[0] > 0 else 'left'}" if rng.random() < 0.5 else \
            f"{verb} to the {'right' if v[0] > 0 else 'left'}"
    return f"{verb} {'away from' if v[2] > 0 else 'toward'} the camera"


def _relation(a: np.ndarray, b: np.ndarray) -> str:
    """Where camera-frame point a is relative to b."""
    dx, dz = a[0] - b[0], a[2] - b[2]
    if abs(dz) > abs(dx):
        return "in front of" if dz < 0 else "behind"
    return "to the right of" if dx > 0 else "to the left of"


def caption_scene(scene: dict, rng: np.random.Generator | None = None) -> str:
    """One caption naming every object (colour + shape), a relation, motion and the camera."""
    if rng is None:
        rng = np.random.default_rng([int(scene.get("seed", 0)), 1])
    objs = scene["objects"]
    rot, eye, centers = _camera_frame(scene)
    cam = (rot.T @ (centers - eye).T).T if len(objs) else np.zeros((0, 3))
    order = list(rng.permutation(len(objs)))
    clauses = []
    mentioned: set[int] = set()
    for i in order:
        if i in mentioned:
            continue
        subject = object_phrase(objs[i], rng)
        clause = f"{subject} {_motion_clause(objs[i], rot, rng)}"
        partners = [j for j in order if j != i and j not in mentioned]
        if partners and rng.random() < 0.7:
            j = partners[0]
            clause += f" {_relation(cam[i], cam[j])} {object_phrase(objs[j], rng)}"
            if objs[j]["motion"]["type"] != "static":
                clause += f" that {_motion_clause(objs[j], rot, rng)}"
            mentioned.add(j)
        mentioned.add(i)
        clauses.append(clause)
    floor = _surface_phrase(scene["ground"]["texture"], str(rng.choice(["floor", "ground"])),
                            rng) if scene.get("ground") else None
    if scene.get("wall"):
        backdrop = f"{rng.choice(['in front of', 'against'])} " \
                   f"{_surface_phrase(scene['wall']['texture'], 'wall', rng)}"
    else:
        backdrop = str(rng.choice(["under a clear blue sky", "with open sky behind"]))
    motion = scene["camera"]["motion"]
    camera = str(rng.choice(_CAMERA[(motion["type"], motion["direction"])]))

    if not clauses:
        where = f" on {floor}" if floor else ""
        return f"an empty scene{where} {backdrop}, {rng.choice(_CONNECT)} {camera}"
    if len(clauses) == 1:
        objects = clauses[0]
    else:
        objects = ", ".join(clauses[:-1]) + (", and " if len(clauses) > 2 else " and ") \
            + clauses[-1]
    where = f"on {floor}" if floor else ""
    style = int(rng.integers(4))
    if style == 0:
        text = f"{objects} {where} {backdrop}, {rng.choice(_CONNECT)} {camera}"
    elif style == 1:
        text = f"{camera[0].upper()}{camera[1:]} {rng.choice(['as', 'while'])} {objects} " \
               f"{where} {backdrop}"
    elif style == 2:
        text = f"{rng.choice(['A scene', 'A video', 'A shot'])} {where} {backdrop}: " \
               f"{objects}; {camera}"
    else:
        text = f"{objects} {where} {backdrop}. {camera[0].upper()}{camera[1:]}"
    return " ".join(text.split()).replace(" ,", ",").replace(" .", ".")


def caption_variants(scene: dict, n: int, seed: int = 0) -> list[str]:
    """``n`` differently worded captions of the same scene (caption augmentation)."""
    rng = np.random.default_rng([int(scene.get("seed", 0)), 2, int(seed)])
    return [caption_scene(scene, rng) for _ in range(n)]
