"""Causal 3D convolution (Cosmos ``CausalConv3d`` semantics) with a streaming cache.

Semantics, for x (B, C_in, T, H, W) and weight (C_out, C_in, kT, kH, kW):

* time is left-padded with ``time_pad = dilation_t*(kT-1) + (1-stride_t)`` frames: copies of
  frame 0 (``time_pad="replicate"``: Cosmos, LTX, Hunyuan) or zeros (``"zeros"``: Wan);
* ``padding`` = (pH, pW) zero padding of H and W; ``stride`` and ``dilation`` as in ``F.conv3d``;
* the output has ``T // stride_t`` frames, output frame j reads input frames up to
  ``(j+1)*stride_t - 1``: it never sees later frames.

Streaming. View the padded video as one sequence ``S`` of ``time_pad + T`` frames; output frame
j reads ``S[j*stride_t + i*dilation_t]`` for i < kT. Convolving a chunk takes the frames of ``S``
still needed (the *cache*) followed by the chunk, emits every output frame whose inputs are all
present, and keeps as the next cache the frames from the first unconsumed output position on.
The cache therefore holds ``time_pad + r`` trailing frames of ``S`` with
``0 <= r < stride_t`` (r > 0 only when the frames seen so far are not a multiple of
``stride_t``), so **any** chunk split, including chunks shorter than ``stride_t`` (which may
emit no frame), reproduces the whole-video output exactly. The first chunk takes
``cache=None`` (it pads like the whole video). :func:`causal_conv3d_stream` returns
``(y, new_cache)``; :func:`causal_conv3d` with ``cache=`` returns y only.

Paths (``use_backend``):

* ``reference``: F.pad + F.conv3d in float32 math (float64 stays float64); always available.
* ``triton``: implicit-GEMM kernels (``_triton/causal_conv3d.py``) forward, dgrad, wgrad + bias
  grad, on any strides (fast on channels_last_3d / NDHWC); the time padding, the replicated frame
  and the cache are resolved in the address computation (no padded copy). fp32 inputs use tf32
  dots on GPUs (relative error ~1e-3; ``torch.backends.cudnn.conv.fp32_precision = "ieee"``
  switches them to exact fp32); 16-bit inputs accumulate in fp32. CPU tensors run under
  ``TRITON_INTERPRET=1`` only (exact fp32 dots there).
* ``auto``: CPU -> reference. CUDA -> cuDNN (F.conv3d in the input's dtype and layout) unless the
  shape class is listed in :data:`TRITON_FASTER_SHAPES`, filled from GPU benchmarks, so "auto" is
  never slower than the eager reference on a benchmarked shape.

Outputs come back in the layout of x: channels_last_3d when x is channels-last (dense, or a view
such as a time slice of a channels-last video, whose channel dim is innermost), else contiguous.
Grouped convolutions (``groups`` > 1, weight (C_out, C_in / groups, ...), e.g. depthwise) run on
the reference / cuDNN paths; the Triton kernels serve ``groups=1``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from . import _buffers
from ._nvtx import nvtx_range
from .backend import get_backend, select_backend

__all__ = ["causal_conv3d", "causal_conv3d_stream", "causal_conv3d_reference", "causal_time_pad",
           "causal_conv3d_output_frames", "TRITON_FASTER_SHAPES"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_TIME_PADS = ("replicate", "zeros")
_ACTIVATIONS = ("none", "silu")
_HEAD = {"zeros": 0, "replicate": 1, "cache": 2}

# Shape classes (C_in, C_out, kernel, stride) on which the Triton kernels measured faster than
# cuDNN on a GPU (fwd+bwd, bf16). "auto" uses Triton on CUDA only for these; see
# benchmarks/test_bench_causal_conv3d.py. Empty until a GPU session has measured it.
TRITON_FASTER_SHAPES: set[tuple[int, int, tuple[int, int, int], tuple[int, int, int]]] = set()


# ----------------------------------------------------------------------------- arguments

def causal_time_pad(kernel_t: int, stride_t: int = 1, dilation_t: int = 1) -> int:
    """Frames of causal left padding: ``dilation_t*(kernel_t-1) + (1-stride_t)``."""
    return dilation_t * (kernel_t - 1) + 1 - stride_t


def causal_conv3d_output_frames(seq_frames: int, kernel_t: int, stride_t: int = 1,
                                dilation_t: int = 1) -> int:
    """Output frames of a conv over ``seq_frames`` already-padded frames (0 if too short)."""
    span = dilation_t * (kernel_t - 1) + 1
    return 0 if seq_frames < span else (seq_frames - span) // stride_t + 1


def _tuple(name: str, value, n: int, minimum: int) -> tuple[int, ...]:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    if isinstance(value, int):
        value = (value,) * n
    try:
        value = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be an int or a tuple of {n} ints, got {value!r}") from None
    if len(value) != n or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    if any(v < minimum for v in value):
        raise ValueError(f"{name} must be >= {minimum} in every dim, got {value!r}")
    return value


def _check_tensor(name: str, t: object, dims: int, shape_doc: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must be a floating tensor (float32, float16, bfloat16 or "
                         f"float64), got dtype {t.dtype}")
    if t.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D {shape_doc}, got shape {tuple(t.shape)}")
    return t


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout outputs and gradients take: channels_last_3d when x is channels-last (dense, or
    a view such as a time slice whose channel dim is innermost), else contiguous."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    c = x.stride(1)
    if x.shape[1] > 1 and all(c < x.stride(d) for d in (2, 3, 4) if x.shape[d] > 1):
        return torch.channels_last_3d
    return torch.contiguous_format


def _groups_of(x_shape, weight_shape) -> int:
    """Groups implied by the shapes (validated by :func:`_validate`): C_in / weight's C_in."""
    return x_shape[1] // weight_shape[1]


