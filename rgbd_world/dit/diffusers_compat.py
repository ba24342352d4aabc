"""Exchanging weights with diffusers' ``CosmosTransformer3DModel`` (Cosmos-Predict2's DiT) and
loading official Cosmos-Predict2 checkpoints.

    dit = DiT.from_diffusers(transformer)          # rgbd_world.dit.model
    transformer = dit.to_diffusers()               # needs a Predict2-layout DiT (PREDICT2)
    dit = load_diffusers_dit("path/to/transformer")   # rgbd_world.dit.pretrained; no diffusers
    dit = load_predict2_checkpoint("model.pt")     # NVIDIA's Predict2 checkpoint (net.* keys)

This module holds the mapping (configs, key names, state dicts) and knows no model class.

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

import re

import torch
from torch.nn import functional as F

from .config import PATCH, PREDICT2, DiTConfig

__all__ = ["DiTLoadError", "dit_config_from_diffusers", "diffusers_dit_config",
           "dit_state_from_diffusers", "dit_state_to_diffusers", "predict2_to_diffusers_state",
           "padding_mask_to_latent", "DIFFUSERS_QK_EPS", "PREDICT2_QK_EPS"]

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


def _expected_diffusers_shapes(cfg: DiTConfig, in_channels: int, concat_padding_mask: bool,
                               ours: dict[str, tuple]):
    """diffusers key -> shape, for a model matching our config (``ours``: our key -> shape)."""
    shapes = {}
    for key, sources in _names(cfg).items():
        rows = ours[key][0] // len(sources)
        for s in sources:
            shapes[s] = (rows,) + tuple(ours[key][1:])
    n_in = in_channels + (1 if concat_padding_mask else 0)
    shapes["patch_embed.proj.weight"] = (cfg.hidden, n_in * 4)
    return shapes


def dit_state_from_diffusers(state: dict[str, torch.Tensor], cfg: DiTConfig, in_channels: int,
                             concat_padding_mask: bool = True, *,
                             our_shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """Our state dict (config ``cfg``) from a diffusers ``CosmosTransformer3DModel`` state dict
    with ``in_channels`` (its config's) and ``concat_padding_mask``. ``our_shapes``: key ->
    shape of our model of ``cfg`` (``DiT.state_shapes(cfg)``; this module knows no model
    class). :class:`DiTLoadError` lists missing, unexpected and wrongly shaped keys."""
    expected = _expected_diffusers_shapes(cfg, in_channels, concat_padding_mask, our_shapes)
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

def padding_mask_to_latent(padding_mask: torch.Tensor, batch: int, frames: int, height: int,
                           width: int) -> torch.Tensor:
    """diffusers' padding mask (1 or B, 1, H', W') -> ours (B, 1, T, H, W): nearest-neighbour
    resize to the latent's (H, W), shared by every frame."""
    if padding_mask.dim() != 4 or padding_mask.shape[1] != 1:
        raise ValueError(f"padding_mask must be (B, 1, H', W'), got {tuple(padding_mask.shape)}")
    m = F.interpolate(padding_mask.float(), size=(height, width), mode="nearest")
    return m.to(padding_mask.dtype)[:, :, None].expand(batch, 1, frames, height, width)


# ----------------------------------------------------------------------------- files

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
