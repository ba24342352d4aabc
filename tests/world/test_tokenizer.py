"""RGBD video tokenizer: presets, frame/size rules, Haar patcher, causality, streaming, Cosmos
loader, RGB -> RGBD inflation, tiling. Tiny preset and small clips only (CPU, seconds)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rgbd_world.tokenizer import (CosmosStateDictError, TokenizerConfig, VideoTokenizer,
                                  inflate_to_rgbd, load_cosmos_state_dict, to_cosmos_state_dict)
from rgbd_world.tokenizer.blocks import StreamState, TemporalAttention
from rgbd_world.tokenizer.model import _tiled
from rgbd_world.tokenizer.patcher import haar_patch, haar_unpatch, patch_channel_index

MANIFEST = Path(__file__).parent / "data" / "cosmos_cv8x8x8_manifest.json"


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(1234)
    return VideoTokenizer("tiny").eval()


def video(b=1, c=3, t=9, h=32, w=32):
    return (torch.rand(b, c, t, h, w) * 2 - 1)


# ----------------------------------------------------------------------------- presets

def test_presets_build_with_published_structure():
    m = VideoTokenizer("tiny")
    n = sum(p.numel() for p in m.parameters())
    assert 1e5 < n < 1e6, n
    cv4 = TokenizerConfig.preset("cosmos-cv4x8x8")
    assert (cv4.temporal_compression, cv4.patch_size, cv4.dec_mult) == (4, 4, (2, 4))
    assert TokenizerConfig.preset("cosmos-cv8x8x8", in_channels=4).in_channels == 4
    with pytest.raises(ValueError, match="unknown tokenizer preset"):
        TokenizerConfig.preset("cosmos-cv16")


@pytest.mark.parametrize("in_channels", [3, 4])
def test_cv8x8x8_keys_and_shapes_match_cosmos_manifest(in_channels):
    """Every Cosmos key with its shape (recorded from NVIDIA's code), nothing more."""
    manifest = json.loads(MANIFEST.read_text())
    with torch.device("meta"):
        m = VideoTokenizer("cosmos-cv8x8x8", in_channels=in_channels)
    ours = {k: list(v.shape) for k, v in to_cosmos_state_dict(m).items()}
    want = dict(manifest["state_dict"])
    if in_channels == 4:  # the RGBD inflation widens exactly these (Haar patch 4: 192 -> 256)
        want["encoder.conv_in.0.conv3d.weight"] = [128, 256, 1, 3, 3]
        want["decoder.conv_out.0.conv3d.weight"] = [256, 256, 1, 3, 3]
        want["decoder.conv_out.0.conv3d.bias"] = [256]
        want["decoder.conv_out.1.conv3d.weight"] = [256, 256, 3, 1, 1]
        want["decoder.conv_out.1.conv3d.bias"] = [256]
    assert ours == want
    if in_channels == 3:
        enc = sum(math.prod(s) for k, s in ours.items() if k.startswith(("encoder", "quant")))
        dec = sum(math.prod(s) for k, s in ours.items() if k.startswith(("decoder", "post")))
        assert (enc, dec) == (manifest["num_parameters"]["encoder"],
                              manifest["num_parameters"]["decoder"])
        assert round(enc / 1e6) == 46 and round(dec / 1e6) == 66


# ----------------------------------------------------------------------------- rules

@pytest.mark.parametrize("frames", [1, 9, 17])
def test_frame_rule_shapes(tiny, frames):
    x = video(t=frames, h=16, w=24)
    with torch.no_grad():
        z = tiny.encode(x)
        y = tiny.decode(z)
    assert z.shape == (1, 16, 1 + (frames - 1) // 8, 2, 3)
    assert tiny.latent_shape(frames, 16, 24) == tuple(z.shape[1:])
    assert y.shape == x.shape


@pytest.mark.parametrize("frames,nearest", [(0, "1"), (2, "1 or 9"), (8, "1 or 9"),
                                            (10, "9 or 17"), (16, "9 or 17")])
def test_frame_rule_error_states_rule_and_nearest(tiny, frames, nearest):
    with pytest.raises(ValueError) as e:
        tiny.encode(video(t=frames, h=16, w=16)) if frames else tiny.latent_shape(0, 16, 16)
    msg = str(e.value)
    assert f"has {frames} frames" in msg and "1 + T frames" in msg
    assert "temporal_compression=8" in msg and f"Nearest valid frame counts: {nearest} " in msg


def test_size_rule_error_states_rule_and_nearest(tiny):
    with pytest.raises(ValueError) as e:
        tiny.encode(video(t=1, h=30, w=16))
    assert "multiples of spatial_compression=8" in str(e.value)
    assert "height 30 (nearest valid: 24 or 32)" in str(e.value)
    with pytest.raises(ValueError, match=r"width 4 \(nearest valid: 8\)"):
        tiny.encode(video(t=1, h=16, w=4))
    with pytest.raises(ValueError, match="in_channels=3"):
        tiny.encode(video(c=4, t=1, h=16, w=16))


# ----------------------------------------------------------------------------- patcher

def _haar_level_numpy(x):
    """One 3D Haar level by explicit loops over the 8 parity offsets (independent of ours)."""
    B, C, T, H, W = x.shape
    out = []
    for st in (0, 1):
        for sh in (0, 1):
            for sw in (0, 1):
                acc = np.zeros((B, C, T // 2, H // 2, W // 2))
                for ot in (0, 1):
                    for oh in (0, 1):
                        for ow in (0, 1):
                            sign = (-1) ** (st * ot + sh * oh + sw * ow)
                            acc += sign * x[:, :, ot::2, oh::2, ow::2]
                out.append(acc / 8.0)  # a^3 = 2^-1.5 and the 1/(2 sqrt 2) rescale
    return np.concatenate(out, axis=1)


@pytest.mark.parametrize("p", [2, 4])
def test_haar_patcher_matches_explicit_transform_and_inverts(p):
    x = torch.randn(2, 4, 1 + 2 * p, 4 * p, 2 * p, dtype=torch.float64)
    y = haar_patch(x, p)
    xr = np.concatenate([x[:, :, :1].numpy()] * (p - 1) + [x.numpy()], axis=2)
    for _ in range(int(math.log2(p))):
        xr = _haar_level_numpy(xr)
    assert y.shape == (2, 4 * p ** 3, 3, 4, 2)
    np.testing.assert_allclose(y.numpy(), xr, rtol=1e-12, atol=1e-12)
    back = haar_unpatch(y, p)
    assert back.shape == x.shape
    torch.testing.assert_close(back, x, rtol=1e-12, atol=1e-12)
    xf = x.float()
    assert rel(haar_unpatch(haar_patch(xf, p), p), xf) < 1e-6
    # channel map used by the inflation: the low band of channel c is the block mean of c
    idx = patch_channel_index(4, p)
    blocks = torch.from_numpy(np.concatenate([x[:, :, :1].numpy()] * (p - 1) + [x.numpy()], 2))
    mean = blocks.reshape(2, 4, 3, p, 4, p, 2, p).mean((3, 5, 7))
    torch.testing.assert_close(y[:, idx[0]], mean)


def test_haar_patcher_rejects_bad_sizes():
    with pytest.raises(ValueError, match="divisible by patch_size=4"):
        haar_patch(torch.randn(1, 3, 6, 8, 8), 4)
    with pytest.raises(ValueError, match="power of two"):
        haar_patch(torch.randn(1, 3, 1, 6, 6), 3)


# ----------------------------------------------------------------------------- causality

def test_encoder_and_decoder_are_causal(tiny):
    x = video(t=17)
    with torch.no_grad():
        z = tiny.encode(x)
        x1 = x.clone()
        x1[:, :, 1] += 0.5 * torch.randn_like(x1[:, :, 1])   # frame 1 -> latent 1 onwards
        z1 = tiny.encode(x1)
        x9 = x.clone()
        x9[:, :, 9:] = torch.rand_like(x9[:, :, 9:]) * 2 - 1  # frames 9..16 -> latent 2
        z9 = tiny.encode(x9)
    assert rel(z1[:, :, :1], z[:, :, :1]) < 1e-5 and rel(z1[:, :, 1:], z[:, :, 1:]) > 1e-3
    assert rel(z9[:, :, :2], z[:, :, :2]) < 1e-5 and rel(z9[:, :, 2], z[:, :, 2]) > 1e-3
    with torch.no_grad():
        y = tiny.decode(z)
        z2 = z.clone()
        z2[:, :, 2] += torch.randn_like(z2[:, :, 2])
        y2 = tiny.decode(z2)
    assert rel(y2[:, :, :9], y[:, :, :9]) < 1e-5 and rel(y2[:, :, 9:], y[:, :, 9:]) > 1e-3


# ----------------------------------------------------------------------------- streaming

@pytest.mark.parametrize("chunks", [[9, 8, 8, 8], [1, 16, 8, 8], [17, 16]])
def test_stream_equals_whole(tiny, chunks):
    x = video(b=2, t=sum(chunks), h=16, w=24)
    with torch.no_grad():
        z = tiny.encode(x)
        y = tiny.decode(z)
        starts = np.cumsum([0] + chunks)
        zs = torch.cat(list(tiny.iter_encode(x[:, :, a:b] for a, b in zip(starts, starts[1:]))),
                       2)
        ys = tiny.decode_stream(z, chunk_latents=2)
        ys1 = torch.cat(list(tiny.iter_decode([z[:, :, :1], z[:, :, 1:3], z[:, :, 3:]])), 2)
    assert zs.shape == z.shape and ys.shape == y.shape == ys1.shape
    assert rel(zs, z) <= 1e-5 and rel(ys, y) <= 1e-5 and rel(ys1, y) <= 1e-5
    with torch.no_grad():
        assert rel(tiny.encode_stream(x, chunk_frames=16), z) <= 1e-5


def test_stream_state_is_bounded_except_latent_kv(tiny):
    """Carried state: conv caches of constant size; only the temporal-attention keys/values grow
    (one latent frame of 2*C*h*w per chunk at the mid resolution)."""
    state = StreamState()
    x = video(t=1 + 8 * 5, h=16, w=16)
    sizes, kv = [], []
    with torch.no_grad():
        chunks = [x[:, :, :9]] + [x[:, :, s:s + 8] for s in range(9, x.shape[2], 8)]
        for i, c in enumerate(chunks):
            tiny.encoder(c, state)
            state.first = False
            att = {m for m in state.cache if isinstance(m, TemporalAttention)}
            kv.append(sum(state.cache[m][0].numel() * 8 for m in att))
            sizes.append(state.nbytes() - kv[-1])
    assert sizes[1] == sizes[2] == sizes[3] == sizes[4]
    assert kv[2] - kv[1] == kv[3] - kv[2] > 0


def test_stream_chunk_rule_errors(tiny):
    x = video(t=17, h=16, w=16)
    with pytest.raises(ValueError, match="chunk 1 has 5 frames"):
        list(tiny.iter_encode([x[:, :, :9], x[:, :, 9:14]]))
    with pytest.raises(ValueError, match="the first chunk has 8 frames"):
        list(tiny.iter_encode([x[:, :, :8]]))
    with pytest.raises(ValueError, match="chunk_frames must be a positive multiple"):
        tiny.encode_stream(x, chunk_frames=4)


# ----------------------------------------------------------------------------- Cosmos loader

def test_cosmos_round_trip_full_and_per_part(tiny):
    sd = to_cosmos_state_dict(tiny)
    assert "encoder.conv_in.0.conv3d.weight" in sd and "decoder.mid.attn_1.1.q.conv3d.bias" in sd
    assert "encoder.down.0.block.0.norm1.norm.weight" in sd
    x = video(t=9, h=16, w=16)
    m = VideoTokenizer("tiny").eval()
    assert load_cosmos_state_dict(m, sd) == ["encoder", "quant_conv", "decoder",
                                             "post_quant_conv"]
    with torch.no_grad():
        assert torch.equal(m.encode(x), tiny.encode(x))
    # encoder.jit / decoder.jit style dicts, one after the other, and bare (unprefixed) dicts
    m2 = VideoTokenizer("tiny").eval()
    enc = {k: v for k, v in sd.items() if k.startswith(("encoder.", "quant_conv."))}
    dec = {k: v for k, v in sd.items() if k.startswith(("decoder.", "post_quant_conv."))}
    assert load_cosmos_state_dict(m2, enc) == ["encoder", "quant_conv"]
    bare = {k[len("decoder."):]: v for k, v in dec.items() if k.startswith("decoder.")}
    assert load_cosmos_state_dict(m2, bare) == ["decoder"]
    load_cosmos_state_dict(m2, {k: v for k, v in dec.items() if k.startswith("post_")})
    with torch.no_grad():
        r, r2 = tiny(x), m2(x)
    assert torch.equal(r.reconstruction, r2.reconstruction)


def test_cosmos_loader_is_strict_and_lists_every_problem(tiny):
    sd = to_cosmos_state_dict(tiny)
    before = {k: v.clone() for k, v in VideoTokenizer("tiny").state_dict().items()}
    m = VideoTokenizer("tiny")
    m.load_state_dict(before)
    del sd["encoder.mid.attn_1.0.k.conv3d.weight"]
    del sd["decoder.up.1.upsample.conv2.conv3d.bias"]
    sd["encoder.mid.attn_1.0.k.weight"] = torch.zeros(1)          # our name is not Cosmos's
    sd["encoder.conv_in.0.conv3d.weight"] = torch.zeros(16, 256, 1, 3, 3)
    with pytest.raises(CosmosStateDictError) as e:
        load_cosmos_state_dict(m, sd)
    msg = str(e.value)
    assert "missing keys" in msg and "encoder.mid.attn_1.0.k.conv3d.weight" in msg
    assert "decoder.up.1.upsample.conv2.conv3d.bias" in msg
    assert "unexpected keys" in msg and "encoder.mid.attn_1.0.k.weight" in msg
    assert "encoder.conv_in.0.conv3d.weight: (16, 256, 1, 3, 3) vs (16, 192, 1, 3, 3)" in msg
    assert len(e.value.missing) == 2 and len(e.value.unexpected) == 1
    for k, v in m.state_dict().items():  # nothing was loaded
        assert torch.equal(v, before[k]), k


def test_cosmos_loader_rejects_wrong_preset_from_manifest():
    manifest = json.loads(MANIFEST.read_text())["state_dict"]
    sd = {k: torch.empty(s, device="meta") for k, s in manifest.items()}
    with pytest.raises(CosmosStateDictError, match="shape mismatches") as e:
        load_cosmos_state_dict(VideoTokenizer("tiny"), sd)
    assert any(m.startswith("encoder.down.1.block.0.conv1.0.conv3d.weight: (512, 256, 1, 3, 3)")
               for m in e.value.mismatched)  # full lists on the error; the message shows 50 each
    assert f"... and {len(e.value.mismatched) - 50} more" in str(e.value)
    assert len(e.value.unexpected) > 0  # cv8x8x8 has 2 res blocks per level, tiny 1
    with pytest.raises(ValueError, match="cannot tell"):
        load_cosmos_state_dict(VideoTokenizer("tiny"), {"mid.block_1.norm1.norm.weight": 0})


class _ScriptHolder(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


HAAR_TAP = 0.7071067811865476


def _torchscript_file(path, state_dict, buffers):
    """A TorchScript file whose state dict is ``state_dict`` (as parameters) plus ``buffers``
    registered the way Cosmos's patcher does (non-persistent; TorchScript still saves them)."""
    root = _ScriptHolder()
    for key, value in list(state_dict.items()) + list(buffers.items()):
        *owners, leaf = key.split(".")
        m = root
        for name in owners:
            if not hasattr(m, name):
                m.add_module(name, _ScriptHolder())
            m = getattr(m, name)
        if key in buffers:
            m.register_buffer(leaf, value, persistent=False)
        else:
            m.register_parameter(leaf, torch.nn.Parameter(value.detach().clone()))
    torch.jit.save(torch.jit.script(root), str(path))
    return path


def _haar_buffers(patch_size=4, dtype=torch.float32):
    return {"encoder.patcher3d.wavelets": torch.full((2,), HAAR_TAP, dtype=dtype),
            "encoder.patcher3d._arange": torch.arange(2),
            "encoder.patcher3d.patch_size_buffer": patch_size * torch.ones(1, dtype=torch.int32),
            "decoder.unpatcher3d.wavelets": torch.full((2,), HAAR_TAP, dtype=dtype),
            "decoder.unpatcher3d._arange": torch.arange(2)}


def test_torchscript_files_with_haar_buffers_load(tiny, tmp_path):
    from rgbd_world.tokenizer import load_cosmos_tokenizer
    sd = to_cosmos_state_dict(tiny)
    path = _torchscript_file(tmp_path / "autoencoder.jit", sd, _haar_buffers())
    loaded = torch.jit.load(str(path)).state_dict()
    assert {"encoder.patcher3d.patch_size_buffer", "decoder.unpatcher3d._arange"} <= set(loaded)
    x = video(t=9, h=16, w=16)
    m = VideoTokenizer("tiny").eval()
    load_cosmos_state_dict(m, loaded)
    m2 = load_cosmos_tokenizer(tmp_path, preset="tiny")  # the directory form
    with torch.no_grad():
        ref = tiny(x)
        for model in (m, m2):
            out = model(x)
            assert torch.equal(out.latent, ref.latent)
            assert torch.equal(out.reconstruction, ref.reconstruction)
    # encoder.jit + decoder.jit, bf16 taps as in half-precision files, bare (unprefixed) keys
    bufs = _haar_buffers(dtype=torch.bfloat16)
    enc = {k[len("encoder."):] if k.startswith("encoder.") else k: v for k, v in sd.items()
           if k.startswith(("encoder.", "quant_conv."))}
    dec = {k[len("decoder."):] if k.startswith("decoder.") else k: v for k, v in sd.items()
           if k.startswith(("decoder.", "post_quant_conv."))}
    split = tmp_path / "split"
    split.mkdir()
    _torchscript_file(split / "encoder.jit", enc,
                      {k[len("encoder."):]: v for k, v in bufs.items() if k.startswith("encoder.")})
    _torchscript_file(split / "decoder.jit", dec,
                      {k[len("decoder."):]: v for k, v in bufs.items() if k.startswith("decoder.")})
    m3 = load_cosmos_tokenizer(split, preset="tiny")
    with torch.no_grad():
        assert torch.equal(m3(x).reconstruction, ref.reconstruction)


def test_haar_buffers_are_checked_and_other_keys_still_rejected(tiny):
    sd = to_cosmos_state_dict(tiny)
    wrong = dict(sd, **_haar_buffers(patch_size=2))
    with pytest.raises(ValueError, match=r"patch_size_buffer: expected the patch size 4, found"):
        load_cosmos_state_dict(VideoTokenizer("tiny"), wrong)
    bufs = _haar_buffers()
    bufs["decoder.unpatcher3d.wavelets"] = torch.tensor([HAAR_TAP, -HAAR_TAP])
    with pytest.raises(ValueError, match=r"decoder.unpatcher3d.wavelets: expected the Haar taps"):
        load_cosmos_state_dict(VideoTokenizer("tiny"), dict(sd, **bufs))
    extra = dict(sd, **_haar_buffers())
    extra["encoder.patcher3d.something_else"] = torch.zeros(2)
    with pytest.raises(CosmosStateDictError) as e:
        load_cosmos_state_dict(VideoTokenizer("tiny"), extra)
    assert e.value.unexpected == ["encoder.patcher3d.something_else"]


def _tokenizer_run(path, model, extra=None):
    from safetensors.torch import save_file
    from rgbd_world.tokenizer.checkpoint import config_to_dict
    ckpt = path / "checkpoints" / "step_000000001"
    ckpt.mkdir(parents=True)
    (path / "model_config.json").write_text(json.dumps({"tokenizer": config_to_dict(model.config),
                                                        **(extra or {})}))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(ckpt / "model.safetensors"))
    save_file(state, str(ckpt / "ema.safetensors"))
    (ckpt / "COMPLETE").write_text("")
    return path


def test_wrong_kind_size_or_layout_of_tokenizer_checkpoint_says_expected_and_found(tmp_path):
    from rgbd_world.tokenizer import load_cosmos_tokenizer
    from rgbd_world.train.run_models import load_any_tokenizer, load_tokenizer
    # a run whose weights are another size than its config: found vs expected, no torch traceback
    run = _tokenizer_run(tmp_path / "run", VideoTokenizer("tiny", channels=8))
    cfg = json.loads((run / "model_config.json").read_text())
    cfg["tokenizer"]["channels"] = 16
    (run / "model_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"shape mismatches \(\d+\): encoder.conv_in.0.weight: "
                                         r"found \(8, 192, 1, 3, 3\), expected \(16, 192, 1, 3, 3\)"):
        load_tokenizer(run)
    # a DiT run given as the tokenizer
    dit_run = _tokenizer_run(tmp_path / "dit_run", VideoTokenizer("tiny"), {"dit": {}})
    with pytest.raises(ValueError, match=r"expected a tokenizer run .* \(a DiT run\)"):
        load_any_tokenizer(dit_run)
    # not a TorchScript file / a diffusers model of another kind
    (tmp_path / "autoencoder.jit").write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match="expected a TorchScript Cosmos tokenizer file"):
        load_cosmos_tokenizer(tmp_path / "autoencoder.jit", preset="tiny")
    other = tmp_path / "transformer"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "CosmosTransformer3DModel"}))
    with pytest.raises(ValueError, match="expected a tokenizer .* found a directory with "
                                         "config.json of CosmosTransformer3DModel"):
        load_any_tokenizer(other)


