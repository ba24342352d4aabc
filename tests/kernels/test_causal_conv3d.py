"""Causal conv3d: Triton vs reference (forward and all gradients), Cosmos semantics, causality,
streaming, layouts, bad input, op checks, torch.compile, the nn.Module.

The Triton kernels run on CPU tensors through the interpreter (exact fp32 dots); on a GPU fp32
inputs use tf32 dots, so fp32 parity there is held to TF32_TOLERANCE.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from rgbd_kernels.backend import BackendUnavailableError, use_backend
from rgbd_kernels.causal_conv3d import (_causal_conv3d_op, _dgrad_op, _wgrad_op, causal_conv3d,
                                        causal_conv3d_reference, causal_conv3d_stream,
                                        causal_time_pad)
from rgbd_kernels.nn import CausalConv3d
from rgbd_kernels.testing import TF32_TOLERANCE, assert_parity, noncontiguous, tolerance

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DT_ID = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def fp32_tol() -> float:
    """Exact fp32 dots under the interpreter; tf32 dots on GPUs."""
    return TF32_TOLERANCE if DEVICE.type == "cuda" else tolerance(torch.float32)


def tol(dtype):
    return fp32_tol() if dtype == torch.float32 else tolerance(dtype)


class Case:
    def __init__(self, kernel, stride=1, dilation=1, padding=0, time_pad="replicate", bias=True,
                 act=None, B=2, ci=5, co=7, T=5, H=6, W=5):
        triple = lambda v: (v,) * 3 if isinstance(v, int) else tuple(v)  # noqa: E731
        self.kernel, self.stride, self.dilation = triple(kernel), triple(stride), triple(dilation)
        self.padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
        self.time_pad, self.bias, self.act = time_pad, bias, act
        self.B, self.ci, self.co, self.T, self.H, self.W = B, ci, co, T, H, W

    @property
    def id(self):
        j = lambda t: "".join(map(str, t))  # noqa: E731
        return (f"k{j(self.kernel)}-s{j(self.stride)}-d{j(self.dilation)}-p{j(self.padding)}-"
                f"{self.time_pad}-{'bias' if self.bias else 'nobias'}-{self.act or 'noact'}-"
                f"B{self.B}-C{self.ci}x{self.co}-T{self.T}-H{self.H}-W{self.W}")

    def kwargs(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    time_pad=self.time_pad, activation=self.act)

    def tensors(self, dtype=torch.float32, layout="contiguous"):
        x = torch.randn(self.B, self.ci, self.T, self.H, self.W, device=DEVICE)
        fan_in = self.ci * math.prod(self.kernel)
        w = torch.randn(self.co, self.ci, *self.kernel, device=DEVICE) / math.sqrt(fan_in)
        b = torch.randn(self.co, device=DEVICE) if self.bias else None
        x, w = x.to(dtype), w.to(dtype)
        b = b.to(dtype) if b is not None else None
        return to_layout(x, layout), w, b


def to_layout(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last_3d)
    if layout == "noncontiguous":
        return noncontiguous(x)
    return x.contiguous()


def is_channels_last(t):
    return t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous()


def run_with_grads(fn, x, w, b, g, extra=()):
    leaves = [t.detach().requires_grad_(True) if t is not None else None for t in (x, w, b, *extra)]
    y = fn(*leaves)
    inputs = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(y, inputs, g)
    return y.detach(), grads


def check_parity(case, dtype=torch.float32, layout="contiguous", backend="triton"):
    x, w, b = case.tensors(dtype, layout)
    kw = case.kwargs()
    ref_leaves = [t.detach().requires_grad_(True) if t is not None else None for t in (x, w, b)]
    ref = causal_conv3d_reference(*ref_leaves, **kw)
    g = torch.randn(ref.shape, device=DEVICE).to(dtype)
    ref_grads = torch.autograd.grad(ref, [t for t in ref_leaves if t is not None], g)
    with use_backend(backend):
        y, grads = run_with_grads(lambda x, w, b: causal_conv3d(x, w, b, **kw), x, w, b, g)
    assert y.dtype == dtype
    assert is_channels_last(y) == (layout == "channels_last")
    assert_parity(y, ref, rtol=tol(dtype), name="y")
    for name, got, want in zip(("dx", "dweight", "dbias"), grads, ref_grads):
        assert got.dtype == dtype and got.shape == want.shape, name
        assert_parity(got, want, rtol=tol(dtype), name=name)
    assert is_channels_last(grads[0]) == (layout == "channels_last")
    return y


# ----------------------------------------------------------------------------- parity

KERNEL_CASES = [
    Case((1, 3, 3), padding=1, act="silu", ci=20, co=7, T=5, H=7, W=6),
    Case((3, 1, 1), bias=False, B=1, ci=6, co=9, T=7, H=5, W=3),
    Case((3, 3, 3), padding=1, time_pad="zeros", act="silu", ci=5, co=6, T=5, H=5, W=6),
    Case((3, 3, 3), padding=(1, 0), T=3, H=5, W=4),
    Case((1, 1, 1), B=3, ci=17, co=5, T=3, H=5, W=7),
    Case((4, 4, 4), padding=(1, 2), B=1, ci=3, co=4, T=5, H=5, W=5),
    Case((3, 1, 1), stride=(2, 1, 1), act="silu", T=7, H=3, W=5),             # temporal downsample
    Case((3, 3, 3), stride=(2, 1, 1), time_pad="zeros", padding=1, B=1, T=6, H=4, W=5),
    Case((1, 3, 3), stride=(1, 2, 2), padding=1, ci=4, co=6, T=3, H=9, W=8),  # spatial downsample
    Case((4, 4, 4), stride=2, padding=1, B=1, ci=3, co=5, T=6, H=7, W=6),
    Case((3, 1, 1), dilation=(2, 1, 1), time_pad="zeros", T=7, H=4, W=3),
    Case((3, 3, 3), dilation=(2, 1, 2), padding=(1, 2), act="silu", B=1, T=6, H=5, W=6),
    Case((3, 1, 1), stride=(2, 1, 1), dilation=(2, 1, 1), T=9, H=3, W=3),
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])  # NDHWC: the native layout
@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: c.id)
def test_triton_parity_fp32(case, layout):
    check_parity(case, layout=layout)


DTYPE_CASE = Case((3, 3, 3), padding=1, act="silu", ci=20, co=9, T=4, H=5, W=6)
LAYOUT_CASE = Case((2, 3, 3), stride=(2, 2, 1), padding=(1, 1), time_pad="zeros", B=2, ci=7,
                   co=5, T=5, H=6, W=5)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=DT_ID.get)
def test_triton_parity_dtypes_layouts(dtype, layout):
    check_parity(DTYPE_CASE, dtype, layout)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_triton_parity_strided_layouts_bf16(layout):
    check_parity(LAYOUT_CASE, torch.bfloat16, layout)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=DT_ID.get)
def test_triton_parity_half_without_bias_or_activation(dtype):
    check_parity(Case((1, 3, 3), padding=1, bias=False, ci=18, co=11, T=3, H=5, W=4), dtype,
                 "channels_last")


@pytest.mark.parametrize("case", KERNEL_CASES[:4] + KERNEL_CASES[6:7], ids=lambda c: c.id)
def test_reference_op_backward_matches_autograd(case):
    """The reference backend's closed-form backward (custom dgrad/wgrad ops) vs autograd."""
    check_parity(case, backend="reference")


