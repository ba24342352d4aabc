"""DiT configuration and presets (Cosmos-Predict2-style, GUIDE §7).

    cfg = DiTConfig.preset("tiny", latent_channels=16, cond_channels=16, text_dim=384)

Presets (parameter counts with latent/cond channels 16 and the preset's text_dim):

=======  ======  =====  =====  ========  ==========  ========  =========
preset   hidden  depth  heads  head dim  AdaLN rank  text_dim  params
=======  ======  =====  =====  ========  ==========  ========  =========
tiny         96      3      4        24          32        64  0.58 M
small       768     12     12        64         128       384  119 M
2B         2048     28     16       128         256      1024  1.92 B
=======  ======  =====  =====  ========  ==========  ========  =========

``text_dim`` is normally overridden with the text encoder's ``.dim`` (byte encoder: its width,
MiniLM: 384, T5: its d_model, 1024 for T5-large as in Cosmos).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rgbd_kernels.dot_product_attention import ATTENTION_BACKENDS as _BACKENDS


@dataclass(frozen=True)
class DiTConfig:
    latent_channels: int = 16     # RGBD tokenizer latent channels (input noise / output velocity)
    cond_channels: int = 16       # RGB tokenizer latent channels (conditioning input)
    hidden: int = 2048
    depth: int = 28
    heads: int = 16
    mlp_ratio: int = 4
    adaln_rank: int = 256         # AdaLN-LoRA rank
    text_dim: int = 1024          # cross-attention context width (T5: 1024)
    timestep_dim: int = 256       # sinusoidal timestep features
    rope_theta: float = 10000.0
    backend: str = "auto"         # self-attention backend (rgbd_kernels.attention)
    fp8: bool = False             # FP8 self-attention through Transformer Engine
    name: str = "custom"

    def __post_init__(self):
        for field in ("latent_channels", "hidden", "depth", "heads", "mlp_ratio", "adaln_rank",
                      "text_dim", "timestep_dim"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DiTConfig.{field} must be a positive int, got {value!r}")
        if not isinstance(self.cond_channels, int) or self.cond_channels < 0:
            raise ValueError(f"DiTConfig.cond_channels must be an int >= 0, got {self.cond_channels!r}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} must be divisible by heads={self.heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"head dim hidden/heads = {self.head_dim} must be even and >= 6 "
                             f"(3D RoPE rotates pairs on three axes)")
        if self.timestep_dim % 2:
            raise ValueError(f"timestep_dim must be even, got {self.timestep_dim}")
        if self.backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {self.backend!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def in_channels(self) -> int:
        """Channels of the DiT input, in this order: the noisy latent (latent_channels), the RGB
        conditioning latent (cond_channels; zeros when absent), the condition mask (1 on latent
        frames given as clean ground truth), the padding mask (1 on padded pixels)."""
        return self.latent_channels + self.cond_channels + 2

    @staticmethod
    def preset(name: str, **overrides) -> "DiTConfig":
        """A preset with keyword overrides, e.g. ``preset("tiny", latent_channels=8)``."""
        if name not in PRESETS:
            raise ValueError(f"unknown DiT preset {name!r}; available: {sorted(PRESETS)}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(DiTConfig)}
        if unknown:
            raise ValueError(f"unknown DiTConfig fields {sorted(unknown)}")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS = {
    "tiny": DiTConfig(hidden=96, depth=3, heads=4, adaln_rank=32, text_dim=64, name="tiny"),
    "small": DiTConfig(hidden=768, depth=12, heads=12, adaln_rank=128, text_dim=384, name="small"),
    "2B": DiTConfig(hidden=2048, depth=28, heads=16, adaln_rank=256, text_dim=1024, name="2B"),
}