# ----------------------------------------------------------------------------- inflation

@pytest.mark.parametrize("geometry", [0, 4])
def test_inflation_keeps_rgb_latents_and_reconstructions(tiny, geometry):
    rgbd = inflate_to_rgbd(tiny, geometry_channels=geometry).eval()
    assert rgbd.config.in_channels == 4 and rgbd.latent_channels == 16 + geometry
    assert rgbd.encoder.conv_in[0].weight.shape[1] == 256
    assert rgbd.decoder.conv_out[1].weight.shape[:2] == (256, 256)
    x = video(c=4, t=9, h=16, w=16)
    with torch.no_grad():
        z_rgb = tiny.encode(x[:, :3])
        z = rgbd.encode(x)
        y_rgb = tiny.decode(z_rgb)
        y = rgbd.decode(z)
    assert rel(z[:, :16], z_rgb) < 1e-5
    assert rel(y[:, :3], y_rgb) < 1e-5
    assert y.shape == x.shape
    if geometry:
        assert z[:, 16:].abs().max() > 0  # new latent channels are live (but unread by RGB)
    # the depth path is trainable end to end: the zero-initialised new weights get gradient
    # at once (decoder) or after one step (encoder, like any zero-initialised branch)
    depth = patch_channel_index(4, 4)[:, 3]
    opt = torch.optim.SGD(rgbd.parameters(), lr=0.1)
    grads = []
    for _ in range(2):
        opt.zero_grad()
        (rgbd(x).reconstruction[:, 3] - x[:, 3]).abs().mean().backward()
        grads.append((rgbd.decoder.conv_out[0].weight.grad[depth].abs().sum(),
                      rgbd.encoder.conv_in[0].weight.grad[:, depth].abs().sum()))
        opt.step()
    assert grads[0][0] > 0 and grads[1][1] > 0


