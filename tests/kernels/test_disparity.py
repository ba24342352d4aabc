"""Disparity ops: every fast path against the reference, properties, bad input, op checks."""
import math
import os

import numpy as np
import pytest
import torch

import rgbd_kernels as rk
from rgbd_kernels import _buffers
from rgbd_kernels.disparity import (_depth_to_disparity_op, _normalize_rows_backward_op,
                                    _normalize_rows_op, depth_to_disparity_reference,
                                    normalize_disparity_reference)
from rgbd_kernels.testing import assert_parity, edge_cases, noncontiguous, tolerance

FAST = ["cpp", "triton"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DT_ID = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def random_disparity(shape, dtype=torch.float32, holes=0.2):
    """Positive disparities spanning two decades, with holes and degenerate frames.

    Frame 0 of each clip is constant, frame 1 (if any) wholly invalid; other frames have random
    holes, so valid counts are a mix of even and odd.
    """
    d = torch.exp(torch.randn(shape) * 1.2).to(dtype)
    valid = torch.rand(shape) > holes
    if len(shape) >= 3:
        d[..., 0, :, :] = 0.75
        valid[..., 0, :, :] = True
        if shape[-3] > 1:
            valid[..., 1, :, :] = False
    return d, valid


def backend_ids(params):
    return [f"{b}" for b in params]


# ----------------------------------------------------------------------------- depth_to_disparity

@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_ID.get)
@pytest.mark.parametrize("rng", [(None, None), (0.5, 4.0)], ids=["norange", "range"])
def test_depth_to_disparity_parity(backend, dtype, rng):
    depth = (torch.rand(2, 5, 37, 23) * 8 - 0.5).to(dtype)  # includes negatives
    depth[0, 0, 0, :5] = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0]).to(dtype)
    depth = noncontiguous(depth)
    ref_d, ref_v = depth_to_disparity_reference(depth, rng[0] or 0.0, rng[1] or math.inf)
    with rk.use_backend(backend):
        disp, valid = rk.depth_to_disparity(depth, *rng)
    assert_parity(valid, ref_v, name="valid")
    assert_parity(disp, ref_d, name="disparity")
    assert not valid[0, 0, 0, :5].any()
    assert (disp[~valid] == 0).all()


@pytest.mark.parametrize("backend", FAST)
def test_depth_to_disparity_matches_closed_form_and_gradient(backend):
    depth = torch.rand(3, 17, 19, dtype=torch.float64).float() * 5 + 0.1
    depth[0, :3] = -1.0
    x = depth.clone().requires_grad_(True)
    with rk.use_backend(backend):
        disp, valid = rk.depth_to_disparity(x)
    torch.testing.assert_close(disp[valid], 1.0 / depth[valid])
    g = torch.randn_like(disp)
    disp.backward(g)
    expected = torch.where(valid, -g / depth**2, 0.0)
    assert_parity(x.grad, expected, name="grad")


# ----------------------------------------------------------------------------- normalize: parity

CASES = [  # (shape, per)
    ((2, 5, 37, 41), "frame"),
    ((3, 7, 11), "frame"),
    ((2, 5, 19, 23), "clip"),
    ((1, 3, 4, 9, 5), "clip"),
]


@pytest.mark.parametrize("backend", ["reference", *FAST])  # reference: its hand-written backward
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_ID.get)
@pytest.mark.parametrize("shape,per", CASES, ids=lambda c: "x".join(map(str, c)) if isinstance(c, tuple) else c)
def test_normalize_parity_forward_backward(backend, dtype, shape, per):
    d, valid = random_disparity(shape, dtype)
    d = noncontiguous(d)
    x_ref = d.detach().clone().requires_grad_(True)
    ref = normalize_disparity_reference(x_ref, valid, per)
    x = d.detach().clone().requires_grad_(True)
    with rk.use_backend(backend):
        out = rk.normalize_disparity(x, valid, per)
    for name, a, b in zip(("normalized", "shift", "scale"), out, ref):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert_parity(a, b, dtype=dtype, name=name)
    grads = [torch.randn_like(t) for t in ref]
    torch.autograd.backward(ref, grads)
    with rk.use_backend(backend):
        torch.autograd.backward(out, grads)
    assert_parity(x.grad, x_ref.grad, dtype=dtype, name="grad")
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("per", ["frame", "clip"])
def test_normalize_signed_values(backend, per):
    """Mixed-sign values (any affine-invariant quantity) with an explicit mask: exercises the
    negative-float branch of the radix keys."""
    d = torch.randn(2, 3, 15, 13) * 3
    valid = torch.rand(d.shape) > 0.1
    x_ref, x = d.clone().requires_grad_(True), d.clone().requires_grad_(True)
    ref = normalize_disparity_reference(x_ref, valid, per)
    with rk.use_backend(backend):
        out = rk.normalize_disparity(x, valid, per)
    for a, b in zip(out, ref):
        assert_parity(a, b)
    assert (ref[1] < 0).any() or (ref[1] > 0).any()
    grads = [torch.randn_like(t) for t in ref]
    torch.autograd.backward(ref, grads)
    with rk.use_backend(backend):
        torch.autograd.backward(out, grads)
    assert_parity(x.grad, x_ref.grad, name="grad")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("kind", ["invalid", "constant"])
