"""apply_rgbd_kernels on diffusers' video VAEs: patched vs unpatched encode + decode, same run.

For each family (Wan, CogVideoX, HunyuanVideo, LTX-Video, Mochi, Cosmos) one VAE is built with
random weights, deep-copied and patched; the patched copy's ``encode(x).latent_dist.mode()``
then ``decode`` is timed against the unpatched original's, interleaved round by round
(``record_interleaved``: speedup_vs_reference > 1 means the patch is faster).

* CPU rows (fp32): reduced widths at 9 frames of 64x64: what the patch costs there (the op's
  CPU path is the same F.conv3d; what it adds is the custom op's dispatch and argument checks,
  about 0.1 ms a call, which shows against these sub-millisecond convolutions).
* CUDA rows (bf16, ``gpu`` marker, skipped without CUDA): the diffusers default configs (the
  published models' sizes) at 17 frames of 256x256, on the "auto" backend (cuDNN until the
  Triton kernels are measured faster on a shape) and on ``use_backend("triton")``.
Every row first checks the two outputs agree (fp32 1e-4, bf16 2e-2). Models are built once per
session and reused by the rows of their family.
Run: ``pytest benchmarks/test_bench_integrations.py --benchmark-only``.
"""
import copy

import pytest
import torch

from rgbd_kernels.backend import use_backend
from rgbd_kernels.testing import rel_error

from .conftest import DEVICE, record_interleaved

diffusers = pytest.importorskip("diffusers")


def _cpu_configs():
    d = diffusers
    return {
        "wan": (lambda: d.AutoencoderKLWan(base_dim=32, z_dim=8, dim_mult=[1, 2, 2],
                                           num_res_blocks=1, attn_scales=[],
                                           temperal_downsample=[False, True])),
        "cogvideox": (lambda: d.AutoencoderKLCogVideoX(
            down_block_types=("CogVideoXDownBlock3D",) * 3,
            up_block_types=("CogVideoXUpBlock3D",) * 3, block_out_channels=(32, 64, 64),
            latent_channels=8, layers_per_block=1, norm_num_groups=8)),
        "hunyuan_video": (lambda: d.AutoencoderKLHunyuanVideo(
            latent_channels=8, down_block_types=("HunyuanVideoDownBlock3D",) * 3,
            up_block_types=("HunyuanVideoUpBlock3D",) * 3, block_out_channels=(32, 64, 64),
            layers_per_block=1, norm_num_groups=8, temporal_compression_ratio=4,
            spatial_compression_ratio=4)),
        "ltx_video": (lambda: d.AutoencoderKLLTXVideo(
            latent_channels=8, block_out_channels=(32, 64, 64, 64),
            decoder_block_out_channels=(32, 64, 64, 64), layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1), decoder_causal=True)),
        "mochi": (lambda: d.AutoencoderKLMochi(
            in_channels=15, latent_channels=8, encoder_block_out_channels=(32, 64, 64, 64),
            decoder_block_out_channels=(32, 64, 64, 64), layers_per_block=(1, 1, 1, 1, 1))),
        "cosmos": (lambda: d.AutoencoderKLCosmos(
            latent_channels=8, encoder_block_out_channels=(32, 64, 64),
            decode_block_out_channels=(32, 64, 64), attention_resolutions=(),
            resolution=64, num_layers=1)),
    }


def _cuda_configs():  # the published models' default configs
    d = diffusers
    return {"wan": d.AutoencoderKLWan, "cogvideox": d.AutoencoderKLCogVideoX,
            "hunyuan_video": d.AutoencoderKLHunyuanVideo,
            "ltx_video": lambda: d.AutoencoderKLLTXVideo(decoder_causal=True),
            "mochi": d.AutoencoderKLMochi, "cosmos": d.AutoencoderKLCosmos}


FAMILIES = ("wan", "cogvideox", "hunyuan_video", "ltx_video", "mochi", "cosmos")
ROWS = ([("cpu", "auto")] + [pytest.param("cuda", backend, marks=pytest.mark.gpu)
                             for backend in ("auto", "triton")])
_MODELS: dict = {}


def _models(family: str, device: str):
    """(unpatched, patched) VAEs of ``family`` on ``device``, built once per session."""
    key = (family, device)
    if key not in _MODELS:
        from rgbd_kernels.integrations import apply_rgbd_kernels

        _MODELS.clear()  # one family at a time in memory
        torch.manual_seed(0)
        build = (_cpu_configs() if device == "cpu" else _cuda_configs())[family]
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        ref = build().to(device=device, dtype=dtype).eval()
        patched = copy.deepcopy(ref)
        replaced = apply_rgbd_kernels(patched)
        assert replaced > 0
        _MODELS[key] = (ref, patched, replaced)
    return _MODELS[key]


def _input(family: str, device: str) -> torch.Tensor:
    frames, size = (9, 64) if device == "cpu" else (17, 256)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    return torch.rand(1, 3, frames, size, size, device=device, dtype=dtype) * 2 - 1


@torch.no_grad()
def _encode_decode(vae, x, backend: str):
    with use_backend(backend):
        z = vae.encode(x).latent_dist.mode()
        return vae.decode(z).sample


@pytest.mark.parametrize("device,backend", ROWS)
@pytest.mark.parametrize("family", FAMILIES)
def test_patched_vae_encode_decode(benchmark, family, device, backend):
    if device == "cuda" and DEVICE.type != "cuda":
        pytest.skip("needs a CUDA device")
    ref, patched, replaced = _models(family, device)
    x = _input(family, device)
    err = rel_error(_encode_decode(patched, x, backend), _encode_decode(ref, x, "auto"))
    assert err < (1e-4 if device == "cpu" else 2e-2), f"{family}: rel error {err:.2e}"
    candidates = {"patched": lambda: _encode_decode(patched, x, backend),
                  "unpatched": lambda: _encode_decode(ref, x, "auto")}
    record_interleaved(benchmark, candidates, path="patched", reference="unpatched",
                       rounds=3, benchmark_rounds=3, family=family, backend=backend,
                       modules_replaced=replaced, input_shape=list(x.shape),
                       dtype=str(x.dtype).removeprefix("torch."), rel_error=err)
