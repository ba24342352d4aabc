"""Atomic, code-free checkpoints: write to a temporary directory, then rename (through
:mod:`rgbd_world.atomic`); read back checked.

Layout of ``<out_dir>/checkpoints/step_000123/``:
  model.safetensors, ema.safetensors   full (unsharded) weights
  optimizer.pt, scheduler.pt           ``torch.load(weights_only=True)``-loadable state
  rng_rank<r>.pt                       every rank's torch / CUDA / numpy / python RNG state
  trainer.json                         step and counters (the config is <out_dir>/config.json)
  COMPLETE                             written last: JSON ``{"files": {name: size in bytes}}``
                                       (older checkpoints: "ok"); a directory without it is ignored
The previous checkpoint stays until the new one is complete; older ones beyond ``keep`` go.
A write that fails (disk full, read-only) removes its temporary directory and raises
:class:`CheckpointWriteError`; the previous checkpoint is untouched.

Reading is two steps, so nothing is trusted before it is checked: :func:`read_checkpoint` parses
every file into memory and raises :class:`DamagedCheckpoint` (naming the file) for a truncated,
unparsable or non-finite one; :func:`check_compatible` raises :class:`IncompatibleCheckpoint` when
the weights do not fit the model; only then :func:`apply_checkpoint` overwrites the live state,
and :func:`restore_rng` the random generators.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict,
                                                     set_model_state_dict,
                                                     set_optimizer_state_dict)

from rgbd_world.atomic import fsync_dir, fsync_tree, replace_directory

from . import _faults
from .distributed import DistInfo, all_reduce_mean, barrier

_STEP_DIR = re.compile(r"^step_(\d{9})$")
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names the file and what is wrong."""


class DamagedCheckpoint(CheckpointError):
    """A file of the checkpoint is missing, truncated, unparsable or holds non-finite weights."""


class IncompatibleCheckpoint(CheckpointError):
    """The checkpoint is intact but was written for a different model."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (disk full, read-only, ...); the previous one is intact."""


def checkpoint_root(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / "checkpoints"


def checkpoint_step(path: Path) -> int:
    """The step of a ``step_XXXXXXXXX`` directory."""
    return int(_STEP_DIR.match(path.name).group(1))


def complete_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Every checkpoint directory with a COMPLETE marker, newest first."""
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / "COMPLETE").exists()]
    return sorted(done, key=checkpoint_step, reverse=True)


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint directory, or None."""
    done = complete_checkpoints(out_dir)
    return done[0] if done else None


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *map(float, np_state[2:])],
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set the torch / CUDA / numpy / python RNGs to a state saved in a checkpoint."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _full(t: torch.Tensor) -> torch.Tensor:
    full = t.full_tensor() if hasattr(t, "full_tensor") else t
    return full.detach().cpu().contiguous()


def _agree(ok: bool) -> bool:
    """True when ``ok`` holds on every rank (collective)."""
    return all_reduce_mean(torch.tensor([1.0 if ok else 0.0])).item() == 1.0


def save_checkpoint(out_dir: str | os.PathLike, step: int, model: nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler, ema: dict[str, torch.Tensor],
                    trainer_state: dict[str, Any], info: DistInfo, keep: int = 2) -> Path:
    """Collective: every rank calls it. Returns the final directory.

    Raises :class:`CheckpointWriteError` on every rank when any rank failed to write its part;
    the temporary directory is removed and earlier checkpoints are kept."""
    root = checkpoint_root(out_dir)
    final = root / f"step_{step:09d}"
    tmp = root / f".tmp_step_{step:09d}"
    model_sd = get_model_state_dict(model, options=_FULL)
    optim_sd = get_optimizer_state_dict(model, optimizer, options=_FULL)
    ema_sd = {k: _full(v) for k, v in ema.items()}
    error: OSError | None = None
    if info.is_main:
        try:
            shutil.rmtree(tmp, ignore_errors=True)  # a leftover from an interrupted save
            tmp.mkdir(parents=True)
        except OSError as exc:
            error = exc
    if _agree(error is None):
        try:
            torch.save(_rng_state(), tmp / f"rng_rank{info.rank}.pt")
        except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
            error = exc if isinstance(exc, OSError) else OSError(str(exc))
    if _agree(error is None) and info.is_main:
        try:
            save_file({k: v.contiguous() for k, v in model_sd.items()}, tmp / "model.safetensors")
            _faults.maybe_crash("save", step)
            save_file(ema_sd, tmp / "ema.safetensors")
            torch.save(optim_sd, tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / "trainer.json").write_text(json.dumps({"step": step, **trainer_state},
                                                         indent=1))
            sizes = {f.name: f.stat().st_size for f in sorted(tmp.iterdir())}
            (tmp / "COMPLETE").write_text(json.dumps({"files": sizes}) + "\n")
            fsync_tree(tmp)                      # every file (COMPLETE too) before the rename
            replace_directory(tmp, final)
            fsync_dir(root)
        except (OSError, RuntimeError) as exc:
            error = exc if isinstance(exc, OSError) else OSError(str(exc))
    if not _agree(error is None):
        if info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = [p for p in complete_checkpoints(out_dir) if p != final]
        reason = (error.strerror or str(error)) if error is not None else "another rank failed"
        where = f" ({error.filename})" if error is not None and error.filename else ""
        raise CheckpointWriteError(
            f"could not write checkpoint {final.name} in {root}: {reason}{where}; "
            + (f"the previous checkpoint {previous[0]} is intact" if previous
               else "no earlier checkpoint exists"))
    if info.is_main:
        done = sorted((p for p in root.iterdir() if _STEP_DIR.match(p.name)), key=lambda p: p.name)
        for old in done[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


@dataclass
class LoadedCheckpoint:
    """Everything a checkpoint holds, parsed and checked, not yet applied."""

    path: Path
    step: int
    trainer: dict[str, Any]
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any] | None


