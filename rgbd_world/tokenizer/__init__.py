"""Stage 1: the RGBD video tokenizer (Cosmos continuous video tokenizer, inflated to depth).

``VideoTokenizer.from_pretrained(dir)`` reads a saved tokenizer; a training run's tokenizer is
read by ``rgbd_world.train.run_models.load_tokenizer`` (the trainer knows the models, not the
reverse)."""
from .config import PRESETS, TokenizerConfig
from .cosmos_compat import (CosmosStateDictError, cosmos_key_map, inflate_to_rgbd,
                            load_cosmos_state_dict, to_cosmos_state_dict)
from .checkpoint import load_any_tokenizer, load_cosmos_tokenizer, load_encoder
from .model import TokenizerOutput, VideoTokenizer, check_frames, check_size, latent_frames

__all__ = ["TokenizerConfig", "PRESETS", "VideoTokenizer", "TokenizerOutput", "check_frames",
           "check_size", "latent_frames", "load_cosmos_state_dict", "to_cosmos_state_dict",
           "cosmos_key_map", "inflate_to_rgbd", "CosmosStateDictError",
           "load_cosmos_tokenizer", "load_any_tokenizer", "load_encoder"]
