"""Causal continuous video tokenizer (Cosmos CV architecture) for RGB and RGBD videos.

``VideoTokenizer(config)``: ``encode(x) -> z``, ``decode(z) -> x``, ``forward(x) -> (x_hat, z)``.
Pixels in [-1, 1], shape (B, C, 1 + T, H, W) with C = ``config.in_channels`` (RGB, or RGB +
normalized disparity).

Frame rule: 1 + T frames with T a multiple of ``temporal_compression`` (tc) give 1 + T/tc latent
frames; frame 0 alone makes latent 0, frames 1..tc latent 1, and so on (causal: a latent never
depends on later frames). Size rule: H and W multiples of ``spatial_compression``. Anything else
raises a ValueError that states the rule and the nearest valid sizes.

Long videos: :meth:`VideoTokenizer.encode_stream` / :meth:`decode_stream` (or the generators
:meth:`iter_encode` / :meth:`iter_decode`) run chunk by chunk with causal caches and give the
whole-video result; activation memory is that of one chunk. The state carried between chunks is
a few frames per temporal conv plus the keys/values of the causal temporal attention (latent
resolution in the published configs), which is the only part that grows with the video length.
:meth:`encode_tiled` / :meth:`decode_tiled` split H and W into overlapping tiles blended
linearly (approximate: the spatial attention then sees one tile at a time).
"""
from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from rgbd_world.saved_model import SavedModel

from .blocks import (CausalGroupNorm, CausalSequential, HybridDownsample, HybridUpsample,
                     ResnetBlockFactorized, SpatialAttention, StreamState, TemporalAttention,
                     run_conv)
from .config import TokenizerConfig
from .conv import CausalConv3d
from .diffusers_compat import (check_vae, copy_checked, diffusers_key_map,
                               diffusers_tokenizer_config, tokenizer_config_from_diffusers)
from .patcher import HaarPatcher3D, HaarUnpatcher3D

__all__ = ["VideoTokenizer", "Encoder", "Decoder", "TokenizerOutput", "check_frames",
           "check_size", "latent_frames", "pixel_frames"]


class TokenizerOutput(NamedTuple):
    reconstruction: torch.Tensor
    latent: torch.Tensor


# ----------------------------------------------------------------------------- rules

def latent_frames(frames: int, temporal_compression: int) -> int:
    """1 + T frames -> 1 + T / tc latent frames (see :func:`check_frames`)."""
    return 1 + (frames - 1) // temporal_compression


def pixel_frames(latents: int, temporal_compression: int) -> int:
    """Frames decoded from ``latents`` latent frames: 1 + (latents - 1) * tc."""
    return 1 + (latents - 1) * temporal_compression


def check_frames(frames: int, temporal_compression: int, what: str = "the video") -> None:
    tc = temporal_compression
    if frames >= 1 and (frames - 1) % tc == 0:
        return
    lo = 1 + max(frames - 1, 0) // tc * tc
    near = [lo] if frames < 1 else [lo, lo + tc]
    raise ValueError(
        f"{what} has {frames} frames, but the tokenizer needs 1 + T frames with T a multiple of "
        f"temporal_compression={tc} (1, {1 + tc}, {1 + 2 * tc}, {1 + 3 * tc}, ...): frame 0 is "
        f"encoded alone into latent frame 0 and every following group of {tc} frames into one "
        f"more latent frame, so 1 + T frames give 1 + T/{tc} latent frames. Nearest valid frame "
        f"counts: {' or '.join(map(str, near))} (trim, or pad by repeating the last frame).")


def check_size(height: int, width: int, spatial_compression: int) -> None:
    sc = spatial_compression
    bad = [(n, v) for n, v in (("height", height), ("width", width)) if v < sc or v % sc]
    if not bad:
        return
    parts = []
    for n, v in bad:
        lo = v // sc * sc
        near = [x for x in (lo, lo + sc) if x > 0]
        parts.append(f"{n} {v} (nearest valid: {' or '.join(map(str, near))})")
    raise ValueError(
        f"height and width must be positive multiples of spatial_compression={sc} (each latent "
        f"pixel covers {sc}x{sc} pixels), got {'; '.join(parts)}: crop, pad or resize.")


