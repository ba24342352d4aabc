"""Load a tokenizer from a saved-model directory, or from a Cosmos checkpoint the user has on
disk. (Training runs are read by :mod:`rgbd_world.train.run_models`, which knows checkpoints;
this module knows only saved models.)

* ``VideoTokenizer.from_pretrained(dir)`` -- a directory of ``save_pretrained`` (or of
  ``rgbd-world export-run`` / the end of a training run).
* :func:`load_cosmos_tokenizer` -- ``autoencoder.jit`` (or a directory holding it, or
  ``encoder.jit`` + ``decoder.jit``) of NVIDIA's Cosmos continuous video tokenizer.
* a diffusers ``AutoencoderKLCosmos`` directory (``save_pretrained``; read without diffusers).
* :func:`load_any_tokenizer` -- any of the above; :func:`load_encoder` -- as ``x -> latent``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from rgbd_world.saved_model import check_state_dict

from .config import TokenizerConfig
from .cosmos_compat import load_cosmos_state_dict
from .diffusers_compat import (DiffusersLayoutError, copy_checked, diffusers_key_map,
                               is_diffusers_tokenizer_dir, tokenizer_config_from_diffusers)
from .model import VideoTokenizer

__all__ = ["config_to_dict", "config_from_dict", "check_state_dict", "load_cosmos_tokenizer",
           "load_any_tokenizer", "load_encoder", "encoder_of", "load_diffusers_tokenizer"]


def config_to_dict(config: TokenizerConfig) -> dict:
    """``config.to_dict()`` (kept for older callers)."""
    return config.to_dict()


def config_from_dict(data: dict) -> TokenizerConfig:
    """``TokenizerConfig.from_dict(data)`` (kept for older callers)."""
    return TokenizerConfig.from_dict(data)


def load_diffusers_tokenizer(path) -> VideoTokenizer:
    """Our tokenizer from a diffusers ``AutoencoderKLCosmos`` ``save_pretrained`` directory
    (``config.json`` + ``diffusion_pytorch_model.safetensors``; or a pipeline directory with
    ``vae/``), read directly: diffusers need not be installed. Eval mode, CPU."""
    from safetensors.torch import load_file

    root = Path(path)
    if (root / "vae" / "config.json").is_file():
        root = root / "vae"
    config = json.loads((root / "config.json").read_text())
    if config.get("_class_name") != "AutoencoderKLCosmos":
        raise DiffusersLayoutError(f"{root / 'config.json'}: expected an AutoencoderKLCosmos, "
                                   f"found _class_name {config.get('_class_name')!r}")
    files = sorted(root.glob("diffusion_pytorch_model*.safetensors"))
    if not files:
        raise DiffusersLayoutError(f"{root}: expected diffusion_pytorch_model*.safetensors "
                                   "weights, found none")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    model = VideoTokenizer(tokenizer_config_from_diffusers(config, name=f"diffusers:{root.name}"))
    names = {k: v for k, v in diffusers_key_map(model).items() if v is not None}
    copy_checked(model, state, names, f"{root} -> VideoTokenizer")
    return model.eval()


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
    """A saved tokenizer directory (``VideoTokenizer.save_pretrained``), a diffusers
    ``AutoencoderKLCosmos`` directory (its own config; ``preset`` unused), else a Cosmos
    TorchScript checkpoint (loaded into ``preset``). A training run directory is refused with a
    pointer to :func:`rgbd_world.train.run_models.load_any_tokenizer`."""
    p = Path(path)
    if (p / "model_config.json").exists():
        raise ValueError(f"{p}: expected a saved tokenizer, found a training run directory; read "
                         f"it with rgbd_world.train.run_models.load_any_tokenizer, or export it "
                         f"first (rgbd-world export-run --run {p})")
    if is_diffusers_tokenizer_dir(p):
        return load_diffusers_tokenizer(p).to(device)
    if p.is_dir() and (p / "config.json").is_file() and not (p / "autoencoder.jit").exists():
        try:
            kind = json.loads((p / "config.json").read_text())
        except (ValueError, UnicodeDecodeError):
            kind = {}
        if isinstance(kind, dict) and kind.get("_format") == VideoTokenizer.saved_format:
            return VideoTokenizer.from_pretrained(p, device=device)
        kind = kind.get("_class_name") or kind.get("_format") if isinstance(kind, dict) else None
        raise ValueError(f"{p}: expected a tokenizer (a saved tokenizer, Cosmos TorchScript "
                         f"files or a diffusers AutoencoderKLCosmos directory), found a directory "
                         f"with config.json of {kind or 'an unknown model'}")
    return load_cosmos_tokenizer(p, preset=preset, device=device)


def encoder_of(model: VideoTokenizer, device: str | torch.device = "cpu"):
    """``x (B, C, T, H, W) -> latent`` of ``model`` (no grad); ``encode.model`` is ``model``."""

    @torch.no_grad()
    def encode(x: torch.Tensor) -> torch.Tensor:
        return model.encode(x.to(device))

    encode.model = model
    return encode


def load_encoder(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """:func:`encoder_of` the tokenizer :func:`load_any_tokenizer` reads at ``path``."""
    return encoder_of(load_any_tokenizer(path, device=device), device)
