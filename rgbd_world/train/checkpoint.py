"""Atomic, code-free checkpoints: write to a temporary directory, then rename.

Layout of ``<out_dir>/checkpoints/step_000123/``:
  model.safetensors, ema.safetensors   full (unsharded) weights
  optimizer.pt, scheduler.pt           ``torch.load(weights_only=True)``-loadable state
  rng_rank<r>.pt                       every rank's torch / CUDA / numpy / python RNG state
  trainer.json                         step and counters (the config is <out_dir>/config.json)
  COMPLETE                             written last; a directory without it is ignored
The previous checkpoint stays until the new one is complete; older ones beyond ``keep`` go.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
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

from . import _faults
from .distributed import DistInfo, barrier

_STEP_DIR = re.compile(r"^step_(\d{9})$")
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def checkpoint_root(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / "checkpoints"


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint directory, or None."""
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / "COMPLETE").exists()]
    return max(done, key=lambda p: int(_STEP_DIR.match(p.name).group(1))) if done else None


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


def _set_rng_state(state: dict[str, Any]) -> None:
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


def save_checkpoint(out_dir: str | os.PathLike, step: int, model: nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler, ema: dict[str, torch.Tensor],
                    trainer_state: dict[str, Any], info: DistInfo, keep: int = 2) -> Path:
    """Collective: every rank calls it. Returns the final directory."""
    root = checkpoint_root(out_dir)
    final = root / f"step_{step:09d}"
    tmp = root / f".tmp_step_{step:09d}"
    model_sd = get_model_state_dict(model, options=_FULL)
    optim_sd = get_optimizer_state_dict(model, optimizer, options=_FULL)
    ema_sd = {k: _full(v) for k, v in ema.items()}
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover from an interrupted save
        tmp.mkdir(parents=True)
    barrier()
    torch.save(_rng_state(), tmp / f"rng_rank{info.rank}.pt")
    barrier()
    if info.is_main:
        save_file({k: v.contiguous() for k, v in model_sd.items()}, tmp / "model.safetensors")
        _faults.maybe_crash("save", step)
        save_file(ema_sd, tmp / "ema.safetensors")
        torch.save(optim_sd, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "trainer.json").write_text(json.dumps({"step": step, **trainer_state}, indent=1))
        (tmp / "COMPLETE").write_text("ok\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        done = sorted((p for p in root.iterdir() if _STEP_DIR.match(p.name)), key=lambda p: p.name)
        for old in done[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                    ema: dict[str, torch.Tensor], info: DistInfo) -> dict[str, Any]:
    """Restore everything saved by :func:`save_checkpoint`; returns trainer.json's contents."""
    set_model_state_dict(model, load_file(path / "model.safetensors"),
                         options=StateDictOptions(full_state_dict=True))
    # strict=False: parameters that never got a gradient (unused in this configuration) have
    # no optimizer state yet, exactly as in the run that saved it.
    set_optimizer_state_dict(model, optimizer, torch.load(path / "optimizer.pt", weights_only=True),
                             options=StateDictOptions(full_state_dict=True, strict=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    ema_sd = load_file(path / "ema.safetensors")
    with torch.no_grad():
        for name, value in ema.items():
            src = ema_sd[name].to(value.device if not hasattr(value, "device_mesh") else "cpu")
            if hasattr(value, "device_mesh"):  # FSDP2 DTensor: take this rank's shard
                from torch.distributed.tensor import distribute_tensor

                src = distribute_tensor(src.to(value.to_local().device), value.device_mesh,
                                        value.placements)
            value.copy_(src)
    rng_file = path / f"rng_rank{info.rank}.pt"
    if rng_file.exists():
        _set_rng_state(torch.load(rng_file, weights_only=True))
    return json.loads((path / "trainer.json").read_text())
