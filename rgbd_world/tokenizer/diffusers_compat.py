"""Exchanging weights with diffusers' ``AutoencoderKLCosmos`` (the Cosmos CV tokenizer).

    tok = VideoTokenizer.from_diffusers(vae)      # rgbd_world.tokenizer.model
    vae = tok.to_diffusers()
    tok = load_any_tokenizer(directory)           # a save_pretrained directory (tokenizer.checkpoint)

This module holds the mapping (configs, key names, checked copies) and knows no model class: the
model's methods and the loader use it.

Both directions give the same latents (``vae.encode(x).latent_dist.mode()`` = ``tok.encode(x)``)
and reconstructions (``vae.decode(z).sample`` = ``tok.decode(z)``) for pixels in [-1, 1]. The
latents are the raw tokenizer output: diffusers' Cosmos pipelines normalise them with the VAE
config's ``latents_mean`` / ``latents_std`` outside the VAE, and so should a caller of ours.

Configuration (diffusers -> ours, channel multipliers relative to C = block_out_channels[0]):

* ``encoder_block_out_channels`` = (C, C*m_1, ..., C*m_n)  -> ``channels`` C, ``channels_mult``;
* ``decode_block_out_channels`` = (C*d_1, ..., C*d_k, C*d_k) -> ``decoder_channels_mult`` (d_i);
* ``num_layers`` -> ``num_res_blocks``; ``latent_channels`` -> ``latent_channels`` = ``z_channels``
  (diffusers has one latent width: ours must have no geometry channels and z = latent channels);
* ``attention_resolutions``, ``resolution``, ``patch_size`` (``patch_type`` must be "haar"),
  ``spatial/temporal_compression_ratio``, ``in_channels``, ``out_channels`` as they are.

Key names (ours -> diffusers): ``down.i.block.j`` -> ``down_blocks.i.resnets.j``,
``down.i.attn.j.0`` / ``.1`` -> ``down_blocks.i.attentions.j`` / ``temp_attentions.j``,
``down.i.downsample`` -> ``down_blocks.i.downsamplers.0``; decoder level i ->
``up_blocks.(n-1-i)`` (diffusers numbers them in run order); ``mid.block_1`` / ``block_2`` ->
``mid_block.resnets.0`` / ``.1``, ``mid.attn_1.0`` / ``.1`` -> ``mid_block.attentions.0`` /
``temp_attentions.0``; a factorized conv ``.0`` / ``.1`` -> ``.conv_s`` / ``.conv_t``;
``nin_shortcut`` -> ``conv_shortcut``; attention ``q, k, v, proj_out`` -> ``to_q, to_k, to_v,
to_out.0``. A resampler conv of a direction the level does not resample (kept by ours, absent
in diffusers) has no counterpart: it is unused by both.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from .config import TokenizerConfig

__all__ = ["diffusers_tokenizer_config", "tokenizer_config_from_diffusers", "diffusers_key_map",
           "DiffusersLayoutError", "is_diffusers_tokenizer_dir", "check_vae", "copy_checked"]


class DiffusersLayoutError(ValueError):
    """A diffusers model or config that our model cannot represent (says what and why)."""


_CONV = {"0": "conv_s", "1": "conv_t"}


def _inner(rest: str) -> str:
    """Names inside a res block / attention / top-level conv pair, ours -> diffusers."""
    rest = re.sub(r"^(conv1|conv2|conv_in|conv_out)\.([01])\.", lambda m: f"{m[1]}.{_CONV[m[2]]}.",
                  rest)
    rest = re.sub(r"^nin_shortcut\.", "conv_shortcut.", rest)
    rest = re.sub(r"^(q|k|v)\.", lambda m: f"to_{m[1]}.", rest)
    return re.sub(r"^proj_out\.", "to_out.0.", rest)


def _level_key(part: str, level: int, rest: str, cfg: TokenizerConfig) -> str | None:
    if part == "encoder":
        block, n, resample, flags = "down_blocks", len(cfg.channels_mult), "downsample", \
            cfg.encoder_downsamples()
        index = level
    else:
        block, n, resample, flags = "up_blocks", len(cfg.dec_mult), "upsample", \
            cfg.decoder_upsamples()
        index = n - 1 - level   # diffusers numbers the decoder levels in run order
    prefix = f"{part}.{block}.{index}"
    m = re.match(r"block\.(\d+)\.(.*)", rest)
    if m:
        return f"{prefix}.resnets.{m[1]}.{_inner(m[2])}"
    m = re.match(r"attn\.(\d+)\.([01])\.(.*)", rest)
    if m:
        kind = "attentions" if m[2] == "0" else "temp_attentions"
        return f"{prefix}.{kind}.{m[1]}.{_inner(m[3])}"
    m = re.match(rf"{resample}\.(conv[123])\.(.*)", rest)
    if m:
        spatial, temporal = flags[index]
        # encoder: conv1 spatial, conv2 temporal; decoder: conv1 temporal, conv2 spatial
        first, second = (spatial, temporal) if part == "encoder" else (temporal, spatial)
        present = {"conv1": first, "conv2": second, "conv3": spatial or temporal}[m[1]]
        return f"{prefix}.{resample}rs.0.{m[1]}.{m[2]}" if present else None
    raise KeyError(rest)


def diffusers_key_map(model: nn.Module) -> dict[str, str | None]:
    """Our state-dict key -> diffusers' key (None: a parameter diffusers does not have, unused
    by our model as well)."""
    cfg = model.config
    out: dict[str, str | None] = {}
    for key in model.state_dict():
        part, _, rest = key.partition(".")
        if part in ("quant_conv", "post_quant_conv"):
            out[key] = key
            continue
        m = re.match(r"(down|up)\.(\d+)\.(.*)", rest)
        if m:
            out[key] = _level_key(part, int(m[2]), m[3], cfg)
            continue
        m = re.match(r"mid\.(block_1|block_2|attn_1\.0|attn_1\.1)\.(.*)", rest)
        if m:
            sub = {"block_1": "resnets.0", "block_2": "resnets.1", "attn_1.0": "attentions.0",
                   "attn_1.1": "temp_attentions.0"}[m[1]]
            out[key] = f"{part}.mid_block.{sub}.{_inner(m[2])}"
            continue
        out[key] = f"{part}.{_inner(rest)}"   # conv_in, norm_out, conv_out
    return out


# ----------------------------------------------------------------------------- configs

def diffusers_tokenizer_config(cfg: TokenizerConfig) -> dict:
    """The ``AutoencoderKLCosmos`` config keyword arguments of our tokenizer config."""
    if cfg.geometry_channels or cfg.z_channels != cfg.latent_channels:
        raise DiffusersLayoutError(
            "AutoencoderKLCosmos has one latent width (encoder output = quant_conv width); this "
            f"tokenizer has z_channels={cfg.z_channels}, latent_channels={cfg.latent_channels}, "
            f"geometry_channels={cfg.geometry_channels} (expected z_channels == latent_channels "
            "and geometry_channels == 0)")
    if cfg.legacy_mode:
        raise DiffusersLayoutError("AutoencoderKLCosmos places the decoder upsamples by the "
                                   "current rule; this tokenizer has legacy_mode=True")
    c = cfg.channels
    return dict(in_channels=cfg.in_channels, out_channels=cfg.out_ch,
                latent_channels=cfg.latent_channels,
                encoder_block_out_channels=tuple([c] + [c * m for m in cfg.channels_mult]),
                decode_block_out_channels=tuple([c * m for m in cfg.dec_mult]
                                                + [c * cfg.dec_mult[-1]]),
                attention_resolutions=tuple(cfg.attn_resolutions), resolution=cfg.resolution,
                num_layers=cfg.num_res_blocks, patch_size=cfg.patch_size, patch_type="haar",
                spatial_compression_ratio=cfg.spatial_compression,
                temporal_compression_ratio=cfg.temporal_compression)


def tokenizer_config_from_diffusers(config, name: str = "diffusers") -> TokenizerConfig:
    """Our :class:`TokenizerConfig` of an ``AutoencoderKLCosmos`` config (a mapping or the
    model's ``.config``); :class:`DiffusersLayoutError` when it is not a Cosmos CV layout."""
    get = config.get if hasattr(config, "get") else lambda k, d=None: getattr(config, k, d)

    def fail(what):
        raise DiffusersLayoutError(f"not a Cosmos continuous-video (CV) tokenizer layout: {what}")

    if get("patch_type", "haar") != "haar":
        fail(f"patch_type must be 'haar' (our tokenizer has the Haar patcher only), found "
             f"{get('patch_type')!r}")
    enc = [int(v) for v in get("encoder_block_out_channels")]
    dec = [int(v) for v in get("decode_block_out_channels")]
    if len(enc) < 2 or len(dec) < 2:
        fail(f"expected at least two block widths, found encoder_block_out_channels={enc}, "
             f"decode_block_out_channels={dec}")
    c = enc[0]
    if any(v % c for v in enc[1:] + dec):
        fail(f"expected every block width to be a multiple of the first encoder width {c}, found "
             f"encoder_block_out_channels={enc}, decode_block_out_channels={dec}")
    if dec[-1] != dec[-2]:
        fail(f"expected decode_block_out_channels to end with its widest level repeated (the "
             f"decoder's input width), found {dec}")
    mult = tuple(v // c for v in enc[1:])
    dec_mult = tuple(v // c for v in dec[:-1])
    try:
        return TokenizerConfig(
            in_channels=int(get("in_channels")),
            out_channels=None if get("out_channels") == get("in_channels")
            else int(get("out_channels")),
            channels=c, channels_mult=mult,
            decoder_channels_mult=None if dec_mult == mult else dec_mult,
            num_res_blocks=int(get("num_layers")),
            attn_resolutions=tuple(int(v) for v in get("attention_resolutions")),
            resolution=int(get("resolution")), patch_size=int(get("patch_size")),
            latent_channels=int(get("latent_channels")), z_channels=int(get("latent_channels")),
            spatial_compression=int(get("spatial_compression_ratio")),
            temporal_compression=int(get("temporal_compression_ratio")), name=name)
    except ValueError as e:
        fail(str(e))


# ----------------------------------------------------------------------------- weights

def check_vae(vae):
    from diffusers import AutoencoderKLCosmos  # optional dependency: only needed here
    if not isinstance(vae, AutoencoderKLCosmos):
        raise DiffusersLayoutError(f"expected a diffusers AutoencoderKLCosmos, found "
                                   f"{type(vae).__name__}")
    return AutoencoderKLCosmos


def copy_checked(target: nn.Module, source: dict[str, torch.Tensor], names: dict[str, str],
                  what: str) -> None:
    """Copy ``source[names[k]]`` into ``target``'s tensor ``k`` for every k of ``names``, after
    checking that exactly the named source keys exist with the target's shapes."""
    tsd = target.state_dict()
    wanted = set(names.values())
    missing = sorted(wanted - set(source))
    unexpected = sorted(set(source) - wanted)
    mismatched = [f"{names[k]}: {tuple(source[names[k]].shape)} vs {tuple(tsd[k].shape)}"
                  for k in names if names[k] in source
                  and tuple(source[names[k]].shape) != tuple(tsd[k].shape)]
    if missing or unexpected or mismatched:
        rows = [("missing keys", missing), ("unexpected keys", unexpected),
                ("shape mismatches (found vs expected)", mismatched)]
        raise DiffusersLayoutError(f"{what}: the weights do not match the expected layout:" + "".join(
            f"\n  {title} ({len(r)}): " + ", ".join(r[:20]) + (" ..." if len(r) > 20 else "")
            for title, r in rows if r))
    with torch.no_grad():
        for k, src in names.items():
            tsd[k].copy_(source[src])


def is_diffusers_tokenizer_dir(path) -> bool:
    """True for a diffusers ``AutoencoderKLCosmos`` directory (or a pipeline's ``vae/``)."""
    import json
    from pathlib import Path

    for root in (Path(path), Path(path) / "vae"):
        config = root / "config.json"
        if config.is_file():
            try:
                if json.loads(config.read_text()).get("_class_name") == "AutoencoderKLCosmos":
                    return True
            except ValueError:
                return False
    return False
