"""Generation: a prompt, an RGB image or an RGB video in, a coherent RGB + depth video out.

    pipe = RGBDPipeline.from_pretrained("assets/tiny-rgbd")
    out = pipe(prompt="a red sphere rolls left ...", num_frames=9, height=32, width=32, seed=0)
    out.rgb (T, H, W, 3) float in [0, 1]; out.disparity (T, H, W) normalized (median 0, MAD 0.5);
    out.depth (T, H, W) relative depth (see :func:`relative_depth`)

A saved pipeline is a directory of safetensors weights and JSON configs (diffusers-like):
``pipeline.json``, ``tokenizer/`` (RGBD), ``rgb_tokenizer/``, ``dit/`` and, for a trained byte
text encoder, its weights inside ``dit/`` (the denoiser holds it).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path


import numpy as np
import torch

FORMAT = "rgbd-world-pipeline"


@dataclass
class RGBDOutput:
    rgb: torch.Tensor        # (T, H, W, 3) float32 in [0, 1]
    disparity: torch.Tensor  # (T, H, W) float32, affine-invariant (median 0, MAD 0.5)
    depth: torch.Tensor      # (T, H, W) float32, relative depth (near 1 .. far 10 units)
    latents: torch.Tensor    # (C, T_lat, h, w) generated RGBD latents


def relative_depth(disparity: torch.Tensor, near: float = 1.0, far: float = 10.0) -> torch.Tensor:
    """Affine-invariant disparity -> a relative depth: the 1st..99th percentile of the clip's
    disparity is mapped affinely onto [1/far, 1/near], clamped, and inverted. Units are
    arbitrary (no metric scale can come out of an affine-invariant prediction)."""
    d = disparity.float()
    lo, hi = torch.quantile(d.flatten(), torch.tensor([0.01, 0.99], dtype=d.dtype)).tolist()
    scaled = (d - lo) / max(hi - lo, 1e-6) * (1 / near - 1 / far) + 1 / far
    return 1.0 / scaled.clamp(1 / far, 1 / near)


def _load_rgb(source, num_frames: int | None, height: int, width: int) -> torch.Tensor:
    """An image/video path, a (T, H, W, 3) uint8 array/tensor or (H, W, 3) -> (3, T, H, W) in [-1, 1]."""
    if isinstance(source, (str, os.PathLike)):
        import imageio.v3 as iio

        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"input not found: {path}")
        arr = iio.imread(path) if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp") \
            else iio.imread(path, index=None)
    else:
        arr = source
    x = torch.as_tensor(np.asarray(arr))
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[-1] not in (3, 4):
        raise ValueError(f"RGB input must be (H, W, 3) or (T, H, W, 3), got shape {tuple(x.shape)}")
    x = x[..., :3]
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if num_frames is not None:
        if x.shape[0] < num_frames:
            raise ValueError(f"the input video has {x.shape[0]} frames, fewer than num_frames="
                             f"{num_frames}")
        x = x[:num_frames]
    x = x.permute(3, 0, 1, 2)  # (3, T, H, W)
    if x.shape[-2:] != (height, width):
        x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear",
                                            align_corners=False, antialias=True)
    return x.clamp(0, 1) * 2 - 1


class RGBDPipeline:
    """RGBD tokenizer + RGB tokenizer + DiT denoiser (+ text encoder) and a flow-matching solver."""

    def __init__(self, tokenizer, rgb_tokenizer, denoiser, text_encoder_name: str,
                 defaults: dict | None = None, device: str | torch.device = "cpu"):
        self.tokenizer = tokenizer.eval()
        self.rgb_tokenizer = rgb_tokenizer.eval()
        self.denoiser = denoiser.eval()
        self.text_encoder_name = text_encoder_name
        self.defaults = {"num_frames": 9, "height": 32, "width": 32, "steps": 20,
                         "guidance": 3.0, "method": "heun", **(defaults or {})}
        self.to(device)

    def to(self, device) -> "RGBDPipeline":
        self.device = torch.device(device)
        for m in (self.tokenizer, self.rgb_tokenizer, self.denoiser):
            m.to(self.device)
        return self

    # ------------------------------------------------------------------ building / saving
    @classmethod
    def from_training_runs(cls, tokenizer_run: str | os.PathLike, dit_run: str | os.PathLike,
                           device="cpu", ema: bool = True, **defaults) -> "RGBDPipeline":
        """Assemble a pipeline from a ``--stage tokenizer`` run and a ``--stage dit`` run."""
        from safetensors.torch import load_file

        from rgbd_world.dit import DiT, DiTConfig, build_text_encoder
        from rgbd_world.dit.denoiser import RGBDDenoiser
        from rgbd_world.tokenizer.checkpoint import load_rgb_tokenizer, load_tokenizer
        from rgbd_world.train.checkpoint import latest_checkpoint

        dit_run = Path(dit_run)
        mcfg = json.loads((dit_run / "model_config.json").read_text())
        run_cfg = json.loads((dit_run / "config.json").read_text())
        tokenizer = load_tokenizer(tokenizer_run)
        rgb_tokenizer = load_rgb_tokenizer(tokenizer_run, run_cfg["model"]["rgb_tokenizer"])
        text = build_text_encoder(mcfg["text_encoder"])
        denoiser = RGBDDenoiser(DiT(_dit_config(DiTConfig, mcfg["dit"])), text)
        ckpt = latest_checkpoint(dit_run)
        if ckpt is None:
            raise FileNotFoundError(f"no complete checkpoint under {dit_run}")
        state = load_file(ckpt / "model.safetensors")
        if ema:
            state.update(load_file(ckpt / "ema.safetensors"))
        denoiser.load_state_dict(state, strict=True)
        d = run_cfg["data"]
        defaults = {"num_frames": d["frames"], "height": d["height"], "width": d["width"], **defaults}
        return cls(tokenizer, rgb_tokenizer, denoiser, mcfg["text_encoder"], defaults, device)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write safetensors weights + JSON configs (atomically: temporary dir, then rename)."""
        import shutil

        from safetensors.torch import save_file

        from rgbd_world.tokenizer.checkpoint import config_to_dict

        out = Path(directory)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for name, model, config in (
                ("tokenizer", self.tokenizer, config_to_dict(self.tokenizer.config)),
                ("rgb_tokenizer", self.rgb_tokenizer, config_to_dict(self.rgb_tokenizer.config)),
                ("dit", self.denoiser, dataclasses.asdict(self.denoiser.dit.config))):
            (tmp / name).mkdir(parents=True)
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            save_file(state, tmp / name / "model.safetensors")
            (tmp / name / "config.json").write_text(json.dumps(config, indent=1))
        (tmp / "pipeline.json").write_text(json.dumps(
            {"format": FORMAT, "version": 1, "text_encoder": self.text_encoder_name,
             "defaults": self.defaults}, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
        return out

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device="cpu") -> "RGBDPipeline":
        from safetensors.torch import load_file

        from rgbd_world.dit import DiT, DiTConfig, build_text_encoder
        from rgbd_world.dit.denoiser import RGBDDenoiser
        from rgbd_world.tokenizer import VideoTokenizer
        from rgbd_world.tokenizer.checkpoint import config_from_dict

        root = Path(directory)
        meta_file = root / "pipeline.json"
        if not meta_file.exists():
            raise FileNotFoundError(f"{root} is not a saved RGBDPipeline (no pipeline.json)")
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_file}: unknown format {meta.get('format')!r}")

        def load(name, model):
            model.load_state_dict(load_file(root / name / "model.safetensors"), strict=True)
            return model

        def cfg(name):
            return json.loads((root / name / "config.json").read_text())

        tokenizer = load("tokenizer", VideoTokenizer(config_from_dict(cfg("tokenizer"))))
        rgb_tokenizer = load("rgb_tokenizer", VideoTokenizer(config_from_dict(cfg("rgb_tokenizer"))))
        text = build_text_encoder(meta["text_encoder"])
        denoiser = load("dit", RGBDDenoiser(DiT(_dit_config(DiTConfig, cfg("dit"))), text))
        return cls(tokenizer, rgb_tokenizer, denoiser, meta["text_encoder"], meta["defaults"], device)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(self, prompt: str = "", image=None, video=None, num_frames: int | None = None,
                 height: int | None = None, width: int | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int = 0, method: str | None = None,
                 progress: bool = True, given_latents: torch.Tensor | None = None,
                 given_frames: int = 0) -> RGBDOutput:
        """Generate one RGBD video. ``image``/``video``: path or uint8 array (H, W, 3) /
        (T, H, W, 3); at most one of them. Continuation: ``given_latents`` (C, T_lat, h, w),
        e.g. ``previous.latents``, holds its first ``given_frames`` latent frames fixed (they come
        back unchanged). Deterministic for a seed on a given device."""
        from tqdm.auto import tqdm

        from rgbd_world.dit.conditioning import build_conditioning
        from rgbd_world.flow import sample
        from rgbd_world.tokenizer.model import check_frames, check_size

        d = self.defaults
        num_frames = num_frames or d["num_frames"]
        height, width = height or d["height"], width or d["width"]
        steps, method = steps or d["steps"], method or d["method"]
        guidance = d["guidance"] if guidance is None else guidance
        if image is not None and video is not None:
            raise ValueError("give image or video, not both")
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        tc, sc = self.tokenizer.temporal_compression, self.tokenizer.spatial_compression
        check_frames(num_frames, tc)
        check_size(height, width, sc)
        c, t_lat, h, w = self.tokenizer.latent_shape(num_frames, height, width)
        like = torch.zeros(1, c, t_lat, h, w, device=self.device)
        cond_channels = self.denoiser.dit.config.cond_channels
        mode, z_rgb = "text", None
        if video is not None:
            mode = "video"
            z_rgb = self.rgb_tokenizer.encode(_load_rgb(video, num_frames, height, width)[None].to(self.device))
        elif image is not None:
            mode = "image"
            z_rgb = self.rgb_tokenizer.encode(_load_rgb(image, 1, height, width)[None].to(self.device))
        held = held_mask = None
        if given_frames:
            if given_latents is None or given_latents.shape != like.shape[1:]:
                raise ValueError(f"given_latents must be {tuple(like.shape[1:])} for these sizes, got "
                                 f"{None if given_latents is None else tuple(given_latents.shape)}")
            cond_c = build_conditioning("continuation", None, like, cond_channels, given_frames)
            held, held_mask = given_latents[None].to(self.device), cond_c.cond_mask.bool()
        cond = build_conditioning(mode, z_rgb, like, cond_channels)
        if held is not None:
            cond.cond_mask = held_mask.to(like.dtype)
        text, text_mask = self.denoiser.encode_text([prompt], device=self.device)
        null_text, null_mask = self.denoiser.encode_text([prompt], drop=torch.ones(1, dtype=torch.bool),
                                                         device=self.device)
        dit = self.denoiser.dit

        def velocity(x, t):
            return dit(x, t, text, text_mask=text_mask, cond=cond.cond, cond_mask=cond.cond_mask)

        def uncond(x, t):  # text dropped, RGB conditioning kept: guidance on the prompt
            return dit(x, t, null_text, text_mask=null_mask, cond=cond.cond, cond_mask=cond.cond_mask)

        g = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(like.shape, generator=g).to(self.device)
        bar = tqdm(total=steps, desc="generate", unit="step", disable=not progress)
        use_cfg = guidance != 1.0 and bool(prompt)
        z = sample(velocity, noise, steps, method=method, shift="auto",
                   uncond_velocity=uncond if use_cfg else None,
                   guidance_scale=guidance if use_cfg else 1.0,
                   held_latents=held, held_mask=held_mask, per_frame_t=held is not None,
                   callback=lambda *_: bar.update(1))
        bar.close()
        x = self.tokenizer.decode(z)[0]  # (4, T, H, W)
        rgb = ((x[:3].clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0).float().cpu()
        disparity = x[3].float().cpu()
        return RGBDOutput(rgb=rgb, disparity=disparity, depth=relative_depth(disparity),
                          latents=z[0].cpu())


def _dit_config(cls, data: dict):
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in fields})


__all__ = ["RGBDPipeline", "RGBDOutput", "relative_depth"]
