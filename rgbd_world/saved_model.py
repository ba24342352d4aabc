"""Models that save and load themselves (``save_pretrained`` / ``from_pretrained``).

A saved model is a directory::

    config.json         {"_format": "<kind>", "_format_version": <int>, ...the config's fields}
    model.safetensors   the state dict (absent for models whose weights ship elsewhere)

:class:`SavedModel` is the mixin the models inherit (``VideoTokenizer``, ``DiT``,
``RGBDDenoiser``, the text encoders). A subclass sets ``saved_format`` (the kind, e.g.
``"rgbd-world-tokenizer"``) and ``saved_format_version``, and either has a ``config`` with
``to_dict()`` and a ``config_class`` with ``from_dict()``, or overrides :meth:`saved_config` /
:meth:`from_saved_config`. Loading a directory of another kind or a newer version raises
:class:`SavedModelError` saying what was expected and what was found. A ``config.json`` without
``_format`` (written before formats were recorded) is read as version 0 of the expected kind.

Saving is atomic (:func:`rgbd_world.atomic.atomic_directory`): the directory holds the previous
complete model or the new one, never a mix.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar

import torch

from rgbd_world.atomic import atomic_directory

__all__ = ["SavedModel", "SavedModelError", "read_saved_config", "check_state_dict",
           "CONFIG_FILE", "WEIGHTS_FILE"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class SavedModelError(ValueError):
    """A directory is not the saved model that was asked for (kind, version, config, weights)."""


def _first_lines(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " ..."


def read_saved_config(directory: str | os.PathLike, expected_format: str,
                      max_version: int = 1) -> tuple[dict, int]:
    """(config fields without the ``_format*`` keys, format version) of the saved model in
    ``directory``. Raises FileNotFoundError for a missing directory or config.json and
    :class:`SavedModelError` for unreadable JSON, another kind or a version above
    ``max_version``."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: expected a saved {expected_format} directory, found "
                                + ("a file" if root.exists() else "no such directory"))
    path = root / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: expected a saved {expected_format} "
                                f"directory (config.json + {WEIGHTS_FILE})")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise SavedModelError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise SavedModelError(f"{path}: must hold a JSON object, got {type(data).__name__}")
    found = data.pop("_format", None)
    version = data.pop("_format_version", 0 if found is None else None)
    if found is None and "_class_name" in data:
        found = f"a diffusers {data['_class_name']}"
    if found is not None and found != expected_format:
        raise SavedModelError(f"{root}: expected a saved {expected_format!r} (format version <= "
                              f"{max_version}), found {found!r}"
                              + (f" version {version}" if version is not None else ""))
    if not isinstance(version, int) or version < 0 or version > max_version:
        raise SavedModelError(f"{root}: expected {expected_format!r} format version <= "
                              f"{max_version}, found version {version!r} (written by a newer "
                              f"rgbd-world? upgrade to read it)")
    return data, version


def check_state_dict(model: torch.nn.Module, state: dict, what: str) -> None:
    """ValueError listing missing, unexpected and wrongly shaped keys (found vs expected)
    when ``state`` does not fit ``model`` exactly."""
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    mismatched = [f"{k}: found {tuple(state[k].shape)}, expected {tuple(want[k].shape)}"
                  for k in want if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
    if missing or unexpected or mismatched:
        rows = "".join(f"\n  {title} ({len(r)}): " + ", ".join(r[:10])
                       + (f" ... and {len(r) - 10} more" if len(r) > 10 else "")
                       for title, r in (("missing", missing), ("unexpected", unexpected),
                                        ("shape mismatches", mismatched)) if r)
        raise ValueError(f"{what}: the weights do not match the model:{rows}")


class SavedModel:
    """Mixin: ``model.save_pretrained(dir)`` and ``Model.from_pretrained(dir)``."""

    saved_format: ClassVar[str] = ""
    saved_format_version: ClassVar[int] = 1
    saves_weights: ClassVar[bool] = True     # False: the weights ship elsewhere (frozen encoders)
    config_class: ClassVar[type | None] = None

    # ------------------------------------------------------------------ config <-> dict
    def saved_config(self) -> dict:
        """The JSON-able config that rebuilds this model (``config.to_dict()`` by default)."""
        return self.config.to_dict()

    @classmethod
    def from_saved_config(cls, config: dict, version: int, **kwargs):
        """A new model (random weights) from :meth:`saved_config`'s dict."""
        return cls(cls.config_class.from_dict(config), **kwargs)

    # ------------------------------------------------------------------ save / load
    def write_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write config.json (+ model.safetensors) into the existing ``directory`` directly (not
        atomic; :meth:`save_pretrained` wraps it, and so can a caller saving several models)."""
        out = Path(directory)
        config = {"_format": self.saved_format, "_format_version": self.saved_format_version,
                  **self.saved_config()}
        if self.saves_weights:
            from safetensors.torch import save_file

            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            save_file(state, out / WEIGHTS_FILE)
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=1))
        return out

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Save to ``directory`` atomically (a temporary directory, then one rename over it)."""
        out = Path(directory)
        with atomic_directory(out) as tmp:
            self.write_pretrained(tmp)
        return out

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu",
                        **kwargs):
        """The model saved in ``directory`` (eval mode, on ``device``). ``kwargs`` go to
        :meth:`from_saved_config` (e.g. a text encoder for ``RGBDDenoiser``)."""
        root = Path(directory)
        config, version = read_saved_config(root, cls.saved_format, cls.saved_format_version)
        try:
            model = cls.from_saved_config(config, version, **kwargs)
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            raise SavedModelError(f"{root / CONFIG_FILE}: not a valid {cls.saved_format} config "
                                  f"({type(err).__name__}: {err})") from None
        if cls.saves_weights:
            model.load_weights(root / WEIGHTS_FILE)
        model = model.to(device)
        model.eval()
        return model

    def load_weights(self, weights: str | os.PathLike) -> None:
        """Load a safetensors file strictly; errors name the file and the mismatch."""
        from safetensors.torch import load_file

        weights = Path(weights)
        if not weights.exists():
            raise FileNotFoundError(f"{weights} is missing (saved model incomplete)")
        try:
            state = load_file(weights)
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise SavedModelError(f"{weights}: unreadable weights, truncated or not safetensors "
                                  f"({type(err).__name__}: {err})") from None
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise SavedModelError(f"{weights} does not match {weights.parent / CONFIG_FILE}: "
                                  f"{_first_lines(str(err))}") from None
