"""What the trainer needs from a stage (model, data, loss); see :mod:`rgbd_world.train.trainer`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from ..distributed import DistInfo


class Stage:
    """Base class. A stage builds the trainable model and the dataset and computes the loss."""

    name = "stage"
    supports_fp8 = False  # whether parallel.fp8 means anything for this stage's model

    def __init__(self, cfg: dict[str, dict[str, Any]], info: DistInfo):
        self.cfg, self.info = cfg, info

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def model_config(self) -> dict[str, Any]:
        """JSON description of the model, written beside the checkpoints to rebuild it."""
        return {}

    def build_dataset(self) -> Dataset:
        raise NotImplementedError

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """Sub-modules to shard (FSDP2) and to checkpoint (activation checkpointing)."""
        return []

    def collate(self, samples: list[Any]) -> Any:
        return default_collate(samples)

    def compute_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(scalar loss to minimise, detached terms to log) for this rank's batch."""
        raise NotImplementedError

    def frames_per_step(self) -> int:
        """Frames of the global batch."""
        return self.cfg["data"]["batch_size"] * self.cfg["data"]["frames"]

    def tokens_per_step(self) -> int | None:
        """Model tokens in this rank's last batch (``self._tokens``, set by compute_loss), or
        None when the stage does not count them."""
        return getattr(self, "_tokens", None)

    def flops_per_step(self) -> int | None:
        """Training FLOPs of this rank's last step (``self._flops``, for MFU), or None."""
        return getattr(self, "_flops", None)

    def log_samples(self, model: nn.Module, batch: Any, writer, step: int, out_dir: Path) -> None:
        """Write reconstructions / samples for a person to look at (rank 0)."""
