"""ODE solvers that generate latents with a rectified-flow velocity model.

Convention (:mod:`rgbd_kernels.flow_matching`): ``x_t = (1 - t) x0 + t noise`` and
the model predicts ``v = dx_t/dt = noise - x0``. Generation integrates dx/dt = v(x, t) from
t = 1 (pure noise) to t = 0 (data) over the schedule ``linspace(1, 0, steps + 1)`` shifted by
``t' = k t / (1 + (k - 1) t)`` (k > 1 spends more steps near the noise end; Cosmos-Predict2
uses k = sqrt(latent frames)).

* Euler: ``x_{i+1} = x_i + (t_{i+1} - t_i) v(x_i, t_i)`` -- first order, ``steps`` model calls.
* Heun (explicit trapezoid): an Euler predictor, then the average of the velocities at both
  ends -- second order, ``2 * steps`` model calls (also on the last step, to t = 0).

Hooks:

* classifier-free guidance: ``uncond_velocity`` and ``guidance_scale`` (or wrap the model with
  :func:`classifier_free_guidance`, whose ``combine`` argument takes other guidance rules);
  ``v = v_uncond + s (v_cond - v_uncond)``; s = 1 skips the unconditional call.
* held frames: ``held_latents`` with ``held_mask`` (True where held, broadcastable to the
  latent, e.g. (B, 1, T, 1, 1)): those entries equal ``held_latents`` in every state the model
  sees and after every step, so conditioning frames stay the given clean latents throughout.
  With ``per_frame_t=True`` the model gets t per latent frame (B, T), 0 on held frames.
* ``callback(step, t_next, x)`` after every step (``x`` is the solver state, float32 or wider).

The state is kept in float32 (float64 for float64 noise); the model is called with x in
noise's dtype and t (B,) (or (B, T)) in the state dtype. Grad mode is the caller's (wrap in
``torch.no_grad()`` for plain sampling).
"""
from __future__ import annotations

from typing import Callable

import torch

from rgbd_kernels.timesteps import shift_timesteps

__all__ = ["SOLVERS", "VelocityFn", "timestep_schedule", "classifier_free_guidance", "sample",
           "sample_euler", "sample_heun"]

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SOLVERS = ("euler", "heun")


def timestep_schedule(steps: int, shift: float | str | None = None, *,
                      latent_frames: int | None = None, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``steps + 1`` times from 1 to 0: linspace(1, 0, steps + 1), then shifted by k = ``shift``
    (None: no shift; "auto": sqrt(latent_frames)). Strictly decreasing; exactly 1 and 0 at the ends.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    if shift is not None:
        t = shift_timesteps(t, shift, latent_frames=latent_frames)
    t[0], t[-1] = 1.0, 0.0
    return t.to(device=device, dtype=dtype)


def classifier_free_guidance(cond: VelocityFn, uncond: VelocityFn, scale: float, *,
                             combine: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float],
                                               torch.Tensor] | None = None) -> VelocityFn:
    """A velocity function guided by ``scale``: ``v_u + scale * (v_c - v_u)``.

    ``combine(v_cond, v_uncond, t, scale)`` replaces that rule when given. With scale 1 and no
    ``combine`` the unconditional model is not called.
    """
    scale = float(scale)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_cond = cond(x, t)
        if combine is None and scale == 1.0:
            return v_cond
        v_uncond = uncond(x, t)
        if combine is not None:
            return combine(v_cond, v_uncond, t, scale)
        return v_uncond + scale * (v_cond - v_uncond)

    return guided


class _Hold:
    """Keeps held entries equal to the given latents; builds the t the model sees."""

    def __init__(self, noise, held_latents, held_mask, per_frame_t, t_dtype):
        self.t_dtype = t_dtype
        self.mask = self.frame_held = None
        shape = tuple(noise.shape)
        if (held_latents is None) != (held_mask is None):
            raise ValueError("held_latents and held_mask must be given together")
        if held_mask is not None:
            if not isinstance(held_latents, torch.Tensor) or tuple(held_latents.shape) != shape:
                got = tuple(held_latents.shape) if isinstance(held_latents, torch.Tensor) \
                    else type(held_latents).__name__
                raise ValueError(f"held_latents must be a tensor of the noise shape {shape}, "
                                 f"got {got}")
            if not isinstance(held_mask, torch.Tensor):
                raise ValueError(f"held_mask must be a tensor, got {type(held_mask).__name__}")
            ms = tuple(held_mask.shape)
            if len(ms) > len(shape) or any(m not in (1, s) for m, s in zip(ms[::-1], shape[::-1])):
                raise ValueError(f"held_mask of shape {ms} is not broadcastable to the latent "
                                 f"shape {shape}")
            if held_latents.device != noise.device or held_mask.device != noise.device:
                raise ValueError(f"held_latents and held_mask must be on noise's device "
                                 f"{noise.device}, got {held_latents.device} and "
                                 f"{held_mask.device}")
            self.mask = (held_mask != 0).expand(shape)
        if per_frame_t:
            if noise.dim() != 5:
                raise ValueError(f"per_frame_t needs (B, C, T, H, W) latents, got shape {shape}")
            if self.mask is not None:
                self.frame_held = self.mask.all(dim=(1, 3, 4))
        self.per_frame_t = per_frame_t
        self.held_latents = held_latents
        self.batch = shape[0]
        self.frames = shape[2] if noise.dim() == 5 else None

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return x
        return torch.where(self.mask, self.held_latents.to(x.dtype), x)

    def t(self, value: float, device) -> torch.Tensor:
        if not self.per_frame_t:
            return torch.full((self.batch,), value, dtype=self.t_dtype, device=device)
        t = torch.full((self.batch, self.frames), value, dtype=self.t_dtype, device=device)
        if self.frame_held is not None:
            t = torch.where(self.frame_held, torch.zeros_like(t), t)
        return t


