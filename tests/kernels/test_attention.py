"""Attention: SDPA vs reference parity, layouts, module QK-norm/RoPE, fallbacks, GPU TE checks."""
import math
import warnings

import pytest
import torch

import rgbd_kernels as rk
from rgbd_kernels import dot_product_attention as attn_mod
from rgbd_kernels.dot_product_attention import attention, attention_reference
from rgbd_kernels.nn import Attention
from rgbd_kernels.testing import FP8_TOLERANCE, assert_parity, edge_cases

DT_ID = {torch.float32: "fp32", torch.bfloat16: "bf16"}
TE_MISSING = attn_mod._te() is None


def qkv(b, s_q, s_kv, h, d, dtype, layout="bshd", device="cpu"):
    shape = (lambda s: (b, s, h, d)) if layout == "bshd" else (lambda s: (b, h, s, d))
    return [torch.randn(shape(s), dtype=dtype, device=device).requires_grad_(True)
            for s in (s_q, s_kv, s_kv)]


def naive(q, k, v, causal, scale=None):
    """Loop-free but independent: per-head matmuls in float64, bshd in and out."""
    q64, k64, v64 = (t.double().transpose(1, 2) for t in (q, k, v))
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    w = q64 @ k64.transpose(-1, -2) * scale
    if causal:
        w = w + torch.full_like(w, -math.inf).triu(1)
    return (torch.softmax(w, -1) @ v64).transpose(1, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DT_ID.get)
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("s_q,s_kv,causal", [(37, 37, False), (37, 37, True), (29, 45, False)],
                         ids=["S37", "S37-causal", "S29-KV45"])
def test_sdpa_matches_reference(dtype, d, causal, s_q, s_kv):
    q, k, v = qkv(2, s_q, s_kv, 3, d, dtype)
    ref = attention(q, k, v, backend="reference", causal=causal)
    q2, k2, v2 = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = attention(q2, k2, v2, backend="sdpa", causal=causal)
    assert_parity(out, ref, dtype=dtype, name="out")
    assert_parity(ref.float(), naive(q, k, v, causal).float(), dtype=dtype, name="reference-vs-naive")
    g = torch.randn_like(ref)
    ref.backward(g)
    out.backward(g)
    for name, a, b in (("dq", q2, q), ("dk", k2, k), ("dv", v2, v)):
        assert_parity(a.grad, b.grad, dtype=dtype, name=name)


def test_layout_round_trip_and_scale():
    q, k, v = qkv(2, 17, 17, 4, 64, torch.float32)
    out_bshd = attention(q, k, v, layout="bshd", scale=0.3)
    out_bhsd = attention(*(t.transpose(1, 2) for t in (q, k, v)), layout="bhsd", scale=0.3)
    assert out_bshd.shape == q.shape and out_bhsd.shape == (2, 4, 17, 64)
    torch.testing.assert_close(out_bshd, out_bhsd.transpose(1, 2))
    torch.testing.assert_close(out_bshd.double(), naive(q, k, v, False, 0.3), rtol=1e-5, atol=1e-5)


def test_causal_rows_ignore_future_keys():
    q, k, v = qkv(1, 9, 9, 2, 64, torch.float32)
    out = attention(q, k, v, causal=True).detach()
    v2 = v.detach().clone()
    v2[:, 5:] += 10.0
    out2 = attention(q, k, v2, causal=True)
    torch.testing.assert_close(out[:, :5], out2[:, :5])
    assert not torch.allclose(out[:, 5:], out2[:, 5:])


def test_use_backend_reference_routes_auto_to_reference():
    q, k, v = qkv(1, 8, 8, 2, 64, torch.float32)
    with rk.use_backend("reference"):
        assert attn_mod._resolve("auto", q, False, False) == "reference"
    assert attn_mod._resolve("auto", q, False, False) == "sdpa"