def test_triton_handles_odd_sizes_without_touching_other_outputs():
    """A single output row/channel and channel counts past one block (C_in = 33, C_out = 35)."""
    check_parity(Case((1, 3, 3), padding=1, B=1, ci=33, co=35, T=1, H=3, W=2))


# ----------------------------------------------------------------------------- Cosmos semantics

class CosmosCausalConv3d(torch.nn.Module):
    """The Cosmos tokenizer's CausalConv3d, re-stated: replicate frame 0 + F.pad + nn.Conv3d."""

    def __init__(self, ci, co, kernel, stride, dilation, padding):
        super().__init__()
        self.time_pad = dilation[0] * (kernel[0] - 1) + (1 - stride[0])
        self.spatial_pad = (padding, padding, padding, padding)
        self.conv3d = torch.nn.Conv3d(ci, co, kernel, stride=stride, dilation=dilation)

    def forward(self, x):
        x_prev = x[:, :, :1, ...].repeat(1, 1, self.time_pad, 1, 1)
        x = torch.cat([x_prev, x], dim=2)
        x = F.pad(x, self.spatial_pad + (0, 0), mode="constant", value=0.0)
        return self.conv3d(x)


@pytest.mark.parametrize("kernel,stride,dilation", [((3, 3, 3), (1, 1, 1), (1, 1, 1)),
                                                    ((3, 1, 1), (2, 1, 1), (1, 1, 1)),
                                                    ((3, 3, 3), (1, 2, 2), (2, 1, 1))])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_matches_cosmos_module(kernel, stride, dilation, backend):
    cosmos = CosmosCausalConv3d(4, 6, kernel, stride, dilation, padding=1).to(DEVICE)
    ours = CausalConv3d(4, 6, kernel, stride=stride, dilation=dilation, padding=1).to(DEVICE)
    ours.load_state_dict({k.removeprefix("conv3d."): v for k, v in cosmos.state_dict().items()})
    x = torch.randn(2, 4, 7, 6, 5, device=DEVICE)
    with use_backend(backend):
        y = ours(x)
    want = cosmos(x)
    assert y.shape == want.shape == (2, 6, 7 // stride[0], *want.shape[3:])
    assert_parity(y, want, rtol=fp32_tol())


def test_zeros_time_pad_is_zero_frames():
    w = torch.randn(3, 2, 3, 1, 1, device=DEVICE)
    x = torch.randn(1, 2, 4, 2, 2, device=DEVICE)
    padded = torch.cat([torch.zeros_like(x[:, :, :2]), x], 2)
    want = F.conv3d(padded, w)
    with use_backend("triton"):
        y = causal_conv3d(x, w, time_pad="zeros")
    assert_parity(y, want, rtol=fp32_tol())
    assert not torch.allclose(y, causal_conv3d_reference(x, w, time_pad="replicate"))


def test_time_pad_formula():
    assert causal_time_pad(3, 1, 1) == 2
    assert causal_time_pad(3, 2, 1) == 1
    assert causal_time_pad(3, 1, 2) == 4
    assert causal_time_pad(4, 2, 1) == 2
    assert causal_time_pad(1, 1, 1) == 0


# ----------------------------------------------------------------------------- causality

@pytest.mark.parametrize("case", [Case((3, 3, 3), padding=1, act="silu", B=1, T=6, H=4, W=4),
                                  Case((3, 1, 1), stride=(2, 1, 1), B=1, T=7, H=3, W=4),
                                  Case((4, 1, 1), dilation=(2, 1, 1), time_pad="zeros", B=1,
                                       T=7, H=3, W=4)], ids=lambda c: c.id)
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_causality(case, backend):
    x, w, b = case.tensors()
    st = case.stride[0]
    with use_backend(backend):
        y = causal_conv3d(x, w, b, **case.kwargs())
        for k in range(case.T):
            x2 = x.clone()
            x2[:, :, k] += torch.randn_like(x2[:, :, k])
            y2 = causal_conv3d(x2, w, b, **case.kwargs())
            safe = k // st  # output j reads frames <= (j+1)*st - 1
            assert torch.equal(y2[:, :, :safe], y[:, :, :safe]), f"frame {k} leaked backwards"
            if safe < y.shape[2]:
                assert not torch.equal(y2[:, :, safe], y[:, :, safe]), f"frame {k} unused"


# ----------------------------------------------------------------------------- streaming

def random_split(T, gen):
    cuts = sorted(torch.randperm(T - 1, generator=gen)[: int(torch.randint(1, T, (1,),
                                                                            generator=gen))] + 1)
    bounds = [0, *[int(c) for c in cuts], T]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


STREAM_CASES = [
    Case((3, 3, 3), padding=1, B=1, ci=4, co=5, T=9, H=4, W=5),
    Case((3, 1, 1), stride=(2, 1, 1), act="silu", B=2, T=11, H=3, W=4),
    Case((4, 3, 3), stride=(3, 1, 1), padding=1, time_pad="zeros", B=1, ci=3, co=4, T=10,
         H=4, W=3),
    Case((3, 1, 1), dilation=(2, 1, 1), stride=(2, 1, 1), B=1, T=9, H=3, W=3),
]


@pytest.mark.parametrize("case", STREAM_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_streaming_equals_whole_video(case, backend):
    x, w, b = case.tensors(layout="channels_last" if backend == "triton" else "contiguous")
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    th, st = causal_time_pad(case.kernel[0], case.stride[0], case.dilation[0]), case.stride[0]
    with use_backend(backend):
        whole = causal_conv3d(x, w, b, **case.kwargs())
        for split in (random_split(case.T, gen), [(t, t + 1) for t in range(case.T)]):
            outs, cache = [], None
            for a, e in split:
                y, cache = causal_conv3d_stream(x[:, :, a:e], w, b, cache=cache, **case.kwargs())
                assert th <= cache.shape[2] <= th + st - 1, cache.shape
                assert is_channels_last(cache) == is_channels_last(x)
                outs.append(y)
            got = torch.cat(outs, dim=2)
            assert got.shape == whole.shape, split
            assert_parity(got, whole, rtol=1e-6, name=f"stream {split}")


def test_streaming_cache_argument_of_causal_conv3d_and_module():
    case = STREAM_CASES[1]
    x, w, b = case.tensors()
    m = CausalConv3d(case.ci, case.co, case.kernel, stride=case.stride, activation="silu")
    m = m.to(DEVICE)
    with torch.no_grad():
        m.weight.copy_(w)
        m.bias.copy_(b)
    with use_backend("triton"):
        whole = m(x)
        y0, cache = m.stream(x[:, :, :3])
        y1 = m(x[:, :, 3:], cache=cache)  # forward with a cache continues the stream
        y1b = causal_conv3d(x[:, :, 3:], w, b, cache=cache, **case.kwargs())
    assert torch.equal(y1, y1b)
    assert_parity(torch.cat([y0, y1], 2), whole, rtol=1e-6)


def test_streaming_gradients_match_whole_video():
    """Backprop through a chunked stream (cache gradients included) equals the whole video's."""
    case = Case((3, 3, 1), stride=(2, 1, 1), padding=(1, 0), act="silu", B=1, T=7, H=3, W=4)
    x, w, b = case.tensors()
    g = torch.randn(1, case.co, 3, 3, 4, device=DEVICE)
    with use_backend("triton"):
        _, whole = run_with_grads(lambda x, w, b: causal_conv3d(x, w, b, **case.kwargs()),
                                  x, w, b, g)

        def streamed(x, w, b):
            outs, cache = [], None
            for a, e in [(0, 2), (2, 3), (3, 7)]:
                y, cache = causal_conv3d_stream(x[:, :, a:e], w, b, cache=cache, **case.kwargs())
                outs.append(y)
            return torch.cat(outs, 2)

        _, got = run_with_grads(streamed, x, w, b, g)
    for name, a, e in zip(("dx", "dweight", "dbias"), got, whole):
        assert_parity(a, e, rtol=fp32_tol(), name=name)


def test_cache_gradient_parity():
    """d cache from the Triton dgrad vs the reference, for a cache that requires grad."""
    case = Case((3, 3, 3), stride=(2, 1, 1), padding=1, B=2, ci=4, co=5, T=4, H=4, W=3)
    x, w, b = case.tensors()
    cache = torch.randn(2, 4, 2, 4, 3, device=DEVICE)  # time_pad 1 .. 1 + stride - 1 = 2 frames
    kw = case.kwargs()
    ref = causal_conv3d_reference(x, w, b, cache=cache, **kw)
    g = torch.randn_like(ref)
    _, want = run_with_grads(lambda x, w, b, c: causal_conv3d_reference(x, w, b, cache=c, **kw),
                             x, w, b, g, extra=(cache,))
    for backend in ("reference", "triton"):
        with use_backend(backend):
            y, got = run_with_grads(lambda x, w, b, c: causal_conv3d(x, w, b, cache=c, **kw),
                                    x, w, b, g, extra=(cache,))
        assert_parity(y, ref, rtol=fp32_tol())
        for name, a, e in zip(("dx", "dweight", "dbias", "dcache"), got, want):
            assert_parity(a, e, rtol=fp32_tol(), name=f"{backend} {name}")


# ----------------------------------------------------------------------------- bad input

def _bad_inputs():
    x = torch.randn(1, 3, 4, 5, 5)
    w = torch.randn(4, 3, 3, 3, 3)
    ok = dict(x=x, weight=w, bias=None, padding=1)
    yield "x-rank", dict(ok, x=x[0]), "x must be 5-D"
    yield "weight-rank", dict(ok, weight=w[0]), "weight must be 5-D"
    yield "cin-mismatch", dict(ok, weight=torch.randn(4, 2, 3, 3, 3)), "C_in"
    yield "kernel-too-big", dict(ok, weight=torch.randn(4, 3, 1, 8, 3)), "kernel larger"
    yield "too-few-frames", dict(ok, x=x[:, :, :1], weight=torch.randn(4, 3, 3, 1, 1),
                                 stride=(2, 1, 1)), "kernel larger"
    yield "int-x", dict(ok, x=x.to(torch.int32)), "x must be a floating"
    yield "int-weight", dict(ok, weight=w.to(torch.int64)), "weight must be a floating"
    yield "bool-x", dict(ok, x=x > 0), "x must be a floating"
    yield "dtype-mismatch", dict(ok, weight=w.double()), "weight must have x's dtype"
    yield "negative-padding", dict(ok, padding=(-1, 1)), "padding"
    yield "zero-stride", dict(ok, stride=0), "stride"
    yield "zero-dilation", dict(ok, dilation=(1, 0, 1)), "dilation"
    yield "padding-3", dict(ok, padding=(1, 1, 1)), "padding"
    yield "stride-past-field", dict(ok, weight=torch.randn(4, 3, 1, 3, 3), stride=(2, 1, 1)), \
        r"stride\[0\]"
    yield "bias-shape", dict(ok, bias=torch.randn(3)), "bias"
    yield "time-pad", dict(ok, time_pad="reflect"), "time_pad"
    yield "activation", dict(ok, activation="gelu"), "activation"
    yield "cache-frames", dict(ok, cache=torch.randn(1, 3, 3, 5, 5)), "cache must hold"
    yield "cache-shape", dict(ok, cache=torch.randn(1, 3, 2, 4, 5)), "cache must be"
    yield "not-tensor", dict(ok, x=[1.0]), "x must be a torch.Tensor"
    yield "groups-cin", dict(ok, weight=torch.randn(4, 2, 3, 3, 3), groups=2), "C_in"
    yield "groups-cout", dict(ok, x=torch.randn(1, 6, 4, 5, 5), weight=torch.randn(4, 2, 3, 3, 3),
                              groups=3), "C_out=4 must be divisible by groups=3"
    yield "groups-zero", dict(ok, groups=0), "groups must be a positive int"


@pytest.mark.parametrize("kwargs,match", [(k, m) for _, k, m in _bad_inputs()],
                         ids=[name for name, _, _ in _bad_inputs()])
@pytest.mark.parametrize("fn", [causal_conv3d, causal_conv3d_stream, causal_conv3d_reference],
                         ids=["conv", "stream", "reference"])
def test_bad_input_raises_value_error(fn, kwargs, match):
    if fn is not causal_conv3d and match == "kernel larger" and "stride" in kwargs:
        # streaming (and the reference it is checked against) accept a chunk shorter than the
        # stride: it completes no output frame and its frames go to the cache
        out = fn(**kwargs)
        y = out[0] if isinstance(out, tuple) else out
        assert y.shape[2] == 0
        if isinstance(out, tuple):
            assert out[1].shape[2] == 1 + 1  # time_pad 1 + the pending frame
        return
    with pytest.raises(ValueError, match=match):
        fn(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(padding=(1, 1, 1)), "padding\\[0\\]"), (dict(groups=3), "divisible by groups=3"),
    (dict(groups=0), "groups must be a positive int"),
    (dict(padding_mode="reflect"), "padding_mode"), (dict(time_pad="circular"), "time_pad"),
    (dict(stride=(3, 1, 1), kernel_size=(2, 3, 3)), "stride"), (dict(padding=-1), "padding"),
    (dict(padding="same"), "padding"),
    # a bool is not an int here (CausalConv3d(True, 3, 3) used to build a 1-channel conv)
    (dict(in_channels=True), "in_channels must be a positive int, got True"),
    (dict(out_channels=False), "out_channels must be a positive int, got False"),
    (dict(kernel_size=True), "kernel_size must be an int or a tuple of 3 ints, got True"),
    (dict(stride=(1, True, 1)), "stride must be an int or a tuple of 3 ints"),
    (dict(groups=True), "groups must be a positive int, got True"),
    (dict(in_channels=4.0), "in_channels must be a positive int, got 4.0")])