def _validate(x, weight, bias, stride, padding, dilation, time_pad, cache, activation,
              allow_empty: bool, groups: int = 1):
    """Check every argument; return normalized (stride, padding, dilation, activation, th)."""
    _check_tensor("x", x, 5, "(B, C_in, T, H, W)")
    _check_tensor("weight", weight, 5, "(C_out, C_in, kT, kH, kW)")
    stride = _tuple("stride", stride, 3, 1)
    padding = _tuple("padding", padding, 2, 0)
    dilation = _tuple("dilation", dilation, 3, 1)
    if time_pad not in _TIME_PADS:
        raise ValueError(f"time_pad must be 'replicate' or 'zeros', got {time_pad!r}")
    act = "none" if activation is None else activation
    if act not in _ACTIVATIONS:
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    if weight.dtype != x.dtype:
        raise ValueError(f"weight must have x's dtype {x.dtype}, got {weight.dtype}")
    if weight.device != x.device:
        raise ValueError(f"weight must be on x's device {x.device}, got {weight.device}")
    B, C, T, H, W = x.shape
    co, ci, kt, kh, kw = weight.shape
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if min(co, kt, kh, kw) < 1 or C < 1:
        raise ValueError(f"weight must have positive sizes, got shape {tuple(weight.shape)}")
    if ci * groups != C:
        raise ValueError(f"weight has C_in={ci} per group (shape {tuple(weight.shape)}) and "
                         f"groups={groups}, so x needs {ci * groups} channels, but x has C_in={C} "
                         f"(shape {tuple(x.shape)})")
    if co % groups:
        raise ValueError(f"weight's C_out={co} must be divisible by groups={groups}")
    if T < 1 or H < 1 or W < 1:
        raise ValueError(f"x must have at least one frame and pixel, got shape {tuple(x.shape)}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (co,):
            got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise ValueError(f"bias must be a tensor of shape ({co},) (C_out), got {got}")
        if bias.dtype != x.dtype or bias.device != x.device:
            raise ValueError(f"bias must have x's dtype {x.dtype} and device {x.device}, got "
                             f"{bias.dtype} on {bias.device}")
    th = causal_time_pad(kt, stride[0], dilation[0])
    if th < 0:
        raise ValueError(f"stride[0]={stride[0]} exceeds the temporal receptive field "
                         f"dilation[0]*(kT-1)+1={dilation[0] * (kt - 1) + 1} (kT={kt}): frames "
                         "would be skipped and the causal time padding would be negative")
    for name, size, pad, k, d in (("H", H, padding[0], kh, dilation[1]),
                                  ("W", W, padding[1], kw, dilation[2])):
        if size + 2 * pad < d * (k - 1) + 1:
            raise ValueError(f"kernel larger than the padded input: weight's {name} extent "
                             f"dilation*(k-1)+1={d * (k - 1) + 1} > x's {name}={size} + "
                             f"2*padding={2 * pad}")
    if cache is not None:
        _check_tensor("cache", cache, 5, "(B, C_in, T_cache, H, W)")
        if (cache.shape[:2] != x.shape[:2] or cache.shape[3:] != x.shape[3:]
                or cache.dtype != x.dtype or cache.device != x.device):
            raise ValueError(f"cache must be (B, C_in, T_cache, H, W) = ({B}, {C}, *, {H}, {W}) "
                             f"{x.dtype} on {x.device} like x, got {tuple(cache.shape)} "
                             f"{cache.dtype} on {cache.device}")
        lo, hi = th, th + stride[0] - 1
        if not lo <= cache.shape[2] <= hi:
            raise ValueError(f"cache must hold between {lo} and {hi} frames (time_pad={th}, "
                             f"stride_t={stride[0]}), got {cache.shape[2]}: pass the cache "
                             "returned by causal_conv3d_stream for the previous chunk")
        th = cache.shape[2]
    elif not allow_empty and T + th < dilation[0] * (kt - 1) + 1:
        raise ValueError(f"kernel larger than the padded input: x has T={T} frames, fewer than "
                         f"stride[0]={stride[0]}, so no output frame is complete (use "
                         "causal_conv3d_stream to feed chunks shorter than the stride)")
    return stride, padding, dilation, act, th


def _output_shape(x_shape, weight_shape, stride, padding, dilation, th):
    B, _, T, H, W = x_shape
    co, _, kt, kh, kw = weight_shape
    to = causal_conv3d_output_frames(th + T, kt, stride[0], dilation[0])
    ho = (H + 2 * padding[0] - dilation[1] * (kh - 1) - 1) // stride[1] + 1
    wo = (W + 2 * padding[1] - dilation[2] * (kw - 1) - 1) // stride[2] + 1
    return (B, co, to, ho, wo)


def _head_len(weight_shape, stride, dilation, cache) -> int:
    if cache is not None:
        return cache.shape[2]
    return causal_time_pad(weight_shape[2], stride[0], dilation[0])


def _alloc(shape, dtype, device, fmt) -> torch.Tensor:
    """Poisonable output in the given layout (channels-last: an NDHWC buffer viewed as NCDHW)."""
    if fmt == torch.channels_last_3d:
        b, c, t, h, w = shape
        return _buffers.empty((b, t, h, w, c), dtype=dtype, device=device).permute(0, 4, 1, 2, 3)
    return _buffers.empty(tuple(shape), dtype=dtype, device=device)


def _fake_alloc(shape, like: torch.Tensor, fmt) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=like.dtype, device=like.device, memory_format=fmt)


