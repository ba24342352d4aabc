"""Weights both ways between our models and diffusers' Cosmos models (AutoencoderKLCosmos,
CosmosTransformer3DModel): equal outputs in fp32 (relative error <= 1e-5) on small random
models whose norms and biases are moved off their defaults. diffusers is a test dependency:
these tests never skip."""
import pytest
import torch
from diffusers import AutoencoderKLCosmos

from rgbd_world.tokenizer import VideoTokenizer
from rgbd_world.tokenizer.diffusers_compat import (DiffusersLayoutError,
                                                   tokenizer_config_from_diffusers)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _perturb(module, scale=0.3, seed=0):
    """Random offsets on every norm weight/bias and every bias (off their init values)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def _video(seed=1, c=3, t=9, h=32, w=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, c, t, h, w, generator=g) * 2 - 1


TOKENIZER_LAYOUTS = {
    "8x8x8": {},
    # the CV4x8x8 shape: temporal 4, a shallower decoder than encoder
    "4x8x8": dict(temporal_compression=4, decoder_channels_mult=(1, 2)),
}


@pytest.mark.parametrize("layout", sorted(TOKENIZER_LAYOUTS))
def test_tokenizer_to_diffusers_same_latents_and_reconstructions(layout):
    torch.manual_seed(0)
    tok = VideoTokenizer("tiny", **TOKENIZER_LAYOUTS[layout]).eval()
    _perturb(tok)
    vae = tok.to_diffusers()
    assert isinstance(vae, AutoencoderKLCosmos)
    x = _video()
    with torch.no_grad():
        z, zd = tok.encode(x), vae.encode(x).latent_dist.mode()
        r, rd = tok.decode(z), vae.decode(z).sample
    assert zd.shape == z.shape and rd.shape == r.shape == x.shape
    assert rel(zd, z) <= 1e-5 and rel(rd, r) <= 1e-5


def test_tokenizer_from_diffusers_same_latents_and_reconstructions():
    torch.manual_seed(0)
    vae = AutoencoderKLCosmos(in_channels=3, out_channels=3, latent_channels=8,
                              encoder_block_out_channels=(16, 16, 32, 32),
                              decode_block_out_channels=(16, 32, 32, 32),
                              attention_resolutions=(8,), resolution=64, num_layers=1,
                              patch_size=4, spatial_compression_ratio=8,
                              temporal_compression_ratio=8).eval()
    _perturb(vae)
    norm = vae.encoder.down_blocks[0].resnets[0].norm1.norm
    assert not torch.equal(norm.weight, torch.ones_like(norm.weight))
    tok = VideoTokenizer.from_diffusers(vae)
    assert (tok.config.channels, tok.config.channels_mult, tok.config.latent_channels) == \
        (16, (1, 2, 2), 8)
    x = _video(seed=2)
    with torch.no_grad():
        z, zd = tok.encode(x), vae.encode(x).latent_dist.mode()
        r, rd = tok.decode(zd), vae.decode(zd).sample
    assert rel(z, zd) <= 1e-5 and rel(r, rd) <= 1e-5
    # and back: the same diffusers state dict
    again = tok.to_diffusers().state_dict()
    for k, v in vae.state_dict().items():
        assert torch.equal(again[k], v), k


def test_tokenizer_from_a_saved_diffusers_directory(tmp_path):
    from rgbd_world.tokenizer.checkpoint import load_any_tokenizer
    torch.manual_seed(0)
    tok = VideoTokenizer("tiny").eval()
    _perturb(tok, seed=3)
    tok.to_diffusers().save_pretrained(tmp_path / "vae")
    loaded = load_any_tokenizer(tmp_path / "vae")  # what model.teacher / rgb_tokenizer accept
    x = _video(seed=4)
    with torch.no_grad():
        assert torch.equal(loaded(x).reconstruction, tok(x).reconstruction)


def test_tokenizer_diffusers_layout_errors():
    base = dict(in_channels=3, out_channels=3, latent_channels=8,
                encoder_block_out_channels=(16, 16, 32, 32),
                decode_block_out_channels=(16, 32, 32, 32), attention_resolutions=(8,),
                resolution=64, num_layers=1, patch_size=4, patch_type="haar",
                spatial_compression_ratio=8, temporal_compression_ratio=8)
    with pytest.raises(DiffusersLayoutError, match="patch_type must be 'haar'.*'rearrange'"):
        tokenizer_config_from_diffusers(dict(base, patch_type="rearrange"))
    with pytest.raises(DiffusersLayoutError, match=r"widest level repeated.*\[16, 32, 32, 64\]"):
        tokenizer_config_from_diffusers(dict(base, decode_block_out_channels=(16, 32, 32, 64)))
    with pytest.raises(DiffusersLayoutError, match="not a Cosmos continuous-video"):
        tokenizer_config_from_diffusers(dict(base, spatial_compression_ratio=64))
    with pytest.raises(DiffusersLayoutError, match="expected a diffusers AutoencoderKLCosmos, "
                                                    "found Linear"):
        VideoTokenizer.from_diffusers(torch.nn.Linear(2, 2))
    with pytest.raises(DiffusersLayoutError, match="geometry_channels=4"):
        VideoTokenizer("tiny", geometry_channels=4).to_diffusers()


# ----------------------------------------------------------------------------- DiT

from types import SimpleNamespace  # noqa: E402

import torch.nn.functional as F  # noqa: E402
from diffusers import CosmosTransformer3DModel  # noqa: E402
from diffusers.models.transformers import transformer_cosmos  # noqa: E402

from rgbd_world.dit import DiT, DiTConfig  # noqa: E402
from rgbd_world.dit.config import PREDICT2  # noqa: E402
from rgbd_world.dit.diffusers_compat import (DiTLoadError, dit_config_from_diffusers,  # noqa: E402
                                             padding_mask_to_latent)


@pytest.fixture
def nearest_resize(monkeypatch):
    """diffusers resizes the padding mask with torchvision, whose PyPI wheel does not import
    beside the CPU torch wheel: supply its nearest-neighbour resize (F.interpolate 'nearest',
    what torchvision does for tensors)."""
    def resize(img, size, interpolation=None):
        assert interpolation == "nearest"
        return F.interpolate(img, size=list(size), mode="nearest")

    shim = SimpleNamespace(functional=SimpleNamespace(resize=resize),
                           InterpolationMode=SimpleNamespace(NEAREST="nearest"))
    monkeypatch.setattr(transformer_cosmos, "transforms", shim, raising=False)


def _randomize(module, seed=0):
    """Every parameter random (norm weights around 1), so zero-initialised parts count too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.2 * noise if p.dim() == 1 else noise / p.shape[-1] ** 0.5)


