"""rgbd_kernels: fused kernels for RGB + depth video models (standalone; never imports rgbd_world).

Every op has a plain-PyTorch reference path and fast paths (Triton on GPUs, C++ on CPUs), chosen
with :func:`use_backend` or ``$RGBD_KERNELS_BACKEND``; see :mod:`rgbd_kernels.backend`.
"""
from . import nn
from .causal_conv3d import (causal_conv3d, causal_conv3d_output_frames, causal_conv3d_reference,
                            causal_conv3d_stream, causal_time_pad)
from .dot_product_attention import attention
from .flow_matching import (flow_interpolate, flow_interpolate_reference, flow_matching_loss,
                            flow_matching_loss_reference)
from .nn import CausalConv3d
from .timesteps import (sample_logit_normal, sample_timesteps, sample_uniform, shift_for_frames,
                        shift_timesteps, timestep_cdf, unshift_timesteps)
from .backend import (BACKENDS, BackendUnavailableError, available_backends, get_backend,
                      use_backend)
from .disparity import (abs_rel, align_scale_shift, delta1, denormalize_disparity,
                        depth_to_disparity, normalize_disparity)
from ._nvtx import nvtx_range

from ._lazy_dynamo import defer_dynamo_import as _defer_dynamo_import

_defer_dynamo_import()  # an op's first call must not import torch._dynamo (see _lazy_dynamo)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS", "BackendUnavailableError", "available_backends", "get_backend", "use_backend",
    "depth_to_disparity", "normalize_disparity", "denormalize_disparity", "align_scale_shift",
    "abs_rel", "delta1", "attention", "nn", "causal_conv3d", "causal_conv3d_stream",
    "causal_conv3d_reference", "causal_time_pad", "causal_conv3d_output_frames", "CausalConv3d",
    "flow_interpolate", "flow_matching_loss", "flow_interpolate_reference",
    "flow_matching_loss_reference", "sample_timesteps", "sample_uniform", "sample_logit_normal",
    "shift_timesteps", "unshift_timesteps", "shift_for_frames", "timestep_cdf", "nvtx_range",
]