def test_degenerate_whole_clip(backend, kind):
    d = torch.exp(torch.randn(2, 3, 6, 7))
    valid = torch.ones(d.shape, dtype=torch.bool)
    if kind == "invalid":
        valid[1] = False
    else:
        d[1] = 2.5
    x = d.clone().requires_grad_(True)
    with rk.use_backend(backend):
        out, shift, scale = rk.normalize_disparity(x, valid, per="clip")
    ref = normalize_disparity_reference(d, valid, per="clip")
    for a, b in zip((out, shift, scale), ref):
        assert_parity(a, b)
    assert shift[1] == 0 and scale[1] == 1 and (out[1] == 0).all()
    (out.sum() + shift.sum() + scale.sum()).backward()
    assert torch.isfinite(x.grad).all() and (x.grad[1] == 0).all()


@pytest.mark.parametrize("kind", ["positive-odd", "signed-even", "ties", "invalid", "constant"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_ID.get)
def test_cpp_threaded_single_clip(kind, dtype):
    """Fewer large groups than threads (one clip, per="clip"): the C++ op splits each group
    across threads and selects the median by radix histograms instead of nth_element."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        shape = (1, 3, 241, 227)  # 164k values: above the threaded-path threshold (2**17)
        d = torch.exp(torch.randn(shape) * 1.2)
        valid = torch.rand(shape) > 0.2
        if kind == "positive-odd":  # odd count: one middle value
            if int(valid.sum()) % 2 == 0:
                valid.view(-1)[0] = ~valid.view(-1)[0]
        elif kind == "signed-even":  # even count: the mean of two middle values
            d = torch.randn(shape) * 3
            if int(valid.sum()) % 2:
                valid.view(-1)[0] = ~valid.view(-1)[0]
        elif kind == "ties":
            d = torch.randint(-3, 4, shape).float() * 0.5  # few distinct values, many ties
        elif kind == "invalid":
            valid[:] = False
        else:
            d[:] = 1.5
        d = d.to(dtype)
        x_ref, x = d.clone().requires_grad_(True), d.clone().requires_grad_(True)
        ref = normalize_disparity_reference(x_ref, valid, "clip")
        with rk.use_backend("cpp"):
            out = rk.normalize_disparity(x, valid, "clip")
        for a, b in zip(out, ref):
            assert_parity(a, b, dtype=dtype)
        if kind == "positive-odd":
            assert int(valid.sum()) % 2 == 1
        grads = [torch.randn_like(t) for t in ref]
        torch.autograd.backward(ref, grads)
        with rk.use_backend("cpp"):
            torch.autograd.backward(out, grads)
        assert_parity(x.grad, x_ref.grad, dtype=dtype, name="grad")
    finally:
        torch.set_num_threads(old)


def test_float64_runs_on_the_reference_in_float64():
    d = torch.exp(torch.randn(2, 3, 9, 8, dtype=torch.float64))
    valid = torch.rand(d.shape) > 0.2
    with rk.use_backend("auto"):
        out = rk.normalize_disparity(d, valid)
    ref = normalize_disparity_reference(d, valid)
    assert out[0].dtype == torch.float64
    torch.testing.assert_close(out[0], ref[0], rtol=1e-12, atol=1e-12)
    x = d.clone().requires_grad_(True)
    torch.autograd.gradcheck(lambda t: rk.normalize_disparity(t, valid)[0], (x,), eps=1e-7,
                             atol=1e-5)
    for backend in FAST:
        with rk.use_backend(backend), pytest.raises(rk.BackendUnavailableError, match="float64"):
            rk.normalize_disparity(d, valid)


@pytest.mark.parametrize("backend", FAST)
def test_normalize_default_valid_and_nonfinite(backend):
    d, _ = random_disparity((2, 3, 13, 17))
    d[0, 2, :4] = torch.tensor([math.nan, math.inf, -math.inf, 0.0]).repeat(17, 1).T[:4]
    ref = normalize_disparity_reference(d, None)
    with rk.use_backend(backend):
        out = rk.normalize_disparity(d)
    for a, b in zip(out, ref):
        assert_parity(a, b)
    assert torch.isfinite(out[0]).all()


@pytest.mark.parametrize("backend", FAST)
def test_normalize_deterministic(backend):
    d, valid = random_disparity((3, 2, 31, 29))
    with rk.use_backend(backend):
        a = rk.normalize_disparity(d, valid, "clip")
        b = rk.normalize_disparity(d, valid, "clip")
    for x, y in zip(a, b):
        assert torch.equal(x, y)


# ----------------------------------------------------------------------------- normalize: semantics

@pytest.mark.parametrize("backend", ["reference", *FAST])
@pytest.mark.parametrize("n", [1, 2, 7, 10, 257])
def test_median_matches_numpy_for_odd_and_even_counts(backend, n):
    values = torch.exp(torch.randn(4, n))
    valid = torch.ones_like(values, dtype=torch.bool)
    with rk.use_backend(backend):
        _, shift, scale = rk.normalize_disparity(values.view(4, 1, n), valid.view(4, 1, n))
    med = np.median(values.numpy(), axis=1)
    mad = np.abs(values.numpy() - med[:, None]).mean(axis=1)
    expect_ok = mad > 0
    np.testing.assert_allclose(shift.numpy(), np.where(expect_ok, med, 0), rtol=1e-6)
    np.testing.assert_allclose(scale.numpy(), np.where(expect_ok, mad, 1), rtol=1e-5)


@pytest.mark.parametrize("backend", ["reference", *FAST])
def test_normalized_has_median_zero_and_mad_half(backend):
    d, valid = random_disparity((2, 4, 33, 35))
    with rk.use_backend(backend):
        out, shift, scale = rk.normalize_disparity(d, valid)
    for b in range(2):
        for t in range(2, 4):
            vals = out[b, t][valid[b, t]].double().numpy()
            assert abs(np.median(vals)) < 1e-6
            assert abs(np.abs(vals - np.median(vals)).mean() - 0.5) < 1e-5
            assert (out[b, t][~valid[b, t]] == 0).all()


@pytest.mark.parametrize("backend", ["reference", *FAST])
def test_degenerate_groups_give_zero_shift_unit_scale(backend):
    d, valid = random_disparity((2, 3, 8, 9))
    x = d.clone().requires_grad_(True)
    with rk.use_backend(backend):
        out, shift, scale = rk.normalize_disparity(x, valid)
        (out.square().sum() + shift.sum() + scale.sum()).backward()
    for t in (0, 1):  # constant frame, wholly invalid frame
        assert (shift[:, t] == 0).all() and (scale[:, t] == 1).all()
        assert (out[:, t] == 0).all() and (x.grad[:, t] == 0).all()
    assert torch.isfinite(x.grad).all() and (scale[:, 2] != 1).all()


@pytest.mark.parametrize("backend", ["reference", *FAST])
@pytest.mark.parametrize("per", ["frame", "clip"])
def test_denormalize_is_exact_inverse_on_valid_pixels(backend, per):
    d, valid = random_disparity((2, 4, 15, 16))
    with rk.use_backend(backend):
        out, shift, scale = rk.normalize_disparity(d, valid, per)
    back = rk.denormalize_disparity(out, shift, scale, valid)
    ok = valid.clone()
    ok[:, :2] = False  # degenerate frames are not invertible by design
    if per == "clip":
        ok = valid
    torch.testing.assert_close(back[ok], d[ok], rtol=2e-6, atol=1e-6)
    assert (back[~valid] == 0).all()


def test_gradient_matches_finite_differences():
    d = torch.exp(torch.randn(2, 1, 5, 7, dtype=torch.float64))
    valid = torch.rand(d.shape) > 0.2
    def f(x):
        out, shift, scale = normalize_disparity_reference(x, valid)
        return (out * torch.linspace(-1, 2, out.numel(), dtype=x.dtype).view(out.shape)).sum() \
            + 0.3 * shift.sum() - 0.7 * scale.sum()
    torch.autograd.gradcheck(f, (d.requires_grad_(True),), eps=1e-7, atol=1e-5)


def test_tied_median_gradient_is_shared_equally():
    d = torch.tensor([[1.0, 2.0, 2.0, 2.0, 5.0]])
    valid = torch.ones_like(d, dtype=torch.bool)
    grads = {}
    for backend in ["reference", *FAST]:
        x = d.clone().view(1, 1, 5).requires_grad_(True)
        with rk.use_backend(backend):
            _, shift, _ = rk.normalize_disparity(x, valid.view(1, 1, 5))
            shift.sum().backward()
        grads[backend] = x.grad.view(-1)
    torch.testing.assert_close(grads["reference"], torch.tensor([0, 1 / 3, 1 / 3, 1 / 3, 0]))
    for backend in FAST:
        torch.testing.assert_close(grads[backend], grads["reference"])


# ----------------------------------------------------------------------------- real data

def test_real_middlebury_pair():
    skimage_data = pytest.importorskip("skimage.data")
    _, _, disp = skimage_data.stereo_motorcycle()
    disp = torch.from_numpy(np.ascontiguousarray(disp, dtype=np.float32))[::2, ::2].contiguous()
    assert torch.isinf(disp).any(), "the pair's ground truth should have inf holes"
    clip = torch.stack([disp[:, i:i + 200] for i in (0, 17, 40)])  # a crop-pan clip (3, H, 200)
    ref = normalize_disparity_reference(clip, None, "clip")
    for backend in FAST:
        with rk.use_backend(backend):
            out = rk.normalize_disparity(clip, per="clip")
        for a, b in zip(out, ref):
            assert_parity(a, b)
    valid = torch.isfinite(clip) & (clip > 0)
    vals = ref[0][valid].double()
    assert abs(vals.median().item()) < 1e-3 and abs((vals - vals.median()).abs().mean() - 0.5) < 1e-3


# ----------------------------------------------------------------------------- alignment, metrics

@pytest.mark.parametrize("per", ["frame", "clip", "all"])
def test_align_scale_shift_recovers_affine_and_matches_lstsq(per):
    pred = torch.rand(2, 3, 9, 11) + 0.1
    valid = torch.rand(pred.shape) > 0.3
    target = 2.5 * pred - 0.3 + 0.01 * torch.randn_like(pred)
    aligned, s, t = rk.align_scale_shift(pred, target, valid, per=per)
    groups = {"frame": pred.reshape(6, -1), "clip": pred.reshape(2, -1), "all": pred.reshape(1, -1)}[per]
    tg = target.reshape(groups.shape)
    vg = valid.reshape(groups.shape)
    for i in range(groups.shape[0]):
        a = np.stack([groups[i][vg[i]].numpy(), np.ones(int(vg[i].sum()))], 1)
        sol = np.linalg.lstsq(a.astype(np.float64), tg[i][vg[i]].numpy().astype(np.float64), rcond=None)[0]
        assert abs(s.reshape(-1)[i].item() - sol[0]) < 1e-4 and abs(t.reshape(-1)[i].item() - sol[1]) < 1e-4
    assert abs(s.mean().item() - 2.5) < 0.05


def test_align_degenerate_groups():
    pred = torch.ones(2, 4, 4)
    target = torch.rand(2, 4, 4)
    valid = torch.ones(2, 4, 4, dtype=torch.bool)
    valid[1] = False
    _, s, t = rk.align_scale_shift(pred, target, valid, per="frame")
    assert s[0] == 0 and torch.isclose(t[0], target[0].mean())
    assert s[1] == 1 and t[1] == 0


def test_abs_rel_and_delta1_match_numpy():
    gt = torch.rand(2, 3, 10, 12) * 10 + 0.5
    pred = gt * torch.exp(0.3 * torch.randn_like(gt))
    valid = torch.rand(gt.shape) > 0.25
    p, g, v = pred.numpy(), gt.numpy(), valid.numpy()
    ar = np.abs(p - g) / g
    ratio = np.maximum(p / g, g / p)
    np.testing.assert_allclose(rk.abs_rel(pred, gt, valid, per="all").item(), ar[v].mean(), rtol=1e-5)
    np.testing.assert_allclose(rk.delta1(pred, gt, valid, per=None).item(), (ratio[v] < 1.25).mean(),
                               rtol=1e-6)
    default = rk.abs_rel(pred, gt, valid)  # per clip
    np.testing.assert_allclose(default.numpy(), [ar[b][v[b]].mean() for b in range(2)], rtol=1e-5)
    per_clip = rk.abs_rel(pred, gt, valid, per="clip")
    np.testing.assert_allclose(per_clip[1].item(), ar[1][v[1]].mean(), rtol=1e-5)
    per_frame = rk.delta1(pred, gt, valid, per="frame")
    assert per_frame.shape == (2, 3)
    np.testing.assert_allclose(per_frame[0, 2].item(), (ratio[0, 2][v[0, 2]] < 1.25).mean(), rtol=1e-6)


def test_metrics_protocol_perfect_prediction_up_to_affine():
    gt_depth = torch.rand(4, 16, 16) * 20 + 1
    gt_disp, valid = rk.depth_to_disparity(gt_depth)
    pred_disp = 0.3 * gt_disp + 0.05  # an affine-invariant prediction
    aligned, _, _ = rk.align_scale_shift(pred_disp, gt_disp, valid, per="clip")
    pred_depth = 1.0 / aligned
    assert rk.abs_rel(pred_depth, gt_depth, valid).item() < 1e-5
    assert rk.delta1(pred_depth, gt_depth, valid).item() == 1.0


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call,match", [
    (lambda: rk.depth_to_disparity(torch.ones(3, 4, dtype=torch.int32)), "depth.*int32"),
    (lambda: rk.depth_to_disparity(torch.ones(3, 4, dtype=torch.complex64)), "depth.*complex64"),
    (lambda: rk.depth_to_disparity(torch.ones(3, 4), min_depth=5, max_depth=1), "min_depth=5"),
    (lambda: rk.depth_to_disparity([1.0, 2.0]), "depth must be a torch.Tensor"),
    (lambda: rk.normalize_disparity(torch.ones(4, dtype=torch.float32)), r"at least 2 dims.*\(4,\)"),
    (lambda: rk.normalize_disparity(torch.ones(4, 5), per="clip"), r"at least 3 dims.*\(4, 5\)"),
    (lambda: rk.normalize_disparity(torch.ones(4, 5), per="video"), "per must be.*'video'"),
    (lambda: rk.normalize_disparity(torch.ones(4, 5, dtype=torch.int64)), "disparity.*int64"),
    (lambda: rk.normalize_disparity(torch.ones(4, 5), torch.ones(4, 6, dtype=torch.bool)), r"valid.*\(4, 6\)"),
    (lambda: rk.normalize_disparity(torch.ones(4, 5), torch.ones(4, 5)), "valid.*torch.float32"),
    (lambda: rk.normalize_disparity(torch.ones(4, 5), torch.ones(4, 5, dtype=torch.bool, device="meta")),
     "valid.*device.*meta"),
    (lambda: rk.denormalize_disparity(torch.ones(2, 4, 5), torch.ones(3), torch.ones(3)), r"shift/scale"),
    (lambda: rk.align_scale_shift(torch.ones(2, 3), torch.ones(2, 4)), "pred and target"),
    (lambda: rk.abs_rel(torch.ones(2, 3), torch.ones(2, 3, dtype=torch.int16)), "gt_depth.*int16"),
    (lambda: rk.abs_rel(torch.ones(2, 3, 4), torch.ones(2, 3, 4), per=["clip"]), r"per must be.*\['clip'\]"),
    (lambda: rk.abs_rel(torch.ones(2, 3, 4), torch.ones(2, 3, 4), per="video"), "per must be.*'video'"),
    (lambda: rk.abs_rel(torch.ones(3, 4), torch.ones(3, 4)), r"pred_depth must have at least 3 dims.*\(3, 4\)"),
    (lambda: rk.abs_rel(torch.ones(2, 3, 4), [1.0]), "gt_depth must be a torch.Tensor"),
    (lambda: rk.abs_rel(torch.ones(2, 3, 4), torch.ones(2, 3, 4), torch.ones(2, 3, 4)), "valid.*torch.float32"),
    (lambda: rk.delta1(torch.ones(2, 3, 4), torch.ones(2, 3, 4), threshold=-1), "threshold.*-1"),
    (lambda: rk.delta1(torch.ones(2, 3, 4), torch.ones(2, 3, 4), threshold=math.nan), "threshold.*nan"),
    (lambda: rk.delta1(torch.ones(2, 3, 4), torch.ones(2, 3, 4), threshold="1.25"), "threshold.*'1.25'"),
    (lambda: rk.delta1(torch.ones(2, 3, 4), torch.ones(2, 3, 4), per=["clip"]), r"per must be.*\['clip'\]"),
    (lambda: rk.depth_to_disparity(torch.ones(3, 4), min_depth="a"), "min_depth.*'a'"),
    (lambda: rk.depth_to_disparity(torch.ones(3, 4), max_depth=[80]), r"max_depth.*\[80\]"),
    (lambda: rk.normalize_disparity(torch.ones(2, 4, 5), per=["clip"]), r"per must be.*\['clip'\]"),
    (lambda: rk.align_scale_shift(torch.ones(2, 3, 4), torch.ones(2, 3, 4), per=["clip"]),
     r"per must be.*\['clip'\]"),
])
def test_bad_input_raises_value_error_naming_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_nan_inf_negative_depth_is_data_not_error():
    depth = torch.tensor([[math.nan, math.inf, -2.0, 0.0, 3.0]])
    disp, valid = rk.depth_to_disparity(depth)
    assert valid.tolist() == [[False, False, False, False, True]]
    assert disp[0, 4] == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------- edge values

NORMALIZE_EDGE = ["top_of_range", "near_max", "squares_overflow", "subnormal", "constant",
                  "signed_zeros", "nan_element", "pos_inf"]


def _check_normalized(out, shift, scale, d, valid, per):
    """Finite everywhere; every non-degenerate group has median 0 and mean |.| 0.5 on its valid
    values (float64 check), 0 elsewhere."""
    for name, t in (("normalized", out), ("shift", shift), ("scale", scale)):
        assert torch.isfinite(t).all(), f"{name} not finite"
    nd = 2 if per == "frame" else 3
    use = (valid if valid is not None else d > 0) & torch.isfinite(d)
    o = out.double().reshape(-1, math.prod(d.shape[-nd:]))
    u = use.reshape(o.shape)
    for row, m, sc in zip(o, u, scale.reshape(-1)):
        assert (row[~m] == 0).all()
        vals = row[m].numpy()
        if sc == 1 and (vals == 0).all():
            continue  # degenerate group
        assert abs(np.median(vals)) < 1e-5, np.median(vals)
        assert abs(np.abs(vals - np.median(vals)).mean() - 0.5) < 1e-4


@pytest.mark.parametrize("backend", ["reference", *FAST])
@pytest.mark.parametrize("case", NORMALIZE_EDGE)
@pytest.mark.parametrize("per", ["frame", "clip"])
def test_normalize_edge_values_finite_and_match_reference(backend, case, per):
    """Values near 3e38 (lo + hi overflowed to shift = scale = inf) and subnormal values (0.5 /
    scale overflowed on cpp and triton) give finite output with median 0 and MAD 0.5."""
    base = torch.exp(torch.randn(2, 3, 9, 11))
    (_, d), = edge_cases(base, names=[case], seed=int(torch.randint(1 << 30, ())))
    valid = torch.rand(d.shape) > 0.2
    for v in (valid, None):
        with rk.use_backend(backend):
            out = rk.normalize_disparity(d, v, per)
        _check_normalized(*out, d, v, per)
        ref = normalize_disparity_reference(d, v, per)
        for name, a, b in zip(("normalized", "shift", "scale"), out, ref):
            assert_parity(a, b, name=f"{case}:{name}")


@pytest.mark.parametrize("backend", ["reference", *FAST])
@pytest.mark.parametrize("values", [
    [3.0e38, 3.1e38, 3.3e38, 3.2e38],   # even count near FLT_MAX: lo + hi overflows float32
    [-3.0e38, -3.0e38, 3.0e38],         # |d - median| overflows float32
    [1e-39, 2e-39, 3e-39, 5e-39],       # subnormal scale: 0.5 / scale overflows float32
    [-2e-39, 1e-40, 3e-39],
], ids=["near-max", "mixed-sign-max", "subnormal", "mixed-sign-subnormal"])
def test_normalize_extreme_groups_exact(backend, values):
    x = torch.tensor(values).view(1, 1, -1)
    valid = torch.ones_like(x, dtype=torch.bool)
    with rk.use_backend(backend):
        out, shift, scale = rk.normalize_disparity(x, valid)
    v = np.array(values, dtype=np.float32).astype(np.float64)
    med = np.float32(np.median(v))
    mad = np.float32(np.abs(v - float(med)).mean())
    assert shift.item() == pytest.approx(float(med), rel=1e-6)
    assert scale.item() == pytest.approx(float(mad), rel=1e-6)
    np.testing.assert_allclose(out.view(-1).double().numpy(), 0.5 * (v - float(med)) / float(mad),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["reference", *FAST])
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_ID.get)
def test_depth_to_disparity_overflowing_disparity_is_invalid(backend, dtype):
    """fp16: a depth of 1e-5 has disparity 1e5 > 65504; it was inf and marked valid."""
    depth = torch.tensor([1e-5, 2e-5, 1e-3, 0.5, 3.0, 1e-30, 1e-39]).to(dtype)
    skip = []
    if backend == "triton" and dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1":
        # the CPU interpreter's bf16 <-> fp32 conversions garble subnormal values (1e-39 reads
        # as 4.4e-39), as inputs and as outputs (1/3e38); on a GPU they are exact and run
        depth = depth[depth.float() >= torch.finfo(torch.bfloat16).smallest_normal]
        skip = ["subnormal", "top_of_range", "near_max"]
    with rk.use_backend(backend):
        disp, valid = rk.depth_to_disparity(depth)
    assert torch.isfinite(disp).all()
    expect = torch.isfinite((1.0 / depth.double()).to(dtype)) & (depth > 0)
    assert valid.tolist() == expect.tolist()
    assert (disp[~valid] == 0).all()
    torch.testing.assert_close(disp[valid].double(), 1.0 / depth[valid].double(), rtol=1e-2, atol=0)
    if dtype == torch.float16:
        assert not valid[0] and valid[2]
    for name, edged in edge_cases(torch.rand(3, 5, 7).to(dtype) + 0.1, skip=skip,
                                  names=["subnormal", "top_of_range", "near_max", "signed_zeros"]):
        with rk.use_backend(backend):
            disp, valid = rk.depth_to_disparity(edged)
        ref_d, ref_v = depth_to_disparity_reference(edged)
        assert torch.isfinite(disp).all(), name
        assert_parity(valid, ref_v, name=f"{name}:valid")
        assert_parity(disp, ref_d, name=f"{name}:disparity")


@pytest.mark.parametrize("per", ["frame", "clip", "all"])
def test_align_scale_shift_huge_predictions_exact_fit(per):
    """Predictions ~1e20 against targets 1..4: the normal equations overflowed float32 (s = 0)."""
    target = torch.tensor([1.0, 2.0, 3.0, 4.0]).repeat(2, 3, 1).view(2, 3, 2, 2)
    pred = (target * 3e19 + 1e20).float()
    aligned, s, t = rk.align_scale_shift(pred, target, per=per)
    torch.testing.assert_close(aligned, target, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, torch.full_like(s, 1 / 3e19), rtol=1e-5, atol=0)
    (_, big), = edge_cases(torch.rand(2, 3, 5, 6) + 0.1, names=["squares_overflow"])
    top = big.double().abs().max().item()
    g = 2.0 - 0.5 * big.double() / top  # exactly affine in big: s = -0.5 / top, t = 2
    aligned, s, t = rk.align_scale_shift(big, g.float(), per="all")
    assert s.item() == pytest.approx(-0.5 / top, rel=1e-5) and t.item() == pytest.approx(2.0, rel=1e-5)
    torch.testing.assert_close(aligned, g.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", [rk.abs_rel, rk.delta1])
def test_metrics_default_is_per_clip_independent_of_the_batch(metric):
    """Two clips evaluated together equal the same clips evaluated apart (the old default pooled
    the pixels of the whole batch)."""
    gt = torch.rand(2, 3, 10, 12) * 10 + 0.5
    pred = gt * torch.exp(0.3 * torch.randn_like(gt))
    valid = torch.rand(gt.shape) > 0.25
    valid[1, :, :5] = False  # clips with different valid counts
    pred[1] *= 1.7
    together = metric(pred, gt, valid)
    apart = torch.stack([metric(pred[i], gt[i], valid[i]) for i in range(2)])
    assert together.shape == (2,)
    torch.testing.assert_close(together, apart, rtol=0, atol=0)
    pooled = metric(pred, gt, valid, per="all")
    assert pooled.shape == () and not torch.isclose(pooled, together.mean())


# ----------------------------------------------------------------------------- C++ mask and select

def _cpp_cases(shape, dtype):
    """Fresh random disparities with the default mask's invalid values (0, negatives, NaN, inf,
    -0.0) as holes, an all-invalid group, a single-valid-pixel group and a two-valid group."""
    d = torch.exp(torch.randn(shape) * 1.5)
    u = torch.rand(shape)
    d[u < 0.06] = 0.0
    d[(u >= 0.06) & (u < 0.08)] = -d[(u >= 0.06) & (u < 0.08)]
    d[(u >= 0.08) & (u < 0.09)] = math.nan
    d[(u >= 0.09) & (u < 0.10)] = math.inf
    d[(u >= 0.10) & (u < 0.11)] = -0.0
    rows = d.view(-1, shape[-1] * shape[-2])
    rows[0] = -1.0                 # no valid pixel
    if rows.shape[0] > 2:
        rows[1] = 0.0
        rows[1, 7] = 2.5           # a single valid pixel (degenerate: scale 0)
        rows[2, :] = math.nan
        rows[2, 3], rows[2, 11] = 1.0, 4.0  # two valid pixels: the mean of both
    return d.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_ID.get)
@pytest.mark.parametrize("shape", [(3, 5, 37, 41), (2, 7, 1, 13), (4, 3, 17, 3)],
                         ids=lambda s: "x".join(map(str, s)))
def test_cpp_mask_built_inside_matches_reference(dtype, shape):
    """valid not given: the C++ op tests finite and > 0 while reading the values (per-group
    radix select), forward and backward, against the reference with the mask built in PyTorch."""
    d = _cpp_cases(shape, dtype)
    x_ref, x = d.clone().requires_grad_(True), d.clone().requires_grad_(True)
    ref = normalize_disparity_reference(x_ref, None, "frame")
    with rk.use_backend("cpp"):
        out = rk.normalize_disparity(x, None, "frame")
    for name, a, b in zip(("normalized", "shift", "scale"), out, ref):
        assert_parity(a, b, dtype=dtype, name=name)
    flat_shift = out[1].reshape(-1)
    assert flat_shift[0] == 0 and out[2].reshape(-1)[0] == 1
    assert flat_shift[1] == 0 and out[2].reshape(-1)[1] == 1  # one valid pixel: degenerate
    assert flat_shift[2] == 2.5                                # two valid: their mean
    grads = [torch.randn_like(t) for t in ref]
    torch.autograd.backward(ref, grads)
    with rk.use_backend("cpp"):
        torch.autograd.backward(out, grads)
    assert_parity(x.grad, x_ref.grad, dtype=dtype, name="grad")
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 9, 64, 1000, 4097])
def test_cpp_radix_select_matches_numpy_median(n):
    """Many odd and even counts, few distinct values (ties across the radix levels), values
    spanning 60 binades and both signs."""
    g = 6
    kinds = [torch.exp((torch.randn(g, n) * 20).clamp(-80, 80)),  # finite: e^80 < 3.4e38
             torch.randn(g, n) * 1e-3,
             torch.randint(-2, 3, (g, n)).float() * 0.25, torch.exp(torch.randn(g, n)) + 1e6]
    for x in kinds:
        valid = torch.rand(g, n) > 0.3
        valid[:, 0] = True
        with rk.use_backend("cpp"):
            _, shift, scale = rk.normalize_disparity(x.view(g, 1, n), valid.view(g, 1, n))
        for i in range(g):
            v = x[i][valid[i]].double().numpy()
            med = float(np.float32(np.median(v)))
            mad = np.abs(v - med).mean()
            if mad == 0 or np.float32(mad) == 0:
                assert shift[i] == 0 and scale[i] == 1
            else:
                assert shift[i].item() == pytest.approx(med, rel=1e-6, abs=1e-30)
                assert scale[i].item() == pytest.approx(mad, rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=DT_ID.get)
def test_cpp_threaded_single_clip_mask_built_inside(dtype):
    """The threaded single-clip path with valid not given, forward and backward."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        d = _cpp_cases((1, 3, 241, 227), dtype)  # 164k values, one group: threaded path
        x_ref, x = d.clone().requires_grad_(True), d.clone().requires_grad_(True)
        ref = normalize_disparity_reference(x_ref, None, "clip")
        with rk.use_backend("cpp"):
            out = rk.normalize_disparity(x, None, "clip")
        for a, b in zip(out, ref):
            assert_parity(a, b, dtype=dtype)
        grads = [torch.randn_like(t) for t in ref]
        torch.autograd.backward(ref, grads)
        with rk.use_backend("cpp"):
            torch.autograd.backward(out, grads)
        assert_parity(x.grad, x_ref.grad, dtype=dtype, name="grad")
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("case", ["top_of_range", "subnormal"])
def test_cpp_threaded_single_clip_edge_values(case):
    """The threaded single-clip path at the float32 limits: finite, equal to the reference."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        (_, d), = edge_cases(torch.exp(torch.randn(1, 3, 241, 227)), names=[case],
                             seed=int(torch.randint(1 << 30, ())))
        valid = torch.rand(d.shape) > 0.2
        for v in (valid, None):
            with rk.use_backend("cpp"):
                out = rk.normalize_disparity(d, v, "clip")
            _check_normalized(*out, d, v, "clip")
            for a, b in zip(out, normalize_disparity_reference(d, v, "clip")):
                assert_parity(a, b, name=case)
    finally:
        torch.set_num_threads(old)


# ----------------------------------------------------------------------------- backends

def test_backend_selection_and_errors(monkeypatch):
    d = torch.rand(2, 4, 4) + 0.1
    with pytest.raises(rk.BackendUnavailableError, match="'cuda' is not implemented for this op"):
        with rk.use_backend("cuda"):
            rk.normalize_disparity(d)
    with pytest.raises(ValueError, match="backend must be one of.*'fast'"):
        with rk.use_backend("fast"):
            pass
    monkeypatch.setenv("RGBD_KERNELS_BACKEND", "bogus")
    with pytest.raises(ValueError, match="RGBD_KERNELS_BACKEND.*'bogus'"):
        rk.get_backend()
    monkeypatch.setenv("RGBD_KERNELS_BACKEND", "reference")
    assert rk.get_backend() == "reference"
    with rk.use_backend("cpp"):
        assert rk.get_backend() == "cpp"
    monkeypatch.delenv("RGBD_KERNELS_BACKEND")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(rk.BackendUnavailableError, match="TRITON_INTERPRET=1"):
        with rk.use_backend("triton"):
            rk.normalize_disparity(d)


def test_auto_uses_cpp_on_cpu(monkeypatch):
    from rgbd_kernels import backend

    assert backend.select_backend("x", torch.device("cpu"), ("cpp", "triton")) == "cpp"
    assert backend.select_backend("x", torch.device("cpu"), ("triton",)) == "reference"


# ----------------------------------------------------------------------------- harness, op checks

def test_poisoned_outputs_make_unwritten_elements_fail():
    buf = _buffers.empty((3, 4), dtype=torch.float32, device=torch.device("cpu"))
    assert torch.isnan(buf).all()
    with pytest.raises(AssertionError, match="unwritten"):
        assert_parity(buf, torch.zeros(3, 4))
    assert tolerance(torch.bfloat16) == 2e-2


@pytest.mark.parametrize("backend", ["reference", *FAST])
def test_opcheck(backend):
    d, valid = random_disparity((2, 3, 6, 7))
    rows, vrows = d.reshape(6, 42), valid.reshape(6, 42)
    with rk.use_backend(backend):
        torch.library.opcheck(_depth_to_disparity_op, (d, 0.1, 10.0))
        for v in (vrows, None):  # None: the default mask (built inside the C++ op)
            torch.library.opcheck(_normalize_rows_op, (rows.clone().requires_grad_(True), v))
            out, stats = _normalize_rows_op(rows, v)
            torch.library.opcheck(_normalize_rows_backward_op,
                                  (torch.randn_like(rows), torch.randn_like(stats), rows, v, stats,
                                   backend))


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_torch_compile_fullgraph(backend):
    d, valid = random_disparity((2, 3, 10, 9))

    def pipeline(depth, valid):
        disp, v = rk.depth_to_disparity(depth, 0.05)
        out, shift, scale = rk.normalize_disparity(disp, v & valid, per="clip")
        return out * 2 + shift[:, None, None, None], scale

    compiler = {"reference": "eager", "cpp": "inductor", "triton": "aot_eager"}[backend]
    compiled = torch.compile(pipeline, fullgraph=True, backend=compiler)
    depth = (1.0 / d).requires_grad_(True)
    with rk.use_backend(backend):
        got = compiled(depth, valid)
        eager = pipeline(depth, valid)
    for a, b in zip(got, eager):
        assert_parity(a, b)
    got[0].sum().backward()
    assert torch.isfinite(depth.grad).all()


# ----------------------------------------------------------------------------- install fallbacks

def test_import_without_compiled_ops_warns_once_and_keeps_other_paths():
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import importlib.abc, sys, warnings
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "rgbd_kernels._C":
                    raise ImportError("simulated: extension not built")
        sys.meta_path.insert(0, Block())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import torch, rgbd_kernels as rk
        msgs = [str(w.message) for w in caught if "rgbd_kernels" in str(w.message)]
        assert len(msgs) == 1 and "simulated: extension not built" in msgs[0], msgs
        status = rk.available_backends("cpu")
        assert status["reference"] is None and "simulated" in status["cpp"], status
        d = torch.rand(2, 5, 6) + 0.1
        out = rk.normalize_disparity(d)  # auto -> reference
        try:
            with rk.use_backend("cpp"):
                rk.normalize_disparity(d)
        except rk.BackendUnavailableError as e:
            assert "simulated" in str(e)
        else:
            raise AssertionError("cpp backend should be unavailable")
        print("OK")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-2000:]


# ----------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_ID.get)
@pytest.mark.parametrize("per", ["frame", "clip"])
def test_gpu_triton_parity(dtype, per):
    d, valid = random_disparity((3, 6, 255, 257), dtype)
    d, valid = d.cuda(), valid.cuda()
    x_ref = d.clone().requires_grad_(True)
    ref = normalize_disparity_reference(x_ref, valid, per)
    x = d.clone().requires_grad_(True)
    out = rk.normalize_disparity(x, valid, per)  # auto -> triton on CUDA
    for a, b in zip(out, ref):
        assert_parity(a, b, dtype=dtype)
    grads = [torch.randn_like(t) for t in ref]
    torch.autograd.backward(ref, grads)
    torch.autograd.backward(out, grads)
    assert_parity(x.grad, x_ref.grad, dtype=dtype, name="grad")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_ID.get)
def test_gpu_depth_to_disparity_parity(backend, dtype):
    from rgbd_kernels import _extension

    if backend == "cuda" and not _extension.CUDA_EXT_AVAILABLE:
        pytest.skip(f"CUDA ops not built: {_extension.CUDA_EXT_ERROR}")
    depth = (torch.rand(4, 9, 301, 257) * 8 - 0.5).to(dtype).cuda()
    depth[0, 0, 0, :5] = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0]).to(dtype)
    ref_d, ref_v = depth_to_disparity_reference(depth, 0.25, 6.0)
    with rk.use_backend(backend):
        disp, valid = rk.depth_to_disparity(depth, 0.25, 6.0)
    assert_parity(valid, ref_v, name="valid")
    assert_parity(disp, ref_d, name="disparity")


@pytest.mark.gpu
def test_gpu_triton_bit_identical_over_repeats():
    d, valid = random_disparity((8, 4, 256, 256))
    d, valid = d.cuda(), valid.cuda()
    first = rk.normalize_disparity(d, valid)
    for _ in range(100):
        again = rk.normalize_disparity(d, valid)
        for a, b in zip(first, again):
            assert torch.equal(a, b)
