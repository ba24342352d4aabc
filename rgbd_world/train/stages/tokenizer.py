"""Stage 1: the RGBD tokenizer, distilled against a frozen RGB teacher; and that RGB teacher.

``tokenizer-rgb`` trains an RGB tokenizer (the teacher when no Cosmos checkpoint is at hand).
``tokenizer`` inflates the teacher to RGBD (:func:`inflate_to_rgbd`: RGB outputs unchanged at
initialisation), freezes a copy of it, and trains the student with L1 on RGB, L1 and multi-scale
gradient matching on normalized disparity, and MSE between its latents and the teacher's.
With ``model.teacher = ""`` the student starts from scratch and the distillation term is off.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rgbd_world.tokenizer import VideoTokenizer, inflate_to_rgbd
from rgbd_world.tokenizer.losses import LossWeights, TokenizerLoss

from ..distributed import barrier
from ..run_models import load_any_tokenizer
from .base import Stage


def build_rgbd_dataset(cfg: dict[str, dict[str, Any]], info, temporal_compression: int):
    """The dataset of ``data.source``: "synthetic" renders procedural shards once (rank 0) under
    ``<run.out_dir>/data``; "shards"/"folder"/any reader format reads ``data.root``. A non-empty
    ``data.mix`` ([[directory, weight], ...]) reads those directories instead, mixed with those
    weights (for example procedural and pseudo-labelled shards)."""
    from rgbd_world.data import RGBDVideoDataset, generate_dataset, mixed_rgbd_dataset

    data = cfg["data"]
    size = (data["height"], data["width"])
    if data["mix"] and data["source"] != "latents":
        return mixed_rgbd_dataset([(root, weight) for root, weight in data["mix"]],
                                  seed=cfg["run"]["seed"], frames=data["frames"], size=size,
                                  augment=True, flip_prob=0.5 if data["flip"] else 0.0,
                                  temporal_compression=temporal_compression)
    if data["source"] == "latents":
        raise ValueError("data.source='latents' (a latent cache) is for stage 'dit' only; the "
                         "tokenizer stages train on videos: use 'synthetic', 'shards' or a "
                         "dataset format")
    if data["source"] == "synthetic":
        root = Path(data["root"] or Path(cfg["run"]["out_dir"]) / "data")
        if info.is_main:
            generate_dataset(root, data["num_clips"], frames=data["frames"], height=data["height"],
                             width=data["width"], seed=cfg["run"]["seed"], progress=True)
        barrier()
        fmt = "auto"
    else:
        if not data["root"]:
            raise ValueError(f"data.source={data['source']!r} needs data.root (a dataset directory)")
        root, fmt = Path(data["root"]), "auto" if data["source"] == "shards" else data["source"]
    return RGBDVideoDataset(root, frames=data["frames"], size=size, format=fmt,
                            augment=True, flip_prob=0.5 if data["flip"] else 0.0,
                            temporal_compression=temporal_compression)


class _TokenizerStageBase(Stage):
    in_channels = 3

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self._flops_by_shape: dict[tuple[int, ...], int] = {}  # input shape -> training FLOPs

    def model_config(self) -> dict[str, Any]:
        return {"tokenizer": self.model.config.to_dict()}

    def build_dataset(self):
        return build_rgbd_dataset(self.cfg, self.info, self.model.config.temporal_compression)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        from rgbd_world.tokenizer.blocks import ResnetBlockFactorized

        return [m for m in model.modules() if isinstance(m, ResnetBlockFactorized)]

    def _input(self, batch) -> torch.Tensor:
        raise NotImplementedError

    def _loss(self, weights: LossWeights) -> TokenizerLoss:
        """The losses, with the perceptual term when ``loss.perceptual`` > 0: it needs
        ``model.perceptual_net``, a local TorchScript feature network (nothing is downloaded)."""
        net = self.cfg["model"]["perceptual_net"] or None
        if weights.perceptual > 0 and net is None:
            raise ValueError(f"loss.perceptual={weights.perceptual} needs model.perceptual_net: "
                             "the path of a local TorchScript feature network "
                             "((N, 3, H, W) in [-1, 1] -> features); nothing is downloaded")
        return TokenizerLoss(weights, perceptual=net if weights.perceptual > 0 else None).to(
            self.info.device)

    def log_samples(self, model, batch, writer, step: int, out_dir: Path) -> None:
        from rgbd_world.viz import add_tensorboard_video, rgbd_strip, side_by_side, write_video

        model.eval()
        with torch.no_grad():
            x = self._input(batch)[:1]
            recon = model(x).reconstruction
        model.train()
        if not self.info.is_main:  # FSDP: every rank ran the forward; rank 0 writes
            return
        if x.shape[1] >= 4:
            valid = batch["valid"][0, 0]
            left = rgbd_strip(x[0, :3], x[0, 3], valid)
            right = rgbd_strip(recon[0, :3], recon[0, 3], valid)
        else:
            from rgbd_world.viz import rgb_to_uint8

            left, right = rgb_to_uint8(x[0]), rgb_to_uint8(recon[0])
        frames = side_by_side(left, right)
        write_video(frames, out_dir / "samples" / f"recon_step{step:07d}.gif")
        if writer is not None:
            add_tensorboard_video(writer, "reconstruction (input | output)", frames, step)

    def _count(self, x: torch.Tensor) -> None:
        """Latent tokens of this batch, and training FLOPs (3x the forward's, counted once per
        input shape; see :func:`rgbd_world.train.flops.forward_flops`)."""
        from ..flops import forward_flops

        c, t, h, w = self.model.latent_shape(x.shape[2], x.shape[3], x.shape[4])
        self._tokens = x.shape[0] * t * h * w
        if tuple(x.shape) not in self._flops_by_shape:
            self._flops_by_shape[tuple(x.shape)] = 3 * forward_flops(self.model, x)
        self._flops = self._flops_by_shape[tuple(x.shape)]


class RGBTokenizerStage(_TokenizerStageBase):
    """An RGB video tokenizer trained with L1 on RGB."""

    name = "tokenizer-rgb"

    def build_model(self) -> nn.Module:
        self.model = VideoTokenizer(self.cfg["model"]["preset"], in_channels=3)
        w = self.cfg["loss"]
        self.loss_fn = self._loss(LossWeights(rgb=w["rgb_l1"], disparity=0.0, gradient=0.0,
                                              distill=0.0, perceptual=w["perceptual"]))
        return self.model

    def _input(self, batch):
        return batch["rgb"]

    def compute_loss(self, model, batch):
        x = batch["rgb"]
        self._count(x)
        out = model(x)
        terms = self.loss_fn(out.reconstruction, x)
        total = terms.pop("total")
        return total, terms


class TokenizerStage(_TokenizerStageBase):
    """The RGBD tokenizer (stage 1)."""

    name = "tokenizer"
    in_channels = 4

    def build_model(self) -> nn.Module:
        m, w = self.cfg["model"], self.cfg["loss"]
        distill = w["distill"]
        if m["teacher"]:
            teacher = load_any_tokenizer(m["teacher"], preset=m["preset"])
            if teacher.config.in_channels != 3:
                raise ValueError(f"model.teacher must be an RGB tokenizer, {m['teacher']} has "
                                 f"{teacher.config.in_channels} input channels")
            self.model = inflate_to_rgbd(teacher, geometry_channels=m["geometry_channels"])
            self.teacher = teacher.to(self.info.device).eval().requires_grad_(False)
        else:
            if self.info.is_main:
                warnings.warn("model.teacher is empty: training the RGBD tokenizer from scratch, "
                              "without distillation (set model.teacher to a tokenizer-rgb run "
                              "directory or a Cosmos checkpoint)", stacklevel=2)
            self.model = VideoTokenizer(m["preset"], in_channels=4,
                                        geometry_channels=m["geometry_channels"])
            self.teacher, distill = None, 0.0
        self.loss_fn = self._loss(LossWeights(rgb=w["rgb_l1"], disparity=w["disparity_l1"],
                                              gradient=w["gradient_matching"],
                                              boundary=w["boundary"], distill=distill,
                                              perceptual=w["perceptual"]))
        return self.model

    def _input(self, batch):
        return torch.cat([batch["rgb"], batch["disparity"]], dim=1)

    def compute_loss(self, model, batch):
        x = self._input(batch)
        self._count(x)
        out = model(x)
        teacher_latent = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_latent = self.teacher.encode(batch["rgb"])
        terms = self.loss_fn(out.reconstruction, x, batch["valid"], student_latent=out.latent,
                             teacher_latent=teacher_latent)
        total = terms.pop("total")
        return total, terms
