"""Rebuild a tokenizer from a training run, or from a Cosmos checkpoint the user has on disk.

* :func:`load_tokenizer` -- a run directory of ``train.py --stage tokenizer|tokenizer-rgb``
  (``model_config.json`` + ``checkpoints/step_*/``), its EMA weights by default.
* :func:`load_cosmos_tokenizer` -- ``autoencoder.jit`` (or a directory holding it, or
  ``encoder.jit`` + ``decoder.jit``) of NVIDIA's Cosmos continuous video tokenizer.
* a diffusers ``AutoencoderKLCosmos`` directory (``save_pretrained``; read without diffusers).
* :func:`load_encoder` -- any of the above as a callable ``x -> latent`` (for the latent cache).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from .config import TokenizerConfig
from .cosmos_compat import load_cosmos_state_dict
from .model import VideoTokenizer


def config_to_dict(config: TokenizerConfig) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(data: dict) -> TokenizerConfig:
    fields = {f.name for f in dataclasses.fields(TokenizerConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"unknown TokenizerConfig fields {unknown}")
    return TokenizerConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def load_tokenizer(path: str | os.PathLike, ema: bool = True, device: str | torch.device = "cpu",
                   step: int | None = None) -> VideoTokenizer:
    """The tokenizer of a training run (newest complete checkpoint, or ``step``), in eval mode."""
    from safetensors.torch import load_file

    from rgbd_world.train.checkpoint import checkpoint_root, latest_checkpoint

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
    ckpt = latest_checkpoint(run) if step is None else checkpoint_root(run) / f"step_{step:09d}"
    if ckpt is None or not (ckpt / "COMPLETE").exists():
        raise FileNotFoundError(f"no complete checkpoint under {checkpoint_root(run)}")
    model = VideoTokenizer(config_from_dict(model_config["tokenizer"]))
    state = load_file(ckpt / "model.safetensors")
    if ema:
        state.update(load_file(ckpt / "ema.safetensors"))
    check_state_dict(model, state, f"{ckpt} for the {model.config.name} tokenizer of "
                     f"{cfg_file.name}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


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


def load_cosmos_tokenizer(path: str | os.PathLike, preset: str = "cosmos-cv8x8x8",
                          device: str | torch.device = "cpu") -> VideoTokenizer:
    """Cosmos's TorchScript autoencoder (or encoder + decoder) loaded into our RGB preset."""
    p = Path(path)
    files = [p] if p.is_file() else [p / "autoencoder.jit"] if (p / "autoencoder.jit").exists() \
        else [p / "encoder.jit", p / "decoder.jit"]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"Cosmos tokenizer files not found: {missing}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            part = torch.jit.load(str(f), map_location="cpu").state_dict()
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"{f}: expected a TorchScript Cosmos tokenizer file (NVIDIA's "
                             f"autoencoder.jit / encoder.jit / decoder.jit), found a file "
                             f"torch.jit.load cannot read ({str(e).splitlines()[0][:200]})") from None
        prefix = {"encoder.jit": "encoder.", "decoder.jit": "decoder."}.get(f.name, "")
        for k, v in part.items():
            key = k if (not prefix or k.startswith(("encoder.", "decoder.", "quant_conv", "post_quant_conv"))) \
                else prefix + k
            state[key] = v
    model = VideoTokenizer(preset, in_channels=3)
    load_cosmos_state_dict(model, state)
    return model.to(device).eval()


def load_any_tokenizer(path: str | os.PathLike, device: str | torch.device = "cpu",
                       preset: str = "cosmos-cv8x8x8") -> VideoTokenizer:
    """A training run directory, a diffusers ``AutoencoderKLCosmos`` directory (its own config;
    ``preset`` unused), else a Cosmos TorchScript checkpoint (loaded into ``preset``)."""
    from .diffusers_compat import is_diffusers_tokenizer_dir, load_diffusers_tokenizer

    p = Path(path)
    if (p / "model_config.json").exists():
        return load_tokenizer(p, device=device)
    if is_diffusers_tokenizer_dir(p):
        return load_diffusers_tokenizer(p).to(device)
    if p.is_dir() and (p / "config.json").is_file() and not (p / "autoencoder.jit").exists():
        kind = json.loads((p / "config.json").read_text()).get("_class_name")
        raise ValueError(f"{p}: expected a tokenizer (a tokenizer run, Cosmos TorchScript files "
                         f"or a diffusers AutoencoderKLCosmos directory), found a directory with "
                         f"config.json of {kind or 'an unknown model'}")
    return load_cosmos_tokenizer(p, preset=preset, device=device)


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
    """``x (B, C, T, H, W) -> latent`` of the tokenizer at ``path`` (no grad)."""
    model = load_any_tokenizer(path, device=device)

    @torch.no_grad()
    def encode(x: torch.Tensor) -> torch.Tensor:
        return model.encode(x.to(device))

    encode.model = model
    return encode
