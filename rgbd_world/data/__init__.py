"""RGB-D video data: procedural scenes with captions, readers for real datasets, latent cache.

- :mod:`.synthetic`: scene sampling and an exact vectorized ray caster (RGB, planar depth, K,
  poses); :mod:`.captions`: captions from scene descriptions; :mod:`.procedural`:
  :func:`make_clip` (a scene sampled, rendered and captioned).
- :mod:`.shards`: :func:`generate_dataset` (atomic, resumable shards; ``rgbd-world make-data``).
- :mod:`.readers`: our shards, Virtual KITTI 2, TartanAir, MPI Sintel and plain folders.
- :mod:`.dataset`: :class:`RGBDVideoDataset` (normalized disparity, crops, flips, bad-data
  skipping).
- :mod:`.latent_cache`: :func:`encode_dataset` and :class:`LatentDataset` for stage 2 (the
  encoders come from the caller: ``rgbd-world cache-latents`` builds them; data knows no model).
- :mod:`.pseudo_label`: :func:`pseudo_label_videos` (ordinary videos -> shards with estimated
  depth and captions; ``rgbd-world pseudo-label``).
- :mod:`.mixing`: :class:`WeightedMix` and :func:`mixed_rgbd_dataset` (weighted mixes of sources).
"""
from .captions import caption_scene, caption_variants
from .dataset import BadSampleError, BadSampleWarning, RGBDVideoDataset
from .latent_cache import LatentDataset, collate_latents, encode_dataset
from .mixing import WeightedMix, mixed_rgbd_dataset
from .pseudo_label import pseudo_label_videos
from .readers import FORMATS, RawClip, find_clips
from .shards import generate_dataset
from .procedural import make_clip
from .synthetic import SyntheticClip, render, sample_scene

__all__ = ["sample_scene", "render", "make_clip", "SyntheticClip", "caption_scene",
           "caption_variants", "generate_dataset", "RGBDVideoDataset", "BadSampleWarning",
           "BadSampleError", "find_clips", "FORMATS", "RawClip", "encode_dataset",
           "LatentDataset", "collate_latents", "WeightedMix", "mixed_rgbd_dataset",
           "pseudo_label_videos"]
