"""DiT configuration and presets (Cosmos-Predict2 style; the "2B" preset is Predict2-exact).

    cfg = DiTConfig.preset("tiny", latent_channels=16, cond_channels=16, text_dim=384)

Presets (parameter counts with latent/cond channels 16 and the preset's text_dim):

=======  ======  =====  =====  ========  ==========  ========  =========
preset   hidden  depth  heads  head dim  AdaLN rank  text_dim  params
=======  ======  =====  =====  ========  ==========  ========  =========
tiny         96      3      4        24          32        64  0.58 M
mini        192      6      6        32          48       384  4.69 M
small       768     12     12        64         128       384  119 M
2B         2048     28     16       128         256      1024  1.96 B
=======  ======  =====  =====  ========  ==========  ========  =========

Two layouts share the architecture (patching, 3D RoPE split, QK RMSNorm, block order, final
AdaLN layer) and differ where weights must map; :data:`PREDICT2` holds the options that make a
configuration compute exactly what Cosmos-Predict2's DiT (and diffusers'
``CosmosTransformer3DModel``) computes, so its weights load (``rgbd_world.dit.diffusers_compat``):

==================  ======================================  ==================================
option              default (ours)                          Predict2
==================  ======================================  ==================================
timestep_scale      1000: sinusoid of 1000 t                1: sinusoid of t
timestep_dim        256                                     = hidden
modulation          "block": one AdaLN-LoRA per block (9    "sublayer": one LoRA per sublayer
                    vectors), time MLP with biases          plus a shared 3-vector base from a
                                                            bias-free time MLP; the LoRAs read
                                                            the RMS-normed sinusoid
mlp_bias, gelu      True, "tanh"                            False, "none" (exact GELU)
final_bias          True                                    False
unpatchify_order    "c_dh_dw"                               "dh_dw_c"
rope_layout         "axis": rotate-half inside each axis    "global": rotate-half over the
                    part                                    head dim, [t|h|w] in each half
rope_scale (t,h,w)  (1, 1, 1)                               (1, 3, 3) for the 2B Video2World
                                                            (NTK: theta * s ** (d / (d - 2)))
==================  ======================================  ==================================

``text_dim`` is normally overridden with the text encoder's ``.dim`` (byte encoder: its width,
MiniLM: 384, T5: its d_model, 1024 for T5-large as in Cosmos).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rgbd_kernels.dot_product_attention import ATTENTION_BACKENDS as _BACKENDS


PATCH = (1, 2, 2)   # (t, h, w) patch of the latent: 2x2 spatial, no temporal patching


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
    # layout options (module docstring; PREDICT2 sets them all to Predict2's)
    timestep_scale: float = 1000.0
    modulation: str = "block"     # "block" | "sublayer"
    mlp_bias: bool = True
    gelu: str = "tanh"            # "tanh" | "none" (exact)
    final_bias: bool = True
    unpatchify_order: str = "c_dh_dw"   # "c_dh_dw" | "dh_dw_c": feature order of the final linear
    rope_layout: str = "axis"     # "axis" | "global"
    rope_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)   # (t, h, w) NTK scaling
    qk_norm_eps: float = 1e-6
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
        object.__setattr__(self, "rope_scale", tuple(float(v) for v in self.rope_scale))
        for field, allowed in (("modulation", ("block", "sublayer")), ("gelu", ("tanh", "none")),
                               ("unpatchify_order", ("c_dh_dw", "dh_dw_c")),
                               ("rope_layout", ("axis", "global"))):
            if getattr(self, field) not in allowed:
                raise ValueError(f"DiTConfig.{field} must be one of {allowed}, got "
                                 f"{getattr(self, field)!r}")
        if len(self.rope_scale) != 3 or min(self.rope_scale) <= 0:
            raise ValueError(f"DiTConfig.rope_scale must be three positive factors (t, h, w), got "
                             f"{self.rope_scale}")
        if not self.timestep_scale > 0 or not self.qk_norm_eps > 0:
            raise ValueError(f"timestep_scale and qk_norm_eps must be > 0, got "
                             f"{self.timestep_scale} and {self.qk_norm_eps}")
        if self.modulation == "sublayer" and self.timestep_dim != self.hidden:
            raise ValueError(f"modulation='sublayer' feeds the normed sinusoid to the AdaLN-LoRAs: "
                             f"timestep_dim must equal hidden={self.hidden}, got {self.timestep_dim}")
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

    @property
    def is_predict2(self) -> bool:
        """True when every layout option is Predict2's (the weights map to diffusers' model)."""
        return all(getattr(self, k) == v for k, v in PREDICT2.items()) and \
            self.timestep_dim == self.hidden

    def to_dict(self) -> dict:
        """The fields as a JSON-able dict (tuples become lists in JSON)."""
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: dict) -> "DiTConfig":
        """The config of :meth:`to_dict`'s dict. Fields this version does not know are ignored
        (configs saved by other versions still load); missing ones take their defaults."""
        fields = {f.name for f in dataclasses.fields(DiTConfig)}
        return DiTConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
                            if k in fields})

    @staticmethod
    def preset(name: str, **overrides) -> "DiTConfig":
        """A preset with keyword overrides, e.g. ``preset("tiny", latent_channels=8)``."""
        if name not in PRESETS:
            raise ValueError(f"unknown DiT preset {name!r}; available: {sorted(PRESETS)}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(DiTConfig)}
        if unknown:
            raise ValueError(f"unknown DiTConfig fields {sorted(unknown)}")
        base = PRESETS[name]
        if base.modulation == "sublayer" and "hidden" in overrides and "timestep_dim" not in overrides:
            overrides["timestep_dim"] = overrides["hidden"]   # Predict2: sinusoid at the width
        return dataclasses.replace(base, **overrides)


# The options of Cosmos-Predict2's DiT (with timestep_dim = hidden), see the module docstring.
# rope_scale is the 2B Video2World's; other Predict2 models may scale the axes differently.
PREDICT2 = dict(timestep_scale=1.0, modulation="sublayer", mlp_bias=False, gelu="none",
                final_bias=False, unpatchify_order="dh_dw_c", rope_layout="global",
                rope_scale=(1.0, 3.0, 3.0))


PRESETS = {
    "tiny": DiTConfig(hidden=96, depth=3, heads=4, adaln_rank=32, text_dim=64, name="tiny"),
    "mini": DiTConfig(hidden=192, depth=6, heads=6, adaln_rank=48, text_dim=384, name="mini"),
    "small": DiTConfig(hidden=768, depth=12, heads=12, adaln_rank=128, text_dim=384, name="small"),
    # Cosmos-Predict2-2B (Video2World): Predict2-exact, its weights load
    "2B": DiTConfig(hidden=2048, depth=28, heads=16, adaln_rank=256, text_dim=1024,
                    timestep_dim=2048, name="2B", **PREDICT2),
}
