"""Flow-matching interpolation and loss: Triton (interpreter on CPU) vs reference, semantics,
gradients, determinism, op checks, bad input."""
import pytest
import torch
import torch.nn.functional as F

import rgbd_kernels as rk
from rgbd_kernels import flow_matching as fm
from rgbd_kernels.flow_matching import (_interpolate_op, _loss_backward_op, _loss_op,
                                        flow_interpolate, flow_interpolate_reference,
                                        flow_matching_loss, flow_matching_loss_reference)
from rgbd_kernels.testing import assert_parity, noncontiguous, tolerance

BACKENDS = ["reference", "triton"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DT_ID = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
         torch.float64: "fp64"}
REDUCTIONS = ["mean", "none", "sum"]
# odd sizes; H*W = 323 >= the per-row mask threshold (one mask value per plane), 5*7 = 35 below
VIDEO = (2, 3, 5, 17, 19)
SMALL_VIDEO = (3, 2, 5, 5, 7)


def shape_id(s):
    return "x".join(map(str, s))


def latents(shape, dtype=torch.float32, noncontig=False):
    out = [torch.randn(shape).to(dtype) for _ in range(3)]
    return [noncontiguous(t) for t in out] if noncontig else out


def frame_mask(batch, frames, all_masked_sample=True):
    """(B, 1, T, 1, 1) bool: random conditioning frames; sample 0 wholly masked out."""
    m = torch.rand(batch, 1, frames, 1, 1) > 0.35
    m[:, :, -1] = True
    if all_masked_sample:
        m[0] = False
    return m


# ----------------------------------------------------------------------------- interpolate

@pytest.mark.parametrize("dtype", DTYPES, ids=DT_ID.get)
@pytest.mark.parametrize("per_frame", [False, True], ids=["t-sample", "t-frame"])
@pytest.mark.parametrize("shape", [VIDEO, SMALL_VIDEO], ids=shape_id)
def test_interpolate_parity_forward_backward(dtype, per_frame, shape):
    x0, noise, _ = latents(shape, dtype, noncontig=True)
    t = torch.rand(shape[0], shape[2]) if per_frame else torch.rand(shape[0])
    args = [a.detach().clone().requires_grad_(True) for a in (x0, noise, t)]
    ref_args = [a.detach().clone().requires_grad_(True) for a in (x0, noise, t)]
    with rk.use_backend("triton"):
        out = flow_interpolate(*args)
    ref = flow_interpolate_reference(*ref_args)
    assert out.dtype == dtype and out.is_contiguous()
    assert_parity(out, ref, name="x_t")
    # closed form in float64 (independent of the reference)
    tv = t.double().reshape(shape[0], 1, -1, 1, 1) if per_frame else t.double().view(-1, 1, 1, 1, 1)
    exact = (1 - tv) * x0.double() + tv * noise.double()
    assert_parity(out.double(), exact, rtol=tolerance(dtype), name="closed form")
    g = torch.randn(shape).to(dtype)
    with rk.use_backend("triton"):
        out.backward(g)
    ref.backward(g)
    for name, a, b in zip(("x0", "noise", "t"), args, ref_args):
        assert_parity(a.grad, b.grad, dtype=dtype if name != "t" else torch.float32, name=name)
        assert a.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(4, 37), (3, 5, 11), (5,), (2, 4, 3, 2)], ids=shape_id)