@pytest.mark.parametrize("call,match", [
    (lambda q, k, v: attention(q[0], k, v), "q must be 4-D"),
    (lambda q, k, v: attention(q, k, v, layout="sbhd"), "layout.*'sbhd'"),
    (lambda q, k, v: attention(q, k[:, :, :1], v[:, :, :1]), "agree on batch, heads"),
    (lambda q, k, v: attention(q, k[:, :5], v), "k and v must have the same shape"),
    (lambda q, k, v: attention(q, k.double(), v), "k must match q's dtype"),
    (lambda q, k, v: attention(q, k[:, :5], v[:, :5], causal=True), "causal=True needs"),
    (lambda q, k, v: attention(q, k, v, scale=-1.0), "scale must be"),
    (lambda q, k, v: attention(q, k, v, backend="cudnn"), "backend must be one of"),
    (lambda q, k, v: attention(q, k, v, backend="sdpa", fp8=True), "fp8=True needs backend"),
    (lambda q, k, v: attention(q.int(), k.int(), v.int()), "floating"),
])
def test_bad_input(call, match):
    q, k, v = (t.detach() for t in qkv(1, 8, 8, 2, 16, torch.float32))
    with pytest.raises(ValueError, match=match):
        call(q, k, v)


@pytest.mark.skipif(not TE_MISSING, reason="transformer-engine is installed")
def test_explicit_missing_backends_name_the_install():
    q, k, v = qkv(1, 8, 8, 2, 64, torch.float32)
    with pytest.raises(rk.BackendUnavailableError, match="transformer-engine is not installed.*pip install"):
        attention(q, k, v, backend="te")
    if attn_mod._flash() is None:
        with pytest.raises(rk.BackendUnavailableError, match="flash-attn is not installed.*pip install"):
            attention(q, k, v, backend="flash")
    with pytest.raises(rk.BackendUnavailableError, match="transformer-engine"):
        Attention(64, 2, te_linear=True)


