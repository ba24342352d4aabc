"""Stage 2: the RGBD diffusion transformer, its conditioning and text encoders."""
from .config import PRESETS, DiTConfig
from .model import DiT, DiTBlock
from .rope import Rope3D, rope_split
from .text import ByteTextEncoder, HFTextEncoder, MiniLMTextEncoder, build_text_encoder

__all__ = ["DiTConfig", "PRESETS", "DiT", "DiTBlock", "Rope3D", "rope_split", "ByteTextEncoder",
           "MiniLMTextEncoder", "HFTextEncoder", "build_text_encoder"]
