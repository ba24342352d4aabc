"""Starting stage 2 from a pretrained DiT: load it (any of three kinds) and inflate it to RGBD.

    dit = load_pretrained_dit(path)        # diffusers dir | Predict2 checkpoint | our DiT
    rgbd = inflate_dit_to_rgbd(dit, latent_channels=16 + g, cond_channels=16)

:func:`load_pretrained_dit` recognises

* a diffusers ``CosmosTransformer3DModel`` directory (``config.json`` with that ``_class_name``,
  or a pipeline directory with ``transformer/``): :func:`load_diffusers_dit`;
* a file: NVIDIA's Cosmos-Predict2 DiT checkpoint (``net.*`` keys):
  :func:`load_predict2_checkpoint`;
* our DiT: a saved ``DiT`` / ``RGBDDenoiser`` directory (``save_pretrained``) or a saved
  ``RGBDPipeline`` directory (``pipeline.json`` + ``dit/``). (A ``train.py --stage dit`` run
  directory is read by ``rgbd_world.train.run_models.load_pretrained_dit``, which knows
  checkpoints and then calls this one.)

Anything else is a :class:`~.diffusers_compat.DiTLoadError` naming what was expected and found.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch

from .config import PREDICT2, DiTConfig
from .diffusers_compat import (PREDICT2_QK_EPS, DiTLoadError, dit_config_from_diffusers,
                               dit_state_from_diffusers, predict2_to_diffusers_state)
from .model import DiT

__all__ = ["load_pretrained_dit", "inflate_dit_to_rgbd", "load_dit_from_files",
           "load_diffusers_dit", "load_predict2_checkpoint", "build_dit"]


def _config_from_dict(data: dict) -> DiTConfig:
    return DiTConfig.from_dict(data)


def _dit_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The DiT's tensors of a denoiser state dict (``dit.*``), or the dict itself."""
    if any(k.startswith("dit.") for k in state):
        return {k[4:]: v for k, v in state.items() if k.startswith("dit.")}
    return state


def load_dit_from_files(config: dict, files: list[Path], where: Path) -> DiT:
    """Our DiT of ``config`` with the (``dit.``-prefixed or bare) weights of ``files``."""
    from safetensors.torch import load_file

    cfg = _config_from_dict(config)
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    model = DiT(cfg)
    missing, unexpected = model.load_state_dict(_dit_state(state), strict=False)
    if missing or unexpected:
        raise DiTLoadError(f"{where}: the DiT weights do not match its config ({cfg.name}, "
                           f"hidden {cfg.hidden}, depth {cfg.depth}): missing {missing[:8]}, "
                           f"unexpected {unexpected[:8]}")
    return model.eval()


# ----------------------------------------------------------------------------- diffusers / Predict2 files

def build_dit(cfg: DiTConfig, state, device="cpu", dtype=None) -> DiT:
    """A DiT of ``cfg`` holding ``state`` (strict), on ``device`` / ``dtype``, eval mode."""
    model = DiT(cfg)
    model.load_state_dict(state, strict=True)
    model = model.to(device)
    return (model.to(dtype) if dtype is not None else model).eval()


def _read_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    state = {}
    for f in files:
        if f.suffix == ".safetensors":
            state.update(load_file(str(f)))
        else:
            state.update(torch.load(str(f), map_location="cpu", weights_only=True))
    return state