# ----------------------------------------------------------------------------- tiling

def test_tile_blending_is_a_partition_of_unity():
    x = torch.randn(1, 2, 3, 40, 56, dtype=torch.float64)
    same = _tiled(lambda t: t, x, 16, 8, 8, 1.0, "pixel")
    torch.testing.assert_close(same, x)
    up = _tiled(lambda t: t.repeat_interleave(2, 3).repeat_interleave(2, 4), x, 24, 8, 8, 2.0,
                "latent")
    torch.testing.assert_close(up, x.repeat_interleave(2, 3).repeat_interleave(2, 4))


def test_tiled_calls_equal_whole_when_one_tile_and_blend_otherwise(tiny):
    x = video(t=9, h=32, w=32)
    with torch.no_grad():
        z = tiny.encode(x)
        assert torch.equal(tiny.encode_tiled(x, 32, 8), z)
        assert torch.equal(tiny.decode_tiled(z, 4, 1), tiny.decode(z))
        zt = tiny.encode_tiled(x, 16, 8)
        yt = tiny.decode_tiled(z, 2, 1)
    assert zt.shape == z.shape and yt.shape == x.shape
    assert torch.isfinite(zt).all() and torch.isfinite(yt).all()
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny.encode_tiled(x, 12, 4)


def test_tiny_4x8x8_preset_keeps_twice_the_latent_frames():
    import torch

    from rgbd_world.tokenizer import VideoTokenizer

    m = VideoTokenizer("tiny-4x8x8", in_channels=4, geometry_channels=8).eval()
    x = torch.rand(1, 4, 17, 32, 32) * 2 - 1
    with torch.no_grad():
        out = m(x)
    assert out.latent.shape == (1, 24, 5, 4, 4)
    assert out.reconstruction.shape == x.shape
    assert m.latent_shape(17, 32, 32) == (24, 5, 4, 4)
