"""nn.Module wrappers of the rgbd_kernels ops, drop-in for torch.nn layers."""
from .attention import Attention
from .causal_conv3d import CausalConv3d

__all__ = ["Attention", "CausalConv3d"]
