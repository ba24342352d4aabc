"""apply_rgbd_kernels on diffusers' video VAEs and DiTs: equal outputs and gradients, shared
weights, chunked decoding, the count returned, non-causal layers left alone, and the Triton
backend (interpreter) on every family's conv conventions at tiny sizes.

The reference is always the unpatched diffusers model (or layer) on the same inputs.
"""
import copy
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import rgbd_kernels as rk
from rgbd_kernels.integrations import (CogVideoXCausalConv3d, PaddedCausalConv3d,
                                       RgbdAttnProcessor, apply_rgbd_kernels,
                                       apply_rgbd_kernels_to_wan)
from rgbd_kernels.integrations import attention as integration_attention
from rgbd_kernels.integrations import padded_causal_conv3d as padded_module
from rgbd_kernels.integrations.apply import _converter
from rgbd_kernels.testing import assert_parity

diffusers = pytest.importorskip("diffusers")
from diffusers.models.autoencoders import autoencoder_kl_cogvideox as cog_mod  # noqa: E402
from diffusers.models.autoencoders import autoencoder_kl_cosmos as cosmos_mod  # noqa: E402
from diffusers.models.autoencoders import autoencoder_kl_hunyuan_video as hunyuan_mod  # noqa: E402
from diffusers.models.autoencoders import autoencoder_kl_ltx as ltx_mod  # noqa: E402
from diffusers.models.autoencoders import autoencoder_kl_wan as wan_mod  # noqa: E402

FP32 = 1e-5
ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- tiny VAEs

def wan_vae():
    vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1,
                                     attn_scales=[], temperal_downsample=[True])
    vae.spatial_compression_ratio = 2  # this tiny config's (tiling reads it)
    return vae


def cogvideox_vae():
    vae = diffusers.AutoencoderKLCogVideoX(
        down_block_types=("CogVideoXDownBlock3D",) * 2, up_block_types=("CogVideoXUpBlock3D",) * 2,
        block_out_channels=(8, 16), latent_channels=4, layers_per_block=1, norm_num_groups=4,
        temporal_compression_ratio=2)
    vae.num_latent_frames_batch_size = 1  # decode latent frame by frame through conv_cache
    return vae


def hunyuan_vae():
    return diffusers.AutoencoderKLHunyuanVideo(
        latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 3,
        up_block_types=("HunyuanVideoUpBlock3D",) * 3, block_out_channels=(8, 16, 16),
        layers_per_block=1, norm_num_groups=4, temporal_compression_ratio=4,
        spatial_compression_ratio=4, mid_block_add_attention=False)


def ltx_vae(encoder_causal=True, decoder_causal=True):
    return diffusers.AutoencoderKLLTXVideo(
        latent_channels=4, block_out_channels=(8, 16), decoder_block_out_channels=(8, 16),
        layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
        spatio_temporal_scaling=(True, False), decoder_spatio_temporal_scaling=(True, False),
        decoder_inject_noise=(False, False, False), upsample_residual=(False, False),
        upsample_factor=(1, 1), patch_size=1, patch_size_t=1, encoder_causal=encoder_causal,
        decoder_causal=decoder_causal)


def mochi_vae():
    return diffusers.AutoencoderKLMochi(
        in_channels=15, latent_channels=4, encoder_block_out_channels=(32,) * 4,
        decoder_block_out_channels=(32,) * 4, layers_per_block=(1, 1, 1, 1, 1),
        add_attention_block=(False,) * 5)  # softmax over 1-2 frames: ill-conditioned gradients


def cosmos_vae():
    return diffusers.AutoencoderKLCosmos(
        latent_channels=4, encoder_block_out_channels=(8, 16), decode_block_out_channels=(8, 16),
        attention_resolutions=(), resolution=16, num_layers=1, patch_size=2, patch_type="haar",
        spatial_compression_ratio=4, temporal_compression_ratio=4)


