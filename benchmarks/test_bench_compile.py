"""Whole-model ``torch.compile(fullgraph=True)`` vs eager on CPU, for both tiny models.

* tokenizer: tiny preset, ``encode`` of a (1, 3, 17, 64, 64) clip (fp32, no grad);
* DiT: tiny preset with 16 latent channels, forward on (2, 16, 4, 16, 16) latents with 16 text
  tokens (fp32, no grad).

The compiled model (Inductor, default mode) and the eager one are timed interleaved, 5 rounds
each after warm-up; ``speedup_vs_reference`` is eager / compiled (> 1: compiling pays) with the
spread of the per-round ratios; ``compile_seconds`` is the first call's time (tracing, Inductor
code generation and the C++ build; 1-4 min on 2 cores). Outputs are checked against eager first.
Under ``--benchmark-disable`` nothing is timed: the models are captured with
``fullgraph=True`` through AOTAutograd only (``backend="aot_eager"``, no code generation), as
a fast smoke test of the capture.
Run: ``pytest benchmarks/test_bench_compile.py --benchmark-only``.
"""
from __future__ import annotations

import time

import pytest
import torch

from rgbd_world.dit import DiT, DiTConfig
from rgbd_world.tokenizer import VideoTokenizer

from .conftest import DEVICE, record_interleaved

ROUNDS = 5


def _compiled(fn, benchmark):
    backend = "aot_eager" if getattr(benchmark, "disabled", False) else "inductor"
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend=backend), backend


def _compare(benchmark, eager, args, what: str, **extra) -> None:
    compiled, backend = _compiled(eager, benchmark)
    with torch.no_grad():
        start = time.perf_counter()
        out = compiled(*args)
        compile_seconds = time.perf_counter() - start
        ref = eager(*args)
        err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
        assert err <= 1e-4, f"{what}: compiled vs eager rel err {err:.2e}"
        compiled(*args)  # a second call: any recompilation happens here, not in the timings

        def run_compiled():
            with torch.no_grad():
                return compiled(*args)

        def run_eager():
            with torch.no_grad():
                return eager(*args)

        record_interleaved(benchmark, {"compiled": run_compiled, "eager": run_eager},
                           path="compiled", reference="eager", rounds=ROUNDS,
                           benchmark_rounds=3, compile_backend=backend,
                           compile_seconds=compile_seconds, compiled_vs_eager_rel_err=err,
                           threads=torch.get_num_threads(), **extra)


@pytest.mark.skipif(DEVICE.type != "cpu", reason="CPU benchmark of the tiny presets")
def test_compile_tokenizer_encode(benchmark):
    torch.manual_seed(0)
    model = VideoTokenizer("tiny").eval()
    x = torch.rand(1, 3, 17, 64, 64) * 2 - 1
    _compare(benchmark, model.encode, (x,), "tokenizer encode", model="tokenizer-tiny",
             input_shape=list(x.shape))


@pytest.mark.skipif(DEVICE.type != "cpu", reason="CPU benchmark of the tiny presets")
def test_compile_dit_forward(benchmark):
    torch.manual_seed(0)
    model = DiT(DiTConfig.preset("tiny", latent_channels=16, cond_channels=16,
                                 text_dim=64)).eval()
    with torch.no_grad():  # zero-initialised output layers would make the output 0
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    b, t, h, w, length = 2, 4, 16, 16, 16
    args = (torch.randn(b, 16, t, h, w), torch.rand(b), torch.randn(b, length, 64),
            torch.ones(b, length, dtype=torch.bool))
    _compare(benchmark, model, args, "DiT forward", model="dit-tiny",
             input_shape=[b, 16, t, h, w], text_tokens=length)