def _no_tensor(like: torch.Tensor) -> torch.Tensor:
    """The empty placeholder returned for an output that is not needed."""
    return _buffers.empty((0,), dtype=like.dtype, device=like.device)


# ----------------------------------------------------------------------------- reference

def _sequence(x: torch.Tensor, cache: Optional[torch.Tensor], time_pad: str, th: int):
    """The padded sequence (head frames, then x) along time, in x's dtype."""
    if cache is not None:
        return torch.cat([cache, x], dim=2)
    if th == 0:
        return x
    if time_pad == "replicate":
        head = x[:, :, :1].expand(-1, -1, th, -1, -1)
    else:
        head = x.new_zeros((x.shape[0], x.shape[1], th, x.shape[3], x.shape[4]))
    return torch.cat([head, x], dim=2)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _conv_reference(x, weight, bias, stride, padding, dilation, time_pad, cache, th, cdt):
    """Pre-activation in dtype ``cdt``: concat head frames + F.conv3d with zero (H, W) padding
    (the convolution pads: no padded copy of the sequence is made)."""
    shape = _output_shape(x.shape, weight.shape, stride, padding, dilation, th)
    if shape[2] == 0:
        return x.new_zeros(shape, dtype=cdt)
    seq = _sequence(x.to(cdt), None if cache is None else cache.to(cdt), time_pad, th)
    seq = seq.contiguous(memory_format=_memory_format(x))  # cuDNN's fast path wants NDHWC kept
    return F.conv3d(seq, weight.to(cdt), None if bias is None else bias.to(cdt), stride=stride,
                    padding=(0, padding[0], padding[1]), dilation=dilation,
                    groups=_groups_of(x.shape, weight.shape))


