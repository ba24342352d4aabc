"""Timestep samplers for flow-matching training, and the timestep shift.

t follows the rectified-flow convention of :mod:`rgbd_kernels.flow_matching`: t = 0 is data,
t = 1 is noise. Distributions:

* ``"uniform"``: t ~ U[0, 1).
* ``"logit_normal"``: t = sigmoid(u), u ~ N(loc, scale^2) (SD3; loc 0, scale 1 by default).
  CDF: Phi((logit(t) - loc) / scale).

Shift (SD3 / Cosmos-Predict2): ``t' = k t / (1 + (k - 1) t)``. For k > 0 it maps [0, 1] onto
[0, 1] monotonically (k > 1 moves mass towards noise); k = 1 is the identity. It is evaluated as
``k t / (k t + (1 - t))``, which keeps 0 and 1 exact and never rounds above 1. Cosmos-Predict2
derives ``k = sqrt(latent_frames)`` from the number of latent frames (:func:`shift_for_frames`).
If t has CDF F, the shifted t' has CDF F(t' / (k - (k - 1) t')).
"""
from __future__ import annotations

import math

import torch

__all__ = ["DISTRIBUTIONS", "sample_timesteps", "sample_uniform", "sample_logit_normal",
           "shift_timesteps", "unshift_timesteps", "shift_for_frames", "timestep_cdf"]

DISTRIBUTIONS = ("uniform", "logit_normal")


def _shape(batch_size: int, frames: int | None) -> tuple[int, ...]:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 0:
        raise ValueError(f"batch_size must be a non-negative int, got {batch_size!r}")
    if frames is None:
        return (batch_size,)
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
        raise ValueError(f"frames must be a positive int, got {frames!r}")
    return (batch_size, frames)


_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _device(device, generator):
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got "
                         f"{type(generator).__name__} {generator!r}")
    if device is None and generator is not None:
        return generator.device
    if device is None:
        return torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be a torch.device, a device string or None, got "
                         f"{device!r} ({err})") from None


def _check_dtype(dtype: object) -> torch.dtype:
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"dtype must be a real floating dtype (float32, float64, float16 or "
                         f"bfloat16), got {dtype!r}")
    return dtype


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def sample_uniform(batch_size: int, *, frames: int | None = None,
                   generator: torch.Generator | None = None,
                   device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """t ~ U[0, 1): shape (batch_size,), or (batch_size, frames) with one t per latent frame."""
    return torch.rand(_shape(batch_size, frames), generator=generator,
                      device=_device(device, generator), dtype=_check_dtype(dtype))


def sample_logit_normal(batch_size: int, *, loc: float = 0.0, scale: float = 1.0,
                        frames: int | None = None, generator: torch.Generator | None = None,
                        device: torch.device | str | None = None,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """t = sigmoid(N(loc, scale^2)): shape (batch_size,) or (batch_size, frames)."""
    loc = _check_real("loc", loc)
    if _check_real("scale", scale) <= 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    _check_dtype(dtype)
    shape = _shape(batch_size, frames)
    u = torch.randn(shape, generator=generator, device=_device(device, generator),
                    dtype=torch.promote_types(dtype, torch.float32))
    return torch.sigmoid(u * scale + loc).to(dtype)


def shift_for_frames(latent_frames: int) -> float:
    """Cosmos-Predict2's shift for a latent clip: ``k = sqrt(latent_frames)``."""
    if not isinstance(latent_frames, int) or isinstance(latent_frames, bool) or latent_frames < 1:
        raise ValueError(f"latent_frames must be a positive int, got {latent_frames!r}")
    return math.sqrt(latent_frames)


def _check_shift(shift: object) -> float:
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) \
            or not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift must be a finite number > 0, got {shift!r}")
    return float(shift)


def _resolve_shift(shift: float | str | None, latent_frames: int | None) -> float:
    if shift is None:
        return 1.0
    if shift == "auto":
        if latent_frames is None:
            raise ValueError("shift='auto' needs latent_frames (k = sqrt(latent_frames))")
        return shift_for_frames(latent_frames)
    return _check_shift(shift)


def shift_timesteps(t: torch.Tensor | float, shift: float | str | None = None, *,
                    latent_frames: int | None = None):
    """``t' = k t / (1 + (k - 1) t)``, elementwise; k = ``shift``, sqrt(latent_frames) for
    ``shift="auto"``, 1 (identity) for None -- the same rule as :func:`sample_timesteps` and the
    solvers' schedule. Keeps [0, 1] in [0, 1] and order. Works on tensors (any float dtype, math
    in at least float32) and Python floats.
    """
    k = _resolve_shift(shift, latent_frames)
    if isinstance(t, torch.Tensor):
        x = _check_t(t).to(torch.promote_types(t.dtype, torch.float32))
        kx = k * x
        return (kx / (kx + (1 - x))).to(t.dtype)
    kt = k * _check_real_t(t)
    return kt / (kt + (1 - t))


def unshift_timesteps(t: torch.Tensor | float, shift: float | str | None = None, *,
                      latent_frames: int | None = None):
    """Inverse of :func:`shift_timesteps`: ``t = t' / (k - (k - 1) t')``."""
    k = _resolve_shift(shift, latent_frames)
    if isinstance(t, torch.Tensor):
        x = _check_t(t).to(torch.promote_types(t.dtype, torch.float32))
        return (x / (k * (1 - x) + x)).to(t.dtype)
    t = _check_real_t(t)
    return t / (k * (1 - t) + t)


def _check_t(t: torch.Tensor) -> torch.Tensor:
    if t.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"t must be a real floating tensor, got dtype {t.dtype}")
    return t


