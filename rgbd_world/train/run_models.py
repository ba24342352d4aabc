"""Models out of training runs: the trainer knows the models, the models know no trainer.

A run directory (``train.py --stage ... run.out_dir=<run>``) holds ``config.json`` (the training
config), ``model_config.json`` (what the stage built) and ``checkpoints/step_*/``. This module
turns it into the models of :mod:`rgbd_world.tokenizer` / :mod:`rgbd_world.dit`, into an
:class:`~rgbd_world.pipeline.RGBDPipeline`, or into a saved-model directory that
``from_pretrained`` reads without any training code (:func:`export_run`).

* :func:`load_tokenizer` -- the tokenizer of a ``--stage tokenizer|tokenizer-rgb`` run.
* :func:`load_any_tokenizer` -- a run, or anything ``rgbd_world.tokenizer.load_any_tokenizer``
  reads (a saved tokenizer, a diffusers ``AutoencoderKLCosmos`` directory, Cosmos TorchScript).
* :func:`run_teacher` / :func:`load_rgb_tokenizer` -- the RGB tokenizer of an RGBD run.
* :func:`load_encoder` -- :func:`load_any_tokenizer` as a callable ``x -> latent``.
* :func:`load_pretrained_dit` -- ``model.init``: a DiT run, or any pretrained DiT.
* :func:`load_denoiser` -- the DiT (+ trained text encoder) of a ``--stage dit`` run.
* :func:`pipeline_from_training_runs` -- a tokenizer run + a DiT run -> an ``RGBDPipeline``.
* :func:`export_run` -- a run's checkpoint written as a ``from_pretrained`` directory.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from rgbd_world.saved_model import check_state_dict
from rgbd_world.tokenizer import VideoTokenizer
from rgbd_world.tokenizer import load_any_tokenizer as load_saved_tokenizer
from rgbd_world.tokenizer.checkpoint import encoder_of
from rgbd_world.tokenizer.config import TokenizerConfig

from .checkpoint import checkpoint_root, latest_checkpoint

__all__ = ["is_run_dir", "load_tokenizer", "load_any_tokenizer", "run_teacher",
           "load_rgb_tokenizer", "load_encoder", "load_denoiser", "load_pretrained_dit", "pipeline_from_training_runs",
           "export_run", "EXPORTED_NAME"]

EXPORTED_NAME = "exported"   # <run>/exported: the saved model written at the end of a run


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a training run directory (it has model_config.json)."""
    return (Path(path) / "model_config.json").is_file()


def _checkpoint(run: Path, step: int | None) -> Path:
    ckpt = latest_checkpoint(run) if step is None else checkpoint_root(run) / f"step_{step:09d}"
    if ckpt is None or not (ckpt / "COMPLETE").exists():
        raise FileNotFoundError(f"no complete checkpoint under {checkpoint_root(run)}"
                                + (f" for step {step}" if step is not None else ""))
    return ckpt


def _weights(ckpt: Path, ema: bool) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = load_file(ckpt / "model.safetensors")
    if ema:
        state.update(load_file(ckpt / "ema.safetensors"))
    return state


def load_tokenizer(path: str | os.PathLike, ema: bool = True, device: str | torch.device = "cpu",
                   step: int | None = None) -> VideoTokenizer:
    """The tokenizer of a training run (newest complete checkpoint, or ``step``), in eval mode."""
    run = Path(path)
    cfg_file = run / "model_config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{run} is not a tokenizer run directory: no model_config.json")
    model_config = json.loads(cfg_file.read_text())
    if "tokenizer" not in model_config or "dit" in model_config:
        raise ValueError(f"{run}: expected a tokenizer run ('train.py --stage tokenizer' or "
                         f"'tokenizer-rgb'), found a run whose model_config.json holds "
                         f"{sorted(model_config)}" + (" (a DiT run)" if "dit" in model_config
                                                      else ""))
    ckpt = _checkpoint(run, step)
    model = VideoTokenizer(TokenizerConfig.from_dict(model_config["tokenizer"]))
    state = _weights(ckpt, ema)
    check_state_dict(model, state, f"{ckpt} for the {model.config.name} tokenizer of "
                     f"{cfg_file.name}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def load_any_tokenizer(path: str | os.PathLike, device: str | torch.device = "cpu",
                       preset: str = "cosmos-cv8x8x8") -> VideoTokenizer:
    """A training run directory, else whatever ``rgbd_world.tokenizer.load_any_tokenizer``
    reads (a saved tokenizer, a diffusers ``AutoencoderKLCosmos`` directory, Cosmos TorchScript
    loaded into ``preset``)."""
    if is_run_dir(path):
        return load_tokenizer(path, device=device)
    return load_saved_tokenizer(path, device=device, preset=preset)


def run_teacher(tokenizer_run: str | os.PathLike) -> str:
    """The RGB teacher recorded in a tokenizer training run's config.json ("" when the run had
    none, or ``tokenizer_run`` is not a training run directory)."""
    config = Path(tokenizer_run) / "config.json"
    if not config.is_file():
        return ""
    return json.loads(config.read_text()).get("model", {}).get("teacher", "") or ""