def causal_conv3d_reference(x: torch.Tensor, weight: torch.Tensor,
                            bias: Optional[torch.Tensor] = None, stride=1, padding=0,
                            dilation=1, time_pad: str = "replicate",
                            cache: Optional[torch.Tensor] = None,
                            activation: Optional[str] = None, groups: int = 1) -> torch.Tensor:
    """Reference path of :func:`causal_conv3d`: plain PyTorch in float32 math, differentiable.

    Returns y in x's dtype and layout. Arguments as in :func:`causal_conv3d` (validated).
    """
    stride, padding, dilation, act, th = _validate(x, weight, bias, stride, padding, dilation,
                                                   time_pad, cache, activation, allow_empty=True,
                                                   groups=groups)
    y = _conv_reference(x, weight, bias, stride, padding, dilation, time_pad, cache, th,
                        _compute_dtype(x.dtype))
    if act == "silu":
        y = F.silu(y)
    return y.to(x.dtype).contiguous(memory_format=_memory_format(x))


def _silu_grad(g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return g * (s * (1 + z * (1 - s)))


def _grad_preact_reference(grad_y, preact, act, cdt):
    g = grad_y.to(cdt)
    return _silu_grad(g, preact.to(cdt)) if act == "silu" else g


def _conv_backward_reference(g, x, weight, cache, stride, padding, dilation, time_pad, th,
                             cdt, mask):
    """(d seq, d weight) of the conv over the padded sequence via aten.convolution_backward."""
    seq = _sequence(x.to(cdt), None if cache is None else cache.to(cdt), time_pad, th)
    d_seq, d_w, _ = torch.ops.aten.convolution_backward(
        g, seq, weight.to(cdt), None, list(stride), [0, padding[0], padding[1]], list(dilation),
        False, [0, 0, 0], _groups_of(x.shape, weight.shape), [mask[0], mask[1], False])
    return d_seq, d_w


# ----------------------------------------------------------------------------- backend choice

def _shape_class(x, weight, stride):
    return (x.shape[1], weight.shape[0], tuple(weight.shape[2:]), tuple(stride))


def _pick_backend(x: torch.Tensor, weight: torch.Tensor, stride) -> str:
    """"reference" (float32 math), "cudnn" (auto on CUDA: F.conv3d in the input dtype) or
    "triton"."""
    requested = get_backend()
    grouped = _groups_of(x.shape, weight.shape) > 1
    if requested == "auto":
        if x.device.type == "cuda":
            shape_class = _shape_class(x, weight, stride)
            if x.dtype in _TRITON_DTYPES and shape_class in TRITON_FASTER_SHAPES and not grouped:
                return "triton"
            return "cudnn"
        return "reference"
    unsupported = {}
    if x.dtype not in _TRITON_DTYPES:
        unsupported["triton"] = f"supports float32, float16 and bfloat16, got {x.dtype}"
    elif grouped:
        unsupported["triton"] = (f"serves groups=1; this call has groups="
                                 f"{_groups_of(x.shape, weight.shape)} (use 'auto' or 'reference')")
    return select_backend("causal_conv3d", x.device, ("triton",),
                          auto_order={"cuda": ("triton",)}, unsupported=unsupported)


_BACKWARD_BACKENDS = ("reference", "cudnn", "triton")


def _check_backward_backend(backend: str) -> None:
    if backend not in _BACKWARD_BACKENDS:
        raise ValueError(f"causal_conv3d backward: backend must be one of {_BACKWARD_BACKENDS}, "
                         f"got {backend!r}")


def _native_dtype(backend: str, dtype: torch.dtype) -> torch.dtype:
    """Compute dtype of the torch paths: cuDNN keeps the input dtype (fp32 accumulation inside)."""
    return dtype if backend == "cudnn" else _compute_dtype(dtype)


# ----------------------------------------------------------------------------- custom ops

@torch.library.custom_op("rgbd::causal_conv3d", mutates_args=())
def _causal_conv3d_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      cache: Optional[torch.Tensor], stride: Sequence[int],
                      padding: Sequence[int], dilation: Sequence[int], time_pad: str,
                      activation: str, save_preact: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, pre-activation) ; the pre-activation is a (0,) placeholder unless save_preact."""
    th = _head_len(weight.shape, stride, dilation, cache)
    shape = _output_shape(x.shape, weight.shape, stride, padding, dilation, th)
    fmt = _memory_format(x)
    save = save_preact and activation == "silu"
    backend = _pick_backend(x, weight, stride)
    if backend != "triton":
        cdt = _native_dtype(backend, x.dtype)
        z = _conv_reference(x, weight, bias, stride, padding, dilation, time_pad, cache, th, cdt)
        y = F.silu(z) if activation == "silu" else z
        y = y.to(x.dtype).contiguous(memory_format=fmt)
        pre = z.to(x.dtype).contiguous(memory_format=fmt) if save else _no_tensor(x)
        return y, pre
    from ._triton import causal_conv3d as tk

    y = _alloc(shape, x.dtype, x.device, fmt)
    pre = _alloc(shape, x.dtype, x.device, fmt) if save else None
    head = _HEAD["cache"] if cache is not None else _HEAD[time_pad]
    tk.forward(x, weight, bias, cache, y, pre, stride, padding, dilation, head, th,
               activation == "silu")
    return y, (pre if save else _no_tensor(x))


@_causal_conv3d_op.register_fake
def _(x, weight, bias, cache, stride, padding, dilation, time_pad, activation, save_preact):
    th = _head_len(weight.shape, stride, dilation, cache)
    shape = _output_shape(x.shape, weight.shape, stride, padding, dilation, th)
    fmt = _memory_format(x)
    y = _fake_alloc(shape, x, fmt)
    save = save_preact and activation == "silu"
    pre = _fake_alloc(shape, x, fmt) if save else x.new_empty((0,))
    return y, pre


@torch.library.custom_op("rgbd::causal_conv3d_dgrad", mutates_args=())
def _dgrad_op(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
              cache: Optional[torch.Tensor], preact: Optional[torch.Tensor],
              stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
              time_pad: str, activation: str, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dcache); dcache is a (0,) placeholder without a cache. preact: SiLU input or None.
    backend: the forward's (chosen on the caller's thread, see :func:`_setup`)."""
    _check_backward_backend(backend)
    th = _head_len(weight.shape, stride, dilation, cache)
    fmt = _memory_format(x)
    if backend != "triton":
        cdt = _native_dtype(backend, x.dtype)
        if grad_y.shape[2] == 0:
            dseq = torch.zeros((x.shape[0], x.shape[1], th + x.shape[2], *x.shape[3:]),
                               dtype=cdt, device=x.device)
        else:
            g = _grad_preact_reference(grad_y, preact, activation, cdt)
            dseq, _ = _conv_backward_reference(g, x, weight, cache, stride, padding, dilation,
                                               time_pad, th, cdt, (True, False))
        dx = dseq[:, :, th:]
        if cache is None and time_pad == "replicate" and th > 0:
            dx = dx.clone()
            dx[:, :, 0] += dseq[:, :, :th].sum(2)
        dx = dx.to(x.dtype).contiguous(memory_format=fmt)
        if cache is None:
            return dx, _no_tensor(x)
        dc = dseq[:, :, :th].to(x.dtype).contiguous(memory_format=_memory_format(cache))
        return dx, dc
    from ._triton import causal_conv3d as tk

    grad_y = grad_y.to(x.dtype)
    dx = _alloc(x.shape, x.dtype, x.device, fmt)
    dc = None if cache is None else _alloc(cache.shape, x.dtype, x.device, _memory_format(cache))
    head = _HEAD["cache"] if cache is not None else _HEAD[time_pad]
    tk.dgrad(grad_y, preact if activation == "silu" else None, weight, dx, dc, stride, padding,
             dilation, head, th)
    return dx, (dc if dc is not None else _no_tensor(x))