# family -> (builder, input (B, C, T, H, W), diffusers conv class). The frame counts make the
# models' own chunking run: Wan encodes 1 + 4 frames and decodes frame by frame with its
# feature cache; CogVideoX decodes its 3 latent frames one by one through conv_cache. 16x16
# frames: at 8x8 the deepest GroupNorms see a pixel or two per group, and fp32 rounding in
# their backward (the unpatched model's too) grows to ~1e-5.
VAES = {
    "wan": (wan_vae, (1, 3, 5, 16, 16), wan_mod.WanCausalConv3d),
    "cogvideox": (cogvideox_vae, (1, 3, 5, 16, 16), cog_mod.CogVideoXCausalConv3d),
    "hunyuan_video": (hunyuan_vae, (1, 3, 5, 16, 16), hunyuan_mod.HunyuanVideoCausalConv3d),
    "ltx_video": (ltx_vae, (1, 3, 5, 16, 16), ltx_mod.LTXVideoCausalConv3d),
    "mochi": (mochi_vae, (1, 3, 7, 16, 16), cog_mod.CogVideoXCausalConv3d),
    "cosmos": (cosmos_vae, (1, 3, 5, 16, 16), cosmos_mod.CosmosCausalConv3d),
}


def encode_decode(vae, x):
    z = vae.encode(x).latent_dist.mode()
    return z, vae.decode(z).sample


def run_with_grads(vae, x, seeds=(1, 2)):
    """(z, y, dx, {param: grad}) for loss = <z, gz> + <y, gy> with fixed random gz, gy."""
    vae.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    z, y = encode_decode(vae, x)
    gz = torch.randn(z.shape, generator=torch.Generator().manual_seed(seeds[0]))
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seeds[1]))
    ((z * gz).sum() + (y * gy).sum()).backward()
    grads = {p: p.grad.detach().clone() for p in vae.parameters() if p.grad is not None}
    return z.detach(), y.detach(), x.grad.detach().clone(), grads


def assert_grads_match(grads, ref_grads, rtol=FP32):
    """Parameter gradients equal to the unpatched model's: each weight (>= 2-D) within rtol,
    and all gradients together within rtol. Biases are held to the joint bound only: a bias
    gradient sums every output position with heavy cancellation (exactly 0 before a
    GroupNorm), so its own relative error measures summation order, not correctness."""
    assert grads.keys() == ref_grads.keys()
    keys = list(ref_grads)
    assert_parity(torch.cat([grads[p].flatten() for p in keys]),
                  torch.cat([ref_grads[p].flatten() for p in keys]), rtol=rtol,
                  name="all parameter gradients")
    for p in keys:
        if p.dim() >= 2:
            assert_parity(grads[p], ref_grads[p], rtol=rtol,
                          name=f"grad of a {tuple(p.shape)} weight")


def causal_layers(vae, cls):
    """{path: weight Parameter} of the layers apply_rgbd_kernels must replace."""
    out = {}
    for name, m in vae.named_modules():
        if type(m) is cls and getattr(m, "is_causal", True):
            inner = m.conv if hasattr(m, "conv") else m
            out[name] = inner.weight
    return out


@pytest.fixture
def count_op_calls(monkeypatch):
    """Counts the rgbd_kernels conv calls the replaced layers make."""
    calls = {"n": 0}
    for name in ("causal_conv3d", "causal_conv3d_stream"):
        real = getattr(padded_module, name)

        def counted(*args, _real=real, **kwargs):
            calls["n"] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(padded_module, name, counted)
    return calls


# ----------------------------------------------------------------------------- every VAE family

