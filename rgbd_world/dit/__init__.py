"""Stage 2: the RGBD diffusion transformer, its conditioning and text encoders."""
from .config import PREDICT2, PRESETS, DiTConfig
from .model import DiT, DiTBlock
from .modulation import AdaLNLoRA, Predict2TimestepEmbedding, TimestepEmbedding, modulate
from .pretrained import inflate_dit_to_rgbd, load_pretrained_dit
from .rope import Rope3D, rope_split
from .text import (ByteTextEncoder, HFTextEncoder, MiniLMTextEncoder, TextEncoder, build_text_encoder,
                   minilm_available)

__all__ = ["DiTConfig", "PRESETS", "PREDICT2", "DiT", "DiTBlock", "AdaLNLoRA", "TimestepEmbedding",
           "Predict2TimestepEmbedding", "modulate", "load_pretrained_dit", "inflate_dit_to_rgbd",
           "Rope3D", "rope_split", "TextEncoder", "ByteTextEncoder", "MiniLMTextEncoder",
           "HFTextEncoder", "build_text_encoder", "minilm_available"]
