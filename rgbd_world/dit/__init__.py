"""Stage 2: the RGBD diffusion transformer, its conditioning and text encoders."""
from .config import PRESETS, DiTConfig
from .model import DiT, DiTBlock
from .modulation import AdaLNLoRA, TimestepEmbedding, modulate
from .rope import Rope3D, rope_split
from .text import (ByteTextEncoder, HFTextEncoder, MiniLMTextEncoder, TextEncoder, build_text_encoder,
                   minilm_available)

__all__ = ["DiTConfig", "PRESETS", "DiT", "DiTBlock", "AdaLNLoRA", "TimestepEmbedding", "modulate",
           "Rope3D", "rope_split", "TextEncoder", "ByteTextEncoder", "MiniLMTextEncoder",
           "HFTextEncoder", "build_text_encoder", "minilm_available"]