def _tiny_transformer(**overrides):
    kw = dict(in_channels=5, out_channels=4, num_attention_heads=2, attention_head_dim=12,
              num_layers=2, mlp_ratio=2.0, text_embed_dim=8, adaln_lora_dim=4,
              rope_scale=(1.0, 3.0, 3.0), concat_padding_mask=True, extra_pos_embed_type=None)
    kw.update(overrides)
    torch.manual_seed(0)
    model = CosmosTransformer3DModel(**kw).eval()
    _randomize(model)
    return model


def _dit_inputs(b=2, c=4, t=3, h=8, w=8, text_len=5, text_dim=8, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, t, h, w, generator=g)
    tt = torch.rand(b, t, generator=g)
    text = torch.randn(b, text_len, text_dim, generator=g)
    mask = torch.rand(b, text_len, generator=g) > 0.4
    mask[:, 0] = True                                 # every row attends somewhere
    mask[0, -2:] = False
    cond_mask = torch.zeros(b, t)
    cond_mask[0, 0] = 1.0                             # a frame given clean
    tt = tt * (1 - cond_mask)                         # ... at t = 0
    pad = (torch.rand(1, 1, 2 * h, 2 * w, generator=g) > 0.7).float()  # pixel resolution
    return x, tt, text, mask, cond_mask, pad