@_dgrad_op.register_fake
def _(grad_y, x, weight, cache, preact, stride, padding, dilation, time_pad, activation, backend):
    dx = _fake_alloc(x.shape, x, _memory_format(x))
    if cache is None:
        return dx, x.new_empty((0,))
    return dx, _fake_alloc(cache.shape, x, _memory_format(cache))


@torch.library.custom_op("rgbd::causal_conv3d_wgrad", mutates_args=())
def _wgrad_op(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
              cache: Optional[torch.Tensor], preact: Optional[torch.Tensor],
              stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
              time_pad: str, activation: str, has_bias: bool,
              backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(dweight, dbias); dbias is a (0,) placeholder when has_bias is False. backend: the
    forward's."""
    _check_backward_backend(backend)
    th = _head_len(weight.shape, stride, dilation, cache)
    if backend != "triton":
        cdt = _native_dtype(backend, x.dtype)
        if grad_y.shape[2] == 0:
            dw = torch.zeros(weight.shape, dtype=cdt, device=x.device)
            db = torch.zeros(weight.shape[0], dtype=cdt, device=x.device)
        else:
            g = _grad_preact_reference(grad_y, preact, activation, cdt)
            _, dw = _conv_backward_reference(g, x, weight, cache, stride, padding, dilation,
                                             time_pad, th, cdt, (False, True))
            db = g.sum((0, 2, 3, 4))
        dw = dw.to(weight.dtype).contiguous()
        return dw, (db.to(weight.dtype) if has_bias else _no_tensor(weight))
    from ._triton import causal_conv3d as tk

    head = _HEAD["cache"] if cache is not None else _HEAD[time_pad]
    grad_y = grad_y.to(x.dtype)
    dw, db = tk.wgrad(grad_y, preact if activation == "silu" else None, x, cache,
                      tuple(weight.shape), has_bias, stride, padding, dilation, head, th,
                      weight.dtype,
                      lambda shape, dtype: _buffers.empty(shape, dtype=dtype, device=x.device))
    return dw, (db if db is not None else _no_tensor(weight))


@_wgrad_op.register_fake
def _(grad_y, x, weight, cache, preact, stride, padding, dilation, time_pad, activation,
      has_bias, backend):
    dw = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
    db = weight.new_empty((weight.shape[0],) if has_bias else (0,))
    return dw, db


def _setup(ctx, inputs, output):
    x, weight, bias, cache, stride, padding, dilation, time_pad, activation, save_preact = inputs
    y, pre = output
    ctx.mark_non_differentiable(pre)
    ctx.save_for_backward(x, weight, cache, pre if activation == "silu" else None)
    ctx.conf = (list(stride), list(padding), list(dilation), time_pad, activation)
    ctx.has_bias = bias is not None
    ctx.saved_preact = bool(save_preact)
    # Chosen with the forward, inside its use_backend block: the backward may run after the
    # block has exited, and must use the forward's path.
    ctx.backend = _pick_backend(x, weight, stride)


def _backward(ctx, grad_y, grad_pre):
    x, weight, cache, pre = ctx.saved_tensors
    stride, padding, dilation, time_pad, activation = ctx.conf
    if activation == "silu" and not ctx.saved_preact:
        raise RuntimeError("causal_conv3d: the SiLU pre-activation was not saved (the forward "
                           "ran with save_preact=False); call the public causal_conv3d")
    need_x, need_w, need_b, need_c = ctx.needs_input_grad[:4]
    dx = dw = db = dc = None
    if need_x or need_c:
        dx, dc = _dgrad_op(grad_y, x, weight, cache, pre, stride, padding, dilation, time_pad,
                           activation, ctx.backend)
    if need_w or need_b:
        dw, db = _wgrad_op(grad_y, x, weight, cache, pre, stride, padding, dilation, time_pad,
                           activation, ctx.has_bias, ctx.backend)
    return (dx if need_x else None, dw if need_w else None,
            db if (need_b and ctx.has_bias) else None,
            dc if (need_c and cache is not None) else None,
            None, None, None, None, None, None)


_causal_conv3d_op.register_autograd(_backward, setup_context=_setup)


# ----------------------------------------------------------------------------- public API

def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _run(x, weight, bias, stride, padding, dilation, time_pad, cache, activation, allow_empty,
         groups):
    stride, padding, dilation, act, th = _validate(x, weight, bias, stride, padding, dilation,
                                                   time_pad, cache, activation, allow_empty,
                                                   groups)
    save = act == "silu" and _needs_grad(x, weight, bias, cache)
    with nvtx_range("rgbd.causal_conv3d"):
        y, _ = _causal_conv3d_op(x, weight, bias, cache, list(stride), list(padding),
                                 list(dilation), time_pad, act, save)
    return y, (stride, dilation, th, y.shape[2])


def causal_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  stride=(1, 1, 1), padding=(0, 0), dilation=(1, 1, 1),
                  time_pad: str = "replicate", cache: Optional[torch.Tensor] = None,
                  activation: Optional[str] = None, groups: int = 1) -> torch.Tensor:
    """Causal 3D convolution, optionally fused with bias and SiLU (see the module docstring).

    Args:
        x: (B, C_in, T, H, W) float32 / float16 / bfloat16 (float64: reference path only), either
            layout (contiguous or ``torch.channels_last_3d``) or any strided view.
        weight: (C_out, C_in / groups, kT, kH, kW), x's dtype and device. bias: (C_out,) or None.
        stride, dilation: int or (t, h, w); padding: int or (pH, pW) zero spatial padding.
        time_pad: "replicate" (copies of frame 0) or "zeros"; ignored when ``cache`` is given.
        cache: the cache returned by :func:`causal_conv3d_stream` for the previous chunk
            (continues a stream; may then produce 0 frames), or None (start of the video).
        activation: None or "silu" (applied after the bias; its backward uses the saved
            pre-activation).
        groups: as in ``nn.Conv3d`` (C_in and C_out divisible by it); > 1 runs on the
            reference / cuDNN paths.
    Returns:
        y (B, C_out, T_out, H_out, W_out) in x's dtype and layout; without a cache
        ``T_out = T // stride_t``.
    Raises:
        ValueError naming the argument for wrong ranks, dtypes, devices, channel mismatch, a
        kernel larger than the padded input, negative padding or a bad cache.
    """
    return _run(x, weight, bias, stride, padding, dilation, time_pad, cache, activation,
                allow_empty=cache is not None, groups=groups)[0]


