"""Exchanging weights with diffusers' ``CosmosTransformer3DModel`` (Cosmos-Predict2's DiT) and
loading official Cosmos-Predict2 checkpoints.

    dit = DiT.from_diffusers(transformer)          # or dit_from_diffusers(transformer)
    transformer = dit.to_diffusers()               # needs a Predict2-layout DiT (PREDICT2)
    dit = load_diffusers_dit("path/to/transformer")   # a save_pretrained directory, no diffusers
    dit = load_predict2_checkpoint("model.pt")     # NVIDIA's Predict2 checkpoint (net.* keys)

Call mapping (equal outputs; diffusers -> ours):

* ``hidden_states`` (B, C_in - 1, T, H, W) -> ``x`` (its first ``out_channels`` channels) and
  ``cond`` (the rest: our ``cond_channels`` = in_channels - 1 - out_channels; none for
  Predict2's Video2World, in_channels = 17);
* ``timestep``: diffusers' ``timestep`` IS our ``t``, the flow time in [0, 1]: (B,) -> ``t``
  (B,), (B, 1, T, 1, 1) -> ``t`` (B, T). Both models take the rectified-flow point
  ``x_t = (1 - t) x0 + t eps`` and return the velocity ``eps - x0``: diffusers' Cosmos2 pipelines
  pass ``t = sigma / (sigma + 1)`` of their sigma schedule with the latent scaled by
  ``1 - t`` (= x_t) and denoise as ``x_t - t * output``. The Predict2 layout embeds the sinusoid
  of t itself (``timestep_scale = 1``); our default layout embeds that of 1000 t.
* ``encoder_hidden_states`` (B, L, D_text) -> ``text``; ``attention_mask`` (B, L) bool (True =
  attend) -> ``text_mask``;
* ``condition_mask`` (B, 1, T, H, W), constant over each frame -> ``cond_mask`` (B, 1, T, 1, 1)
  or (B, T);
* ``padding_mask`` (1, 1, H', W') at any resolution, resized to the latent's (H, W) by nearest
  neighbour and shared by every frame -> ``padding_mask`` (B, 1, T, H, W) (use
  :func:`padding_mask_to_latent`);
* ``fps`` must be None (our RoPE uses the frame index as the time position).

Weights: separate ``to_q/to_k/to_v`` <-> our fused ``qkv_proj`` (``to_k/to_v`` <-> ``kv_proj``
in cross-attention), ``norm1/2/3`` <-> ``modulation_self_attn/cross_attn/mlp``,
``time_embed.t_embedder`` <-> ``time_embed.linear_1/2``, ``norm_out`` <-> ``final_modulation``,
``proj_out`` <-> ``final``; the patch embedding's input channels are the same in both orders
([x, cond, condition mask, padding mask]); a source without a condition-mask channel
(in_channels == out_channels, e.g. Text2Image) or without the padding mask
(``concat_padding_mask=False``) gets zero weights for that channel (it then has no effect).

The QK RMSNorm eps: diffusers' attention uses 1e-5 (official Predict2: 1e-6); a DiT from
diffusers keeps the source model's, and ``to_diffusers`` sets the new model's norms to ours
(a config field diffusers does not save: reloaded with ``from_pretrained`` it is 1e-5 again).
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch
from torch.nn import functional as F

from .config import PREDICT2, DiTConfig
from .model import PATCH, DiT

__all__ = ["DiTLoadError", "dit_config_from_diffusers", "diffusers_dit_config",
           "dit_from_diffusers", "dit_to_diffusers", "dit_state_from_diffusers",
           "dit_state_to_diffusers", "load_diffusers_dit", "predict2_to_diffusers_state",
           "load_predict2_checkpoint", "padding_mask_to_latent", "DIFFUSERS_QK_EPS",
           "PREDICT2_QK_EPS"]

DIFFUSERS_QK_EPS = 1e-5   # diffusers' Attention default (its Cosmos blocks do not set it)
PREDICT2_QK_EPS = 1e-6    # the official Predict2 attention


class DiTLoadError(ValueError):
    """A pretrained DiT of the wrong kind, size or layout: says what was expected and found."""


def _getter(config):
    if hasattr(config, "get"):
        return config.get
    return lambda k, d=None: getattr(config, k, d)


# ----------------------------------------------------------------------------- configs

def dit_config_from_diffusers(config, qk_norm_eps: float = DIFFUSERS_QK_EPS,
                              name: str = "diffusers", **overrides) -> DiTConfig:
    """Our Predict2-layout :class:`DiTConfig` of a ``CosmosTransformer3DModel`` config (a
    mapping or the model's ``.config``). ``overrides``: our run-time fields (backend, fp8)."""
    get = _getter(config)

    def fail(what):
        raise DiTLoadError(f"not a Cosmos-Predict2 DiT layout: {what}")

    if tuple(get("patch_size", PATCH)) != PATCH:
        fail(f"expected patch_size {PATCH}, found {tuple(get('patch_size'))}")
    if get("extra_pos_embed_type", None) not in (None, "none"):
        fail(f"expected extra_pos_embed_type None (Predict2 has RoPE only), found "
             f"{get('extra_pos_embed_type')!r} (a Cosmos-1.0 DiT?)")
    if get("use_crossattn_projection", False) or get("img_context_dim_in", None):
        fail("expected no cross-attention projection and no image context (Predict2), found "
             f"use_crossattn_projection={get('use_crossattn_projection')}, img_context_dim_in="
             f"{get('img_context_dim_in')} (a Cosmos-Predict2.5 / Transfer model?)")
    heads, head_dim = int(get("num_attention_heads")), int(get("attention_head_dim"))
    mlp_ratio = float(get("mlp_ratio", 4.0))
    if mlp_ratio != int(mlp_ratio):
        fail(f"expected an integer mlp_ratio, found {mlp_ratio}")
    c_in, c_out = int(get("in_channels")), int(get("out_channels"))
    if c_in < c_out:
        fail(f"expected in_channels >= out_channels, found {c_in} < {c_out}")
    hidden = heads * head_dim
    try:
        return DiTConfig(latent_channels=c_out, cond_channels=max(c_in - c_out - 1, 0),
                         hidden=hidden, depth=int(get("num_layers")), heads=heads,
                         mlp_ratio=int(mlp_ratio), adaln_rank=int(get("adaln_lora_dim")),
                         text_dim=int(get("text_embed_dim")), timestep_dim=hidden,
                         qk_norm_eps=qk_norm_eps, name=name,
                         **dict(PREDICT2, rope_scale=tuple(get("rope_scale", (1.0, 1.0, 1.0)))),
                         **overrides)
    except ValueError as e:
        fail(str(e))


def diffusers_dit_config(cfg: DiTConfig) -> dict:
    """``CosmosTransformer3DModel`` keyword arguments for our DiT config (Predict2 layout)."""
    wrong = [f"{k}={getattr(cfg, k)!r} (expected {v!r})" for k, v in PREDICT2.items()
             if k != "rope_scale" and getattr(cfg, k) != v]
    if cfg.timestep_dim != cfg.hidden:
        wrong.append(f"timestep_dim={cfg.timestep_dim} (expected hidden={cfg.hidden})")
    if cfg.rope_theta != 10000.0:
        wrong.append(f"rope_theta={cfg.rope_theta} (expected 10000.0)")
    if wrong:
        raise DiTLoadError("CosmosTransformer3DModel computes the Predict2 layout; this DiT "
                           "differs in: " + ", ".join(wrong))
    return dict(in_channels=cfg.latent_channels + cfg.cond_channels + 1,
                out_channels=cfg.latent_channels, num_attention_heads=cfg.heads,
                attention_head_dim=cfg.head_dim, num_layers=cfg.depth,
                mlp_ratio=float(cfg.mlp_ratio), text_embed_dim=cfg.text_dim,
                adaln_lora_dim=cfg.adaln_rank, patch_size=PATCH,
                rope_scale=tuple(cfg.rope_scale), concat_padding_mask=True,
                extra_pos_embed_type=None)


# ----------------------------------------------------------------------------- state dicts

def _names(cfg: DiTConfig) -> dict[str, list[str]]:
    """Our key -> the diffusers keys whose tensors, concatenated along dim 0, make it (all but
    the patch embedding)."""
    out = {"time_embed.linear_1.weight": ["time_embed.t_embedder.linear_1.weight"],
           "time_embed.linear_2.weight": ["time_embed.t_embedder.linear_2.weight"],
           "time_embed.norm.weight": ["time_embed.norm.weight"],
           "final_modulation.down.weight": ["norm_out.linear_1.weight"],
           "final_modulation.up.weight": ["norm_out.linear_2.weight"],
           "final.weight": ["proj_out.weight"]}
    for i in range(cfg.depth):
        o, d = f"blocks.{i}.", f"transformer_blocks.{i}."
        for ours, theirs in (("self_attn", "attn1"), ("cross_attn", "attn2")):
            out[o + f"{ours}.q_norm.weight"] = [d + f"{theirs}.norm_q.weight"]
            out[o + f"{ours}.k_norm.weight"] = [d + f"{theirs}.norm_k.weight"]
            out[o + f"{ours}.out_proj.weight"] = [d + f"{theirs}.to_out.0.weight"]
        out[o + "self_attn.qkv_proj.weight"] = [d + f"attn1.to_{n}.weight" for n in "qkv"]
        out[o + "cross_attn.q_proj.weight"] = [d + "attn2.to_q.weight"]
        out[o + "cross_attn.kv_proj.weight"] = [d + "attn2.to_k.weight", d + "attn2.to_v.weight"]
        out[o + "mlp.0.weight"] = [d + "ff.net.0.proj.weight"]
        out[o + "mlp.2.weight"] = [d + "ff.net.2.weight"]
        for ours, theirs in (("self_attn", "norm1"), ("cross_attn", "norm2"), ("mlp", "norm3")):
            out[o + f"modulation_{ours}.down.weight"] = [d + f"{theirs}.linear_1.weight"]
            out[o + f"modulation_{ours}.up.weight"] = [d + f"{theirs}.linear_2.weight"]
    return out


def _patch_channels(cfg: DiTConfig, in_channels: int, concat_padding_mask: bool) -> list[int]:
    """Our input channel of each diffusers patch-embedding input channel."""
    user = in_channels - (1 if in_channels > cfg.latent_channels else 0)
    channels = list(range(user))                      # [x, cond]
    if in_channels > cfg.latent_channels:
        channels.append(cfg.latent_channels + cfg.cond_channels)       # condition mask
    if concat_padding_mask:
        channels.append(cfg.latent_channels + cfg.cond_channels + 1)   # padding mask
    return channels


def _problems(expected: dict[str, tuple], found: dict[str, torch.Tensor]) -> list[str]:
    rows = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [f"{k}: found {tuple(found[k].shape)}, expected {tuple(s)}"
                  for k, s in expected.items() if k in found and tuple(found[k].shape) != tuple(s)]
    for title, r in (("missing", missing), ("unexpected", unexpected),
                     ("shape mismatches", mismatched)):
        if r:
            rows.append(f"  {title} ({len(r)}): " + ", ".join(r[:12])
                        + (f" ... and {len(r) - 12} more" if len(r) > 12 else ""))
    return rows


def _expected_diffusers_shapes(cfg: DiTConfig, in_channels: int, concat_padding_mask: bool):
    """diffusers key -> shape, for a model matching our config."""
    model = DiT(dataclasses.replace(cfg, backend="reference", fp8=False))  # meta would do too
    ours = {k: v.shape for k, v in model.state_dict().items()}
    shapes = {}
    for key, sources in _names(cfg).items():
        rows = ours[key][0] // len(sources)
        for s in sources:
            shapes[s] = (rows,) + tuple(ours[key][1:])
    n_in = in_channels + (1 if concat_padding_mask else 0)
    shapes["patch_embed.proj.weight"] = (cfg.hidden, n_in * 4)
    return shapes


def dit_state_from_diffusers(state: dict[str, torch.Tensor], cfg: DiTConfig, in_channels: int,
                             concat_padding_mask: bool = True) -> dict[str, torch.Tensor]:
    """Our state dict (config ``cfg``) from a diffusers ``CosmosTransformer3DModel`` state dict
    with ``in_channels`` (its config's) and ``concat_padding_mask``. :class:`DiTLoadError` lists
    missing, unexpected and wrongly shaped keys."""
    with torch.device("meta"):
        expected = _expected_diffusers_shapes(cfg, in_channels, concat_padding_mask)
    rows = _problems(expected, state)
    if rows:
        raise DiTLoadError(f"the diffusers CosmosTransformer3DModel weights do not match the "
                           f"expected layout (hidden {cfg.hidden}, depth {cfg.depth}, heads "
                           f"{cfg.heads}, in/out channels {in_channels}/{cfg.latent_channels}):\n"
                           + "\n".join(rows))
    out = {k: torch.cat([state[s] for s in sources], dim=0) for k, sources in _names(cfg).items()}
    w = state["patch_embed.proj.weight"]
    full = w.new_zeros(cfg.hidden, cfg.in_channels * 4)
    for i, ch in enumerate(_patch_channels(cfg, in_channels, concat_padding_mask)):
        full[:, ch * 4:(ch + 1) * 4] = w[:, i * 4:(i + 1) * 4]
    out["patch_embed.weight"] = full
    return out


def dit_state_to_diffusers(state: dict[str, torch.Tensor], cfg: DiTConfig) -> dict[str, torch.Tensor]:
    """A diffusers state dict (``diffusers_dit_config(cfg)``) from ours."""
    out = {}
    for key, sources in _names(cfg).items():
        for s, part in zip(sources, state[key].chunk(len(sources), dim=0)):
            out[s] = part
    out["patch_embed.proj.weight"] = state["patch_embed.weight"]  # same channel order
    return out


# ----------------------------------------------------------------------------- models

def dit_from_diffusers(transformer, **overrides) -> DiT:
    """Our :class:`DiT` with the weights of a diffusers ``CosmosTransformer3DModel`` (same
    device and dtype, eval mode). ``overrides``: run-time fields (backend, fp8)."""
    from diffusers import CosmosTransformer3DModel  # optional dependency: only needed here
    if not isinstance(transformer, CosmosTransformer3DModel):
        raise DiTLoadError(f"expected a diffusers CosmosTransformer3DModel, found "
                           f"{type(transformer).__name__}")
    eps = transformer.transformer_blocks[0].attn1.norm_q.eps if len(
        transformer.transformer_blocks) else DIFFUSERS_QK_EPS
    cfg = dit_config_from_diffusers(transformer.config, qk_norm_eps=eps, **overrides)
    param = next(transformer.parameters())
    state = dit_state_from_diffusers(transformer.state_dict(), cfg,
                                     int(transformer.config.in_channels),
                                     bool(transformer.config.concat_padding_mask))
    return _build(cfg, state, param.device, param.dtype)


def _build(cfg: DiTConfig, state, device="cpu", dtype=None) -> DiT:
    model = DiT(cfg)
    model.load_state_dict(state, strict=True)
    model = model.to(device)
    return (model.to(dtype) if dtype is not None else model).eval()


def dit_to_diffusers(dit: DiT):
    """A diffusers ``CosmosTransformer3DModel`` with our (Predict2-layout) DiT's weights (same
    device and dtype, eval mode); its QK norms use our ``qk_norm_eps``."""
    from diffusers import CosmosTransformer3DModel
    if not isinstance(dit, DiT):
        raise TypeError(f"expected a DiT, found {type(dit).__name__}")
    cfg = dit.config
    model = CosmosTransformer3DModel(**diffusers_dit_config(cfg))
    model.load_state_dict(dit_state_to_diffusers(dit.state_dict(), cfg), strict=True)
    for block in model.transformer_blocks:
        for attn in (block.attn1, block.attn2):
            attn.norm_q.eps = attn.norm_k.eps = cfg.qk_norm_eps
    param = next(dit.parameters())
    model = model.to(param.device)
    return (model.to(param.dtype) if param.dtype != torch.float32 else model).eval()


def padding_mask_to_latent(padding_mask: torch.Tensor, batch: int, frames: int, height: int,
                           width: int) -> torch.Tensor:
    """diffusers' padding mask (1 or B, 1, H', W') -> ours (B, 1, T, H, W): nearest-neighbour
    resize to the latent's (H, W), shared by every frame."""
    if padding_mask.dim() != 4 or padding_mask.shape[1] != 1:
        raise ValueError(f"padding_mask must be (B, 1, H', W'), got {tuple(padding_mask.shape)}")
    m = F.interpolate(padding_mask.float(), size=(height, width), mode="nearest")
    return m.to(padding_mask.dtype)[:, :, None].expand(batch, 1, frames, height, width)


# ----------------------------------------------------------------------------- files

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
                                     bool(config.get("concat_padding_mask", True)))
    return _build(cfg, state)


