"""NVTX ranges around public ops and model stages: off by default, on with ``RGBD_NVTX=1``."""
from __future__ import annotations

import contextlib
import os

import torch


def _annotate(name: str):
    try:
        import nvtx
    except ImportError:
        return None
    return nvtx.annotate(name, domain="rgbd")


@contextlib.contextmanager
def nvtx_range(name: str):
    """A named NVTX range (the ``nvtx`` package, else ``torch.cuda.nvtx``) when RGBD_NVTX=1."""
    if os.environ.get("RGBD_NVTX", "0") != "1":
        yield
        return
    ctx = _annotate(name)
    if ctx is not None:
        with ctx:
            yield
    elif torch.cuda.is_available():
        torch.cuda.nvtx.range_push(name)
        try:
            yield
        finally:
            torch.cuda.nvtx.range_pop()
    else:
        yield