def _check_real_t(t: object) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise ValueError(f"t must be a tensor or a number, got {type(t).__name__} {t!r}")
    return float(t)


def sample_timesteps(batch_size: int, *, distribution: str = "logit_normal", loc: float = 0.0,
                     scale: float = 1.0, shift: float | str | None = None,
                     latent_frames: int | None = None, per_frame: bool = False,
                     generator: torch.Generator | None = None,
                     device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Training timesteps for a batch.

    Args:
        distribution: "uniform" or "logit_normal" (with ``loc``, ``scale``).
        shift: None (no shift), a number k > 0, or "auto" for k = sqrt(latent_frames).
        latent_frames: number of latent frames of the clips (for "auto" and ``per_frame``).
        per_frame: one independent t per latent frame, shape (batch_size, latent_frames)
            (feeds :func:`~rgbd_kernels.flow_matching.flow_interpolate` per-frame t); else
            (batch_size,).
        generator: a ``torch.Generator`` for reproducible draws (its device is the default).
    Returns:
        t in [0, 1], ``dtype``.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    if not isinstance(per_frame, bool):
        raise ValueError(f"per_frame must be a bool, got {per_frame!r}")
    if per_frame and latent_frames is None:
        raise ValueError("per_frame=True needs latent_frames")
    k = _resolve_shift(shift, latent_frames)
    frames = latent_frames if per_frame else None
    if distribution == "uniform":
        t = sample_uniform(batch_size, frames=frames, generator=generator, device=device,
                           dtype=dtype)
    else:
        t = sample_logit_normal(batch_size, loc=loc, scale=scale, frames=frames,
                                generator=generator, device=device, dtype=dtype)
    return t if k == 1.0 else shift_timesteps(t, k)


def timestep_cdf(t: torch.Tensor, *, distribution: str = "logit_normal", loc: float = 0.0,
                 scale: float = 1.0, shift: float | str | None = None,
                 latent_frames: int | None = None) -> torch.Tensor:
    """Analytic CDF P(T <= t) of :func:`sample_timesteps` with the same arguments (float64)."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    k = _resolve_shift(shift, latent_frames)
    x = t.double().clamp(0, 1)
    if k != 1.0:
        x = unshift_timesteps(x, k)
    if distribution == "uniform":
        return x
    z = (torch.logit(x) - loc) / scale  # logit(0) = -inf, logit(1) = inf
    return torch.special.ndtr(z)