def test_module_bad_arguments(kwargs, match):
    args = dict(in_channels=4, out_channels=4, kernel_size=3) | kwargs
    with pytest.raises(ValueError, match=match):
        CausalConv3d(**args)


class GroupedCosmosConv(torch.nn.Module):
    """Replicate frame 0 + F.pad + a grouped nn.Conv3d: the grouped semantics, re-stated."""

    def __init__(self, conv: torch.nn.Conv3d, time_pad: int, padding: int):
        super().__init__()
        self.conv, self.time_pad, self.padding = conv, time_pad, padding

    def forward(self, x):
        x = torch.cat([x[:, :, :1].repeat(1, 1, self.time_pad, 1, 1), x], dim=2)
        return self.conv(F.pad(x, (self.padding,) * 4 + (0, 0)))


@pytest.mark.parametrize("groups,ci,co", [(2, 6, 4), (6, 6, 6), (3, 6, 12)],
                         ids=["g2", "depthwise", "g3-multiplier"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_grouped_conv_matches_grouped_conv3d_forward_backward_and_streams(groups, ci, co, layout):
    torch.manual_seed(0)
    ours = CausalConv3d(ci, co, (3, 3, 3), padding=1, groups=groups)
    assert ours.weight.shape == (co, ci // groups, 3, 3, 3) and f"groups={groups}" in repr(ours)
    conv = torch.nn.Conv3d(ci, co, 3, groups=groups)
    conv.load_state_dict(ours.state_dict())
    ref = GroupedCosmosConv(conv, 2, 1)
    x = to_layout(torch.randn(2, ci, 5, 6, 6), layout)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y, want = ours(x1), ref(x2)
    assert_parity(y, want, rtol=fp32_tol())
    assert is_channels_last(y) == (layout == "channels_last")
    g = torch.randn_like(want)
    y.backward(g)
    want.backward(g)
    assert_parity(x1.grad, x2.grad, rtol=fp32_tol(), name="dx")
    assert_parity(ours.weight.grad, conv.weight.grad, rtol=fp32_tol(), name="dweight")
    assert_parity(ours.bias.grad, conv.bias.grad, rtol=fp32_tol(), name="dbias")
    with torch.no_grad():  # streamed in chunks of 2, 1, 2 frames
        cache, parts = None, []
        for a, b in ((0, 2), (2, 3), (3, 5)):
            part, cache = ours.stream(x[:, :, a:b], cache)
            parts.append(part)
        assert_parity(torch.cat(parts, 2), want.detach(), rtol=fp32_tol())
    with use_backend("triton"), pytest.raises(BackendUnavailableError, match="groups=1"):
        ours(x)
    w, b = ours.weight.detach(), ours.bias.detach()
    conf = ([1, 1, 1], [1, 1], [1, 1, 1], "replicate")
    torch.library.opcheck(_causal_conv3d_op, (x.requires_grad_(True), w.requires_grad_(True),
                                              b, None, *conf, "silu", True))


def test_triton_backend_refuses_float64():
    x, w = torch.randn(1, 2, 3, 3, 3, dtype=torch.float64), torch.randn(2, 2, 1, 1, 1).double()
    with use_backend("triton"), pytest.raises(BackendUnavailableError, match="float64"):
        causal_conv3d(x, w)
    with use_backend("reference"):  # float64 runs on the reference in float64
        y = causal_conv3d(x, w)
    assert y.dtype == torch.float64


def test_auto_backend_on_cpu_is_reference(monkeypatch):
    from rgbd_kernels._triton import causal_conv3d as tk

    def boom(*a, **k):
        raise AssertionError("auto ran the Triton kernel on CPU")

    monkeypatch.setattr(tk, "forward", boom)
    x, w, b = Case((3, 3, 3), padding=1, T=3, H=4, W=4).tensors()
    with use_backend("auto"):
        y = causal_conv3d(x, w, b, padding=1)
    assert_parity(y, causal_conv3d_reference(x, w, b, padding=1))


def test_backward_runs_on_the_forwards_backend(monkeypatch):
    """The backend is fixed at forward time: a backward run outside ``use_backend`` (as on
    autograd's CUDA device threads, where the context variable is unset) still uses it."""
    from rgbd_kernels._triton import causal_conv3d as tk

    calls = []
    for name in ("forward", "dgrad", "wgrad"):
        real = getattr(tk, name)
        monkeypatch.setattr(tk, name, lambda *a, _real=real, _name=name, **k:
                            (calls.append(_name), _real(*a, **k))[1])
    case = Case((3, 3, 3), padding=1, act="silu", T=3, H=4, W=4)
    x, w, b = (t.requires_grad_(True) for t in case.tensors())
    with use_backend("triton"):
        y = causal_conv3d(x, w, b, **case.kwargs())
    with use_backend("reference"):
        y.sum().backward()
    assert calls == ["forward", "dgrad", "wgrad"]
    want = [t.grad.clone() for t in (x, w, b)]
    for t in (x, w, b):
        t.grad = None
    calls.clear()
    with use_backend("reference"):
        causal_conv3d(x, w, b, **case.kwargs()).sum().backward()
    assert calls == []
    for got, t in zip(want, (x, w, b)):
        assert_parity(got, t.grad, rtol=fp32_tol())


# ----------------------------------------------------------------------------- op checks

@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(backend, layout):
    x = to_layout(torch.randn(1, 3, 3, 4, 4, device=DEVICE), layout)
    w = torch.randn(4, 3, 3, 3, 1, device=DEVICE)
    b = torch.randn(4, device=DEVICE)
    cache = to_layout(torch.randn(1, 3, 2, 4, 4, device=DEVICE), layout)
    conf = ([1, 1, 1], [1, 0], [1, 1, 1], "replicate")
    with use_backend(backend):
        torch.library.opcheck(_causal_conv3d_op,
                              (x.requires_grad_(True), w.requires_grad_(True),
                               b.requires_grad_(True), None, *conf, "silu", True))
        x, w, b = x.detach(), w.detach(), b.detach()
        torch.library.opcheck(_causal_conv3d_op, (x, w, None, cache, *conf, "none", False))
        y, pre = _causal_conv3d_op(x, w, b, None, *conf, "silu", True)
        g = torch.randn_like(y)
        torch.library.opcheck(_dgrad_op, (g, x, w, None, pre, *conf, "silu", backend))
        torch.library.opcheck(_dgrad_op, (g, x, w, cache, None, *conf, "none", backend))
        torch.library.opcheck(_wgrad_op, (g, x, w, None, pre, *conf, "silu", True, backend))
        torch.library.opcheck(_wgrad_op, (g, x, w, cache, None, *conf, "none", False, backend))


def test_torch_compile_fullgraph():
    case = Case((3, 3, 3), stride=(2, 1, 1), padding=1, act="silu", B=1, ci=4, co=5, T=5, H=4,
                W=4)
    x, w, b = case.tensors(layout="channels_last")
    kw = case.kwargs()

    def pipeline(x, w, b):
        y0, cache = causal_conv3d_stream(x[:, :, :2], w, b, **kw)
        y1 = causal_conv3d(x[:, :, 2:], w, b, cache=cache, **kw)
        return torch.cat([y0, y1], 2) * 2 + causal_conv3d(x, w, b, **kw)

    compiled = torch.compile(pipeline, fullgraph=True, backend="aot_eager")
    g = torch.randn(1, 5, 2, 4, 4, device=DEVICE)
    with use_backend("triton"):
        got_y, got = run_with_grads(compiled, x, w, b, g)
        want_y, want = run_with_grads(pipeline, x, w, b, g)
    assert_parity(got_y, want_y, rtol=1e-6)
    for a, e in zip(got, want):
        assert_parity(a, e, rtol=1e-6)
    assert_parity(want_y, 3 * causal_conv3d_reference(x, w, b, **kw), rtol=fp32_tol())


# ----------------------------------------------------------------------------- nn.Module

def test_module_state_dict_is_conv3d_compatible():
    conv = torch.nn.Conv3d(4, 6, (3, 3, 3), padding=1)
    ours = CausalConv3d(4, 6, (3, 3, 3), padding=1)
    assert list(ours.state_dict()) == ["weight", "bias"]
    ours.load_state_dict(conv.state_dict())
    assert list(CausalConv3d(4, 6, 1, bias=False).state_dict()) == ["weight"]
    assert ours.weight.shape == conv.weight.shape and ours.time_padding == 2
    x = torch.randn(1, 4, 3, 5, 5)
    want = F.conv3d(torch.cat([x[:, :, :1]] * 2 + [x], 2), conv.weight, conv.bias,
                    padding=(0, 1, 1))
    assert_parity(ours(x), want, rtol=1e-5)
    # nn.Conv3d's default initialization scale
    fresh = CausalConv3d(64, 8, 3)
    bound = 1 / math.sqrt(64 * 27)
    assert fresh.weight.abs().max() <= bound and fresh.weight.std() > bound / 4


def test_module_gradients_reach_parameters():
    m = CausalConv3d(3, 4, (3, 3, 3), padding=(0, 1, 1), activation="silu").to(DEVICE)
    x = torch.randn(2, 3, 4, 5, 4, device=DEVICE, requires_grad=True)
    with use_backend("triton"):
        y = m(x)
        y.square().mean().backward()
    w, b = m.weight.detach().requires_grad_(True), m.bias.detach().requires_grad_(True)
    x2 = x.detach().requires_grad_(True)
    causal_conv3d_reference(x2, w, b, padding=(1, 1), activation="silu").square().mean().backward()
    assert_parity(m.weight.grad, w.grad, rtol=fp32_tol())
    assert_parity(m.bias.grad, b.grad, rtol=fp32_tol())
    assert_parity(x.grad, x2.grad, rtol=fp32_tol())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=DT_ID.get)
def test_gpu_parity_tokenizer_shape(dtype):
    """Autotuned kernels on a realistic (if small) tokenizer shape; runs on CUDA only."""
    for case in (Case((1, 3, 3), padding=1, act="silu", B=1, ci=128, co=128, T=9, H=32, W=32),
                 Case((3, 1, 1), B=1, ci=128, co=128, T=9, H=32, W=32),
                 Case((3, 3, 3), stride=(1, 2, 2), padding=1, B=2, ci=64, co=96, T=5, H=33,
                      W=31)):
        for layout in ("channels_last", "contiguous"):
            check_parity(case, dtype, layout)


# ----------------------------------------------------------------------------- edge values

@pytest.mark.parametrize("where", ["x", "weight"])
def test_standard_edge_cases_triton_matches_reference(where):
    """The standard edge cases of rgbd_kernels.testing in x or the weight: Triton forward gives
    the reference's values and NaN / inf pattern (SiLU fused). Not "near_max": products of two
    near-max values overflow in either path, in an order-dependent way."""
    from rgbd_kernels.testing import edge_cases

    x = torch.randn(1, 3, 4, 5, 6, device=DEVICE)
    w = torch.randn(4, 3, 2, 3, 3, device=DEVICE)
    b = torch.randn(4, device=DEVICE)
    base = x if where == "x" else w
    for name, edged in edge_cases(base, skip=["near_max"]):
        xs, ws = (edged, w) if where == "x" else (x, edged)
        kw = dict(padding=1, activation="silu")
        with use_backend("reference"):
            ref = causal_conv3d(xs, ws, b, **kw)
        with use_backend("triton"):
            out = causal_conv3d(xs, ws, b, **kw)
        assert_parity(out, ref, rtol=fp32_tol(), name=f"{where}:{name}")