def sample(velocity: VelocityFn, noise: torch.Tensor, steps: int, *, method: str = "euler",
           shift: float | str | None = None, latent_frames: int | None = None,
           uncond_velocity: VelocityFn | None = None, guidance_scale: float = 1.0,
           held_latents: torch.Tensor | None = None, held_mask: torch.Tensor | None = None,
           per_frame_t: bool = False,
           callback: Callable[[int, float, torch.Tensor], None] | None = None,
           schedule: torch.Tensor | None = None) -> torch.Tensor:
    """Integrate from ``noise`` at t = 1 to t = 0 and return the generated latents.

    Args:
        velocity: the model, ``velocity(x, t) -> v`` with x like noise and t (B,) float32
            (float64 for float64 noise).
        noise: (B, ...) starting latents (standard normal for generation).
        steps: number of steps N (schedule of N + 1 times).
        method: "euler" or "heun".
        shift, latent_frames: schedule shift (see :func:`timestep_schedule`); ``shift="auto"``
            derives k = sqrt(latent_frames), latent_frames defaulting to T of 5-D noise.
        uncond_velocity, guidance_scale: classifier-free guidance (see the module docstring).
        held_latents, held_mask, per_frame_t: frames held fixed (see the module docstring).
        callback: ``callback(step, t_next, x)`` after every step.
        schedule: explicit decreasing times (overrides steps' linspace and the shift).
    Returns:
        x at t = 0 in noise's dtype.
    """
    if method not in SOLVERS:
        raise ValueError(f"method must be one of {SOLVERS}, got {method!r}")
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point() or noise.dim() < 1:
        got = (f"{noise.dtype} tensor of shape {tuple(noise.shape)}"
               if isinstance(noise, torch.Tensor) else type(noise).__name__)
        raise ValueError(f"noise must be a floating tensor (B, ...), got a {got}")
    if shift == "auto" and latent_frames is None and noise.dim() == 5:
        latent_frames = noise.shape[2]
    if schedule is None:
        ts = timestep_schedule(steps, shift, latent_frames=latent_frames).tolist()
    else:
        ts = [float(v) for v in schedule.reshape(-1).tolist()]
        if len(ts) < 2 or any(b >= a for a, b in zip(ts, ts[1:])):
            raise ValueError("schedule must hold at least 2 strictly decreasing times")
    if uncond_velocity is not None:
        velocity = classifier_free_guidance(velocity, uncond_velocity, guidance_scale)
    elif guidance_scale != 1.0:
        raise ValueError(f"guidance_scale={guidance_scale!r} needs uncond_velocity")
    state_dtype = torch.promote_types(noise.dtype, torch.float32)
    hold = _Hold(noise, held_latents, held_mask, per_frame_t, state_dtype)

    def f(x, t_value):
        v = velocity(x.to(noise.dtype), hold.t(t_value, x.device))
        if not isinstance(v, torch.Tensor) or v.shape != x.shape:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"velocity must return a tensor of the latent shape "
                             f"{tuple(x.shape)}, got {got}")
        return v.to(state_dtype)

    x = hold.apply(noise.to(state_dtype))
    for i, (t_cur, t_next) in enumerate(zip(ts, ts[1:])):
        dt = t_next - t_cur
        v = f(x, t_cur)
        if method == "heun":
            x_pred = hold.apply(x + dt * v)
            v = 0.5 * (v + f(x_pred, t_next))
        x = hold.apply(x + dt * v)
        if callback is not None:
            callback(i, t_next, x)
    return x.to(noise.dtype)


def sample_euler(velocity: VelocityFn, noise: torch.Tensor, steps: int, **kwargs) -> torch.Tensor:
    """:func:`sample` with ``method="euler"``."""
    return sample(velocity, noise, steps, method="euler", **kwargs)


def sample_heun(velocity: VelocityFn, noise: torch.Tensor, steps: int, **kwargs) -> torch.Tensor:
    """:func:`sample` with ``method="heun"``."""
    return sample(velocity, noise, steps, method="heun", **kwargs)
