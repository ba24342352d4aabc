"""Tokenizer configuration and presets.

Presets (``TokenizerConfig.preset(name, in_channels=3)``):

* ``"cosmos-cv8x8x8"``: Cosmos-1.0-Tokenizer-CV8x8x8 (``continuous_video`` of NVIDIA's
  Cosmos-Tokenizer): channels 128, mult (2, 4, 4), 2 res blocks, Haar patch 4, 16 latent channels,
  8x spatial and temporal compression, AE formulation.
* ``"cosmos-cv4x8x8"``: Cosmos-0.1-Tokenizer-CV4x8x8: the same with temporal compression 4; as in
  Cosmos's ``CausalContinuousVideoTokenizer`` the *decoder* then has channel mult (2, 4) (the
  encoder keeps (2, 4, 4)) and the patch size stays 4.
* ``"small"``: the same structure at half the width (channels 64; ~1/4 of the parameters),
  level attention at 1/8 of a 128x128 input: one GPU, hours (``rgbd_world/configs/small-gpu.toml``).
* ``"tiny"``: the same structure (patch 4, 8x8x8, three levels, attention in one level and the
  mid blocks) at ~0.5M parameters, for CPU tests and demos.
* ``"tiny-4x8x8"``: ``"tiny"`` with temporal compression 4 (decoder mult (1, 2), as Cosmos's
  CV4x8x8 narrows its decoder).

``in_channels`` (= ``out_channels`` unless given) is 3 for RGB and 4 for RGBD (disparity last).
``geometry_channels`` adds latent channels reserved for depth (default 0).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

__all__ = ["TokenizerConfig", "PRESETS"]


@dataclass(frozen=True)
class TokenizerConfig:
    in_channels: int = 3
    out_channels: int | None = None          # default: in_channels
    channels: int = 128
    channels_mult: tuple[int, ...] = (2, 4, 4)
    decoder_channels_mult: tuple[int, ...] | None = None   # default: channels_mult
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (32,)
    resolution: int = 1024                   # nominal size; only places the level attention
    patch_size: int = 4
    latent_channels: int = 16
    z_channels: int = 16
    spatial_compression: int = 8
    temporal_compression: int = 8
    geometry_channels: int = 0
    legacy_mode: bool = False
    dropout: float = 0.0
    name: str = "custom"

    def __post_init__(self):
        for f in ("in_channels", "channels", "num_res_blocks", "latent_channels", "z_channels",
                  "spatial_compression", "temporal_compression", "patch_size", "resolution"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"TokenizerConfig.{f} must be a positive int, got {v!r}")
        if self.geometry_channels < 0:
            raise ValueError(f"geometry_channels must be >= 0, got {self.geometry_channels}")
        object.__setattr__(self, "channels_mult", tuple(self.channels_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        if self.decoder_channels_mult is not None:
            object.__setattr__(self, "decoder_channels_mult", tuple(self.decoder_channels_mult))
        for f in ("patch_size", "spatial_compression", "temporal_compression"):
            v = getattr(self, f)
            if v & (v - 1):
                raise ValueError(f"TokenizerConfig.{f} must be a power of two, got {v}")
        if self.spatial_compression < self.patch_size or \
                self.temporal_compression < self.patch_size:
            raise ValueError("spatial_compression and temporal_compression must be >= patch_size "
                             f"({self.patch_size}), got {self.spatial_compression} and "
                             f"{self.temporal_compression}")
        n_enc = len(self.channels_mult)
        if self.num_spatial_downs > n_enc - 1 or self.num_temporal_downs > n_enc - 1:
            raise ValueError(
                f"{n_enc} encoder levels downsample at most {n_enc - 1} times, but "
                f"spatial_compression={self.spatial_compression} / temporal_compression="
                f"{self.temporal_compression} with patch_size={self.patch_size} need "
                f"{self.num_spatial_downs} / {self.num_temporal_downs}")
        ups = self.decoder_upsamples()
        su, tu = sum(s for s, _ in ups), sum(t for _, t in ups)
        if (su, tu) != (self.num_spatial_downs, self.num_temporal_downs):
            raise ValueError(f"the decoder (channel mult {self.dec_mult}) upsamples {su}x spatially"
                             f" / {tu}x temporally (powers of 2) but the encoder downsamples "
                             f"{self.num_spatial_downs} / {self.num_temporal_downs}")

    # ------------------------------------------------------------------ derived quantities
    @property
    def out_ch(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels

    @property
    def dec_mult(self) -> tuple[int, ...]:
        return self.channels_mult if self.decoder_channels_mult is None \
            else self.decoder_channels_mult

    @property
    def total_latent_channels(self) -> int:
        """Channels of z: the Cosmos latent channels, then the geometry channels."""
        return self.latent_channels + self.geometry_channels

    @property
    def num_spatial_downs(self) -> int:
        return int(math.log2(self.spatial_compression)) - int(math.log2(self.patch_size))

    @property
    def num_temporal_downs(self) -> int:
        return int(math.log2(self.temporal_compression)) - int(math.log2(self.patch_size))

    def encoder_downsamples(self) -> list[tuple[bool, bool]]:
        """(spatial, temporal) of the hybrid downsample after each level but the last."""
        return [(i < self.num_spatial_downs, i < self.num_temporal_downs)
                for i in range(len(self.channels_mult) - 1)]

    def decoder_upsamples(self) -> list[tuple[bool, bool]]:
        """(spatial, temporal) of the hybrid upsample after decoder levels n-1 .. 1 (in run
        order), with Cosmos's placement rule (``legacy_mode`` selects the old one)."""
        n, nsu, ntu = len(self.dec_mult), self.num_spatial_downs, self.num_temporal_downs
        out = []
        for i_level in reversed(range(1, n)):
            r = n - i_level - 1
            tu = r < ntu if self.legacy_mode else 0 < r < ntu + 1
            su = tu or (r < nsu and nsu > ntu)
            out.append((su, tu))
        return out

    def replace(self, **changes) -> "TokenizerConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The fields as a JSON-able dict (tuples become lists in JSON)."""
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: dict) -> "TokenizerConfig":
        """The config of :meth:`to_dict`'s dict; unknown fields are a ValueError naming them."""
        fields = {f.name for f in dataclasses.fields(TokenizerConfig)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown TokenizerConfig fields {unknown}")
        return TokenizerConfig(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in data.items()})

    @staticmethod
    def preset(preset: str, in_channels: int = 3, **overrides) -> "TokenizerConfig":
        """The named preset with ``in_channels`` (3 RGB, 4 RGBD) and any field overridden."""
        if preset not in PRESETS:
            raise ValueError(f"unknown tokenizer preset {preset!r}; choose one of "
                             f"{sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[preset], in_channels=in_channels, **overrides)


PRESETS: dict[str, TokenizerConfig] = {
    "cosmos-cv8x8x8": TokenizerConfig(name="cosmos-cv8x8x8"),
    "cosmos-cv4x8x8": TokenizerConfig(name="cosmos-cv4x8x8", temporal_compression=4,
                                      decoder_channels_mult=(2, 4)),
    "small": TokenizerConfig(name="small", channels=64, attn_resolutions=(16,), resolution=128),
    "tiny": TokenizerConfig(name="tiny", channels=16, channels_mult=(1, 2, 2), num_res_blocks=1,
                            attn_resolutions=(8,), resolution=64),
    "mini": TokenizerConfig(name="mini", channels=48, channels_mult=(1, 1, 2), num_res_blocks=1,
                            attn_resolutions=(8,), resolution=64),
    "tiny-4x8x8": TokenizerConfig(name="tiny-4x8x8", channels=16, channels_mult=(1, 2, 2),
                                  decoder_channels_mult=(1, 2), num_res_blocks=1,
                                  attn_resolutions=(8,), resolution=64, temporal_compression=4),
}