@pytest.mark.parametrize("family", list(VAES))
def test_patched_vae_has_equal_outputs_and_gradients(family, count_op_calls):
    build, shape, cls = VAES[family]
    vae = build()
    x = torch.randn(shape)
    z0, y0, dx0, g0 = run_with_grads(vae, x)
    layers = causal_layers(vae, cls)
    params = {id(p) for p in vae.parameters()}
    keys = list(vae.state_dict())

    n = apply_rgbd_kernels(vae)

    assert n == len(layers) > 0
    for path, weight in layers.items():  # replaced, computing with the very same Parameter
        new = vae.get_submodule(path)
        assert isinstance(new, rk.nn.CausalConv3d) and new.weight is weight
    assert {id(p) for p in vae.parameters()} == params
    assert sorted(vae.state_dict()) == sorted(keys)
    z1, y1, dx1, g1 = run_with_grads(vae, x)
    assert count_op_calls["n"] >= len(layers)
    assert_parity(z1, z0, rtol=FP32, name="latent")
    assert_parity(y1, y0, rtol=FP32, name="decoded video")
    assert_parity(dx1, dx0, rtol=FP32, name="d loss / d input")
    assert_grads_match(g1, g0)
    assert apply_rgbd_kernels(vae) == 0  # a second call finds nothing left to replace


def test_state_dict_round_trips_with_the_unpatched_model():
    vae = cogvideox_vae()
    patched = copy.deepcopy(vae)
    apply_rgbd_kernels(patched)
    ref_state = vae.state_dict()
    for key, value in patched.state_dict().items():
        assert torch.equal(value, ref_state[key]), key
    fresh = cogvideox_vae()
    fresh.load_state_dict(patched.state_dict(), strict=True)  # saved patched -> unpatched
    apply_rgbd_kernels(fresh)
    fresh.load_state_dict(vae.state_dict(), strict=True)  # unpatched checkpoint -> patched
    x = torch.randn(1, 3, 5, 8, 8)
    with torch.no_grad():
        assert_parity(encode_decode(fresh, x)[1], encode_decode(vae, x)[1], rtol=FP32)


# ----------------------------------------------------------------------------- chunked decoding

def _hunyuan_temporal_tiles(vae):
    vae.enable_tiling(tile_sample_min_num_frames=4, tile_sample_stride_num_frames=4)


def _ltx_framewise(vae):
    vae.enable_tiling(tile_sample_min_num_frames=4, tile_sample_stride_num_frames=2)
    vae.use_framewise_decoding = True


def _spatial_tiles(vae):  # 2 x 2 tiles (no overlap: fewer tiles, same code path)
    vae.enable_tiling(tile_sample_min_height=16, tile_sample_min_width=16,
                      tile_sample_stride_height=16, tile_sample_stride_width=16)


# Wan's and CogVideoX's default paths are already chunked (see VAES); these are the options.
CHUNKED = {  # case -> (family, option, latent (B, C, T, H, W) to decode, the chunked method)
    "hunyuan-temporal-tiles": ("hunyuan_video", _hunyuan_temporal_tiles, (1, 4, 3, 2, 2),
                               "_temporal_tiled_decode"),
    "ltx-framewise-decoding": ("ltx_video", _ltx_framewise, (1, 4, 5, 4, 4),
                               "_temporal_tiled_decode"),
    "mochi-spatial-tiles": ("mochi", _spatial_tiles, (1, 4, 2, 4, 4), "tiled_decode"),
    "wan-spatial-tiles": ("wan", _spatial_tiles, (1, 4, 1, 16, 16), "tiled_decode"),
}


@pytest.mark.parametrize("case", list(CHUNKED))
def test_chunked_decoding_matches(case):
    family, option, latent_shape, method = CHUNKED[case]
    vae = VAES[family][0]()
    option(vae)
    calls = []
    real = getattr(vae, method)
    setattr(vae, method, lambda *a, **k: calls.append(1) or real(*a, **k))
    z = torch.randn(latent_shape)
    with torch.no_grad():
        ref = vae.decode(z).sample
        assert apply_rgbd_kernels(vae) > 0
        out = vae.decode(z).sample
    assert len(calls) == 2  # the chunked path ran, unpatched and patched
    assert_parity(out, ref, rtol=FP32)


