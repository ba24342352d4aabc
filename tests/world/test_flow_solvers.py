"""Flow-matching ODE solvers: schedules, exactness, convergence order, guidance, held frames."""
import math

import pytest
import torch

from rgbd_kernels.timesteps import shift_timesteps
from rgbd_world.flow import (classifier_free_guidance, sample, sample_euler, sample_heun,
                             timestep_schedule)

SHAPE = (2, 3, 4, 5, 6)


# ----------------------------------------------------------------------------- schedule

@pytest.mark.parametrize("shift", [None, 1.0, 3.0, "auto"])
def test_schedule_is_shifted_linspace_from_1_to_0(shift):
    steps = 12
    t = timestep_schedule(steps, shift, latent_frames=16)
    base = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    k = {None: 1.0, 1.0: 1.0, 3.0: 3.0, "auto": 4.0}[shift]
    torch.testing.assert_close(t, k * base / (1 + (k - 1) * base))
    assert t[0] == 1 and t[-1] == 0 and (t.diff() < 0).all()
    if k > 1:  # shifted schedules spend more steps near the noise end
        assert (t[1:-1] > base[1:-1]).all()


def test_schedule_bad_steps():
    with pytest.raises(ValueError, match="steps.*0"):
        timestep_schedule(0)


# ----------------------------------------------------------------------------- exactness, order

@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("shift", [None, 3.0])
def test_constant_velocity_is_integrated_exactly(method, shift):
    """The straight path of one (x0, noise) pair has constant velocity noise - x0."""
    x0 = torch.randn(SHAPE, dtype=torch.float64)
    noise = torch.randn(SHAPE, dtype=torch.float64)
    calls = []

    def velocity(x, t):
        calls.append(t)
        return noise - x0

    out = sample(velocity, noise, 7, method=method, shift=shift)
    torch.testing.assert_close(out, x0, rtol=1e-12, atol=1e-12)
    assert len(calls) == (7 if method == "euler" else 14)
    assert calls[0].shape == (SHAPE[0],) and calls[0].dtype == torch.float64  # state dtype
    assert (calls[0] == 1).all()


def test_optimal_single_point_velocity_is_exact_with_euler():
    """v(x, t) = (x - x0) / t, the marginal velocity of a point mass: Euler is exact."""
    x0 = torch.randn(SHAPE, dtype=torch.float64)
    noise = torch.randn(SHAPE, dtype=torch.float64)
    out = sample_euler(lambda x, t: (x - x0) / t.view(-1, 1, 1, 1, 1), noise, 5,
                       shift=2.0)
    torch.testing.assert_close(out, x0, rtol=1e-12, atol=1e-12)


def _errors(method, shift, steps_list):
    """dx/dt = (a + b t) x from t = 1 to 0: x(0) = x(1) exp(-(a + b/2))."""
    a, b = 1.3, -0.8
    # Same starting point for every call, so errors of different solvers are comparable.
    noise = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = noise * math.exp(-(a + b / 2))
    errs = []
    for steps in steps_list:
        out = sample(lambda x, t: (a + b * t.double()[:, None]) * x, noise, steps, method=method,
                     shift=shift)
        errs.append((out - exact).abs().max().item())
    return errs


@pytest.mark.parametrize("shift", [None, 3.0])
@pytest.mark.parametrize("method,order", [("euler", 1), ("heun", 2)])
def test_convergence_order_on_linear_field(method, order, shift):
    errs = _errors(method, shift, [32, 64, 128, 256])
    for coarse, fine in zip(errs, errs[1:]):  # error ratio 2**order as the step count doubles
        rate = math.log2(coarse / fine)
        assert abs(rate - order) < 0.1, (errs, rate)
    assert errs[-1] < (2e-3 if order == 1 else 5e-5)


@pytest.mark.parametrize("shift", [None, 3.0])
def test_heun_beats_euler_at_equal_model_calls(shift):
    heun, euler = _errors("heun", shift, [32])[0], _errors("euler", shift, [64])[0]
    assert heun < 0.5 * euler, (heun, euler)


# ----------------------------------------------------------------------------- guidance

def test_classifier_free_guidance_combines_and_is_called():
    noise = torch.randn(SHAPE, dtype=torch.float64)
    calls = {"cond": 0, "uncond": 0}

    def cond(x, t):
        calls["cond"] += 1
        return 0.5 * x + 1.0

    def uncond(x, t):
        calls["uncond"] += 1
        return -0.2 * x

    s = 3.0
    out = sample_euler(cond, noise, 6, uncond_velocity=uncond, guidance_scale=s)
    assert calls == {"cond": 6, "uncond": 6}
    manual = sample_euler(lambda x, t: -0.2 * x + s * (0.5 * x + 1.0 + 0.2 * x), noise, 6)
    torch.testing.assert_close(out, manual, rtol=1e-12, atol=1e-12)
    unguided = sample_euler(cond, noise, 6)
    assert not torch.allclose(out, unguided)
    calls.update(cond=0, uncond=0)  # scale 1: the unconditional model is skipped
    torch.testing.assert_close(sample_euler(cond, noise, 6, uncond_velocity=uncond), unguided)
    assert calls == {"cond": 6, "uncond": 0}


