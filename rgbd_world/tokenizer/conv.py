"""The tokenizer's causal 3D convolution is ``rgbd_kernels.nn.CausalConv3d``.

``CausalConv3d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
time_pad="replicate")``: ``weight``/``bias`` like ``nn.Conv3d``; time left-padded with
``dilation_t*(kT-1) + (1-stride_t)`` copies of frame 0; ``padding`` = zero (H, W) padding (Cosmos
``CausalConv3d`` semantics). ``conv(x)`` convolves a whole video and
``conv.stream(x, cache) -> (y, new_cache)`` one chunk of a stream (``cache=None`` first).
"""
from rgbd_kernels.nn import CausalConv3d

__all__ = ["CausalConv3d"]
