"""Stage 2: the DiT trained with flow matching on RGBD latents of the frozen stage-1 tokenizer.

Per batch: encode the RGBD clip with the frozen RGBD tokenizer (z) and its RGB channels with the
frozen RGB tokenizer (z_rgb) — or, with ``data.source = "latents"``, read both from a latent
cache (``rgbd-world cache-latents``, plus cached caption embeddings when they come from the run's
frozen text encoder); draw a conditioning mode per sample (text / image / video /
continuation, :mod:`rgbd_world.dit.conditioning`), drop text and RGB conditioning at random for
classifier-free guidance; draw logit-normal times shifted by sqrt(latent frames), held frames
at t = 0; loss = fused flow-matching MSE on the frames to generate. Randomness comes from the
global torch RNG, which checkpoints save, so resumed runs continue the same draws.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

import rgbd_kernels as rk

from .base import Stage
from .tokenizer import build_rgbd_dataset

TEXT_DROPOUT = 0.1
COND_DROPOUT = 0.1


class DiTStage(Stage):
    name = "dit"
    supports_fp8 = True  # attention (and TE linears) of the DiT blocks

    def build_model(self) -> nn.Module:
        from rgbd_world.dit import DiT, DiTConfig, build_text_encoder
        from rgbd_world.dit.denoiser import RGBDDenoiser
        from ..run_models import load_rgb_tokenizer, load_tokenizer

        m = self.cfg["model"]
        if not m["tokenizer"]:
            raise ValueError("stage 'dit' needs model.tokenizer: the run directory of a "
                             "'train.py --stage tokenizer' run (the frozen RGBD tokenizer)")
        dev = self.info.device
        self.tokenizer = load_tokenizer(m["tokenizer"], device=dev).requires_grad_(False)
        self.rgb_tokenizer = load_rgb_tokenizer(m["tokenizer"], m["rgb_tokenizer"]).to(dev)
        self.rgb_tokenizer.eval().requires_grad_(False)
        self.text_encoder = build_text_encoder(m["text_encoder"])
        if m.get("init"):
            dit = self._pretrained_dit(m["init"])
            self.dit_config = dit.config
        else:
            self.dit_config = DiTConfig.preset(
                m["dit_preset"], latent_channels=self.tokenizer.latent_channels,
                cond_channels=self.rgb_tokenizer.latent_channels, text_dim=self.text_encoder.dim,
                fp8=bool(self.cfg["parallel"]["fp8"]))
            dit = DiT(self.dit_config)
        self.model = RGBDDenoiser(dit, self.text_encoder)
        return self.model

    def _pretrained_dit(self, path: str):
        """``model.init``: a pretrained DiT (diffusers directory, Cosmos-Predict2 checkpoint or
        our DiT run / pipeline), inflated to this run's RGBD latent and RGB conditioning
        channels (its predictions of the channels it knows are unchanged at step 0)."""
        from rgbd_world.dit.pretrained import inflate_dit_to_rgbd

        from ..run_models import load_pretrained_dit

        dit = load_pretrained_dit(path)
        c = dit.config
        if c.text_dim != self.text_encoder.dim:
            raise ValueError(f"model.init={path}: the pretrained DiT reads {c.text_dim}-d text "
                             f"embeddings, but model.text_encoder={self.cfg['model']['text_encoder']!r}"
                             f" gives {self.text_encoder.dim}-d: use the text encoder it was "
                             "trained with (Cosmos-Predict2: a local T5 directory)")
        want = (self.tokenizer.latent_channels, self.rgb_tokenizer.latent_channels)
        if c.latent_channels > want[0] or c.cond_channels > want[1]:
            raise ValueError(f"model.init={path}: the pretrained DiT has latent/cond channels "
                             f"{c.latent_channels}/{c.cond_channels}, more than this run's "
                             f"RGBD/RGB tokenizers make ({want[0]}/{want[1]})")
        if self.info.is_main:
            print(f"stage dit: initialised from {path} ({c.name}: hidden {c.hidden}, depth "
                  f"{c.depth}), inflated to latent/cond channels {want[0]}/{want[1]}", flush=True)
        return inflate_dit_to_rgbd(dit, *want, fp8=bool(self.cfg["parallel"]["fp8"]))

    def model_config(self) -> dict[str, Any]:
        return {"dit": self.dit_config.to_dict(),
                "text_encoder": self.cfg["model"]["text_encoder"],
                "tokenizer": self.tokenizer.config.to_dict(),
                "tokenizer_run": self.cfg["model"]["tokenizer"]}

    def build_dataset(self):
        if self.cfg["data"]["source"] == "latents":
            return self._latent_dataset()
        return build_rgbd_dataset(self.cfg, self.info, self.tokenizer.temporal_compression)

    def _latent_dataset(self):
        """The latent cache at ``data.root``, checked against the frozen tokenizers."""
        from rgbd_world.data import LatentDataset

        root = self.cfg["data"]["root"]
        if not root:
            raise ValueError("data.source='latents' needs data.root: a directory written by "
                             "'rgbd-world cache-latents --tokenizer <the model.tokenizer run>'")
        dataset = LatentDataset(root)
        first = dataset[0]
        want = (self.tokenizer.latent_channels, self.rgb_tokenizer.latent_channels)
        if "rgb_latent" not in first:
            raise ValueError(f"the latent cache {root} has no RGB latents (video conditioning "
                             "needs them): rebuild it with 'rgbd-world cache-latents "
                             "--rgb-tokenizer <the RGB tokenizer>'")
        got = (first["latent"].shape[0], first["rgb_latent"].shape[0])
        if got != want:
            raise ValueError(f"the latent cache {root} has (RGBD, RGB) latent channels {got}, but "
                             f"model.tokenizer and its RGB tokenizer make {want}: cache with the "
                             "same tokenizers")
        self._clip_frames = 1 + (first["latent"].shape[1] - 1) * self.tokenizer.temporal_compression
        made_with = dataset.encoders["text_encoder"]
        mine = getattr(self.model._frozen_text, "name", None) if self.model.text_encoder is None \
            else None
        self.cached_text = made_with is not None and made_with == mine
        if self.info.is_main:
            print(f"stage dit: {len(dataset)} cached latents from {root} (tokenizer "
                  f"{dataset.encoders['encoder']}); caption embeddings "
                  f"{'from the cache' if self.cached_text else 'computed per step'}", flush=True)
        return dataset

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.dit.blocks)

    def collate(self, samples):
        from torch.utils.data import default_collate

        if self.cfg["data"]["source"] == "latents":
            from rgbd_world.data import collate_latents

            return collate_latents(samples)
        captions = [s.pop("caption") for s in samples]
        batch = default_collate(samples)
        batch["caption"] = captions
        return batch

    def frames_per_step(self) -> int:
        frames = getattr(self, "_clip_frames", None) or self.cfg["data"]["frames"]
        return self.cfg["data"]["batch_size"] * frames

    def compute_loss(self, model, batch):
        from rgbd_world.dit.conditioning import sample_training_conditioning

        if "latent" in batch:  # a latent cache
            dev = self.info.device
            z, z_rgb = batch["latent"].to(dev), batch["rgb_latent"].to(dev)
        else:
            with torch.no_grad():
                x = torch.cat([batch["rgb"], batch["disparity"]], dim=1)
                z = self.tokenizer.encode(x)
                z_rgb = self.rgb_tokenizer.encode(batch["rgb"])
        b, _, t_lat = z.shape[:3]
        cond, _ = sample_training_conditioning(z, z_rgb, self.dit_config.cond_channels,
                                               generator=None, cond_dropout=COND_DROPOUT)
        cond.cond, cond.cond_mask = cond.cond.to(z.device), cond.cond_mask.to(z.device)
        t = rk.sample_timesteps(b, distribution="logit_normal", shift="auto",
                                latent_frames=t_lat, generator=None).to(z.device)
        t = t.view(b, 1).expand(b, t_lat) * cond.loss_mask.view(b, t_lat)  # held frames: t = 0
        noise = torch.randn(z.shape, generator=None).to(z.device, z.dtype)
        x_t = rk.flow_interpolate(z, noise, t)
        drop_text = torch.rand(b, generator=None) < TEXT_DROPOUT
        text = (batch["text"], batch["text_mask"]) if getattr(self, "cached_text", False) else None
        v = model(x_t, t, batch["caption"], cond.cond, cond.cond_mask, drop_text=drop_text,
                  text=text)
        loss = rk.flow_matching_loss(v, z, noise, mask=cond.loss_mask)
        self._tokens = b * t_lat * z.shape[3] * z.shape[4] // 4  # (1, 2, 2) patches
        text_len = max(1, max(len(c.encode("utf-8")) for c in batch["caption"]))
        self._flops = self.model.dit.flops_per_step(b, t_lat, z.shape[3], z.shape[4], text_len)
        return loss, {"flow_mse": loss.detach()}

    def log_samples(self, model, batch, writer, step: int, out_dir: Path) -> None:
        """Generate one video from the batch's first caption (text mode, 10 Heun steps) with
        the live weights and write it (RGB beside colorized disparity) to ``samples/`` and
        TensorBoard. Under FSDP every rank runs it (the forward gathers shards); rank 0 writes."""
        from rgbd_world.pipeline import RGBDPipeline
        from rgbd_world.viz import add_tensorboard_video, rgbd_strip, write_video

        d = self.cfg["data"]
        frames = getattr(self, "_clip_frames", None) or d["frames"]
        if "latent" in batch:
            sc = self.tokenizer.spatial_compression
            height, width = batch["latent"].shape[3] * sc, batch["latent"].shape[4] * sc
        else:
            height, width = batch["rgb"].shape[3:]
        caption = batch["caption"][0]
        was_training = model.training
        try:
            pipe = RGBDPipeline(self.tokenizer, self.rgb_tokenizer, model,
                                self.cfg["model"]["text_encoder"], device=self.info.device)
            out = pipe(prompt=caption, num_frames=frames, height=height, width=width,
                       num_inference_steps=10, generator=torch.Generator().manual_seed(step),
                       progress=False)
        finally:
            model.train(was_training)
        if not self.info.is_main:
            return
        video = rgbd_strip(out.rgb.permute(3, 0, 1, 2), out.disparity, value_range=(0.0, 1.0))
        path = write_video(video, out_dir / "samples" / f"sample_step{step:07d}.gif")
        path.with_suffix(".txt").write_text(caption + "\n")
        if writer is not None:
            add_tensorboard_video(writer, "sample (RGB | disparity)", video, step)
            writer.add_text("sample prompt", caption, step)
