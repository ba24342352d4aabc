"""Keeps an op's first call from importing ``torch._dynamo`` (with sympy and triton: ~150 MiB
resident in every process that runs an op, data-loader workers included).

``torch.library.custom_op`` wraps each kernel in ``torch._disable_dynamo``, which imports
``torch._dynamo`` on the kernel's first call so that Dynamo never traces into the kernel body.
While nothing has imported ``torch._dynamo``, no frame can be running under Dynamo, so the
kernel can be called directly. :func:`defer_dynamo_import` gives each of our kernels a disable
wrapper that does exactly that, and switches to Dynamo's real ``disable`` as soon as
``torch._dynamo`` is loaded (``torch.compile``, ``opcheck`` or any other user imports it).

It relies on how torch's ``_disable_dynamo`` caches its wrapper (the ``__dynamo_disable``
attribute of the wrapped kernel); where that is not found it changes nothing (the ops work, the
first call costs the import again, and ``tests/kernels/test_import_memory.py`` says so).
"""
from __future__ import annotations

import sys
from typing import Callable

import torch

_ATTR = "__dynamo_disable"  # the cache attribute torch._compile._disable_dynamo looks up


def _lazy_disable(fn: Callable) -> Callable:
    """``fn`` until ``torch._dynamo`` is imported, then ``torch._dynamo.disable(fn)`` (cached)."""

    def call(*args, **kwargs):
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        real = torch._dynamo.disable(fn, recursive=True, wrapping=False)
        setattr(fn, _ATTR, real)
        return real(*args, **kwargs)

    return call


def defer_dynamo_import(namespace: str = "rgbd") -> int:
    """Install the lazy wrapper on every kernel of the custom ops in ``namespace``.

    Returns the number of kernels changed (0 where torch's internals differ from the expected).
    """
    try:
        from torch._library.custom_ops import OPDEFS
    except ImportError:
        return 0
    changed = 0
    for qualname, opdef in list(OPDEFS.items()):
        if not qualname.startswith(f"{namespace}::"):
            continue
        for outer in getattr(opdef, "_backend_fns", {}).values():
            kernel = getattr(outer, "__wrapped__", None)
            if kernel is None or getattr(kernel, _ATTR, None) is not None:
                continue
            setattr(kernel, _ATTR, _lazy_disable(kernel))
            changed += 1
    return changed