_PREDICT2_BLOCK = [
    (r"adaln_modulation_self_attn\.([12])\.", lambda m: f"norm1.linear_{m[1]}."),
    (r"adaln_modulation_cross_attn\.([12])\.", lambda m: f"norm2.linear_{m[1]}."),
    (r"adaln_modulation_mlp\.([12])\.", lambda m: f"norm3.linear_{m[1]}."),
    (r"self_attn\.", lambda m: "attn1."), (r"cross_attn\.", lambda m: "attn2."),
    (r"attn([12])\.(q|k|v)_proj\.", lambda m: f"attn{m[1]}.to_{m[2]}."),
    (r"attn([12])\.output_proj\.", lambda m: f"attn{m[1]}.to_out.0."),
    (r"attn([12])\.(q|k)_norm\.", lambda m: f"attn{m[1]}.norm_{m[2]}."),
    (r"mlp\.layer1\.", lambda m: "ff.net.0.proj."), (r"mlp\.layer2\.", lambda m: "ff.net.2."),
]
_PREDICT2_TOP = {"x_embedder.proj.1.weight": "patch_embed.proj.weight",
                 "t_embedder.1.linear_1.weight": "time_embed.t_embedder.linear_1.weight",
                 "t_embedder.1.linear_2.weight": "time_embed.t_embedder.linear_2.weight",
                 "t_embedding_norm.weight": "time_embed.norm.weight",
                 "final_layer.adaln_modulation.1.weight": "norm_out.linear_1.weight",
                 "final_layer.adaln_modulation.2.weight": "norm_out.linear_2.weight",
                 "final_layer.linear.weight": "proj_out.weight"}
# bookkeeping tensors of official checkpoints (RoPE tables, training counters, TE state)
_PREDICT2_SKIP = re.compile(r"^(pos_embedder\.|accum_|logvar\.)|_extra_state$")


def predict2_to_diffusers_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official Cosmos-Predict2 DiT state dict (``net.*`` keys, or without the prefix)
    under diffusers' names; bookkeeping buffers dropped, anything else unknown is an error."""
    if any(k.startswith("net.") for k in state):
        state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
    if "extra_pos_embedder.pos_emb_h" in state or any(".blocks.block" in k for k in state):
        raise DiTLoadError("expected a Cosmos-Predict2 DiT checkpoint, found a Cosmos-1.0 one "
                           "(extra_pos_embedder / blocks.blockN keys)")
    out, unknown = {}, []
    for key, value in state.items():
        if _PREDICT2_SKIP.search(key):
            continue
        if key in _PREDICT2_TOP:
            out[_PREDICT2_TOP[key]] = value
            continue
        m = re.match(r"blocks\.(\d+)\.(.*)", key)
        if not m:
            unknown.append(key)
            continue
        rest = m[2]
        for pattern, repl in _PREDICT2_BLOCK:
            rest = re.sub(pattern, repl, rest)
        out[f"transformer_blocks.{m[1]}.{rest}"] = value
    if unknown:
        raise DiTLoadError(f"not a Cosmos-Predict2 DiT checkpoint: unknown keys {unknown[:12]}")
    if "patch_embed.proj.weight" not in out:
        raise DiTLoadError("expected a Cosmos-Predict2 DiT checkpoint (net.x_embedder.proj.1."
                           f"weight ...), found keys such as {sorted(state)[:5]}")
    return out


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
    return _build(cfg, dit_state_from_diffusers(theirs, cfg, config["in_channels"], True))
