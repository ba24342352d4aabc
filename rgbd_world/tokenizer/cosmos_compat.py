"""Loading NVIDIA Cosmos-Tokenizer continuous-video weights, and inflating RGB to RGBD.

Cosmos's modules nest every causal conv's ``nn.Conv3d`` as ``.conv3d`` (``conv_in.0.conv3d.weight``);
ours keep ``weight``/``bias`` on the conv (``conv_in.0.weight``). All other names are identical
(``encoder.down.0.block.1.norm1.norm.weight``, ``decoder.mid.attn_1.1.q``, ``quant_conv``, ...).
:func:`cosmos_key_map` gives the exact map for a model; :func:`load_cosmos_state_dict` loads an
official state dict (``torch.jit.load(path).state_dict()`` of ``encoder.jit``, ``decoder.jit`` or
``autoencoder.jit``), with or without the ``encoder.`` / ``decoder.`` prefixes.

TorchScript files also carry the Haar patcher's fixed buffers (``encoder.patcher3d.wavelets``,
``encoder.patcher3d._arange``, ``encoder.patcher3d.patch_size_buffer``,
``decoder.unpatcher3d.wavelets``, ``decoder.unpatcher3d._arange``). Our patcher computes the same
transform without buffers, so the loader checks each against the value it must have (the Haar
taps ``[1/sqrt(2), 1/sqrt(2)]``, ``arange(2)``, the config's patch size) and drops it; a wrong
value is an error, and any other unknown key is still reported as unexpected.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .config import TokenizerConfig
from .conv import CausalConv3d
from .model import VideoTokenizer
from .patcher import patch_channel_index

__all__ = ["CosmosStateDictError", "cosmos_key_map", "to_cosmos_state_dict",
           "load_cosmos_state_dict", "inflate_to_rgbd", "HAAR_BUFFERS"]

_TOPS = ("encoder.", "quant_conv.", "decoder.", "post_quant_conv.")


class CosmosStateDictError(ValueError):
    """A Cosmos state dict that does not match the model; lists every offending key."""

    def __init__(self, missing, unexpected, mismatched, context: str):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched

        def block(title, rows):
            if not rows:
                return ""
            shown = "\n".join(f"    {r}" for r in rows[:50])
            more = f"\n    ... and {len(rows) - 50} more" if len(rows) > 50 else ""
            return f"\n  {title} ({len(rows)}):\n{shown}{more}"

        super().__init__(
            f"Cosmos state dict does not match the {context} (strict load):"
            + block("missing keys (the model needs them, the state dict lacks them)", missing)
            + block("unexpected keys (in the state dict, unused by the model)", unexpected)
            + block("shape mismatches (key: state dict shape vs model shape)", mismatched))


HAAR_BUFFERS = ("encoder.patcher3d.wavelets", "encoder.patcher3d._arange",
                "encoder.patcher3d.patch_size_buffer", "decoder.unpatcher3d.wavelets",
                "decoder.unpatcher3d._arange")
"""The fixed (non-trainable) buffers of Cosmos's Haar patcher / unpatcher in TorchScript files."""


def _haar_buffer_problem(key: str, value, patch_size: int) -> str | None:
    """Why ``value`` is not what Cosmos's Haar buffer ``key`` holds for this model, else None."""
    if not isinstance(value, torch.Tensor):
        return f"{key}: expected a tensor, found {type(value).__name__}"
    leaf = key.rsplit(".", 1)[1]
    if leaf == "wavelets":
        want = torch.full((2,), 0.7071067811865476, dtype=torch.float64)
        # a bf16 / fp16 file rounds the taps: compare at the file's precision
        tol = 1e-6 if value.dtype in (torch.float32, torch.float64) else 1e-2
        ok = value.is_floating_point() and tuple(value.shape) == (2,) and \
            torch.allclose(value.detach().cpu().double(), want, rtol=tol, atol=0)
        expected = "the Haar taps [0.70711, 0.70711]"
    elif leaf == "_arange":
        ok = tuple(value.shape) == (2,) and torch.equal(value.detach().cpu().long(),
                                                         torch.arange(2))
        expected = "arange(2) = [0, 1]"
    else:  # patch_size_buffer
        ok = value.numel() >= 1 and bool((value.detach().cpu().double() == patch_size).all())
        expected = f"the patch size {patch_size}"
    if ok:
        return None
    shown = value.detach().cpu().flatten()[:4].tolist() if value.numel() else []
    return (f"{key}: expected {expected}, found {tuple(value.shape)} {value.dtype} {shown} "
            "(a tokenizer with another patch method or patch size?)")