def test_guidance_combine_hook_receives_both_velocities():
    seen = []

    def combine(v_c, v_u, t, scale):
        seen.append((v_c.clone(), v_u.clone(), t.clone(), scale))
        return v_c - v_u

    guided = classifier_free_guidance(lambda x, t: 2 * x, lambda x, t: x, 5.0, combine=combine)
    x = torch.randn(3, 4)
    out = guided(x, torch.full((3,), 0.5))
    torch.testing.assert_close(out, x)
    assert len(seen) == 1 and seen[0][3] == 5.0
    torch.testing.assert_close(seen[0][0], 2 * x)
    torch.testing.assert_close(seen[0][1], x)


# ----------------------------------------------------------------------------- held frames

@pytest.mark.parametrize("method", ["euler", "heun"])
def test_held_frames_equal_given_latents_at_every_step(method):
    b, c, f, h, w = SHAPE
    noise = torch.randn(SHAPE)
    given = torch.randn(SHAPE)
    held = torch.zeros(b, 1, f, 1, 1, dtype=torch.bool)
    held[:, :, 0] = True
    held[1, :, 2] = True
    mask = held.expand(SHAPE)
    seen, ts = [], []

    def velocity(x, t):
        seen.append(x.clone())
        ts.append(t.clone())
        return torch.sin(x) + t.view(b, 1, f, 1, 1)  # a non-trivial field, per-frame t

    steps_x = []
    out = sample(velocity, noise, 5, method=method, shift=2.0, held_latents=given,
                 held_mask=held, per_frame_t=True, callback=lambda i, t, x: steps_x.append(x))
    assert len(steps_x) == 5 and len(seen) == (5 if method == "euler" else 10)
    for x in seen + steps_x + [out]:
        assert torch.equal(x[mask], given[mask])
    assert not torch.allclose(out[~mask], noise[~mask])
    for t in ts:  # per-frame t: held frames at 0, the others at the schedule's time
        assert t.shape == (b, f)
        assert (t[held.view(b, f)] == 0).all()
    free = ~held.view(b, f)
    schedule = timestep_schedule(5, 2.0).float()
    assert torch.allclose(ts[0][free], torch.ones(()))
    assert torch.allclose(ts[-1][free], schedule[-1 if method == "heun" else -2])


def test_held_frames_do_not_change_the_free_dynamics_of_a_decoupled_field():
    """With an elementwise field, free entries evolve exactly as without held frames."""
    noise = torch.randn(SHAPE, dtype=torch.float64)
    given = torch.randn(SHAPE, dtype=torch.float64)
    held = torch.rand(SHAPE) > 0.5
    field = lambda x, t: -x * (1 + t.double().view(-1, 1, 1, 1, 1))  # noqa: E731
    free = sample_heun(field, noise, 8)
    out = sample_heun(field, noise, 8, held_latents=given, held_mask=held)
    torch.testing.assert_close(out[~held], free[~held])
    assert torch.equal(out[held], given[held])


def test_dtype_and_float32_state():
    noise = torch.randn(SHAPE).bfloat16()
    dtypes, t_dtypes = [], set()

    def velocity(x, t):
        dtypes.append(x.dtype)
        t_dtypes.add(t.dtype)
        return -x

    out = sample_heun(velocity, noise, 4)
    assert out.dtype == torch.bfloat16 and set(dtypes) == {torch.bfloat16}
    assert t_dtypes == {torch.float32}


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="rk4"), "method.*'rk4'"),
    (dict(held_mask=torch.ones(2, 1, 4, 1, 1, dtype=torch.bool)), "given together"),
    (dict(held_latents=torch.zeros(2, 3, 4, 5, 5), held_mask=torch.ones(1, dtype=torch.bool)),
     r"held_latents.*\(2, 3, 4, 5, 5\)"),
    (dict(held_latents=torch.zeros(SHAPE), held_mask=torch.ones(3, 1, 1, 1, 1, dtype=torch.bool)),
     "held_mask of shape.*not broadcastable"),
    (dict(guidance_scale=2.0), "needs uncond_velocity"),
    (dict(schedule=torch.tensor([1.0, 0.5, 0.7])), "strictly decreasing"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample(lambda x, t: x, torch.randn(SHAPE), 3, **kwargs)


def test_velocity_of_wrong_shape_is_reported():
    with pytest.raises(ValueError, match="velocity must return"):
        sample(lambda x, t: x[:, :1], torch.randn(SHAPE), 3)


def test_explicit_schedule_and_auto_shift():
    noise = torch.randn(SHAPE, dtype=torch.float64)
    seen = []
    sample(lambda x, t: seen.append(t[0].item()) or -x, noise, 4, shift="auto")
    expected = shift_timesteps(torch.linspace(1, 0, 5, dtype=torch.float64), 2.0)[:-1]
    torch.testing.assert_close(torch.tensor(seen, dtype=torch.float64), expected, rtol=1e-6,
                               atol=1e-7)
    seen.clear()
    sample(lambda x, t: seen.append(t[0].item()) or -x, noise, 99,
           schedule=torch.tensor([1.0, 0.6, 0.1, 0.0]))
    assert seen == pytest.approx([1.0, 0.6, 0.1])