def load_diffusers_dit(path: str | Path, **overrides) -> DiT:
    """Our DiT from a diffusers ``save_pretrained`` directory of a ``CosmosTransformer3DModel``
    (``config.json`` + ``diffusion_pytorch_model*.safetensors``, sharded or not; or a pipeline
    directory with a ``transformer/`` folder). Reads the files directly: diffusers need not be
    installed. QK norm eps: diffusers' (1e-5), so the outputs equal the diffusers model's."""
    root = Path(path)
    if (root / "transformer" / "config.json").is_file():
        root = root / "transformer"
    config_file = root / "config.json"
    if not config_file.is_file():
        raise DiTLoadError(f"{path}: expected a diffusers model directory (config.json), found "
                           "no config.json")
    config = json.loads(config_file.read_text())
    kind = config.get("_class_name")
    if kind != "CosmosTransformer3DModel":
        raise DiTLoadError(f"{config_file}: expected a CosmosTransformer3DModel, found "
                           f"_class_name {kind!r}")
    index = sorted(root.glob("diffusion_pytorch_model*.safetensors.index.json"))
    if index:
        names = sorted(set(json.loads(index[0].read_text())["weight_map"].values()))
        files = [root / n for n in names]
    else:
        files = sorted(root.glob("diffusion_pytorch_model*.safetensors")) or \
            sorted(root.glob("diffusion_pytorch_model*.bin"))
    if not files:
        raise DiTLoadError(f"{root}: expected diffusion_pytorch_model*.safetensors weights, "
                           "found none")
    cfg = dit_config_from_diffusers(config, name=f"diffusers:{root.name}", **overrides)
    state = dit_state_from_diffusers(_read_weights(files), cfg, int(config["in_channels"]),
                                     bool(config.get("concat_padding_mask", True)),
                                     our_shapes=DiT.state_shapes(cfg))
    return build_dit(cfg, state)


def _predict2_config(state: dict[str, torch.Tensor], rope_scale) -> dict:
    """A diffusers-style config read off the shapes of a Predict2 state dict (diffusers names)."""
    hidden, n_in = state["patch_embed.proj.weight"].shape
    blocks = {int(m[1]) for k in state if (m := re.match(r"transformer_blocks\.(\d+)\.", k))}
    head_dim = state["transformer_blocks.0.attn1.norm_q.weight"].shape[0]
    return dict(in_channels=n_in // 4 - 1, out_channels=state["proj_out.weight"].shape[0] // 4,
                num_attention_heads=hidden // head_dim, attention_head_dim=head_dim,
                num_layers=len(blocks),
                mlp_ratio=state["transformer_blocks.0.ff.net.0.proj.weight"].shape[0] / hidden,
                text_embed_dim=state["transformer_blocks.0.attn2.to_k.weight"].shape[1],
                adaln_lora_dim=state["transformer_blocks.0.norm1.linear_1.weight"].shape[0],
                rope_scale=tuple(rope_scale), concat_padding_mask=True,
                extra_pos_embed_type=None)


def load_predict2_checkpoint(path: str | Path, rope_scale=PREDICT2["rope_scale"],
                             **overrides) -> DiT:
    """Our DiT from NVIDIA's Cosmos-Predict2 DiT checkpoint (``.pt`` / ``.safetensors`` with
    ``net.*`` keys, or a dict holding it under "model" / "state_dict"). The sizes are read off
    the weights; ``rope_scale`` (t, h, w) is not stored in the file: (1, 3, 3) is the 2B
    Video2World's, pass another for other models. QK norm eps 1e-6 (Predict2's)."""
    p = Path(path)
    if not p.is_file():
        raise DiTLoadError(f"{p}: expected a Cosmos-Predict2 checkpoint file, found no file")
    state = _read_weights([p])
    for wrapper in ("model", "state_dict", "ema"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    theirs = predict2_to_diffusers_state(state)
    try:
        config = _predict2_config(theirs, rope_scale)
    except KeyError as e:
        raise DiTLoadError(f"{p}: not a complete Cosmos-Predict2 DiT checkpoint (no {e})") from None
    cfg = dit_config_from_diffusers(config, qk_norm_eps=PREDICT2_QK_EPS,
                                    name=f"predict2:{p.name}", **overrides)
    return build_dit(cfg, dit_state_from_diffusers(theirs, cfg, config["in_channels"], True,
                                                   our_shapes=DiT.state_shapes(cfg)))


# ----------------------------------------------------------------------------- any kind

def load_pretrained_dit(path: str | Path, **overrides) -> DiT:
    """A pretrained DiT of any supported kind (module docstring), on the CPU, eval mode.
    ``overrides``: run-time config fields (backend, fp8)."""
    p = Path(path)
    if not p.exists():
        raise DiTLoadError(f"model.init: {p} does not exist (expected a diffusers "
                           "CosmosTransformer3DModel directory, a Cosmos-Predict2 checkpoint "
                           "file or a DiT run / pipeline directory)")
    if p.is_file():
        return load_predict2_checkpoint(p, **overrides)
    if (p / "model_config.json").is_file():
        raise DiTLoadError(f"{p}: expected a saved DiT, found a training run directory; read it "
                           "with rgbd_world.train.run_models.load_pretrained_dit (model.init "
                           "does), or export it first (rgbd-world export-run)")
    in_pipeline = (p / "pipeline.json").is_file() and (p / "dit" / "config.json").is_file()
    if in_pipeline:
        p = p / "dit"
    if (p / "config.json").is_file():
        config = json.loads((p / "config.json").read_text())
        ours = ("rgbd-world-dit", "rgbd-world-denoiser") + ((None,) if in_pipeline else ())
        if isinstance(config, dict) and config.get("_format") in ours:
            config = {k: v for k, v in config.items() if not k.startswith("_")}
            return load_dit_from_files(dict(config, **overrides), [p / "model.safetensors"], p)
    if (p / "config.json").is_file() or (p / "transformer" / "config.json").is_file():
        return load_diffusers_dit(p, **overrides)
    raise DiTLoadError(f"model.init: {p} is a directory but not a known DiT: expected config.json "
                       "(diffusers), model_config.json (a DiT run) or pipeline.json (a saved "
                       f"pipeline), found {sorted(x.name for x in p.iterdir())[:10]}")


def inflate_dit_to_rgbd(dit: DiT, latent_channels: int, cond_channels: int,
                        **overrides) -> DiT:
    """A DiT for ``latent_channels`` noisy-latent channels and ``cond_channels`` conditioning
    channels, initialised from ``dit`` so that its prediction of ``dit``'s channels is
    ``dit``'s for any value of the new channels (the tokenizer's inflation, for the DiT).

    ``dit`` sees [x (L), cond (C), condition mask, padding mask]; the new model [x (L'), cond
    (C'), condition mask, padding mask] with L' >= L (the RGB latent channels first, then the
    RGBD tokenizer's geometry channels) and C' >= C. The patch embedding's columns of old
    channels are copied to their new positions (x_i -> x_i, cond_j -> cond_j, masks -> masks)
    and the new columns are zero, so the new inputs do not change anything at initialisation;
    the final linear's rows of old output channels are copied, the new rows (and bias) are zero
    (a zero velocity for the new channels; they still get gradients). Everything else is
    copied unchanged. ``overrides``: other config fields (backend, fp8, ...).
    """
    cfg = dit.config
    if latent_channels < cfg.latent_channels or cond_channels < cfg.cond_channels:
        raise ValueError(f"inflate_dit_to_rgbd widens only: the DiT has latent_channels="
                         f"{cfg.latent_channels}, cond_channels={cfg.cond_channels}; got "
                         f"latent_channels={latent_channels}, cond_channels={cond_channels}")
    new_cfg = dataclasses.replace(cfg, latent_channels=latent_channels,
                                  cond_channels=cond_channels, name=f"{cfg.name}+rgbd",
                                  **overrides)
    param = next(dit.parameters())
    new = DiT(new_cfg).to(device=param.device, dtype=param.dtype)
    L, C = cfg.latent_channels, cfg.cond_channels
    # old input channel -> new input channel
    in_map = list(range(L)) + [latent_channels + j for j in range(C)] + \
        [latent_channels + cond_channels, latent_channels + cond_channels + 1]
    old_sd, new_sd = dit.state_dict(), new.state_dict()
    with torch.no_grad():
        for key, t in new_sd.items():
            o = old_sd[key]
            if key == "patch_embed.weight":
                t.zero_()
                for old_ch, new_ch in enumerate(in_map):
                    t[:, new_ch * 4:(new_ch + 1) * 4] = o[:, old_ch * 4:(old_ch + 1) * 4]
            elif key in ("final.weight", "final.bias"):
                t.zero_()
                # output features: (c, dh, dw) -> c * 4 + k; (dh, dw, c) -> k * C_out + c
                for c in range(L):
                    for k in range(4):
                        if cfg.unpatchify_order == "dh_dw_c":
                            t[k * latent_channels + c] = o[k * L + c]
                        else:
                            t[c * 4 + k] = o[c * 4 + k]
            elif o.shape == t.shape:
                t.copy_(o)
            else:  # pragma: no cover - a config change this function does not know
                raise RuntimeError(f"inflate_dit_to_rgbd: unexpected shape change of {key}: "
                                   f"{tuple(o.shape)} -> {tuple(t.shape)}")
    return new.train(dit.training)