def _next_cache(x, cache, time_pad, th, consumed) -> torch.Tensor:
    """Frames ``consumed:`` of the padded sequence (head frames, then x): the next chunk's cache."""
    T = x.shape[2]
    keep = th + T - consumed
    fmt = _memory_format(x)
    if keep <= T:
        return x[:, :, T - keep:].clone(memory_format=fmt)
    if cache is not None:
        head = cache[:, :, consumed:]
    elif time_pad == "replicate":
        head = x[:, :, :1].expand(-1, -1, th - consumed, -1, -1)
    else:
        head = x.new_zeros((x.shape[0], x.shape[1], th - consumed, x.shape[3], x.shape[4]))
    return torch.cat([head, x], dim=2).contiguous(memory_format=fmt)


def causal_conv3d_stream(x: torch.Tensor, weight: torch.Tensor,
                         bias: Optional[torch.Tensor] = None, stride=(1, 1, 1), padding=(0, 0),
                         dilation=(1, 1, 1), time_pad: str = "replicate",
                         cache: Optional[torch.Tensor] = None,
                         activation: Optional[str] = None,
                         groups: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk of a streamed causal conv: returns ``(y, new_cache)``.

    Feed the chunks of a video in order, ``cache=None`` for the first and the returned cache
    afterwards; concatenating the outputs along time equals :func:`causal_conv3d` on the whole
    video for any split into chunks of >= 1 frame. A chunk may produce 0 output frames when it
    completes no strided output position. The cache holds between ``time_pad`` and
    ``time_pad + stride_t - 1`` frames (a copy, in x's layout; it is part of the autograd graph
    when x requires grad: ``.detach()`` it to truncate backpropagation).
    """
    y, (stride, dilation, th, to) = _run(x, weight, bias, stride, padding, dilation, time_pad,
                                         cache, activation, allow_empty=True, groups=groups)
    return y, _next_cache(x, cache, time_pad, th, to * stride[0])
