"""Generation: a prompt, an RGB image or an RGB video in, a coherent RGB + depth video out.

    pipe = RGBDPipeline.from_pretrained("tiny-rgbd")      # the shipped one, or a directory
    out = pipe(prompt="a red sphere rolls left ...", num_frames=9, height=32, width=32,
               num_inference_steps=20, guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    out.rgb (T, H, W, 3) float in [0, 1]; out.disparity (T, H, W) normalized (median 0, MAD 0.5);
    out.depth (T, H, W) relative depth (see :func:`relative_depth`)

A saved pipeline is a directory of safetensors weights and JSON configs (diffusers-like):
``pipeline.json``, ``tokenizer/`` (RGBD), ``rgb_tokenizer/``, ``dit/`` and, for a trained byte
text encoder, its weights inside ``dit/`` (the denoiser holds it).
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path


import numpy as np
import torch

from rgbd_world.package_data import resolve_pipeline
from rgbd_world.validation import (InvalidArgument, check_choice, check_finite, check_int,
                                   check_seed)

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


def _read_rgb_file(path: Path, name: str) -> np.ndarray:
    """Decode an image or video file; anything unreadable is an :class:`InvalidArgument`."""
    import imageio.v3 as iio

    allowed = "an image (png, jpg, ...) or video (mp4, gif, ...) file" if name == "image" \
        else "a video file (mp4, gif, ...)"
    if not path.exists():
        raise InvalidArgument(name, str(path), allowed, "no such file")
    if not path.is_file():
        raise InvalidArgument(name, str(path), allowed, "not a file")
    if path.stat().st_size == 0:
        raise InvalidArgument(name, str(path), allowed, "the file is empty")
    try:
        if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"):
            return np.asarray(iio.imread(path))
        return np.asarray(iio.imread(path, index=None))
    except Exception as err:  # noqa: BLE001 - every decoder error means "not a readable file"
        reason = " ".join(f"cannot decode it ({type(err).__name__}: {err})".split())[:300]
        raise InvalidArgument(name, str(path), allowed, reason) from None


def rgb_array_to_unit(arr, name: str = "image") -> torch.Tensor:
    """An RGB array/tensor (H, W, 3|4) or (T, H, W, 3|4) -> float32 (T, H, W, 3) in [0, 1].

    uint8 and other integer dtypes hold 0..255 (uint16: 0..65535); floats must be in [0, 1].
    Anything else (empty frames, NaN, values out of range, bool) is an :class:`InvalidArgument`
    naming ``name``."""
    x = torch.as_tensor(np.asarray(arr))
    shape = tuple(x.shape)
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[-1] not in (3, 4):
        raise InvalidArgument(name, f"array of shape {shape}", "shape (H, W, 3) or (T, H, W, 3)")
    if min(x.shape[:3]) < 1:
        raise InvalidArgument(name, f"array of shape {shape}", "at least one frame of at least "
                              "1x1 pixels")
    x = x[..., :3]
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if x.dtype == torch.uint16:
        return x.float() / 65535.0
    if x.dtype == torch.bool or x.is_complex():
        raise InvalidArgument(name, f"{x.dtype} array", "uint8, integers in 0..255 or floats "
                              "in [0, 1]")
    if not x.is_floating_point():
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise InvalidArgument(name, f"{x.dtype} array with values {lo}..{hi}",
                                  "integers in 0..255 (or floats in [0, 1])")
        return x.float() / 255.0
    x = x.float()
    if not torch.isfinite(x).all():
        raise InvalidArgument(name, "array with NaN or inf values", "finite floats in [0, 1]")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise InvalidArgument(name, f"float array with values {lo:.4g}..{hi:.4g}",
                              "floats in [0, 1] (pass uint8 for 0..255 values)")
    return x.clamp(0, 1)


def _load_rgb(source, num_frames: int | None, height: int, width: int,
              name: str = "image") -> torch.Tensor:
    """An image/video path, a (T, H, W, 3) array/tensor or (H, W, 3) -> (3, T, H, W) in [-1, 1]
    (pixel values as :func:`rgb_array_to_unit` reads them)."""
    if isinstance(source, (str, os.PathLike)):
        arr = _read_rgb_file(Path(source), name)
        shown = str(source)
    else:
        arr, shown = source, None
    try:
        x = rgb_array_to_unit(arr, name)
    except InvalidArgument as err:
        if shown is None:
            raise
        raise InvalidArgument(name, shown, err.allowed, f"it decodes to {err.value}") from None
    if num_frames is not None:
        if x.shape[0] < num_frames:
            raise InvalidArgument(name, shown or f"array of {x.shape[0]} frames",
                                  f"a video with at least num_frames={num_frames} frames",
                                  f"it has {x.shape[0]} frames")
        x = x[:num_frames]
    x = x.permute(3, 0, 1, 2)  # (3, T, H, W)
    if x.shape[-2:] != (height, width):
        x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear",
                                            align_corners=False, antialias=True)
    return x.clamp(0, 1) * 2 - 1


class RGBDPipeline:
    """RGBD tokenizer + RGB tokenizer + DiT denoiser (+ text encoder) and a flow-matching solver.

    Built from saved models only (:meth:`from_pretrained`); a pipeline out of training runs is
    ``rgbd_world.train.run_models.pipeline_from_training_runs(tokenizer_run, dit_run)``."""

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
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write safetensors weights + JSON configs atomically (this process's temporary
        directory, then one rename over ``directory``). An existing ``directory`` is replaced
        only if it is empty or a saved pipeline. Each model writes its own subdirectory
        (its ``save_pretrained`` layout); ``pipeline.json`` names the text encoder and defaults."""
        from rgbd_world.atomic import atomic_directory

        out = Path(directory)
        if out.exists() and not (out.is_dir() and (not any(out.iterdir())
                                                   or (out / "pipeline.json").exists())):
            raise InvalidArgument("directory", str(out), "a new or empty directory, or a saved "
                                  "pipeline (it is replaced)", "it holds something else")
        if not self.denoiser.text_encoder_name:
            self.denoiser.text_encoder_name = self.text_encoder_name
        with atomic_directory(out) as tmp:
            for name, model in (("tokenizer", self.tokenizer), ("rgb_tokenizer", self.rgb_tokenizer),
                                ("dit", self.denoiser)):
                (tmp / name).mkdir()
                model.write_pretrained(tmp / name)
            (tmp / "pipeline.json").write_text(json.dumps(
                {"format": FORMAT, "version": 1, "text_encoder": self.text_encoder_name,
                 "defaults": self.defaults}, indent=1))
        return out

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device="cpu") -> "RGBDPipeline":
        """A saved pipeline: a directory written by :meth:`save_pretrained`, or the name of one
        that ships with the package (``"tiny-rgbd"``)."""
        from rgbd_world.dit import build_text_encoder
        from rgbd_world.dit.denoiser import RGBDDenoiser
        from rgbd_world.tokenizer import VideoTokenizer

        root = resolve_pipeline(directory)
        meta_file = root / "pipeline.json"
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is not a saved RGBDPipeline (no such directory)")
        if not meta_file.exists():
            raise FileNotFoundError(f"{root} is not a saved RGBDPipeline (no pipeline.json)")
        meta = _read_json_object(meta_file)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_file}: unknown format {meta.get('format')!r} (expected "
                             f"{FORMAT!r})")
        for key, kind in (("text_encoder", str), ("defaults", dict)):
            if not isinstance(meta.get(key), kind):
                raise ValueError(f"{meta_file}: {key!r} must be a {kind.__name__}, got "
                                 f"{meta.get(key)!r}")
        tokenizer = VideoTokenizer.from_pretrained(root / "tokenizer")
        rgb_tokenizer = VideoTokenizer.from_pretrained(root / "rgb_tokenizer")
        try:
            text = build_text_encoder(meta["text_encoder"])
        except (ValueError, OSError, ImportError) as err:
            raise ValueError(f"{meta_file}: text_encoder {meta['text_encoder']!r} cannot be "
                             f"built ({err})") from None
        denoiser = RGBDDenoiser.from_pretrained(root / "dit", text_encoder=text)
        denoiser.text_encoder_name = meta["text_encoder"]
        return cls(tokenizer, rgb_tokenizer, denoiser, meta["text_encoder"], meta["defaults"], device)

    # ------------------------------------------------------------------ generation
    METHODS = ("euler", "heun")

    OUTPUT_TYPES = ("pt", "np", "latent")
    # old argument name -> new (diffusers') name; the old ones work for one more release
    RENAMED = {"steps": "num_inference_steps", "guidance": "guidance_scale", "seed": "generator"}

    def check_arguments(self, prompt: str | list[str] = "", image=None, video=None,
                        num_frames=None, height=None, width=None, num_inference_steps=None,
                        guidance_scale=None, method=None, given_frames=0, negative_prompt=None,
                        generator=None, latents=None, output_type="pt", **deprecated) -> dict:
        """Validate the arguments of a call without generating anything; returns them with
        None replaced by the pipeline's defaults. Raises :class:`InvalidArgument` (a
        ValueError) naming the argument, the value and what is allowed. 0 is never read as
        "default": only None is. The old names ``steps``, ``guidance``, ``seed`` are accepted
        with a DeprecationWarning."""
        _warn_renamed(deprecated)
        return self._check(prompt=prompt, image=image, video=video, num_frames=num_frames,
                           height=height, width=width, num_inference_steps=num_inference_steps,
                           guidance_scale=guidance_scale, method=method,
                           given_frames=given_frames, negative_prompt=negative_prompt,
                           generator=generator, latents=latents, output_type=output_type,
                           **deprecated)

    def _check(self, prompt="", image=None, video=None, num_frames=None, height=None, width=None,
               num_inference_steps=None, guidance_scale=None, method=None, given_frames=0,
               negative_prompt=None, generator=None, latents=None, output_type="pt",
               steps=None, guidance=None, seed=None) -> dict:
        d = self.defaults
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, (list, tuple)) or not prompts or \
                not all(isinstance(p, str) for p in prompts):
            raise InvalidArgument("prompt", prompt, "a string or a non-empty list of strings")
        if negative_prompt is not None:
            negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) \
                else negative_prompt
            if not isinstance(negatives, (list, tuple)) or len(negatives) != len(prompts) or \
                    not all(isinstance(p, str) for p in negatives):
                raise InvalidArgument("negative_prompt", negative_prompt, "a string, or a list "
                                      f"of {len(prompts)} strings (one per prompt)")
        if image is not None and video is not None:
            raise InvalidArgument("video", "<given>", "image or video, not both")
        for old, old_value, new, value in (
                ("steps", steps, "num_inference_steps", num_inference_steps),
                ("guidance", guidance, "guidance_scale", guidance_scale),
                ("seed", seed, "generator", generator)):
            if old_value is not None and value is not None:
                raise InvalidArgument(old, old_value, f"{new} or {old} (deprecated), not both")
        tc, sc = self.tokenizer.temporal_compression, self.tokenizer.spatial_compression
        num_frames = check_int("num_frames", num_frames, 1, allow_none=True)
        num_frames = d["num_frames"] if num_frames is None else num_frames
        if (num_frames - 1) % tc:
            lo = 1 + (num_frames - 1) // tc * tc
            raise InvalidArgument("num_frames", num_frames, f"1 + {tc}k frames (1, {1 + tc}, "
                                  f"{1 + 2 * tc}, ...); nearest: {lo} or {lo + tc}")
        sizes = {}
        for name, value in (("height", height), ("width", width)):
            value = check_int(name, value, 1, allow_none=True)
            value = d[name] if value is None else value
            if value % sc:
                near = " or ".join(str(v) for v in (value // sc * sc, value // sc * sc + sc) if v)
                raise InvalidArgument(name, value, f"a positive multiple of {sc}; nearest: {near}")
            sizes[name] = value
        steps = check_int("steps" if steps is not None else "num_inference_steps",
                          num_inference_steps if steps is None else steps, 1, 100_000,
                          allow_none=True)
        guidance = check_finite("guidance" if guidance is not None else "guidance_scale",
                                guidance_scale if guidance is None else guidance, allow_none=True)
        method = check_choice("method", d["method"] if method is None else method, self.METHODS)
        check_int("given_frames", given_frames, 0)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise InvalidArgument("generator", type(generator).__name__, "a torch.Generator")
        if latents is not None and (not isinstance(latents, torch.Tensor)
                                    or not torch.isfinite(latents).all()):
            raise InvalidArgument("latents", type(latents).__name__, "a finite tensor of "
                                  "initial noise (C, T_lat, h, w)")
        check_choice("output_type", output_type, self.OUTPUT_TYPES)
        steps = d["steps"] if steps is None else steps
        guidance = d["guidance"] if guidance is None else guidance
        seed = check_seed(0 if seed is None else seed)
        return {"num_frames": num_frames, **sizes, "num_inference_steps": steps,
                "guidance_scale": guidance, "method": method, "seed": seed,
                "steps": steps, "guidance": guidance}

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] = "", image=None, video=None,
                 num_frames: int | None = None, height: int | None = None,
                 width: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, negative_prompt: str | list[str] | None = None,
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "pt", method: str | None = None, progress: bool = True,
                 given_latents: torch.Tensor | None = None, given_frames: int = 0,
                 **deprecated) -> RGBDOutput | list[RGBDOutput]:
        """Generate RGBD videos (diffusers' argument names).

        ``prompt``: a string (one :class:`RGBDOutput` back) or a list (a list back, one per
        prompt, drawn one after another from ``generator``). ``negative_prompt``: what the
        guidance steers away from (default: the null text). ``num_inference_steps``,
        ``guidance_scale`` (1 = no guidance): default the pipeline's. ``generator``: a
        ``torch.Generator`` for the noise (default: seed 0, deterministic). ``latents``: the
        initial noise (C, T_lat, h, w) instead of drawing it. ``output_type``: "pt" (tensors),
        "np" (numpy arrays) or "latent" (only ``latents``; nothing decoded).
        ``image``/``video``: path or array (H, W, 3) / (T, H, W, 3) (uint8 or integers in
        0..255, or floats in [0, 1]); at most one of them. Continuation: ``given_latents``
        (C, T_lat, h, w), e.g. ``previous.latents``, holds its first ``given_frames`` latent
        frames fixed (they come back unchanged). Bad arguments raise
        :class:`~rgbd_world.validation.InvalidArgument` before any work is done.
        Deprecated (one release, with a DeprecationWarning): ``steps``, ``guidance``, ``seed``.
        """
        _warn_renamed(deprecated, stacklevel=4)   # past torch.no_grad's wrapper
        a = self._check(prompt=prompt, image=image, video=video, num_frames=num_frames,
                        height=height, width=width, num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale, method=method, given_frames=given_frames,
                        negative_prompt=negative_prompt, generator=generator, latents=latents,
                        output_type=output_type, **deprecated)
        if generator is None:
            generator = torch.Generator().manual_seed(a["seed"])
        if not isinstance(prompt, str):
            negatives = negative_prompt if isinstance(negative_prompt, (list, tuple)) \
                else [negative_prompt] * len(prompt)
            return [self._generate(p, n, image, video, a, generator, latents, output_type,
                                   progress, given_latents, given_frames)
                    for p, n in zip(prompt, negatives)]
        return self._generate(prompt, negative_prompt, image, video, a, generator, latents,
                              output_type, progress, given_latents, given_frames)

    def _generate(self, prompt: str, negative_prompt: str | None, image, video, a: dict,
                  generator: torch.Generator, latents, output_type: str, progress: bool,
                  given_latents, given_frames: int) -> RGBDOutput:
        """One video from checked arguments ``a`` (see :meth:`__call__`)."""
        from tqdm.auto import tqdm

        from rgbd_world.dit.conditioning import build_conditioning
        from rgbd_world.flow import sample

        num_frames, height, width = a["num_frames"], a["height"], a["width"]
        steps, guidance, method = a["num_inference_steps"], a["guidance_scale"], a["method"]
        c, t_lat, h, w = self.tokenizer.latent_shape(num_frames, height, width)
        like = torch.zeros(1, c, t_lat, h, w, device=self.device)
        cond_channels = self.denoiser.dit.config.cond_channels
        mode, z_rgb = "text", None
        if video is not None:
            mode = "video"
            z_rgb = self.rgb_tokenizer.encode(
                _load_rgb(video, num_frames, height, width, "video")[None].to(self.device))
        elif image is not None:
            mode = "image"
            z_rgb = self.rgb_tokenizer.encode(
                _load_rgb(image, 1, height, width, "image")[None].to(self.device))
        held = held_mask = None
        if given_frames:
            if given_frames >= t_lat:
                raise InvalidArgument("given_frames", given_frames,
                                      f"0..{t_lat - 1} (latent frames of these sizes: {t_lat})")
            if not isinstance(given_latents, torch.Tensor) or given_latents.shape != like.shape[1:] \
                    or not torch.isfinite(given_latents).all():
                shown = tuple(given_latents.shape) if isinstance(given_latents, torch.Tensor) \
                    else given_latents
                raise InvalidArgument("given_latents", shown, f"a finite tensor of shape "
                                      f"{tuple(like.shape[1:])} for these sizes")
            cond_c = build_conditioning("continuation", None, like, cond_channels, given_frames)
            held, held_mask = given_latents[None].to(self.device), cond_c.cond_mask.bool()
        cond = build_conditioning(mode, z_rgb, like, cond_channels)
        if held is not None:
            cond.cond_mask = held_mask.to(like.dtype)
        text, text_mask = self.denoiser.encode_text([prompt], device=self.device)
        if negative_prompt:   # guidance away from it, else from the null text
            null_text, null_mask = self.denoiser.encode_text([negative_prompt], device=self.device)
        else:
            null_text, null_mask = self.denoiser.encode_text(
                [prompt], drop=torch.ones(1, dtype=torch.bool), device=self.device)
        dit = self.denoiser.dit

        def velocity(x, t):
            return dit(x, t, text, text_mask=text_mask, cond=cond.cond, cond_mask=cond.cond_mask)

        def uncond(x, t):  # text dropped, RGB conditioning kept: guidance on the prompt
            return dit(x, t, null_text, text_mask=null_mask, cond=cond.cond, cond_mask=cond.cond_mask)

        if latents is not None:
            noise = latents.reshape(-1, *latents.shape[-4:])[:1]
            if noise.shape != like.shape:
                raise InvalidArgument("latents", tuple(latents.shape), "initial noise of shape "
                                      f"{tuple(like.shape[1:])} for these sizes")
            noise = noise.to(self.device, like.dtype)
        else:
            noise = torch.randn(like.shape, generator=generator).to(self.device)
        bar = tqdm(total=steps, desc="generate", unit="step", disable=not progress)
        use_cfg = guidance != 1.0 and (bool(prompt) or bool(negative_prompt))
        z = sample(velocity, noise, steps, method=method, shift="auto",
                   uncond_velocity=uncond if use_cfg else None,
                   guidance_scale=guidance if use_cfg else 1.0,
                   held_latents=held, held_mask=held_mask, per_frame_t=held is not None,
                   callback=lambda *_: bar.update(1))
        bar.close()
        if output_type == "latent":
            return RGBDOutput(rgb=None, disparity=None, depth=None, latents=z[0].cpu())
        x = self.tokenizer.decode(z)[0]  # (4, T, H, W)
        rgb = ((x[:3].clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0).float().cpu()
        disparity = x[3].float().cpu()
        out = RGBDOutput(rgb=rgb, disparity=disparity, depth=relative_depth(disparity),
                         latents=z[0].cpu())
        if output_type == "np":
            out = RGBDOutput(*(t.numpy() for t in (out.rgb, out.disparity, out.depth,
                                                    out.latents)))
        return out


def _warn_renamed(deprecated: dict, stacklevel: int = 3) -> None:
    """DeprecationWarning for each old argument name used; TypeError for unknown ones."""
    for old in deprecated:
        if old not in RGBDPipeline.RENAMED:
            raise TypeError(f"RGBDPipeline got an unexpected keyword argument {old!r}")
        warnings.warn(f"RGBDPipeline: {old}= is deprecated and will be removed in the next "
                      f"release; use {RGBDPipeline.RENAMED[old]}=", DeprecationWarning,
                      stacklevel=stacklevel)


def _read_json_object(path: Path) -> dict:
    """A JSON file holding an object; errors name the file."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing (saved pipeline incomplete)")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must hold a JSON object, got {type(data).__name__}")
    return data


__all__ = ["RGBDPipeline", "RGBDOutput", "relative_depth"]
