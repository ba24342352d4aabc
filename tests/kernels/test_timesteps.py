"""Timestep samplers: empirical distributions against analytic CDFs (KS statistic), the shift."""
import math

import numpy as np
import pytest
import torch

import rgbd_kernels as rk
from rgbd_kernels.testing import assert_parity, edge_cases, range_endpoints
from rgbd_kernels.timesteps import (sample_logit_normal, sample_timesteps, sample_uniform,
                                    shift_for_frames, shift_timesteps, timestep_cdf,
                                    unshift_timesteps)

N_DRAWS = 100_000
KS_THRESHOLD = 0.01  # the 99.9% critical value for n = 100k is 1.95 / sqrt(n) = 0.0062


def ks_statistic(samples: torch.Tensor, cdf) -> float:
    """Two-sided Kolmogorov-Smirnov statistic sup |F_n - F| of samples against a CDF."""
    x = np.sort(samples.double().reshape(-1).numpy())
    n = x.size
    f = np.asarray(cdf(torch.from_numpy(x)), dtype=np.float64)
    upper = np.arange(1, n + 1) / n - f
    lower = f - np.arange(0, n) / n
    return float(max(upper.max(), lower.max()))


def normal_cdf(z):
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


CASES = {  # id: (sampler kwargs, analytic CDF written out independently of timestep_cdf)
    "uniform": (dict(distribution="uniform"), lambda t: t),
    "logit-normal": (dict(distribution="logit_normal"),
                     lambda t: normal_cdf(torch.logit(t))),
    "logit-normal-m0.5-s0.8": (dict(distribution="logit_normal", loc=0.5, scale=0.8),
                               lambda t: normal_cdf((torch.logit(t) - 0.5) / 0.8)),
    "uniform-shift3": (dict(distribution="uniform", shift=3.0), lambda t: t / (3 - 2 * t)),
    "logit-normal-shift-auto16": (
        dict(distribution="logit_normal", shift="auto", latent_frames=16),
        lambda t: normal_cdf(torch.logit(t / (4 - 3 * t)))),
    "logit-normal-shift0.5": (dict(distribution="logit_normal", shift=0.5),
                              lambda t: normal_cdf(torch.logit(t / (0.5 + 0.5 * t)))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_samples_match_analytic_cdf(case):
    kwargs, cdf = CASES[case]
    gen = torch.Generator().manual_seed(torch.randint(0, 2**31, ()).item())
    t = sample_timesteps(N_DRAWS, generator=gen, **kwargs)
    assert t.shape == (N_DRAWS,) and t.dtype == torch.float32
    assert ((t >= 0) & (t <= 1)).all()
    assert ks_statistic(t, cdf) < KS_THRESHOLD
    assert ks_statistic(t, lambda x: timestep_cdf(x, **kwargs)) < KS_THRESHOLD


def test_ks_rejects_a_wrong_distribution():
    """The KS check has power: logit-normal draws fail against other CDFs."""
    t = sample_logit_normal(N_DRAWS)
    assert ks_statistic(t, lambda x: normal_cdf(torch.logit(x) / 1.15)) > KS_THRESHOLD
    assert ks_statistic(t, lambda x: x) > KS_THRESHOLD
    shifted = shift_timesteps(t, 1.2)
    assert ks_statistic(shifted, lambda x: normal_cdf(torch.logit(x))) > KS_THRESHOLD


def test_per_frame_sampling_is_independent_per_frame():
    t = sample_timesteps(N_DRAWS // 10, distribution="logit_normal", latent_frames=10,
                         per_frame=True)
    assert t.shape == (N_DRAWS // 10, 10)
    assert ks_statistic(t, lambda x: normal_cdf(torch.logit(x))) < KS_THRESHOLD
    corr = np.corrcoef(t[:, 0].numpy(), t[:, 1].numpy())[0, 1]
    assert abs(corr) < 0.05  # 5 standard errors (1/sqrt(10k) = 0.01)
    assert (t[:, 0] != t[:, 1]).float().mean() > 0.99


def test_generator_reproducibility_and_device():
    a = sample_timesteps(64, generator=torch.Generator().manual_seed(7), shift=2.0)
    b = sample_timesteps(64, generator=torch.Generator().manual_seed(7), shift=2.0)
    c = sample_timesteps(64, generator=torch.Generator().manual_seed(8), shift=2.0)
    assert torch.equal(a, b) and not torch.equal(a, c)
    u1 = sample_uniform(5, frames=3, generator=torch.Generator().manual_seed(1))
    u2 = sample_uniform(5, frames=3, generator=torch.Generator().manual_seed(1))
    assert u1.shape == (5, 3) and torch.equal(u1, u2)
    assert sample_logit_normal(4, dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("k", [0.25, 1.0, 1.7, 3.0, math.sqrt(21)])
def test_shift_is_monotone_in_unit_interval_and_invertible(k):
    t = torch.linspace(0, 1, 10_001, dtype=torch.float64)
    s = shift_timesteps(t, k)
    assert s[0] == 0 and s[-1] == 1
    assert ((s >= 0) & (s <= 1)).all()
    if k == 1.0:
        assert torch.equal(s, t)
    else:
        assert (s.diff() > 0).all()
        assert ((s[1:-1] > t[1:-1]) if k > 1 else (s[1:-1] < t[1:-1])).all()
    torch.testing.assert_close(unshift_timesteps(s, k), t, rtol=1e-12, atol=1e-12)
    assert shift_timesteps(0.5, k) == pytest.approx(k * 0.5 / (1 + (k - 1) * 0.5))
    t32 = torch.rand(1000)
    s32 = shift_timesteps(t32, k)
    assert s32.dtype == torch.float32 and ((s32 >= 0) & (s32 <= 1)).all()


def test_shift_from_latent_frames():
    assert shift_for_frames(16) == 4.0
    t = torch.rand(100)
    torch.testing.assert_close(shift_timesteps(t, "auto", latent_frames=9), shift_timesteps(t, 3.0))
    # one rule everywhere: shift=None is no shift, whatever latent_frames says
    assert torch.equal(shift_timesteps(t, latent_frames=9), t)
    g = torch.Generator().manual_seed(3)
    plain = sample_timesteps(8, generator=g)
    assert torch.equal(sample_timesteps(8, latent_frames=9,
                                        generator=torch.Generator().manual_seed(3)), plain)
    torch.testing.assert_close(shift_timesteps(t, "auto", latent_frames=4), shift_timesteps(t, 2.0))
    torch.testing.assert_close(shift_timesteps(t.half(), 2.0).float(),
                               shift_timesteps(t.half().float(), 2.0), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("call,match", [
    (lambda: sample_timesteps(4, distribution="beta"), "distribution.*'beta'"),
    (lambda: sample_timesteps(4, per_frame=True), "per_frame=True needs latent_frames"),
    (lambda: sample_timesteps(4, shift="auto"), "latent_frames"),
    (lambda: sample_timesteps(-1), "batch_size.*-1"),
    (lambda: sample_logit_normal(4, scale=0.0), "scale must be > 0, got 0.0"),
    (lambda: shift_timesteps(torch.rand(3), -2.0), "shift.*-2.0"),
    (lambda: shift_timesteps(torch.rand(3), float("nan")), "shift.*nan"),
    (lambda: shift_timesteps(torch.ones(3, dtype=torch.int64), 2.0), "t.*int64"),
    (lambda: shift_for_frames(0), "latent_frames.*0"),
    (lambda: sample_uniform(3, frames=0), "frames.*0"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------- edge values

SHIFTS = [0.2, 0.25, 1 / 3, 0.9, 1.0, 1.1, 1.7, 3.0, math.sqrt(21), 1e-3, 1e3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=str)
def test_shift_keeps_unit_interval_ends_exact(dtype):
    """0 -> 0 and 1 -> 1 exactly and nothing rounds outside [0, 1] (k t / (1 + (k-1) t) gave
    1.0000001 for t = 1, k = 0.2 in float32)."""
    t = range_endpoints(0.0, 1.0, dtype)
    for k in SHIFTS:
        for f in (shift_timesteps, unshift_timesteps):
            s = f(t, k)
            assert s.dtype == dtype and ((s >= 0) & (s <= 1)).all(), (f.__name__, k, s)
            assert s[0] == 0 and s[1] == 1, (f.__name__, k, s)
            assert f(0.0, k) == 0.0 and f(1.0, k) == 1.0, (f.__name__, k)


def test_shift_standard_edge_cases_match_float64_formula():
    t = torch.rand(64)
    for name, x in edge_cases(t, names=["nan_element", "subnormal", "constant", "signed_zeros"]):
        for k in (0.2, 3.0):
            x64 = x.double()
            ref = (k * x64 / (1 + (k - 1) * x64)).float()
            assert_parity(shift_timesteps(x, k), ref, name=f"{name}:k={k}")


def test_sampled_timesteps_never_exceed_one_and_feed_flow_interpolate():
    g = torch.Generator().manual_seed(0)
    for shift in (0.2, 0.5, 3.0):  # loc = 30: sigmoid rounds to exactly 1 in float32
        t = sample_timesteps(256, loc=30.0, shift=shift, generator=g)
        assert (t == 1).any() and (t <= 1).all()
        x0 = torch.randn(256, 3)
        rk.flow_interpolate(x0, torch.randn(256, 3), t)  # range-checked: raises above 1


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64,
                                   torch.uint8, "float32", None])
def test_non_float_dtype_rejected(dtype):
    for call in (lambda: sample_timesteps(4, dtype=dtype),
                 lambda: sample_timesteps(4, distribution="uniform", dtype=dtype),
                 lambda: sample_logit_normal(4, dtype=dtype),
                 lambda: sample_uniform(4, dtype=dtype)):
        with pytest.raises(ValueError, match=r"dtype must be a real floating dtype.*got"):
            call()


@pytest.mark.parametrize("call,match", [
    (lambda: sample_timesteps(4, loc="0"), r"loc must be a finite number, got '0'"),
    (lambda: sample_logit_normal(4, loc=float("inf")), r"loc must be a finite number, got inf"),
    (lambda: sample_logit_normal(4, scale="1"), r"scale must be a finite number, got '1'"),
    (lambda: sample_timesteps(4, generator=0), r"generator must be a torch.Generator.*int 0"),
    (lambda: sample_uniform(4, generator="cpu"), r"generator must be a torch.Generator"),
    (lambda: sample_timesteps(4, device="nowhere"), r"device must be .*'nowhere'"),
    (lambda: sample_timesteps(4, per_frame="yes", latent_frames=3), r"per_frame must be a bool"),
    (lambda: shift_timesteps("0.5", 2.0), r"t must be a tensor or a number, got str"),
    (lambda: unshift_timesteps(torch.ones(2, dtype=torch.complex64), 2.0), r"t must be a real.*complex"),
    (lambda: shift_timesteps(torch.ones(2, dtype=torch.bool), 2.0), r"t must be a real.*bool"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