def test_cogvideox_long_inputs_are_streamed_in_chunks(count_op_calls):
    """The safe conv's split of long inputs: streamed through the op, same result."""
    vae = cogvideox_vae()
    x = torch.randn(1, 3, 5, 8, 8)
    with torch.no_grad():
        ref = encode_decode(vae, x)
        apply_rgbd_kernels(vae)
        calls_whole = count_op_calls["n"]
        encode_decode(vae, x)
        calls_whole = count_op_calls["n"] - calls_whole
        for m in vae.modules():
            if isinstance(m, CogVideoXCausalConv3d):
                m.split_gib = 1e-7  # every input counts as "long"
        before = count_op_calls["n"]
        out = encode_decode(vae, x)
    assert count_op_calls["n"] - before > calls_whole  # really split
    for o, r in zip(out, ref):
        assert_parity(o, r, rtol=FP32)


# ----------------------------------------------------------------------------- left alone

def test_non_causal_convs_are_left_untouched(caplog):
    vae = ltx_vae(encoder_causal=False, decoder_causal=False)
    before = dict(vae.named_modules())
    x = torch.randn(1, 3, 5, 8, 8)
    with torch.no_grad():
        ref = encode_decode(vae, x)
        with caplog.at_level(logging.DEBUG, logger="rgbd_kernels.integrations"):
            assert apply_rgbd_kernels(vae) == 0
        after = dict(vae.named_modules())
        assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
        for o, r in zip(encode_decode(vae, x), ref):
            assert torch.equal(o, r)
    assert "is_causal=False" in caplog.text


def test_ltx_default_decoder_stays_symmetric_while_encoder_is_patched():
    vae = ltx_vae(encoder_causal=True, decoder_causal=False)
    encoder_layers = len(causal_layers(vae.encoder, ltx_mod.LTXVideoCausalConv3d))
    decoder_layers = [m for m in vae.decoder.modules() if type(m) is ltx_mod.LTXVideoCausalConv3d]
    assert apply_rgbd_kernels(vae) == encoder_layers > 0
    assert [m for m in vae.decoder.modules()
            if type(m) is ltx_mod.LTXVideoCausalConv3d] == decoder_layers


def test_plain_and_unknown_convs_are_left_alone(caplog):
    class OtherCausalConv3d(nn.Conv3d):
        pass

    model = nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), OtherCausalConv3d(4, 4, 1))
    with caplog.at_level(logging.DEBUG, logger="rgbd_kernels.integrations"):
        assert apply_rgbd_kernels(model) == 0
    assert type(model[0]) is nn.Conv3d and type(model[1]) is OtherCausalConv3d
    assert caplog.text.count("not a recognised causal 3D convolution") == 2


def test_family_selection():
    vae = wan_vae()
    assert apply_rgbd_kernels(vae, families=("cosmos",)) == 0
    assert apply_rgbd_kernels_to_wan(vae) == len(causal_layers(wan_vae(), wan_mod.WanCausalConv3d))
    with pytest.raises(ValueError, match="families"):
        apply_rgbd_kernels(vae, families=("imagen",))
    with pytest.raises(ValueError, match="nn.Module"):
        apply_rgbd_kernels("not a model")


# ----------------------------------------------------------------------------- layers, backends

