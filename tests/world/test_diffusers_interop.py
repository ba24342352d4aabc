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
