"""Use rgbd_kernels inside other video models with one call.

    from rgbd_kernels.integrations import apply_rgbd_kernels
    n = apply_rgbd_kernels(vae)                      # diffusers video VAE: causal convs
    n = apply_rgbd_kernels(transformer, attention=True)  # Cosmos / Wan DiT attention

See :mod:`rgbd_kernels.integrations.apply` for what is recognised. Importing this package does
not import diffusers; it matches diffusers' classes by name.
"""
from .apply import (FAMILIES, apply_rgbd_kernels, apply_rgbd_kernels_to_cogvideox,
                    apply_rgbd_kernels_to_cosmos, apply_rgbd_kernels_to_hunyuan_video,
                    apply_rgbd_kernels_to_ltx_video, apply_rgbd_kernels_to_mochi,
                    apply_rgbd_kernels_to_wan)
from .attention import RgbdAttnProcessor, install_attention_processors
from .cogvideox import CogVideoXCausalConv3d
from .cosmos import CosmosCausalConv3d
from .hunyuan_video import HunyuanVideoCausalConv3d
from .ltx_video import LTXVideoCausalConv3d
from .padded_causal_conv3d import PaddedCausalConv3d
from .wan import WanCausalConv3d

__all__ = ["apply_rgbd_kernels", "apply_rgbd_kernels_to_wan", "apply_rgbd_kernels_to_cogvideox",
           "apply_rgbd_kernels_to_mochi", "apply_rgbd_kernels_to_hunyuan_video",
           "apply_rgbd_kernels_to_ltx_video", "apply_rgbd_kernels_to_cosmos", "FAMILIES",
           "RgbdAttnProcessor", "install_attention_processors", "PaddedCausalConv3d",
           "WanCausalConv3d", "CogVideoXCausalConv3d", "HunyuanVideoCausalConv3d",
           "LTXVideoCausalConv3d", "CosmosCausalConv3d"]