LAYERS = {  # name -> (diffusers layer factory, call kind, cache frames)
    "wan-k3-nocache": (lambda: wan_mod.WanCausalConv3d(4, 6, 3, padding=1), "wan", None),
    "wan-k3-cache2": (lambda: wan_mod.WanCausalConv3d(4, 6, 3, padding=1), "wan", 2),
    "wan-k3-cache1": (lambda: wan_mod.WanCausalConv3d(4, 6, 3, padding=1), "wan", 1),
    "wan-time-downsample": (lambda: wan_mod.WanCausalConv3d(4, 4, (3, 1, 1), stride=(2, 1, 1)),
                            "wan", None),
    "cogvideox-first": (lambda: cog_mod.CogVideoXCausalConv3d(4, 6, 3, pad_mode="first"),
                        "cog", None),
    "cogvideox-cache": (lambda: cog_mod.CogVideoXCausalConv3d(4, 6, 3, pad_mode="first"),
                        "cog", 2),
    "mochi-replicate": (lambda: cog_mod.CogVideoXCausalConv3d(4, 6, 3, pad_mode="replicate"),
                        "cog", None),
    "mochi-strided-in": (lambda: cog_mod.CogVideoXCausalConv3d(4, 6, (3, 2, 2), stride=(3, 2, 2),
                                                               pad_mode="replicate"), "cog", None),
    "hunyuan-k3": (lambda: hunyuan_mod.HunyuanVideoCausalConv3d(4, 6, 3), "plain", None),
    "hunyuan-downsample": (lambda: hunyuan_mod.HunyuanVideoCausalConv3d(4, 6, 3, stride=2,
                                                                        padding=1), "plain", None),
    "hunyuan-constant": (lambda: hunyuan_mod.HunyuanVideoCausalConv3d(4, 6, 3, pad_mode="constant"),
                         "plain", None),
    "ltx-k3": (lambda: ltx_mod.LTXVideoCausalConv3d(4, 6, 3), "plain", None),
    "ltx-time-stride": (lambda: ltx_mod.LTXVideoCausalConv3d(4, 6, 3, stride=(2, 1, 1)),
                        "plain", None),
    "cosmos-spatial": (lambda: cosmos_mod.CosmosCausalConv3d(4, 6, (1, 3, 3), padding=1),
                       "plain", None),
    "cosmos-temporal-down": (lambda: cosmos_mod.CosmosCausalConv3d(
        4, 6, (3, 1, 1), stride=(2, 1, 1), padding=0), "plain", None),
    "cosmos-replicate-pad": (lambda: cosmos_mod.CosmosCausalConv3d(4, 6, 3, padding=1,
                                                                   pad_mode="replicate"),
                             "plain", None),
}


def _call(layer, kind, x, cache):
    if kind == "wan":
        return layer(x, cache)
    if kind == "cog":
        y, new_cache = layer(x, conv_cache=cache)
        return y if new_cache is None else torch.cat([y.flatten(), new_cache.flatten()])
    return layer(x)


# On the Triton kernels (interpreted on CPU, slow) one case per way PaddedCausalConv3d feeds
# the op: zeros + cached frames as its cache (Wan), a head shorter than the op's padding (frames
# of x complete the cache), a model's cache as the op's (CogVideoX), a head longer than the op's
# padding that the cache still holds (stride 3), a head longer than the cache holds (streamed)
# with a zero tail and a replicate pre-pad (HunyuanVideo). The op's own padding runs in the
# whole Cosmos VAE below.
TRITON_LAYERS = ("wan-k3-cache1", "wan-time-downsample", "cogvideox-cache", "mochi-strided-in",
                 "hunyuan-downsample")


@pytest.mark.parametrize("name,backend", [(n, "auto") for n in LAYERS]
                         + [(n, "triton") for n in TRITON_LAYERS])
def test_each_convention_matches_the_diffusers_layer(name, backend):
    """Forward and all gradients (input, cache, weight, bias) vs the diffusers layer, on the
    default path and on the Triton kernels (interpreter on CPU), at tiny sizes."""
    factory, kind, cache_frames = LAYERS[name]
    orig = factory()
    new, reason = _converter(orig)[1](orig)
    assert new is not None, reason
    assert new.weight is (orig.conv.weight if hasattr(orig, "conv") else orig.weight)
    x = torch.randn(2, orig.conv.in_channels if hasattr(orig, "conv") else orig.in_channels,
                    6, 6, 5)
    cache = None if cache_frames is None else torch.randn(*x.shape[:2], cache_frames, 6, 5)
    leaves = [t for t in (x, cache) if t is not None]

    def grads(layer, use):
        for t in leaves:
            t.requires_grad_(True)
            t.grad = None
        layer.zero_grad(set_to_none=True)
        with rk.use_backend(use):
            out = _call(layer, kind, x, cache)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), [t.grad.clone() for t in leaves], [
            p.grad.clone() for p in (new.weight, new.bias) if p is not None]

    ref_out, ref_in, ref_w = grads(orig, "auto")
    out, d_in, d_w = grads(new, backend)
    assert_parity(out, ref_out, rtol=FP32, name="output")
    for a, b in zip(d_in + d_w, ref_in + ref_w):
        assert_parity(a, b, rtol=FP32, name="gradient")