def test_interpolate_generic_latents(backend, shape):
    x0, noise, _ = latents(shape)
    t = torch.rand(shape[0])
    with rk.use_backend(backend):
        out = flow_interpolate(x0, noise, t)
    tv = t.view((-1,) + (1,) * (len(shape) - 1))
    torch.testing.assert_close(out, (1 - tv) * x0 + tv * noise, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_interpolate_endpoints_and_t_forms(backend):
    b, c, f, h, w = SMALL_VIDEO
    x0, noise, _ = latents(SMALL_VIDEO)
    t = torch.rand(b, f)
    with rk.use_backend(backend):
        assert torch.equal(flow_interpolate(x0, noise, 0.0), x0)
        assert torch.equal(flow_interpolate(x0, noise, torch.ones(b)), noise)
        per_frame = flow_interpolate(x0, noise, t)
        torch.testing.assert_close(flow_interpolate(x0, noise, t.view(b, 1, f, 1, 1)), per_frame)
        per_sample = flow_interpolate(x0, noise, t[:, 2].view(b, 1, 1, 1, 1))
        torch.testing.assert_close(per_sample, flow_interpolate(x0, noise, t[:, 2]))
        torch.testing.assert_close(flow_interpolate(x0, noise, t.double()), per_frame)
    # frame 2 of the per-frame result equals the per-sample result with that frame's t
    torch.testing.assert_close(per_frame[:, :, 2], per_sample[:, :, 2])
    assert not torch.allclose(per_frame[:, :, 1], per_sample[:, :, 1])


def test_interpolate_float64_through_triton():
    x0, noise, _ = latents((2, 3, 4, 5, 6), torch.float64)
    t = torch.rand(2, 4, dtype=torch.float64)
    with rk.use_backend("triton"):
        out = flow_interpolate(x0, noise, t)
    assert_parity(out, flow_interpolate_reference(x0, noise, t), name="x_t fp64")


# ----------------------------------------------------------------------------- loss parity

MASKS = ["none", "frame", "element"]


def make_mask(kind, shape):
    if kind == "none":
        return None
    if kind == "frame":
        return frame_mask(shape[0], shape[2])
    m = torch.rand(shape) > 0.5
    m[0] = False  # an all-masked sample
    return m


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_ID.get)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("weighted", [False, True], ids=["w-none", "w"])
def test_loss_parity_forward_backward(dtype, reduction, mask_kind, weighted):
    shape = VIDEO if mask_kind != "element" else SMALL_VIDEO
    v, x0, noise = latents(shape, dtype, noncontig=mask_kind == "frame")
    weight = torch.rand(shape[0]) + 0.5 if weighted else None
    mask = make_mask(mask_kind, shape)

    # grad_output != 1 (per sample for "none")
    g = torch.rand((shape[0],) if reduction == "none" else ()) + 0.5

    def run(fn):
        ins = [a.detach().clone().requires_grad_(True) for a in (v, x0, noise)]
        w = weight.clone().requires_grad_(True) if weighted else None
        loss = fn(*ins, w, mask, reduction)
        loss.backward(g)
        return loss, [a.grad for a in ins] + ([w.grad] if weighted else [])

    with rk.use_backend("triton"):
        loss, grads = run(flow_matching_loss)
    ref_loss, ref_grads = run(flow_matching_loss_reference)
    assert loss.dtype == torch.float32 and loss.shape == ref_loss.shape
    assert loss.shape == ((shape[0],) if reduction == "none" else ())
    assert_parity(loss, ref_loss, rtol=1e-5, name="loss")
    for name, a, b in zip(("v_pred", "x0", "noise", "weight"), grads, ref_grads):
        assert a.dtype == b.dtype
        assert_parity(a, b, dtype=dtype if name != "weight" else torch.float32, name=name)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0])  # d/dx0 = +d/dv_pred
    torch.testing.assert_close(grads[2], -grads[0])  # d/dnoise = -d/dv_pred
    if mask is not None:  # all-masked sample 0: no loss, no gradient, no NaN
        assert torch.isfinite(loss).all()
        assert (grads[0][0] == 0).all()
        if reduction == "none":
            assert loss[0] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_mean_is_f_mse_loss_on_explicit_target(backend):
    v, x0, noise = latents((3, 4, 3, 11, 13))
    vr = v.clone().requires_grad_(True)
    expected = F.mse_loss(vr, noise - x0)
    expected.backward()
    vv = v.clone().requires_grad_(True)
    with rk.use_backend(backend):
        loss = flow_matching_loss(vv, x0, noise)
        loss.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(vv.grad, vr.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_reductions_definitions(backend):
    """"none": masked mean per sample times weight; "mean": weighted sum over the kept count."""
    shape = (3, 2, 4, 16, 17)
    v, x0, noise = latents(shape)
    mask = frame_mask(3, 4)
    w = torch.tensor([0.5, 2.0, 1.5])
    sq = ((v - (noise - x0)) ** 2).double()
    keep = mask.expand(shape).double()
    sums = (sq * keep).flatten(1).sum(1)
    counts = keep.flatten(1).sum(1)
    with rk.use_backend(backend):
        none = flow_matching_loss(v, x0, noise, w, mask, "none")
        mean = flow_matching_loss(v, x0, noise, w, mask, "mean")
        total = flow_matching_loss(v, x0, noise, w, mask, "sum")
    exp_none = w.double() * sums / counts.clamp_min(1)
    torch.testing.assert_close(none.double(), exp_none, rtol=1e-5, atol=0)
    assert none[0] == 0 and counts[0] == 0
    torch.testing.assert_close(mean.double(), (w.double() * sums).sum() / counts.sum(), rtol=1e-5,
                               atol=0)
    torch.testing.assert_close(total.double(), (w.double() * sums).sum(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss_everything_masked_is_zero_not_nan(backend, reduction):
    v, x0, noise = latents(SMALL_VIDEO)
    v[0, 0, 0, 0, 0] = float("nan")  # masked-out NaNs must not leak
    vv = v.clone().requires_grad_(True)
    mask = torch.zeros(SMALL_VIDEO[0], 1, SMALL_VIDEO[2], 1, 1, dtype=torch.bool)
    with rk.use_backend(backend):
        loss = flow_matching_loss(vv, x0, noise, mask=mask, reduction=reduction)
        loss.sum().backward()
    assert (loss == 0).all()
    assert (vv.grad == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask_shape", [(2, 1, 5, 17, 19), (1, 1, 5, 1, 1), (17, 1), (19,),
                                        (2, 3, 1, 1, 1), (1, 1, 1, 1, 1)], ids=shape_id)
def test_loss_mask_broadcast_forms(backend, mask_shape):
    """Per-row, per-element and scalar-like masks; float masks count nonzero entries."""
    v, x0, noise = latents(VIDEO)
    mask = (torch.rand(mask_shape) > 0.4).float() * torch.rand(mask_shape).add(0.5)
    mask.reshape(-1)[0] = 1.0
    ref = flow_matching_loss_reference(v, x0, noise, mask=mask != 0, reduction="none")
    with rk.use_backend(backend):
        loss = flow_matching_loss(v, x0, noise, mask=mask, reduction="none")
    assert_parity(loss, ref, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_grads_none_unless_requested(backend):
    v, x0, noise = latents(SMALL_VIDEO)
    vv = v.clone().requires_grad_(True)
    with rk.use_backend(backend):
        flow_matching_loss(vv, x0, noise).backward()
        assert vv.grad is not None and x0.grad is None and noise.grad is None
        xx = x0.clone().requires_grad_(True)  # only x0: the fused gradient still feeds it
        flow_matching_loss(v, xx, noise, reduction="sum").backward()
        torch.testing.assert_close(xx.grad, 2 * (v - (noise - x0)), rtol=1e-5, atol=1e-6)
        with torch.no_grad():  # forward only: no gradient buffer
            loss, grad, _ = _loss_op(vv, x0, noise, None, None, "mean", False)
    assert grad.numel() == 0 and torch.isfinite(loss)


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_gradcheck_float64(backend):
    """Analytic gradients (v_pred, x0, noise, weight) against finite differences.

    Both backends share the backward formulas; the Triton run uses gradcheck's fast mode
    (random projections) to keep the interpreter time small.
    """
    shape = (3, 2, 3, 2, 3)
    v, x0, noise = (torch.randn(shape, dtype=torch.float64, requires_grad=True) for _ in range(3))
    w = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_(True)
    mask = frame_mask(3, 3)
    for reduction in REDUCTIONS:
        with rk.use_backend(backend):
            assert torch.autograd.gradcheck(
                lambda a, b, c, d: flow_matching_loss(a, b, c, d, mask, reduction),
                (v, x0, noise, w), eps=1e-6, atol=1e-6, fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_interpolate_gradcheck_float64(backend):
    x0, noise = (torch.randn(2, 3, 4, 2, 3, dtype=torch.float64, requires_grad=True)
                 for _ in range(2))
    t = (torch.rand(2, 4, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    with rk.use_backend(backend):
        assert torch.autograd.gradcheck(flow_interpolate, (x0, noise, t), eps=1e-6, atol=1e-6,
                                        fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_ID.get)
def test_backward_is_free_when_grad_output_is_one(backend, dtype, monkeypatch):
    """The forward's gradient is final for grad_output = 1 (not for float16, which keeps
    2 * err and scales in float32); other grad_outputs cost one scaling pass; repeated
    backward passes (retain_graph) stay correct."""
    calls = []
    real = fm._loss_backward_op
    monkeypatch.setattr(fm, "_loss_backward_op", lambda *a: calls.append(1) or real(*a))
    v, x0, noise = latents(VIDEO, dtype)
    mask = frame_mask(VIDEO[0], VIDEO[2])
    vr = v.clone().requires_grad_(True)
    flow_matching_loss_reference(vr, x0, noise, mask=mask).backward()
    leaf = v.clone().requires_grad_(True)
    with rk.use_backend(backend):
        v_pred = leaf * 1  # a model output (not a leaf), as in training
        loss = flow_matching_loss(v_pred, x0, noise, mask=mask)
        (g1,) = torch.autograd.grad(loss, v_pred, retain_graph=True)
        assert len(calls) == (1 if dtype == torch.float16 else 0)
        assert_parity(g1, vr.grad, name="grad_output 1")
        (g3,) = torch.autograd.grad(loss, v_pred, torch.tensor(-3.0), retain_graph=True)
        assert_parity(g3, -3 * vr.grad, name="grad_output -3")
        loss.backward()
        assert_parity(leaf.grad, vr.grad, name="leaf")
        assert_parity(g1, vr.grad, name="unchanged")
    assert len(calls) == (3 if dtype == torch.float16 else 1)


def test_hand_back_switch_forces_the_scaling_pass(monkeypatch):
    calls = []
    real = fm._loss_backward_op
    monkeypatch.setattr(fm, "_loss_backward_op", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(fm, "HAND_BACK_WHEN_ONE", False)
    v, x0, noise = latents(SMALL_VIDEO)
    vv = v.clone().requires_grad_(True)
    with rk.use_backend("triton"):
        flow_matching_loss(vv, x0, noise, reduction="sum").backward()
    assert calls == [1]
    torch.testing.assert_close(vv.grad, 2 * (v - (noise - x0)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_backward_on_a_leaf_is_right_or_fails_loudly(backend):
    """The documented caveat: if autograd stole the handed-back buffer as the leaf's .grad and
    accumulated into it in place, the second backward raises; it never returns a wrong
    gradient."""
    v, x0, noise = latents(SMALL_VIDEO)
    vv = v.clone().requires_grad_(True)
    with rk.use_backend(backend):
        loss = flow_matching_loss(vv, x0, noise)
        loss.backward(retain_graph=True)
        first = vv.grad.clone()
        try:
            loss.backward()
        except RuntimeError as e:
            assert "modified by an inplace operation" in str(e)
        else:
            torch.testing.assert_close(vv.grad, 2 * first)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 3, 4, 5, 6), (2, 0), (2, 3, 0, 5, 6), (3,)], ids=shape_id)
def test_empty_and_degenerate_shapes(backend, shape):
    x0, noise, v = latents(shape)
    for reduction in REDUCTIONS:
        vv = v.clone().requires_grad_(True)
        with rk.use_backend(backend):
            loss = flow_matching_loss(vv, x0, noise, reduction=reduction)
            loss.sum().backward()
            out = flow_interpolate(x0, noise, torch.rand(shape[0]))
        assert torch.isfinite(loss).all() and loss.shape == ((shape[0],) if reduction == "none"
                                                             else ())
        ref = flow_matching_loss_reference(v, x0, noise, reduction=reduction)
        torch.testing.assert_close(loss.detach(), ref)
        assert vv.grad.shape == shape and out.shape == shape
    if x0.numel() == 0:
        assert flow_matching_loss(v, x0, noise) == 0


@pytest.mark.parametrize("mask_kind", MASKS)
def test_loss_deterministic_bit_identical(mask_kind):
    shape = (2, 3, 5, 37, 41)  # several blocks a row, many partials
    v, x0, noise = latents(shape, torch.bfloat16)
    mask = make_mask(mask_kind, shape)
    results = []
    for _ in range(3):
        vv = v.clone().requires_grad_(True)
        with rk.use_backend("triton"):
            loss = flow_matching_loss(vv, x0, noise, mask=mask)
            loss.backward()
        results.append((loss, vv.grad))
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])


# ----------------------------------------------------------------------------- op checks, compile

@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    x0, noise, v = latents((2, 3, 4, 5, 6))
    mask = frame_mask(2, 4, all_masked_sample=False)
    weight = torch.rand(2) + 0.5
    with rk.use_backend(backend):
        torch.library.opcheck(_interpolate_op, (x0.requires_grad_(True), noise, torch.rand(2)))
        torch.library.opcheck(_interpolate_op, (x0, noise.requires_grad_(True), torch.rand(2, 4)))
        for reduction in REDUCTIONS:
            torch.library.opcheck(_loss_op, (v.clone().requires_grad_(True), x0.detach(),
                                             noise.detach(), weight, mask, reduction, True))
        torch.library.opcheck(_loss_op, (v, x0.detach(), noise.detach(), None, None, "mean",
                                         False))
        torch.library.opcheck(_loss_backward_op, (torch.randn(2, 3, 4, 5, 6), torch.rand(2),
                                                  backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph_interpolate(backend):
    x0, noise, _ = latents(SMALL_VIDEO)
    t = torch.rand(SMALL_VIDEO[0], SMALL_VIDEO[2])

    def fn(x0, noise, t):
        return flow_interpolate(x0, noise, t) * 2 - 1

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    xr = x0.clone().requires_grad_(True)
    with rk.use_backend(backend):
        got = compiled(xr, noise, t)
        got.sum().backward()
    expected = fn(x0, noise, t)
    assert_parity(got, expected)
    tv = t.view(SMALL_VIDEO[0], 1, SMALL_VIDEO[2], 1, 1)
    torch.testing.assert_close(xr.grad, (2 * (1 - tv)).expand(SMALL_VIDEO))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph_loss(backend):
    v, x0, noise = latents(VIDEO)
    mask = frame_mask(VIDEO[0], VIDEO[2])
    w = torch.rand(VIDEO[0]) + 0.5

    def step(v, x0, noise, w, mask):
        x_t = flow_interpolate(x0, noise, 0.3, check_range=False)
        return flow_matching_loss(v + 0.1 * x_t, x0, noise, w, mask) * 3.0

    # inductor here (both ops inside one graph), aot_eager for the interpolate test
    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    vc = v.clone().requires_grad_(True)
    ve = v.clone().requires_grad_(True)
    with rk.use_backend(backend):
        got = compiled(vc, x0, noise, w, mask)
        got.backward()
        expected = step(ve, x0, noise, w, mask)
        expected.backward()
    assert_parity(got, expected)
    assert_parity(vc.grad, ve.grad)


# ----------------------------------------------------------------------------- bad input, backends

V = torch.randn(2, 3, 4, 5, 6)


@pytest.mark.parametrize("call,match", [
    (lambda: flow_interpolate(V, V[:, :2], torch.rand(2)), r"noise.*shape.*\(2, 2, 4, 5, 6\)"),
    (lambda: flow_interpolate(V, V.double(), torch.rand(2)), "noise.*dtype.*float64"),
    (lambda: flow_interpolate(V, V.to("meta"), torch.rand(2)), "noise.*device.*meta"),
    (lambda: flow_interpolate(V.int(), V.int(), torch.rand(2)), "x0.*int32"),
    (lambda: flow_interpolate(V, V, torch.rand(3)), r"t must have shape.*\(3,\)"),
    (lambda: flow_interpolate(V, V, torch.rand(2, 5)), r"t must have shape.*\(2, 5\)"),
    (lambda: flow_interpolate(V, V, torch.tensor([0.5, 1.5])), r"t must be in \[0, 1\].*1.5"),
    (lambda: flow_interpolate(V, V, torch.tensor([float("nan"), 0.5])), r"t must be in \[0, 1\]"),
    (lambda: flow_interpolate(V, V, -0.1), r"t must be in \[0, 1\]"),
    (lambda: flow_interpolate(V, V, torch.tensor([1, 0])), "t.*int64"),
    (lambda: flow_interpolate(V, V, torch.rand(2, device="meta")), "t must be on.*meta"),
    (lambda: flow_matching_loss(V, V, V[..., :5]), r"noise.*shape.*\(2, 3, 4, 5, 5\)"),
    (lambda: flow_matching_loss(V, V.half(), V), "x0.*dtype.*float16"),
    (lambda: flow_matching_loss(V.to("meta"), V, V), "x0.*device"),
    (lambda: flow_matching_loss(V, V, V, reduction="avg"), "reduction.*'avg'"),
    (lambda: flow_matching_loss(V, V, V, weight=torch.rand(3)), r"weight.*\(2,\).*\(3,\)"),
    (lambda: flow_matching_loss(V, V, V, weight=torch.ones(2, dtype=torch.int64)), "weight.*int64"),
    (lambda: flow_matching_loss(V, V, V, mask=torch.ones(2, 1, 5, 1, 1, dtype=torch.bool)),
     r"mask of shape \(2, 1, 5, 1, 1\).*not broadcastable"),
    (lambda: flow_matching_loss(V, V, V, mask=torch.ones(1, 2, 3, 4, 5, 6, dtype=torch.bool)),
     "mask of shape.*not broadcastable"),
    (lambda: flow_matching_loss(V, V, V, mask=[1, 0]), "mask must be a torch.Tensor"),
    (lambda: flow_matching_loss(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0)),
     "v_pred.*batch dim"),
])
def test_bad_input_raises_value_error_naming_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_backend_selection():
    from rgbd_kernels import backend

    assert backend.select_backend("flow_matching_loss", torch.device("cpu"), ("triton",)) \
        == "reference"  # auto never runs the interpreter
    v, x0, noise = latents(SMALL_VIDEO)
    with pytest.raises(rk.BackendUnavailableError, match="'cpp' is not implemented"):
        with rk.use_backend("cpp"):
            flow_matching_loss(v, x0, noise)
    with pytest.raises(rk.BackendUnavailableError, match="'cuda' is not implemented"):
        with rk.use_backend("cuda"):
            flow_interpolate(x0, noise, 0.5)


def test_poisoned_buffers_catch_unwritten_outputs():
    """Every output the Triton path returns is fully written (buffers start as NaN here)."""
    from rgbd_kernels import _buffers

    assert _buffers.poisoning()
    v, x0, noise = latents((3, 2, 3, 3, 3))  # inner 54 < BLOCK: partial blocks only
    with rk.use_backend("triton"):
        loss, grad, stats = _loss_op(v, x0, noise, torch.rand(3), frame_mask(3, 3), "none", True)
        out = _loss_backward_op(grad, torch.rand(3), "triton")
    for t in (loss, grad, stats, out):
        assert torch.isfinite(t).all()
    assert fm._MIN_ROW > 54


# ----------------------------------------------------------------------------- backward backend

@pytest.mark.parametrize("forward,backward", [("triton", "reference"), ("reference", "triton")])
def test_loss_backward_runs_on_the_forward_backend(monkeypatch, forward, backward):
    """The backward scales the gradient on the backend its forward used, even when another
    use_backend is in force at backward time (as causal_conv3d and the disparity ops do)."""
    from rgbd_kernels._triton import flow_matching as tk

    calls = []
    real = tk.scale_rows
    monkeypatch.setattr(tk, "scale_rows", lambda *a: calls.append(1) or real(*a))
    v, x0, noise = latents((2, 3, 4, 5, 6))
    v.requires_grad_(True)
    with rk.use_backend(forward):
        loss = flow_matching_loss(v, x0, noise, reduction="none")
    with rk.use_backend(backward):
        g = torch.rand(2)  # not exactly 1: the backward op runs
        loss.backward(g)
    assert len(calls) == (1 if forward == "triton" else 0)
    v2 = v.detach().clone().requires_grad_(True)
    flow_matching_loss_reference(v2, x0, noise, reduction="none").backward(g)
    assert_parity(v.grad, v2.grad)


# ----------------------------------------------------------------------------- edge values

def test_standard_edge_cases_triton_matches_reference():
    """The standard edge cases of rgbd_kernels.testing in v_pred, x0 or noise: the Triton
    interpolation and loss (each reduction, with its gradient) give the reference's values and
    NaN / inf pattern."""
    from rgbd_kernels.testing import edge_cases

    base = latents(SMALL_VIDEO)
    t = torch.rand(SMALL_VIDEO[0])
    for idx, which in enumerate(("v_pred", "x0", "noise")):
        for name, edged in edge_cases(base[idx]):
            args = list(base)
            args[idx] = edged
            results = {}
            for backend in BACKENDS:
                with rk.use_backend(backend):
                    v = args[0].clone().requires_grad_(True)
                    out = [flow_interpolate(args[1], args[2], t, check_range=False)]
                    for reduction in REDUCTIONS:
                        loss = flow_matching_loss(v, args[1], args[2], reduction=reduction)
                        (g,) = torch.autograd.grad(loss.sum() * 1.5, v)
                        out += [loss, g]
                results[backend] = out
            for i, (a, r) in enumerate(zip(results["triton"], results["reference"])):
                assert_parity(a, r, name=f"{which}:{name}:{i}")
