"""Whole-model torch.compile: the tokenizer's encode/decode (whole and streamed) and the DiT
forward trace as one graph each (zero graph breaks, fullgraph=True) under the backend choices
that can run on this machine, match eager, and follow a later ``use_backend`` (Dynamo guards on
the backend choice) instead of replaying a stale graph. Tiny configs: tracing is the cost."""
import pytest
import torch

import rgbd_kernels as rk
from rgbd_world.dit import DiT, DiTConfig
from rgbd_world.tokenizer import VideoTokenizer

C, CC, TD = 8, 6, 32


@pytest.fixture(scope="module")
def tokenizer():
    torch.manual_seed(7)
    return VideoTokenizer("tiny").eval()


def tiny_dit(backend: str = "auto") -> DiT:
    torch.manual_seed(3)
    model = DiT(DiTConfig.preset("tiny", latent_channels=C, cond_channels=CC, text_dim=TD,
                                 hidden=32, heads=2, depth=1, adaln_rank=4, backend=backend))
    with torch.no_grad():  # the zero-initialised output layers would make every output 0
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    return model.eval()


def dit_inputs(b=2, t=2, h=4, w=4, length=5):
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[1, 3:] = False
    return (torch.randn(b, C, t, h, w, generator=g), torch.rand(b, t, generator=g),
            torch.randn(b, length, TD, generator=g), mask)


def video(t=9, h=16, w=16):
    return torch.rand(1, 3, t, h, w, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _roundtrip(tok):
    return lambda x: tok.decode(tok.encode(x))


def _streamed_roundtrip(tok):  # two chunks each way: 1 + 8 frames, then 8
    return lambda x: tok.decode_stream(tok.encode_stream(x, chunk_frames=8), chunk_latents=2)


def _explain(fn, *args):
    torch._dynamo.reset()
    with torch.no_grad():
        return torch._dynamo.explain(fn)(*args)


def _breaks(explanation) -> str:
    return "\n".join(f"{r.reason}"[:300] for r in explanation.break_reasons[:5])


CASES = [(what, backend) for backend in ("auto", "reference")
         for what in ("tokenizer", "dit", "dit-sdpa", "dit-reference")]
CASES.append(("tokenizer-streamed", "auto"))  # the slowest trace: once


@pytest.mark.parametrize("what,backend", CASES, ids=[f"{w}-{b}" for w, b in CASES])
def test_models_trace_with_zero_graph_breaks(tokenizer, what, backend):
    """``use_backend`` choices that can run here ("auto", "reference"; "triton" and "cpp" make
    attention raise, see the last test) and the DiT's own attention backend choices ("auto",
    "sdpa", "reference")."""
    if what.startswith("tokenizer"):
        fn = _roundtrip(tokenizer) if what == "tokenizer" else _streamed_roundtrip(tokenizer)
        args = (video(t=17),)
    else:
        fn, args = tiny_dit({"dit": "auto"}.get(what, what.removeprefix("dit-"))), dit_inputs()
    with rk.use_backend(backend):
        explanation = _explain(fn, *args)
    assert explanation.graph_break_count == 0, _breaks(explanation)
    assert explanation.graph_count == 1


def test_compiled_tokenizer_matches_eager(tokenizer):
    """fullgraph=True through AOTAutograd (the custom conv ops' fake kernels) and back."""
    x = video(t=9)
    torch._dynamo.reset()
    with torch.no_grad():
        ref = tokenizer.encode(x)
        z = torch.compile(tokenizer.encode, fullgraph=True, backend="aot_eager")(x)
        y = torch.compile(tokenizer.decode, fullgraph=True, backend="aot_eager")(ref)
        assert torch.allclose(z, ref, rtol=1e-5, atol=1e-6)
        assert torch.allclose(y, tokenizer.decode(ref), rtol=1e-5, atol=1e-6)


def test_compiled_dit_matches_eager_forward_and_backward():
    model = tiny_dit()
    args = dit_inputs()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(*args)
    ref = model(*args)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    with torch.compiler.set_stance("fail_on_recompile"):
        compiled(*args)  # the RoPE cache is not written inside the graph: no second compile
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, list(model.parameters()), g)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()), g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_compiled_model_follows_a_later_use_backend():
    """Compiled under "auto": under use_backend("reference") it recompiles and gives the
    reference's output; under use_backend("triton") it raises like eager, never replaying the
    SDPA graph."""
    model = tiny_dit()
    args = dit_inputs()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        compiled(*args)
        with rk.use_backend("reference"):
            ref = model(*args)
            out = compiled(*args)
        assert torch.equal(out, ref)
        with rk.use_backend("triton"):
            with pytest.raises(rk.BackendUnavailableError, match="attention: backend 'triton'"):
                model(*args)
            with pytest.raises(Exception) as info:  # fullgraph: Dynamo wraps the error
                compiled(*args)
    chain = f"{info.value} {info.value.__cause__}"
    assert "BackendUnavailableError" in chain and "attention: backend 'triton'" in chain, chain