def test_tiny_vae_under_triton_backend():
    """A whole (tiny) patched VAE on the Triton kernels equals the unpatched one."""
    vae = cosmos_vae()
    x = torch.randn(1, 3, 5, 8, 8)
    with torch.no_grad():
        z0 = vae.encode(x).latent_dist.mode()
        apply_rgbd_kernels(vae)
        with rk.use_backend("triton"):
            z1 = vae.encode(x).latent_dist.mode()
    assert_parity(z1, z0, rtol=FP32)


# ----------------------------------------------------------------------------- attention

def cosmos_dit():
    return diffusers.CosmosTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
        mlp_ratio=2.0, text_embed_dim=16, adaln_lora_dim=8, max_size=(4, 16, 16),
        patch_size=(1, 2, 2), rope_scale=(1.0, 1.0, 1.0),
        concat_padding_mask=False,  # True resizes the mask with torchvision (not installable here)
        extra_pos_embed_type=None)


def wan_dit():
    return diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
        out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


DITS = {"cosmos": (cosmos_dit, 1.0), "wan": (wan_dit, 1000.0)}


@pytest.fixture
def count_attention_calls(monkeypatch):
    calls = {"n": 0}
    real = integration_attention.attention

    def counted(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(integration_attention, "attention", counted)
    return calls


def _dit_inputs(family, dtype=torch.float32):
    x = torch.randn(2, 4, 3, 8, 8, dtype=dtype)
    t = torch.rand(2) * DITS[family][1]
    ctx = torch.randn(2, 7, 16, dtype=dtype)
    return dict(hidden_states=x, timestep=t, encoder_hidden_states=ctx)


@pytest.mark.parametrize("family", list(DITS))
def test_attention_processor_matches_diffusers(family, count_attention_calls):
    model = DITS[family][0]()
    kw = _dit_inputs(family)
    x = kw["hidden_states"].requires_grad_(True)

    def run():
        model.zero_grad(set_to_none=True)
        x.grad = None
        out = model(**kw, return_dict=False)[0]
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), x.grad.clone(), {p: p.grad.clone() for p in model.parameters()
                                              if p.grad is not None}

    ref, dx_ref, g_ref = run()
    assert apply_rgbd_kernels(model, attention=True) == 4  # self + cross, two blocks
    assert all(isinstance(m.processor, RgbdAttnProcessor) for m in model.modules()
               if hasattr(m, "processor"))
    out, dx, g = run()
    assert count_attention_calls["n"] == 4
    assert_parity(out, ref, rtol=FP32)
    assert_parity(dx, dx_ref, rtol=FP32)
    assert_grads_match(g, g_ref)
    with rk.use_backend("reference"):  # the float32 math path, not SDPA
        with torch.no_grad():
            assert_parity(model(**kw, return_dict=False)[0], ref, rtol=FP32)


@pytest.mark.parametrize("family", list(DITS))
def test_attention_processor_bf16(family):
    model = DITS[family][0]().to(torch.bfloat16)
    patched = copy.deepcopy(model)
    apply_rgbd_kernels(patched, attention=True)
    kw = _dit_inputs(family, torch.bfloat16)
    with torch.no_grad():
        assert_parity(patched(**kw, return_dict=False)[0], model(**kw, return_dict=False)[0],
                      rtol=2e-2)


def test_wan_image_to_video_attention(count_attention_calls):
    """Wan I2V: the cross-attention's image branch (add_k_proj) runs on rk.attention too."""
    model = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
        out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=1, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, image_dim=8, added_kv_proj_dim=24)
    patched = copy.deepcopy(model)
    assert apply_rgbd_kernels(patched, attention=True) == 2
    kw = dict(hidden_states=torch.randn(2, 4, 2, 4, 4), timestep=torch.rand(2) * 1000,
              encoder_hidden_states=torch.randn(2, 512, 16),  # Wan's fixed text length
              encoder_hidden_states_image=torch.randn(2, 3, 8))
    with torch.no_grad():
        out = patched(**kw, return_dict=False)[0]
        assert_parity(out, model(**kw, return_dict=False)[0], rtol=FP32)
    assert count_attention_calls["n"] == 3  # self, text cross, image cross


