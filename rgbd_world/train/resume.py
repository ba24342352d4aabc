"""``--resume``: pick the newest checkpoint that reads back intact and fits the model, restore it.

A damaged newest checkpoint (a truncated or unparsable file, non-finite weights) is set aside as
``damaged_step_XXXXXXXXX`` with a warning and the previous complete one is used; a checkpoint of
a different model (another size, another stage) is an error saying which settings differ. Every
rank takes the same decision.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import (DamagedCheckpoint, IncompatibleCheckpoint,
                         LoadedCheckpoint, apply_checkpoint, check_compatible,
                         complete_checkpoints, read_checkpoint)
from .distributed import DistInfo, all_reduce_mean
from .run_dir import read_json, warn

_OK, _DAMAGED, _INCOMPATIBLE = 0, 1, 2


def _any_rank(flag: bool) -> bool:
    return all_reduce_mean(torch.tensor([1.0 if flag else 0.0])).item() > 0.0


def setting_differences(out_dir: Path, stage_name: str,
                        cfg: dict[str, dict[str, Any]]) -> list[str]:
    """The stage and ``model.*`` settings of this run that differ from the ones in
    ``<out_dir>/config.json`` (the run being resumed), as ``"model.preset='tiny' in the run,
    'small' now"`` strings."""
    saved = read_json(out_dir / "config.json")
    if not isinstance(saved, dict):
        return []
    diffs = []
    if saved.get("stage", stage_name) != stage_name:
        diffs.append(f"--stage {saved['stage']!r} in the run, {stage_name!r} now")
    old_model = saved.get("model") if isinstance(saved.get("model"), dict) else {}
    for key, value in cfg["model"].items():
        if key in old_model and old_model[key] != value:
            diffs.append(f"model.{key}={old_model[key]!r} in the run, {value!r} now")
    return diffs


def resume_checkpoint(out_dir: Path, stage_name: str, cfg: dict[str, dict[str, Any]],
                      model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                      ema: dict[str, torch.Tensor], info: DistInfo) -> LoadedCheckpoint | None:
    """Restore the newest usable checkpoint of ``out_dir`` into the live model, optimizer,
    scheduler and EMA (collective). Returns it (its ``rng`` is left for the caller to restore
    right before the first step), or None when the run has no checkpoint yet.

    Raises :class:`IncompatibleCheckpoint` naming the differing settings, or
    :class:`DamagedCheckpoint` listing why each checkpoint was refused when none is usable."""
    damaged: list[tuple[Path, str]] = []
    for path in complete_checkpoints(out_dir):
        ckpt, status, reason = None, _OK, ""
        try:
            ckpt = read_checkpoint(path, info.rank)
            check_compatible(ckpt, model, ema)
        except IncompatibleCheckpoint as exc:
            status, reason = _INCOMPATIBLE, str(exc)
        except DamagedCheckpoint as exc:
            status, reason = _DAMAGED, str(exc)
        if _any_rank(status == _INCOMPATIBLE):
            diffs = setting_differences(out_dir, stage_name, cfg)
            what = "; ".join(diffs) if diffs else (reason or "another rank's model differs")
            raise IncompatibleCheckpoint(
                f"cannot resume {out_dir} from {path.name}: it holds a different model ({what}); "
                "resume with the run's settings or choose another run.out_dir")
        if not _any_rank(status == _DAMAGED):
            try:
                apply_checkpoint(ckpt, model, optimizer, scheduler, ema)
            except DamagedCheckpoint as exc:
                status, reason = _DAMAGED, str(exc)
            if not _any_rank(status == _DAMAGED):
                _set_aside(damaged, info)
                return ckpt
        damaged.append((path, reason or "damaged on another rank"))
    if damaged:
        raise DamagedCheckpoint(f"no checkpoint in {out_dir} can be resumed: "
                                + "; ".join(reason for _, reason in damaged))
    return None


def _set_aside(damaged: list[tuple[Path, str]], info: DistInfo) -> None:
    """Rename each damaged checkpoint newer than the one resumed to ``damaged_step_*`` (kept for
    a person to look at; never loaded or pruned as a checkpoint again), with a warning."""
    for path, reason in damaged:
        aside = path.with_name(f"damaged_{path.name}")
        if info.is_main:
            try:
                if aside.exists():  # set aside by an earlier resume: the newer copy replaces it
                    shutil.rmtree(aside)
                os.rename(path, aside)
                moved = f"moved to {aside.name}"
            except OSError:
                moved = "left in place"
            warn(f"checkpoint {path} is damaged ({reason}); {moved}; resuming from the "
                 "previous complete checkpoint")