# ----------------------------------------------------------------------------- networks

class _Level(nn.Module):
    """One resolution level: res blocks, optional attention after each, optional resampler."""

    def __init__(self):
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()

    def forward(self, h, stream):
        for i, block in enumerate(self.block):
            h = block(h, stream)
            if len(self.attn):
                h = self.attn[i](h, stream)
        return h


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlockFactorized(channels, channels, dropout)
        self.attn_1 = CausalSequential(SpatialAttention(channels), TemporalAttention(channels))
        self.block_2 = ResnetBlockFactorized(channels, channels, dropout)

    def forward(self, h, stream):
        return self.block_2(self.attn_1(self.block_1(h, stream), stream), stream)


def _attn(channels: int) -> CausalSequential:
    return CausalSequential(SpatialAttention(channels), TemporalAttention(channels))


def _factorized_conv(cin: int, cout: int) -> CausalSequential:
    return CausalSequential(CausalConv3d(cin, cout, (1, 3, 3), padding=1),
                            CausalConv3d(cout, cout, (3, 1, 1), padding=0))


class Encoder(nn.Module):
    """Haar patcher -> conv_in -> levels (res blocks, attention, hybrid downsample) -> mid ->
    norm, SiLU, conv_out (Cosmos ``EncoderFactorized``)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        p, C = cfg.patch_size, cfg.channels
        self.patcher3d = HaarPatcher3D(p)
        self.conv_in = _factorized_conv(cfg.in_channels * p ** 3, C)
        curr_res = cfg.resolution // p
        in_mult = (1,) + cfg.channels_mult
        downs = cfg.encoder_downsamples()
        self.down = nn.ModuleList()
        block_in = C
        for i, mult in enumerate(cfg.channels_mult):
            level = _Level()
            block_in, block_out = C * in_mult[i], C * mult
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlockFactorized(block_in, block_out, cfg.dropout))
                block_in = block_out
                if curr_res in cfg.attn_resolutions:
                    level.attn.append(_attn(block_in))
            if i != len(cfg.channels_mult) - 1:
                level.downsample = HybridDownsample(block_in, *downs[i])
                curr_res //= 2
            self.down.append(level)
        self.mid = _Mid(block_in, cfg.dropout)
        self.norm_out = CausalGroupNorm(block_in)
        self.conv_out = _factorized_conv(block_in, cfg.z_channels)

    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        h = self.patcher3d(x, first=stream is None or stream.first)
        h = self.conv_in(h, stream)
        for level in self.down:
            h = level(h, stream)
            if hasattr(level, "downsample"):
                h = level.downsample(h, stream)
        h = self.mid(h, stream)
        return self.conv_out(F.silu(self.norm_out(h)), stream)


class Decoder(nn.Module):
    """conv_in -> mid -> levels (res blocks, attention, hybrid upsample) -> norm, SiLU,
    conv_out -> Haar unpatcher (Cosmos ``DecoderFactorized``)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        p, C, mults = cfg.patch_size, cfg.channels, cfg.dec_mult
        n = len(mults)
        block_in = C * mults[-1]
        curr_res = (cfg.resolution // p) // 2 ** (n - 1)
        self.conv_in = _factorized_conv(cfg.z_channels, block_in)
        self.mid = _Mid(block_in, cfg.dropout)
        ups = iter(cfg.decoder_upsamples())
        self.up = nn.ModuleList()
        for i in reversed(range(n)):
            level = _Level()
            block_out = C * mults[i]
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlockFactorized(block_in, block_out, cfg.dropout))
                block_in = block_out
                if curr_res in cfg.attn_resolutions:
                    level.attn.append(_attn(block_in))
            if i != 0:
                level.upsample = HybridUpsample(block_in, *next(ups))
                curr_res *= 2
            self.up.insert(0, level)
        out_ch = cfg.out_ch * p ** 3
        self.norm_out = CausalGroupNorm(block_in)
        self.conv_out = _factorized_conv(block_in, out_ch)
        self.unpatcher3d = HaarUnpatcher3D(p)

    def forward(self, z: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        h = self.mid(self.conv_in(z, stream), stream)
        for level in reversed(self.up):
            h = level(h, stream)
            if hasattr(level, "upsample"):
                h = level.upsample(h, stream)
        h = self.conv_out(F.silu(self.norm_out(h)), stream)
        return self.unpatcher3d(h, first=stream is None or stream.first)


# ----------------------------------------------------------------------------- tokenizer

class VideoTokenizer(SavedModel, nn.Module):
    """Encoder + 1x1x1 ``quant_conv`` (AE: the latent is its output) + ``post_quant_conv`` +
    decoder. ``config``: a :class:`TokenizerConfig` or a preset name ("tiny", "cosmos-cv8x8x8",
    "cosmos-cv4x8x8"); keyword overrides go to the config (e.g. ``in_channels=4``).

    ``save_pretrained(dir)`` / ``VideoTokenizer.from_pretrained(dir)``: config.json (format
    ``"rgbd-world-tokenizer"``) + model.safetensors (:mod:`rgbd_world.saved_model`)."""

    saved_format = "rgbd-world-tokenizer"
    saved_format_version = 1
    config_class = TokenizerConfig

    def __init__(self, config: TokenizerConfig | str = "tiny", **overrides):
        super().__init__()
        if isinstance(config, str):
            config = TokenizerConfig.preset(config, **overrides)
        elif overrides:
            config = config.replace(**overrides)
        self.config = config
        zc, lc = config.z_channels, config.total_latent_channels
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = CausalConv3d(zc, lc, 1)
        self.post_quant_conv = CausalConv3d(lc, zc, 1)

    # -- properties
    @property
    def temporal_compression(self) -> int:
        return self.config.temporal_compression

    @property
    def spatial_compression(self) -> int:
        return self.config.spatial_compression

    @property
    def latent_channels(self) -> int:
        return self.config.total_latent_channels

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C_z, T_z, H_z, W_z) for an input of the given size (checks the rules)."""
        check_frames(frames, self.temporal_compression)
        check_size(height, width, self.spatial_compression)
        sc = self.spatial_compression
        return (self.latent_channels, latent_frames(frames, self.temporal_compression),
                height // sc, width // sc)

    # -- diffusers interop (rgbd_world.tokenizer.diffusers_compat)
    @classmethod
    def from_diffusers(cls, vae) -> "VideoTokenizer":
        """The tokenizer of a diffusers ``AutoencoderKLCosmos`` (same weights and outputs; same
        device and dtype, eval mode)."""
        check_vae(vae)
        cfg = tokenizer_config_from_diffusers(vae.config)
        param = next(vae.parameters())
        model = cls(cfg).to(device=param.device, dtype=param.dtype)
        names = {k: v for k, v in diffusers_key_map(model).items() if v is not None}
        copy_checked(model, vae.state_dict(), names, "AutoencoderKLCosmos -> VideoTokenizer")
        return model.eval()

    def to_diffusers(self, **config_overrides):
        """This tokenizer as a diffusers ``AutoencoderKLCosmos`` (same weights and outputs; same
        device and dtype, eval mode). ``config_overrides`` go to its config (e.g.
        ``latents_mean`` / ``latents_std``, the latent statistics diffusers' pipelines
        normalise with)."""
        from diffusers import AutoencoderKLCosmos
        config = diffusers_tokenizer_config(self.config)
        config.update(config_overrides)
        param = next(self.parameters())
        vae = AutoencoderKLCosmos(**config).to(param.device)
        if param.dtype != torch.float32:
            vae = vae.to(dtype=param.dtype)
        ours = self.state_dict()
        source = {theirs: ours[k] for k, theirs in diffusers_key_map(self).items() if theirs}
        copy_checked(vae, source, {k: k for k in vae.state_dict()},
                     "VideoTokenizer -> AutoencoderKLCosmos")
        return vae.eval()

    # -- checks
    def _check_video(self, x: torch.Tensor, what: str = "x") -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 5:
            raise ValueError(f"{what} must be a (B, C, T, H, W) tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)}")
        if x.shape[1] != self.config.in_channels:
            raise ValueError(f"{what} must have in_channels={self.config.in_channels} channels "
                             f"(dim 1 of (B, C, T, H, W)), got shape {tuple(x.shape)}")
        check_frames(x.shape[2], self.temporal_compression, what)
        check_size(x.shape[3], x.shape[4], self.spatial_compression)

    def _check_latent(self, z: torch.Tensor) -> None:
        if not isinstance(z, torch.Tensor) or z.dim() != 5 or z.shape[1] != self.latent_channels \
                or z.shape[2] < 1:
            raise ValueError(f"z must be (B, {self.latent_channels}, T_z >= 1, H_z, W_z), got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z)}")

    # -- whole video
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, 1 + T, H, W) in [-1, 1] -> z (B, C_z, 1 + T/tc, H/sc, W/sc)."""
        self._check_video(x)
        return self.quant_conv(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, C_z, N, h, w) -> (B, C_out, 1 + (N - 1) * tc, h*sc, w*sc)."""
        self._check_latent(z)
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        z = self.encode(x)
        return TokenizerOutput(self.decode(z), z)

    # -- streaming
    def iter_encode(self, chunks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Encode a video given as temporal chunks, yielding latent chunks. The first chunk has
        1 + k*tc frames (k >= 0) and yields 1 + k latent frames; each later one k*tc frames
        (k >= 1) and yields k. The concatenation equals :meth:`encode` of the whole video."""
        state, tc = StreamState(), self.temporal_compression
        for i, x in enumerate(chunks):
            if i == 0:
                self._check_video(x, "the first chunk")
            else:
                if x.dim() != 5 or x.shape[2] < tc or x.shape[2] % tc:
                    raise ValueError(
                        f"chunk {i} has {x.shape[2] if x.dim() == 5 else '?'} frames: after the "
                        f"first chunk (1 + k*{tc} frames) every chunk needs a positive multiple "
                        f"of temporal_compression={tc} frames (one latent frame per {tc})")
                self._check_video(torch.empty(x.shape[0], x.shape[1], 1, *x.shape[3:],
                                              device="meta"), f"chunk {i}")
            yield run_conv(self.quant_conv, self.encoder(x, state), state)
            state.first = False

    def iter_decode(self, chunks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Decode latent chunks (any number of latent frames each), yielding pixel chunks: the
        first chunk of n latents gives 1 + (n - 1)*tc frames, later ones n*tc."""
        state = StreamState()
        for z in chunks:
            self._check_latent(z)
            yield self.decoder(run_conv(self.post_quant_conv, z, state), state)
            state.first = False

    def encode_stream(self, x: torch.Tensor | Iterable[torch.Tensor],
                      chunk_frames: int | None = None) -> torch.Tensor:
        """:meth:`encode` chunk by chunk: ``x`` is a whole video (split into a first chunk of
        1 + chunk_frames frames, then chunks of ``chunk_frames``; default tc) or an iterable of
        chunks (see :meth:`iter_encode`). Returns the concatenated latents."""
        if isinstance(x, torch.Tensor):
            x = self._split_video(x, chunk_frames)
        return torch.cat(list(self.iter_encode(x)), dim=2)

    def decode_stream(self, z: torch.Tensor | Iterable[torch.Tensor],
                      chunk_latents: int = 1, out: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`decode` chunk by chunk (``chunk_latents`` latent frames per chunk), written
        into ``out`` (allocated if None) so the result is never held twice."""
        chunks = self._split_latent(z, chunk_latents) if isinstance(z, torch.Tensor) else z
        pieces, t = [], 0
        for y in self.iter_decode(chunks):
            if out is None and isinstance(z, torch.Tensor):
                sc = self.spatial_compression
                out = y.new_empty(y.shape[0], y.shape[1], pixel_frames(z.shape[2],
                                  self.temporal_compression), z.shape[3] * sc, z.shape[4] * sc)
            if out is None:
                pieces.append(y)
            else:
                out[:, :, t:t + y.shape[2]] = y
            t += y.shape[2]
        return out if out is not None else torch.cat(pieces, dim=2)

    def _split_video(self, x: torch.Tensor, chunk_frames: int | None):
        tc = self.temporal_compression
        cf = tc if chunk_frames is None else chunk_frames
        if cf < tc or cf % tc:
            raise ValueError(f"chunk_frames must be a positive multiple of temporal_compression="
                             f"{tc}, got {chunk_frames}")
        self._check_video(x)
        return [x[:, :, :1 + cf]] + [x[:, :, s:s + cf] for s in range(1 + cf, x.shape[2], cf)]

    @staticmethod
    def _split_latent(z: torch.Tensor, n: int):
        if n < 1:
            raise ValueError(f"chunk_latents must be >= 1, got {n}")
        return [z[:, :, s:s + n] for s in range(0, z.shape[2], n)]

    # -- spatial tiling
    def encode_tiled(self, x: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
        """Encode overlapping ``tile`` x ``tile`` pixel tiles (``overlap`` pixels shared; both
        multiples of spatial_compression) and blend their latents linearly in the overlaps."""
        self._check_video(x)
        sc = self.spatial_compression
        return _tiled(self.encode, x, tile, overlap, sc, 1.0 / sc, "pixel")

    def decode_tiled(self, z: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
        """Decode overlapping ``tile`` x ``tile`` latent tiles (``overlap`` latent pixels shared)
        and blend the reconstructions linearly in the overlaps."""
        self._check_latent(z)
        return _tiled(self.decode, z, tile, overlap, 1, float(self.spatial_compression), "latent")


# ----------------------------------------------------------------------------- tiling

def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if tile >= size:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step)) + [size - tile]
    return sorted(set(starts))


def blend_ramp(length: int, lead: int, trail: int) -> torch.Tensor:
    """Weights of one tile along one axis: linear ramps over the ``lead`` / ``trail`` samples
    shared with the previous / next tile, 1 elsewhere. Adjacent tiles' ramps sum to 1."""
    w = torch.ones(length, dtype=torch.float64)
    if lead:
        w[:lead] = torch.arange(1, lead + 1, dtype=torch.float64) / (lead + 1)
    if trail:
        w[length - trail:] = torch.arange(trail, 0, -1, dtype=torch.float64) / (trail + 1)
    return w


def _axis_weights(starts: list[int], tile: int, size: int, scale: float) -> list[torch.Tensor]:
    """Per tile output-axis weights; shared spans get complementary ramps (sum exactly 1)."""
    n_out = lambda v: int(round(v * scale))  # noqa: E731
    out_tile = n_out(min(tile, size))
    weights = []
    for i, s in enumerate(starts):
        lead = n_out(starts[i - 1] + tile - s) if i > 0 else 0
        trail = n_out(s + tile - starts[i + 1]) if i + 1 < len(starts) else 0
        weights.append(blend_ramp(out_tile, lead, trail))
    # normalise so overlapping spans sum to one even where ramps of unequal length meet
    total = torch.zeros(n_out(size), dtype=torch.float64)
    for s, w in zip(starts, weights):
        total[n_out(s):n_out(s) + out_tile] += w
    return [w / total[n_out(s):n_out(s) + out_tile] for s, w in zip(starts, weights)]


def _tiled(fn, x: torch.Tensor, tile: int, overlap: int, multiple: int, scale: float,
           unit: str) -> torch.Tensor:
    if tile < multiple or tile % multiple or overlap < 0 or overlap % multiple or overlap >= tile:
        raise ValueError(f"tile ({tile}) and overlap ({overlap}) must be {unit} counts, multiples "
                         f"of {multiple}, with 0 <= overlap < tile")
    H, W = x.shape[3:]
    hs, ws = _starts(H, tile, overlap), _starts(W, tile, overlap)
    wh, ww = _axis_weights(hs, tile, H, scale), _axis_weights(ws, tile, W, scale)
    out = None
    for i, h0 in enumerate(hs):
        for j, w0 in enumerate(ws):
            y = fn(x[:, :, :, h0:h0 + tile, w0:w0 + tile])
            if out is None:
                out = y.new_zeros(y.shape[:3] + (int(round(H * scale)), int(round(W * scale))))
            wgt = (wh[i][:, None] * ww[j][None, :]).to(y.dtype)
            oh, ow = int(round(h0 * scale)), int(round(w0 * scale))
            out[..., oh:oh + y.shape[3], ow:ow + y.shape[4]] += y * wgt
    return out