def _check_sizes(path: Path) -> None:
    marker = path / "COMPLETE"
    text = marker.read_text()
    if text.strip() == "ok":  # written before the size manifest existed
        return
    try:
        sizes = json.loads(text)["files"]
        if not isinstance(sizes, dict):
            raise TypeError
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DamagedCheckpoint(f"{marker} is not a checkpoint manifest ({exc})") from None
    for name, size in sizes.items():
        f = path / name
        if not f.exists():
            raise DamagedCheckpoint(f"{f} is missing")
        if f.stat().st_size != size:
            raise DamagedCheckpoint(f"{f} has {f.stat().st_size} bytes, {size} were written "
                                    "(truncated or overwritten)")


def _load_weights(f: Path) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(f)
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        raise DamagedCheckpoint(f"{f} cannot be read: {exc}") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise DamagedCheckpoint(f"{f} holds non-finite values in {name!r}")
    return tensors


def _load_pt(f: Path) -> Any:
    try:
        return torch.load(f, weights_only=True)
    except Exception as exc:  # unpickling / zip errors of a damaged file
        raise DamagedCheckpoint(f"{f} cannot be read: {str(exc).splitlines()[0]}") from None


def read_checkpoint(path: Path, rank: int = 0) -> LoadedCheckpoint:
    """Parse and check every file of ``path``; raises :class:`DamagedCheckpoint` naming the file."""
    _check_sizes(path)
    tj = path / "trainer.json"
    try:
        trainer = json.loads(tj.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedCheckpoint(f"{tj} is not valid JSON ({exc})") from None
    step = checkpoint_step(path) if _STEP_DIR.match(path.name) else None
    if not isinstance(trainer, dict) or not isinstance(trainer.get("step"), int) \
            or not isinstance(trainer.get("counters", {}), dict) \
            or (step is not None and trainer["step"] != step):
        raise DamagedCheckpoint(f"{tj} must hold {{\"step\": {step}, \"counters\": {{...}}}}, "
                                f"got {str(trainer)[:80]!r}")
    rng_file = path / f"rng_rank{rank}.pt"
    return LoadedCheckpoint(
        path=path, step=trainer["step"], trainer=trainer,
        model=_load_weights(path / "model.safetensors"),
        ema=_load_weights(path / "ema.safetensors"),
        optimizer=_load_pt(path / "optimizer.pt"), scheduler=_load_pt(path / "scheduler.pt"),
        rng=_load_pt(rng_file) if rng_file.exists() else None)


def check_compatible(ckpt: LoadedCheckpoint, model: nn.Module,
                     ema: dict[str, torch.Tensor]) -> None:
    """Raise :class:`IncompatibleCheckpoint` (first differing tensor) unless the checkpoint's
    weights and EMA have exactly the model's names and shapes."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for what, got, expected in (("model.safetensors", ckpt.model, want),
                                ("ema.safetensors", ckpt.ema,
                                 {k: tuple(v.shape) for k, v in ema.items()})):
        for name in sorted(set(expected) | set(got)):
            if name not in got:
                raise IncompatibleCheckpoint(f"{ckpt.path / what} has no tensor {name!r} of this "
                                             "model")
            if name not in expected:
                raise IncompatibleCheckpoint(f"{ckpt.path / what} has a tensor {name!r} this "
                                             "model does not have")
            if tuple(got[name].shape) != expected[name]:
                raise IncompatibleCheckpoint(
                    f"{ckpt.path / what}: {name!r} has shape {tuple(got[name].shape)}, this "
                    f"model's has {expected[name]}")


def apply_checkpoint(ckpt: LoadedCheckpoint, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler, ema: dict[str, torch.Tensor]) -> None:
    """Overwrite the live weights, optimizer, scheduler and EMA with a checked checkpoint (not the
    RNGs: see :func:`restore_rng`). Raises :class:`DamagedCheckpoint` for an optimizer or scheduler
    state that does not fit."""
    set_model_state_dict(model, ckpt.model, options=StateDictOptions(full_state_dict=True))
    try:
        # strict=False: parameters that never got a gradient (unused in this configuration)
        # have no optimizer state yet, exactly as in the run that saved it.
        set_optimizer_state_dict(model, optimizer, ckpt.optimizer,
                                 options=StateDictOptions(full_state_dict=True, strict=False))
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise DamagedCheckpoint(f"{ckpt.path / 'optimizer.pt'} does not fit this optimizer: "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                                ) from None
    try:
        scheduler.load_state_dict(ckpt.scheduler)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise DamagedCheckpoint(f"{ckpt.path / 'scheduler.pt'} does not fit: {exc}") from None
    with torch.no_grad():
        for name, value in ema.items():
            src = ckpt.ema[name].to(value.device if not hasattr(value, "device_mesh") else "cpu")
            if hasattr(value, "device_mesh"):  # FSDP2 DTensor: take this rank's shard
                from torch.distributed.tensor import distribute_tensor

                src = distribute_tensor(src.to(value.to_local().device), value.device_mesh,
                                        value.placements)
            value.copy_(src)


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                    ema: dict[str, torch.Tensor], info: DistInfo) -> dict[str, Any]:
    """Read, check and restore everything saved by :func:`save_checkpoint` (RNGs included);
    returns trainer.json's contents."""
    ckpt = read_checkpoint(path, info.rank)
    check_compatible(ckpt, model, ema)
    apply_checkpoint(ckpt, model, optimizer, scheduler, ema)
    if ckpt.rng is not None:
        restore_rng(ckpt.rng)
    return ckpt.trainer
