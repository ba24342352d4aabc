"""nn.Module wrappers of rgbd_kernels ops, drop-in for torch.nn layers."""
from .attention import Attention

__all__ = ["Attention"]