@pytest.mark.skipif(not TE_MISSING, reason="transformer-engine is installed")
def test_fp8_auto_falls_back_and_warns_once():
    q, k, v = qkv(1, 8, 8, 2, 128, torch.bfloat16)
    attn_mod._warned.clear()
    with pytest.warns(RuntimeWarning, match="fp8=True falls back to sdpa.*transformer-engine"):
        out = attention(q, k, v, fp8=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attention(q, k, v, fp8=True)  # second call: no warning
    assert_parity(out, attention(q, k, v, backend="reference"), dtype=torch.bfloat16)


def test_broken_install_reports_its_import_error(monkeypatch):
    """An installed but unimportable TE (e.g. a CUDA mismatch) says so, with the error."""
    monkeypatch.setattr(attn_mod, "_te", lambda: None)
    monkeypatch.setitem(attn_mod._IMPORT_ERRORS, "transformer_engine.pytorch",
                        "OSError: libcudart.so.13: cannot open shared object file")
    q, k, v = qkv(1, 8, 8, 2, 128, torch.bfloat16)
    with pytest.raises(rk.BackendUnavailableError, match="does not import.*libcudart"):
        attention(q, k, v, backend="te")
    with pytest.raises(rk.BackendUnavailableError, match="does not import"):
        Attention(64, 2, te_linear=True)


def test_module_fp8_needs_te_or_auto_and_context_mask_warns():
    with pytest.raises(ValueError, match="fp8=True needs backend 'te' or 'auto'.*'sdpa'"):
        Attention(64, 2, backend="sdpa", fp8=True)
    cross = Attention(64, 2, context_dim=32, fp8=True)
    attn_mod._warned.clear()
    x, ctx = torch.randn(1, 4, 64), torch.randn(1, 5, 32)
    mask = torch.tensor([[True, True, True, False, False]])
    with pytest.warns(RuntimeWarning, match="context_mask.*not backend='auto' with FP8"):
        out = cross(x, context=ctx, context_mask=mask)
    assert torch.isfinite(out).all()


# ----------------------------------------------------------------------------- the module

def rms(x, w, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate(x):
    """A toy 1-D RoPE on (B, S, H, D): rotates pairs (i, i + D/2) by angle s * f_i."""
    b, s, h, d = x.shape
    f = 1.0 / (100.0 ** (torch.arange(d // 2, dtype=torch.float32) / (d // 2)))
    ang = torch.arange(s, dtype=torch.float32)[:, None] * f[None]
    cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("use_rope", [False, True], ids=["norope", "rope"])
def test_attention_module_matches_plain_reference(cross, use_rope):
    dim, heads, ctx_dim = 96, 3, 40
    m = Attention(dim, heads, context_dim=ctx_dim if cross else None)
    with torch.no_grad():
        m.q_norm.weight.uniform_(0.5, 1.5)
        m.k_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 11, dim)
    ctx = torch.randn(2, 7, ctx_dim) if cross else None
    out = m(x, ctx, rope=rotate if use_rope else None)
    d = dim // heads
    if cross:
        q = (x @ m.q_proj.weight.T).view(2, 11, heads, d)
        k, v = (ctx @ m.kv_proj.weight.T).view(2, 7, 2, heads, d).unbind(2)
    else:
        q, k, v = (x @ m.qkv_proj.weight.T).view(2, 11, 3, heads, d).unbind(2)
    q, k = rms(q, m.q_norm.weight), rms(k, m.k_norm.weight)
    if use_rope:
        q, k = rotate(q), rotate(k)
    expected = naive(q, k, v, False).float().reshape(2, 11, dim) @ m.out_proj.weight.T
    assert_parity(out, expected, rtol=1e-5)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_attention_module_errors():
    with pytest.raises(ValueError, match="not divisible"):
        Attention(100, 3)
    m = Attention(64, 2)
    with pytest.raises(ValueError, match="self-attention block"):
        m(torch.randn(1, 4, 64), torch.randn(1, 3, 64))
    with pytest.raises(ValueError, match="x must be"):
        m(torch.randn(4, 64))
    with pytest.raises(ValueError, match="cross-attention block"):
        Attention(64, 2, context_dim=32)(torch.randn(1, 4, 64))


# ----------------------------------------------------------------------------- GPU (TE)

@pytest.mark.gpu
@pytest.mark.parametrize("fp8", [False, True], ids=["te-bf16", "te-fp8"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_te_matches_reference_on_gpu(fp8, causal):
    if TE_MISSING:
        pytest.skip("transformer-engine not installed")
    if fp8 and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("FP8 attention needs sm90+")
    tol = FP8_TOLERANCE if fp8 else 2e-2
    for draw in range(100):  # every draw: forward and backward parity, no NaN
        q, k, v = qkv(2, 256, 256, 4, 128, torch.bfloat16, device="cuda")
        out = attention(q, k, v, backend="te", causal=causal, fp8=fp8)
        assert torch.isfinite(out).all(), f"draw {draw}: non-finite output"
        ref = attention_reference(*(t.transpose(1, 2) for t in (q, k, v)), causal=causal).transpose(1, 2)
        assert_parity(out, ref, rtol=tol, name=f"draw {draw} out")
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, (q, k, v), g)
        ref_grads = torch.autograd.grad(ref, (q, k, v), g)
        for name, a, b in zip("qkv", grads, ref_grads):
            assert torch.isfinite(a).all(), f"draw {draw}: non-finite d{name}"
            assert_parity(a, b, rtol=tol, name=f"draw {draw} d{name}")


@pytest.mark.gpu
def test_sdpa_matches_reference_on_gpu():
    q, k, v = qkv(2, 333, 333, 4, 128, torch.bfloat16, device="cuda")
    assert_parity(attention(q, k, v, backend="sdpa"), attention(q, k, v, backend="reference"),
                  dtype=torch.bfloat16)


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_key_padding_mask_ignores_masked_keys_and_zeroes_empty_rows(backend):
    q, k, v = (t.detach() for t in qkv(3, 7, 9, 2, 16, torch.float32))
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[0, 5:] = False
    mask[2] = False
    out = attention(q, k, v, key_padding_mask=mask, backend=backend)
    torch.testing.assert_close(out[0], naive(q[:1, :, :, :], k[:1, :5], v[:1, :5], False)[0].float(),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1], naive(q[1:2], k[1:2], v[1:2], False)[0].float(), rtol=1e-5, atol=1e-5)
    assert (out[2] == 0).all()
    k2 = k.clone()
    k2[0, 5:] += 100.0  # changing masked keys changes nothing
    torch.testing.assert_close(attention(q, k2, v, key_padding_mask=mask, backend=backend), out)
    with pytest.raises(ValueError, match="key_padding_mask must be bool"):
        attention(q, k, v, key_padding_mask=mask.float())


# ----------------------------------------------------------------------------- backend honesty

@pytest.mark.parametrize("kernel_backend", ["triton", "cpp", "cuda"])
def test_use_backend_attention_cannot_serve_raises(kernel_backend):
    """use_backend names a kernel backend attention does not have: raise, never run SDPA."""
    q, k, v = (t.detach() for t in qkv(1, 8, 8, 2, 16, torch.float32))
    mask = torch.ones(1, 8, dtype=torch.bool)
    self_attn, cross_attn = Attention(32, 2), Attention(32, 2, context_dim=24)
    x, ctx = torch.randn(1, 5, 32), torch.randn(1, 4, 24)
    with rk.use_backend(kernel_backend):
        for call in (lambda: attention(q, k, v), lambda: attention(q, k, v, causal=True),
                     lambda: attention(q, k, v, key_padding_mask=mask),
                     lambda: self_attn(x),
                     lambda: cross_attn(x, ctx, context_mask=torch.ones(1, 4, dtype=torch.bool))):
            with pytest.raises(rk.BackendUnavailableError,
                               match=f"attention: backend '{kernel_backend}'.*not implemented"):
                call()
        # an explicit backend= argument is the caller's choice and still runs
        assert_parity(attention(q, k, v, backend="sdpa"), attention_reference(
            *(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2))


# ----------------------------------------------------------------------------- edge values

@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("backend", ["auto", "sdpa"])
def test_nan_query_row_gives_nan_row_like_the_reference(backend, layout):
    q, k, v = (t.detach() for t in qkv(2, 7, 9, 3, 16, torch.float32, layout=layout))
    q[(1, 3, 2, 5) if layout == "bshd" else (1, 2, 3, 5)] = float("nan")  # one row of one head
    out = attention(q, k, v, layout=layout, backend=backend)
    ref = attention(q, k, v, layout=layout, backend="reference")
    assert torch.isnan(ref).sum() == 16 and torch.isnan(out).sum() == 16
    assert_parity(out, ref)
    if layout == "bshd":  # the key-padding path, an all-masked sample still gives 0
        mask = torch.ones(2, 9, dtype=torch.bool)
        mask[0] = False
        q[0, 1, 0, 0] = float("nan")
        out = attention(q, k, v, key_padding_mask=mask, backend=backend)
        assert_parity(out, attention(q, k, v, key_padding_mask=mask, backend="reference"))
        assert (out[0] == 0).all() and torch.isnan(out[1, 3, 2]).all()


@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_standard_edge_cases_match_reference(which):
    """Every standard edge case of rgbd_kernels.testing, put into q, k or v: SDPA ("auto" on
    CPU) gives the reference's values and the same NaN / inf pattern. Not "near_max": its
    scores overflow to +-inf (the softmax is undefined), and SDPA's flash-style accumulation of
    unnormalized weights overflows values above max / S_kv where the reference does not."""
    base = [t.detach() for t in qkv(2, 6, 6, 2, 8, torch.float32, layout="bhsd")]
    idx = "qkv".index(which)
    for name, edged in edge_cases(base[idx], skip=["near_max"]):
        args = list(base)
        args[idx] = edged
        for causal in (False, True):
            ref = attention(*args, layout="bhsd", causal=causal, backend="reference")
            out = attention(*args, layout="bhsd", causal=causal)
            assert_parity(out, ref, name=f"{which}:{name}:causal={causal}")


@pytest.mark.parametrize("scale", [math.inf, -math.inf, math.nan, 0.0, True, "0.5"])
def test_non_finite_or_bad_scale_rejected(scale):
    q, k, v = (t.detach() for t in qkv(1, 4, 4, 2, 8, torch.float32))
    with pytest.raises(ValueError, match=r"scale must be a finite positive number.*got"):
        attention(q, k, v, scale=scale)


@pytest.mark.parametrize("call,match", [
    (lambda m, c, x, ctx: m(torch.randn(2, 5, 48)), r"x must be \(B, S, dim=32\).*\(2, 5, 48\)"),
    (lambda m, c, x, ctx: m(x.double()), "x must have the module's dtype torch.float32.*float64"),
    (lambda m, c, x, ctx: m(x, context_mask=torch.ones(2, 5, dtype=torch.bool)),
     "context_mask is for cross-attention"),
    (lambda m, c, x, ctx: c(x, torch.randn(2, 4, 20)),
     r"context must be \(B=2, S_ctx, context_dim=24\).*\(2, 4, 20\)"),
    (lambda m, c, x, ctx: c(x, torch.randn(3, 4, 24)), r"context must be \(B=2.*\(3, 4, 24\)"),
    (lambda m, c, x, ctx: c(x, torch.randn(4, 24)), r"context must be .*\(4, 24\)"),
    (lambda m, c, x, ctx: c(x, ctx.half()), "context must have the module's dtype.*float16"),
    (lambda m, c, x, ctx: c(x, ctx, context_mask=torch.ones(2, 5, dtype=torch.bool)),
     r"context_mask must be bool \(B, S_ctx\) = \(2, 4\).*\(2, 5\)"),
    (lambda m, c, x, ctx: c(x, ctx, context_mask=torch.ones(2, 4)), "context_mask must be bool"),
])
def test_module_bad_input_names_the_argument(call, match):
    m, c = Attention(32, 2), Attention(32, 2, context_dim=24)
    x, ctx = torch.randn(2, 5, 32), torch.randn(2, 4, 24)
    with pytest.raises(ValueError, match=match):
        call(m, c, x, ctx)


def test_module_under_autocast_accepts_mixed_dtypes():
    m = Attention(32, 2)
    x = torch.randn(2, 5, 32, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert out.shape == (2, 5, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(dim=True, heads=1), "dim must be a positive int, got True"),
    (dict(dim=32, heads=2.0), "heads must be a positive int, got 2.0"),
    (dict(dim=32, heads=0), "heads must be a positive int, got 0"),
    (dict(dim=32, heads=2, head_dim=True), "head_dim must be a positive int, got True"),
    (dict(dim=32, heads=2, context_dim="24"), "context_dim must be a positive int, got '24'"),
])
def test_module_constructor_names_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Attention(**kwargs)


def test_flags_must_be_bools():
    q, k, v = (t.detach() for t in qkv(1, 4, 4, 2, 8, torch.float32))
    with pytest.raises(ValueError, match="causal must be a bool, got 'yes'"):
        attention(q, k, v, causal="yes")
    with pytest.raises(ValueError, match="fp8 must be a bool, got 1"):
        attention(q, k, v, fp8=1)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DT_ID.get)
def test_nan_query_row_gives_nan_row_on_gpu(dtype):
    """The NaN restore runs on CPU only: the CUDA SDPA kernels must propagate NaN themselves."""
    q, k, v = (t.detach() for t in qkv(2, 64, 64, 2, 64, dtype, device="cuda"))
    q[1, 3, 1, 5] = float("nan")
    for causal in (False, True):
        out = attention(q, k, v, causal=causal)
        assert_parity(out, attention(q, k, v, causal=causal, backend="reference"), dtype=dtype)
