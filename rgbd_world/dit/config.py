"""DiT configuration and presets (Cosmos-Predict2-style, GUIDE §7)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


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
    backend: str = "auto"         # attention backend (rgbd_kernels.attention)
    fp8: bool = False
    name: str = "custom"

    def __post_init__(self):
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} must be divisible by heads={self.heads}")
        if self.head_dim % 2:
            raise ValueError(f"head dim {self.head_dim} must be even (RoPE rotates pairs)")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def in_channels(self) -> int:
        """Channel order of the DiT input: noisy latent, RGB conditioning latent, condition
        mask (1 on frames given clean), padding mask (1 on padded pixels)."""
        return self.latent_channels + self.cond_channels + 2

    @staticmethod
    def preset(name: str, **overrides) -> "DiTConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown DiT preset {name!r}; available: {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS = {
    "tiny": DiTConfig(hidden=96, depth=3, heads=4, adaln_rank=32, text_dim=64, name="tiny"),
    "small": DiTConfig(hidden=768, depth=12, heads=12, adaln_rank=128, text_dim=384, name="small"),
    "2B": DiTConfig(hidden=2048, depth=28, heads=16, adaln_rank=256, text_dim=1024, name="2B"),
}