def test_cosmos_text_padding_mask_and_fallback(count_attention_calls):
    model = cosmos_dit()
    patched = copy.deepcopy(model)
    apply_rgbd_kernels(patched, attention=True)
    kw = _dit_inputs("cosmos")
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 3:] = False  # the second caption is 3 tokens long
    with torch.no_grad():
        ref = model(**kw, attention_mask=mask, return_dict=False)[0]
        assert_parity(patched(**kw, attention_mask=mask, return_dict=False)[0], ref, rtol=FP32)
        assert count_attention_calls["n"] == 4  # the masked cross-attention ran on rk.attention
        additive = torch.zeros(2, 7).masked_fill(~mask, float("-inf"))
        ref = model(**kw, attention_mask=additive, return_dict=False)[0]
        out = patched(**kw, attention_mask=additive, return_dict=False)[0]
    assert count_attention_calls["n"] == 6  # additive mask: the original processor served it
    assert_parity(out, ref, rtol=FP32)


# ----------------------------------------------------------------------------- packaging

def test_importing_the_integrations_does_not_import_diffusers():
    code = ("import sys, rgbd_kernels, rgbd_kernels.integrations\n"
            "assert 'diffusers' not in sys.modules\n"
            "assert not any(m.split('.')[0] == 'rgbd_world' for m in sys.modules)\n"
            "print('OK')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-2000:]


def test_padded_layer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="head_zeros"):
        PaddedCausalConv3d(2, 2, 3, head_zeros=-1)
    with pytest.raises(ValueError, match="pre_pad_mode"):
        PaddedCausalConv3d(2, 2, 3, pre_pad=(1, 1), pre_pad_mode="mirror")
    with pytest.raises(ValueError, match="padding_mode"):
        PaddedCausalConv3d.from_conv(nn.Conv3d(2, 2, 3, padding=1, padding_mode="reflect"))


# ----------------------------------------------------------------------------- Cosmos-Tokenizer

COSMOS_TOKENIZER_SRC = os.environ.get("COSMOS_TOKENIZER_SRC")


@pytest.mark.skipif(not COSMOS_TOKENIZER_SRC, reason="set COSMOS_TOKENIZER_SRC to a local "
                    "checkout of NVIDIA's Cosmos-Tokenizer (not part of this repository)")
def test_cosmos_tokenizer_causal_conv(monkeypatch):
    monkeypatch.syspath_prepend(COSMOS_TOKENIZER_SRC)
    if "loguru" not in sys.modules:
        try:
            import loguru  # noqa: F401
        except ImportError:
            stub = types.ModuleType("loguru")
            stub.logger = logging.getLogger("loguru")
            monkeypatch.setitem(sys.modules, "loguru", stub)
    layers3d = pytest.importorskip("cosmos_tokenizer.modules.layers3d")
    model = nn.Sequential(
        layers3d.CausalConv3d(4, 6, 3, padding=1),
        layers3d.CausalConv3d(6, 6, (3, 1, 1), time_stride=2, padding=0),
        layers3d.CausalConv3d(6, 6, 3, padding=1, pad_mode="replicate"))
    x = torch.randn(2, 4, 5, 6, 6, requires_grad=True)
    ref = model(x)
    (ref.square().sum()).backward()
    g_ref = [p.grad.clone() for p in model.parameters()] + [x.grad.clone()]
    keys = list(model.state_dict())
    assert apply_rgbd_kernels(model) == 3
    assert sorted(model.state_dict()) == sorted(keys)  # "conv3d.weight" kept
    model.zero_grad()
    x.grad = None
    out = model(x)
    out.square().sum().backward()
    assert_parity(out, ref, rtol=FP32)
    for a, b in zip([p.grad for p in model.parameters()] + [x.grad], g_ref):
        assert_parity(a, b, rtol=FP32)