def cosmos_key_map(model: nn.Module) -> dict[str, str]:
    """Our state-dict key -> Cosmos's key, for every tensor of ``model``'s state dict."""
    convs = {name for name, m in model.named_modules() if isinstance(m, CausalConv3d)}
    out = {}
    for key in model.state_dict():
        owner, _, leaf = key.rpartition(".")
        out[key] = f"{owner}.conv3d.{leaf}" if owner in convs else key
    return out


def to_cosmos_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` under Cosmos's key names (the inverse of the loader)."""
    names = cosmos_key_map(model)
    return {names[k]: v for k, v in model.state_dict().items()}


def _with_prefix(state_dict, part: str) -> dict[str, torch.Tensor]:
    tops = _TOPS
    if part == "auto" and any(k.startswith(tops) for k in state_dict):
        return dict(state_dict)  # prefixed (a stray unprefixed key is reported as unexpected)
    if part == "auto":
        bare = [k for k in state_dict if not k.startswith(tops)]
        enc = any(k.startswith(("down.", "patcher")) for k in bare)
        dec = any(k.startswith(("up.", "unpatcher")) for k in bare)
        if enc == dec:
            raise ValueError("cannot tell whether the un-prefixed keys belong to the encoder or "
                             "the decoder (e.g. " + ", ".join(bare[:3]) + "): pass "
                             "part='encoder' or part='decoder'")
        part = "encoder" if enc else "decoder"
    if part not in ("encoder", "decoder"):
        raise ValueError(f"part must be 'auto', 'encoder', 'decoder' or 'autoencoder' for keys "
                         f"without a prefix, got {part!r}")
    return {(k if k.startswith(tops) else f"{part}.{k}"): v for k, v in state_dict.items()}


def load_cosmos_state_dict(model: VideoTokenizer, state_dict, part: str = "auto") -> list[str]:
    """Load a Cosmos continuous-video tokenizer state dict into ``model``, strictly.

    ``state_dict``: Cosmos key names, as ``torch.jit.load(path).state_dict()`` of
    ``autoencoder.jit`` (``encoder.*``, ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*``),
    ``encoder.jit`` (``encoder.*`` + ``quant_conv.*``) or ``decoder.jit``
    (``post_quant_conv.*`` + ``decoder.*``), or a bare encoder/decoder state dict without the
    prefix (``part`` = "auto" tells them apart by their ``down.``/``up.`` keys, or say
    "encoder" / "decoder"). The top-level modules the dict covers are loaded (so an encoder file
    and a decoder file load one after the other); within them every tensor must be present with
    the model's shape and every given tensor must be used, else :class:`CosmosStateDictError`
    lists all missing, unexpected and mismatched keys (Cosmos names). The Haar buffers of
    TorchScript files (:data:`HAAR_BUFFERS`) are checked and dropped (ValueError when their
    values are not this model's). Returns the loaded modules.
    """
    if part == "autoencoder":
        part = "auto"
    sd = _with_prefix(state_dict, part)
    bad_buffers = []
    for key in HAAR_BUFFERS:
        if key in sd:
            problem = _haar_buffer_problem(key, sd.pop(key), model.config.patch_size)
            if problem:
                bad_buffers.append(problem)
    if bad_buffers:
        raise ValueError("Cosmos state dict: the Haar patcher buffers do not match this "
                         f"{model.config.name} tokenizer (patch_size="
                         f"{model.config.patch_size}):\n  " + "\n  ".join(bad_buffers))
    ours_to_cosmos = cosmos_key_map(model)
    cosmos_to_ours = {v: k for k, v in ours_to_cosmos.items()}
    params = model.state_dict()
    tops = ("encoder", "quant_conv", "decoder", "post_quant_conv")
    covered = [t for t in tops if any(k.startswith(t + ".") for k in sd)]
    expected = {ours_to_cosmos[k] for k in params if k.split(".", 1)[0] in covered}
    missing = sorted(expected - set(sd))
    unexpected = sorted(k for k in sd if k not in cosmos_to_ours)
    mismatched = sorted(
        f"{k}: {tuple(v.shape)} vs {tuple(params[cosmos_to_ours[k]].shape)}"
        for k, v in sd.items()
        if k in cosmos_to_ours and tuple(v.shape) != tuple(params[cosmos_to_ours[k]].shape))
    if missing or unexpected or mismatched or not covered:
        raise CosmosStateDictError(missing, unexpected, mismatched,
                                   f"{model.config.name} tokenizer "
                                   f"({' + '.join(covered) or 'no known module'})")
    with torch.no_grad():
        for k, v in sd.items():
            params[cosmos_to_ours[k]].copy_(v)
    return covered


# ----------------------------------------------------------------------------- inflation

def _widen(old: torch.Tensor, dim: int, old_idx: torch.Tensor, new_size: int) -> torch.Tensor:
    shape = list(old.shape)
    shape[dim] = new_size
    new = old.new_zeros(shape)
    new.index_copy_(dim, old_idx.to(old.device), old)
    return new


def inflate_to_rgbd(rgb: VideoTokenizer, geometry_channels: int = 0) -> VideoTokenizer:
    """A tokenizer with one more input and output channel (disparity, last), initialised from
    ``rgb`` so that its RGB outputs and its latents are those of ``rgb`` for any disparity.

    Widened: ``encoder.conv_in.0`` (input channels C*p^3 -> (C+1)*p^3, patch 4: 192 -> 256),
    ``decoder.conv_out.0`` (outputs) and ``decoder.conv_out.1`` (inputs and outputs), in the Haar
    channel order (subband-major, :func:`patch_channel_index`). New weights are zero, except the
    identity on the current-frame tap from each new channel to itself in ``conv_out.1``: it
    keeps the new output channels trainable end to end (with it zero the depth features of
    ``conv_out.0`` would get no gradient) and cannot reach RGB (the RGB rows read no new input).
    ``geometry_channels`` extra latent channels: new ``quant_conv`` rows start small-random
    (std 1e-3, so they receive gradient) and the matching ``post_quant_conv`` inputs are zero,
    so RGB reconstructions are unchanged at initialisation.
    """
    cfg: TokenizerConfig = rgb.config
    if cfg.out_ch != cfg.in_channels:
        raise ValueError("inflate_to_rgbd needs in_channels == out_channels, got "
                         f"{cfg.in_channels} and {cfg.out_ch}")
    c, p = cfg.in_channels, cfg.patch_size
    new_cfg = cfg.replace(in_channels=c + 1, out_channels=c + 1,
                          geometry_channels=cfg.geometry_channels + geometry_channels,
                          name=f"{cfg.name}+rgbd")
    device = next(rgb.parameters()).device
    dtype = next(rgb.parameters()).dtype
    new = VideoTokenizer(new_cfg).to(device=device, dtype=dtype)
    # old channel [S, c] -> new channel [S, c] of a (p^3, C+1) grid
    grid_new = patch_channel_index(c + 1, p)
    idx = grid_new[:, :c].reshape(-1)
    n_new = grid_new.numel()
    depth_idx = grid_new[:, c]
    old_sd, new_sd = rgb.state_dict(), new.state_dict()
    lc_old = cfg.total_latent_channels
    with torch.no_grad():
        for k, t in new_sd.items():
            o = old_sd[k]
            if o.shape == t.shape:
                t.copy_(o)
            elif k == "encoder.conv_in.0.weight":
                t.copy_(_widen(o, 1, idx, n_new))
            elif k in ("decoder.conv_out.0.weight", "decoder.conv_out.0.bias",
                       "decoder.conv_out.1.bias"):
                t.copy_(_widen(o, 0, idx, n_new))
            elif k == "decoder.conv_out.1.weight":
                w = _widen(_widen(o, 0, idx, n_new), 1, idx, n_new)
                w[depth_idx, depth_idx, -1, 0, 0] = 1.0   # identity on the current frame
                t.copy_(w)
            elif k == "quant_conv.weight":
                t.normal_(0.0, 1e-3)
                t[:lc_old].copy_(o)
            elif k == "quant_conv.bias":
                t.zero_()
                t[:lc_old].copy_(o)
            elif k == "post_quant_conv.weight":
                t.zero_()
                t[:, :lc_old].copy_(o)
            else:  # pragma: no cover - a config change this function does not know
                raise RuntimeError(f"inflate_to_rgbd: unexpected shape change of {k}: "
                                   f"{tuple(o.shape)} -> {tuple(t.shape)}")
    return new
