"""Files that ship inside the package (found through ``importlib.resources``, so a regular,
non-editable install has them too):

* ``rgbd_world/configs/<name>.toml`` -- the training configs (``--config tiny-cpu``).
* ``rgbd_world/assets/<name>/`` -- saved pipelines; ``"tiny-rgbd"`` is the default one
  (``RGBDPipeline.from_pretrained("tiny-rgbd")``, ``rgbd-world generate``).
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

__all__ = ["DEFAULT_PIPELINE_NAME", "shipped_pipelines", "shipped_pipeline", "resolve_pipeline",
           "config_dir", "shipped_configs"]

DEFAULT_PIPELINE_NAME = "tiny-rgbd"


def _package_dir(name: str) -> Path:
    return Path(str(resources.files("rgbd_world") / name))


def config_dir() -> Path:
    """The directory of the shipped training configs."""
    return _package_dir("configs")


def shipped_configs() -> list[str]:
    """Names of the shipped training configs (``tiny-cpu``, ...)."""
    return sorted(p.stem for p in config_dir().glob("*.toml"))


def shipped_pipelines() -> list[str]:
    """Names of the saved pipelines that ship with the package."""
    root = _package_dir("assets")
    return sorted(p.name for p in root.iterdir() if (p / "pipeline.json").is_file()) \
        if root.is_dir() else []


def shipped_pipeline(name: str = DEFAULT_PIPELINE_NAME) -> Path:
    """The directory of a shipped saved pipeline (ValueError naming the choices otherwise)."""
    if name not in shipped_pipelines():
        raise ValueError(f"no shipped pipeline {name!r}; shipped: {shipped_pipelines()}")
    return _package_dir("assets") / name


def resolve_pipeline(name_or_path: str | os.PathLike) -> Path:
    """A saved-pipeline directory: ``name_or_path`` itself when it exists, else the shipped
    pipeline of that name (``"tiny-rgbd"``), else ``name_or_path`` unchanged (the caller reports
    it missing)."""
    path = Path(name_or_path)
    if not path.exists() and str(name_or_path) in shipped_pipelines():
        return shipped_pipeline(str(name_or_path))
    return path
