"""Backend selection for every op: ``use_backend`` context manager and ``RGBD_KERNELS_BACKEND``.

Backends: ``"reference"`` (plain PyTorch, float32 math), ``"triton"`` (CUDA tensors, or CPU
tensors with ``TRITON_INTERPRET=1``), ``"cpp"`` (compiled CPU ops), ``"cuda"`` (compiled CUDA
ops), ``"auto"`` (default: the fastest correct path available for the tensor's device).
A backend requested explicitly that cannot serve an input raises :class:`BackendUnavailableError`
instead of silently running something else.

The choice is process-wide state (one module-level value, not per thread): ``use_backend`` sets
it for the ``with`` block and restores the previous value on exit. A plain global is what
``torch.compile`` can read while tracing: Dynamo reads it without a graph break and guards on
it, so a compiled model recompiles when the backend changes instead of running a stale choice.
Threads share it; do not run different backends concurrently from several threads.
``$RGBD_KERNELS_BACKEND`` is the process default: set it before the process starts (a compiled
graph does not re-read it).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from typing import Iterator, Mapping, Sequence

import torch

from . import _extension

BACKENDS = ("auto", "reference", "triton", "cpp", "cuda")
ENV_VAR = "RGBD_KERNELS_BACKEND"

# The innermost use_backend's name, None outside any. A module global on purpose (see above).
_override: str | None = None


class BackendUnavailableError(RuntimeError):
    """A backend was requested explicitly but cannot serve this op or input."""


def _check_name(name: object, source: str) -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS}, got {name!r}")
    return name.lower()


def get_backend() -> str:
    """The backend in force: the innermost ``use_backend``, else ``$RGBD_KERNELS_BACKEND``, else auto."""
    if _override is not None:
        return _override
    env = os.environ.get(ENV_VAR)
    return _check_name(env, f"${ENV_VAR}") if env else "auto"


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Run the ops inside the ``with`` block on backend ``name`` (see module docstring)."""
    global _override
    previous, _override = _override, _check_name(name, "backend")
    try:
        yield _override
    finally:
        _override = previous


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def backend_status(name: str, device: torch.device) -> str | None:
    """None when backend ``name`` can run on ``device``, else the reason it cannot."""
    if name == "reference":
        return None
    if name == "cpp":
        if device.type != "cpu":
            return f"the 'cpp' backend serves CPU tensors only, got a tensor on {device}"
        return None if _extension.CPP_AVAILABLE else _extension.CPP_ERROR
    if name == "cuda":
        if device.type != "cuda":
            return f"the 'cuda' backend serves CUDA tensors only, got a tensor on {device}"
        return None if _extension.CUDA_EXT_AVAILABLE else _extension.CUDA_EXT_ERROR
    if name == "triton":
        if not _triton_importable():
            return "triton is not installed (pip install triton)"
        if device.type == "cuda":
            return None
        if device.type == "cpu" and triton_interpret():
            return None
        return (f"the 'triton' backend needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 "
                f"set before rgbd_kernels runs its first Triton kernel; got a tensor on {device}")
    raise ValueError(f"unknown backend {name!r}")


AUTO_ORDER = {"cpu": ("cpp",), "cuda": ("cuda", "triton")}


def select_backend(op: str, device: torch.device, implemented: Sequence[str],
                   auto_order: dict[str, Sequence[str]] | None = None,
                   unsupported: Mapping[str, str] | None = None) -> str:
    """Pick the backend for ``op`` on ``device``.

    ``implemented``: the fast backends this op has (the reference is always implemented).
    ``auto_order``: per device type, the fast backends "auto" tries first, in order; by default
    C++ on CPU and CUDA then Triton on GPUs. "auto" never runs Triton under the interpreter.
    ``unsupported``: fast backends that cannot serve this particular input (dtype, groups, ...),
    each with the reason: "auto" skips them, an explicit request raises with the reason.
    """
    unsupported = unsupported or {}
    requested = get_backend()
    if requested == "auto":
        order = (auto_order or AUTO_ORDER).get(device.type, ())
        for name in order:
            if (name in implemented and name not in unsupported
                    and backend_status(name, device) is None):
                if name == "triton" and device.type != "cuda":
                    continue
                return name
        return "reference"
    if requested != "reference" and requested not in implemented:
        raise BackendUnavailableError(
            f"{op}: backend {requested!r} is not implemented for this op; it has "
            f"{['reference', *implemented]} (use_backend('auto') picks the best available)")
    reason = backend_status(requested, device)
    if reason is not None:
        raise BackendUnavailableError(f"{op}: backend {requested!r} cannot run: {reason}")
    if requested in unsupported:
        raise BackendUnavailableError(f"{op}: backend {requested!r} {unsupported[requested]}")
    return requested


def available_backends(device: str | torch.device = "cpu") -> dict[str, str | None]:
    """For each backend, None if it can run on ``device`` or the reason it cannot."""
    device = torch.device(device)
    return {name: backend_status(name, device) for name in BACKENDS if name != "auto"}