def test_dit_from_diffusers_equal_outputs(nearest_resize):
    tr = _tiny_transformer()
    dit = DiT.from_diffusers(tr)
    assert dit.config.is_predict2 and dit.config.cond_channels == 0
    assert dit.config.qk_norm_eps == 1e-5 and dit.config.rope_scale == (1.0, 3.0, 3.0)
    x, t, text, mask, cond_mask, pad = _dit_inputs()
    b, _, frames, h, w = x.shape
    assert pad.sum() > 0 and (~mask).any()
    cm_full = cond_mask[:, None, :, None, None].expand(b, 1, frames, h, w)
    with torch.no_grad():
        ref = tr(x, t[:, None, :, None, None], text, attention_mask=mask,
                 condition_mask=cm_full, padding_mask=pad, return_dict=False)[0]
        out = dit(x, t, text, text_mask=mask, cond_mask=cond_mask,
                  padding_mask=padding_mask_to_latent(pad, b, frames, h, w))
        # each input matters: a different mask, padding or per-frame time changes the output
        other = dit(x, t, text, text_mask=mask, cond_mask=cond_mask)
        ref_shared_t = tr(x, t[:, :1].expand(b, frames)[:, None, :, None, None], text,
                          attention_mask=mask, condition_mask=cm_full, padding_mask=pad,
                          return_dict=False)[0]
        out_shared_t = dit(x, t[:, 0], text, text_mask=mask, cond_mask=cond_mask,
                           padding_mask=padding_mask_to_latent(pad, b, frames, h, w))
    assert out.shape == ref.shape == x.shape
    assert rel(out, ref) <= 1e-5
    assert rel(out_shared_t, ref_shared_t) <= 1e-5
    assert rel(other, ref) > 1e-3 and rel(out_shared_t, out) > 1e-3


def test_dit_to_diffusers_equal_outputs_with_cond_channels(nearest_resize):
    cfg = DiTConfig(latent_channels=4, cond_channels=3, hidden=24, depth=2, heads=2, mlp_ratio=2,
                    adaln_rank=4, text_dim=8, timestep_dim=24, **PREDICT2)
    torch.manual_seed(0)
    dit = DiT(cfg).eval()
    _randomize(dit, seed=5)
    tr = dit.to_diffusers()
    assert isinstance(tr, CosmosTransformer3DModel) and tr.config.in_channels == 4 + 3 + 1
    x, t, text, mask, cond_mask, pad = _dit_inputs(seed=4)
    b, _, frames, h, w = x.shape
    cond = torch.randn(b, 3, frames, h, w)
    cm_full = cond_mask[:, None, :, None, None].expand(b, 1, frames, h, w)
    with torch.no_grad():
        out = dit(x, t, text, text_mask=mask, cond=cond, cond_mask=cond_mask,
                  padding_mask=padding_mask_to_latent(pad, b, frames, h, w))
        ref = tr(torch.cat([x, cond], 1), t[:, None, :, None, None], text, attention_mask=mask,
                 condition_mask=cm_full, padding_mask=pad, return_dict=False)[0]
    assert rel(out, ref) <= 1e-5
    back = DiT.from_diffusers(tr)
    assert back.config.cond_channels == 3 and back.config.qk_norm_eps == cfg.qk_norm_eps
    for k, v in dit.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_dit_from_diffusers_without_condition_mask_channel(nearest_resize):
    # Text2Image layout: in_channels == out_channels; our condition-mask channel gets zero weights
    tr = _tiny_transformer(in_channels=4, rope_scale=(1.0, 4.0, 4.0))
    dit = DiT.from_diffusers(tr)
    x, t, text, mask, _, pad = _dit_inputs(seed=6)
    b, _, frames, h, w = x.shape
    with torch.no_grad():
        ref = tr(x, t[:, 0], text, attention_mask=mask, padding_mask=pad, return_dict=False)[0]
        out = dit(x, t[:, 0], text, text_mask=mask,
                  padding_mask=padding_mask_to_latent(pad, b, frames, h, w))
    assert rel(out, ref) <= 1e-5


def test_dit_diffusers_layout_errors():
    with pytest.raises(DiTLoadError, match="extra_pos_embed_type None.*'learnable'"):
        dit_config_from_diffusers(dict(_tiny_transformer().config, extra_pos_embed_type="learnable"))
    with pytest.raises(DiTLoadError, match=r"expected patch_size \(1, 2, 2\), found \(1, 4, 4\)"):
        dit_config_from_diffusers(dict(_tiny_transformer().config, patch_size=(1, 4, 4)))
    with pytest.raises(DiTLoadError, match="differs in: timestep_scale=1000.0 .expected 1.0."):
        DiT("tiny").to_diffusers()
    with pytest.raises(DiTLoadError, match="expected a diffusers CosmosTransformer3DModel, found "
                                           "Linear"):
        DiT.from_diffusers(torch.nn.Linear(2, 2))