def load_rgb_tokenizer(tokenizer_run: str | os.PathLike, explicit: str | os.PathLike = "",
                       device: str | torch.device = "cpu") -> VideoTokenizer:
    """The RGB tokenizer that goes with an RGBD tokenizer run: ``explicit`` if given, else the
    teacher recorded in the run's config.json. ValueError when the run had no teacher."""
    path = explicit
    if not path:
        if not (Path(tokenizer_run) / "config.json").is_file():
            raise FileNotFoundError(f"{Path(tokenizer_run) / 'config.json'} not found: expected a "
                                    "'train.py --stage tokenizer' run directory")
        path = run_teacher(tokenizer_run)
        if not path:
            raise ValueError(f"{tokenizer_run} was trained without an RGB teacher; set "
                             "model.rgb_tokenizer to an RGB tokenizer (tokenizer-rgb run or Cosmos)")
    return load_any_tokenizer(path, device=device)


def load_encoder(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """``x (B, C, T, H, W) -> latent`` of the tokenizer at ``path`` (a run or anything
    :func:`load_any_tokenizer` reads; no grad). ``encode.model`` is the tokenizer."""
    return encoder_of(load_any_tokenizer(path, device=device), device)


def load_denoiser(dit_run: str | os.PathLike, ema: bool = True, text_encoder=None,
                  step: int | None = None):
    """The ``RGBDDenoiser`` (DiT + trained text encoder) of a ``--stage dit`` run; a frozen text
    encoder is built from the run's ``model.text_encoder`` unless passed."""
    from rgbd_world.dit import DiT, DiTConfig, build_text_encoder
    from rgbd_world.dit.denoiser import RGBDDenoiser

    run = Path(dit_run)
    mcfg = json.loads((run / "model_config.json").read_text())
    if "dit" not in mcfg:
        raise ValueError(f"{run}: expected a DiT run ('train.py --stage dit'), found a run whose "
                         f"model_config.json holds {sorted(mcfg)}")
    text = build_text_encoder(mcfg["text_encoder"]) if text_encoder is None else text_encoder
    denoiser = RGBDDenoiser(DiT(DiTConfig.from_dict(mcfg["dit"])), text, mcfg["text_encoder"])
    denoiser.load_state_dict(_weights(_checkpoint(run, step), ema), strict=True)
    return denoiser.eval()


def load_pretrained_dit(path: str | os.PathLike, **overrides):
    """``model.init``: a ``--stage dit`` run (its newest complete checkpoint, EMA weights), else
    whatever ``rgbd_world.dit.load_pretrained_dit`` reads (diffusers, Predict2, saved DiT or
    pipeline). ``overrides``: run-time config fields (backend, fp8)."""
    from rgbd_world.dit.diffusers_compat import DiTLoadError
    from rgbd_world.dit.pretrained import load_dit_from_files
    from rgbd_world.dit.pretrained import load_pretrained_dit as load_saved_dit

    p = Path(path)
    if not is_run_dir(p):
        return load_saved_dit(p, **overrides)
    mcfg = json.loads((p / "model_config.json").read_text())
    if "dit" not in mcfg:
        raise DiTLoadError(f"{p}: expected a 'train.py --stage dit' run, found a run "
                           f"without a DiT (model_config.json keys {sorted(mcfg)})")
    ckpt = latest_checkpoint(p)
    if ckpt is None:
        raise DiTLoadError(f"{p}: expected a complete checkpoint under {checkpoint_root(p)}, "
                           "found none")
    files = [ckpt / "model.safetensors"] + ([ckpt / "ema.safetensors"]
                                             if (ckpt / "ema.safetensors").exists() else [])
    return load_dit_from_files(dict(mcfg["dit"], **overrides), files, ckpt)


def pipeline_from_training_runs(tokenizer_run: str | os.PathLike, dit_run: str | os.PathLike,
                                device="cpu", ema: bool = True, **defaults):
    """Assemble an ``RGBDPipeline`` from a ``--stage tokenizer`` run and a ``--stage dit`` run."""
    from rgbd_world.pipeline import RGBDPipeline

    dit_run = Path(dit_run)
    mcfg = json.loads((dit_run / "model_config.json").read_text())
    run_cfg = json.loads((dit_run / "config.json").read_text())
    tokenizer = load_tokenizer(tokenizer_run)
    rgb_tokenizer = load_rgb_tokenizer(tokenizer_run, run_cfg["model"]["rgb_tokenizer"])
    denoiser = load_denoiser(dit_run, ema=ema)
    d = run_cfg["data"]
    defaults = {"num_frames": d["frames"], "height": d["height"], "width": d["width"], **defaults}
    return RGBDPipeline(tokenizer, rgb_tokenizer, denoiser, mcfg["text_encoder"], defaults, device)


def export_run(run: str | os.PathLike, out: str | os.PathLike | None = None, ema: bool = True,
               step: int | None = None) -> Path:
    """Write a run's checkpoint (newest, or ``step``) as a saved-model directory (default
    ``<run>/exported``): a tokenizer run gives a ``VideoTokenizer.from_pretrained`` directory,
    a DiT run a saved ``RGBDPipeline`` (its tokenizers from the run's ``model.tokenizer``)."""
    run = Path(run)
    if not is_run_dir(run):
        raise FileNotFoundError(f"{run} is not a training run directory: no model_config.json")
    out = Path(out) if out is not None else run / EXPORTED_NAME
    mcfg = json.loads((run / "model_config.json").read_text())
    if "dit" in mcfg:
        tokenizer_run = mcfg.get("tokenizer_run") or \
            json.loads((run / "config.json").read_text())["model"]["tokenizer"]
        pipe = pipeline_from_training_runs(tokenizer_run, run, ema=ema)
        if step is not None:
            pipe.denoiser = load_denoiser(run, ema=ema, step=step)
        return pipe.save_pretrained(out)
    return load_tokenizer(run, ema=ema, step=step).save_pretrained(out)
