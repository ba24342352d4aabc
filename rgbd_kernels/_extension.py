"""Loads the compiled ops (``rgbd_kernels._C``) if they were built, and remembers why not.

``import rgbd_kernels`` never fails because of them: without ``_C`` the reference and Triton
paths still work, and one warning says which paths are missing and why.
"""
from __future__ import annotations

import warnings

try:
    from . import _C  # noqa: F401  (registers torch.ops.rgbd_C.*)

    CPP_AVAILABLE = True
    CPP_ERROR: str | None = None
    CUDA_EXT_AVAILABLE = bool(_C.built_with_cuda())
    CUDA_EXT_ERROR: str | None = None if CUDA_EXT_AVAILABLE else (
        "the extension was built without its CUDA sources (torch without CUDA, no nvcc, or "
        "RGBD_KERNELS_SKIP_CUDA_BUILD=1)"
    )
except ImportError as exc:  # not built, or built against another torch
    _C = None
    CPP_AVAILABLE = False
    CPP_ERROR = f"rgbd_kernels._C could not be imported ({exc})"
    CUDA_EXT_AVAILABLE = False
    CUDA_EXT_ERROR = CPP_ERROR
    warnings.warn(
        f"rgbd_kernels: the C++ CPU and CUDA ops are unavailable: {CPP_ERROR}. The 'reference' "
        "and 'triton' backends still work. Build them with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )
