"""The trainable stage-2 network: the DiT plus, when it is trainable, the text encoder.

``RGBDDenoiser(dit, text_encoder)``: ``forward(x, t, prompts, cond, cond_mask, drop_text=None,
text=None)`` encodes the prompts, or takes their embeddings precomputed by the same frozen
encoder (``text`` = ((B, L, D), (B, L) bool mask), e.g. from a latent cache); a dropped prompt
becomes the null text (every token masked, zeros); returns the DiT's velocity. Frozen text encoders (MiniLM, T5) stay outside the module, so
checkpoints hold only what is trained.

``save_pretrained(dir)`` / ``RGBDDenoiser.from_pretrained(dir)``: config.json (format
``"rgbd-world-denoiser"``: the DiT's config fields plus ``"text_encoder"``, its name, and for a
trained text encoder ``"text_encoder_config"``, its sizes) +
model.safetensors (the DiT's weights under ``dit.``, a trained text encoder's under
``text_encoder.``). A frozen text encoder is rebuilt from its name (or passed as ``text_encoder=``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from rgbd_world.saved_model import SavedModel

from .config import DiTConfig
from .model import DiT
from .text import ByteTextEncoder, build_text_encoder


class RGBDDenoiser(SavedModel, nn.Module):
    saved_format = "rgbd-world-denoiser"
    saved_format_version = 1

    def __init__(self, dit: nn.Module, text_encoder, text_encoder_name: str | None = None):
        super().__init__()
        self.dit = dit
        self.text_encoder_name = text_encoder_name or getattr(text_encoder, "name", None)
        if isinstance(text_encoder, nn.Module) and any(p.requires_grad for p in text_encoder.parameters()):
            self.text_encoder = text_encoder  # trained with the DiT (the byte encoder)
        else:
            self.text_encoder = None
            self._frozen_text = text_encoder

    def saved_config(self) -> dict:
        if not self.text_encoder_name:
            raise ValueError("this RGBDDenoiser's text encoder has no name to save; pass "
                             "text_encoder_name= ('byte', 'minilm' or a local model directory)")
        config = {**self.dit.config.to_dict(), "text_encoder": self.text_encoder_name}
        if self.text_encoder is not None:   # trained with the DiT: its sizes too
            config["text_encoder_config"] = self.text_encoder.saved_config()
        return config

    @classmethod
    def from_saved_config(cls, config: dict, version: int, text_encoder=None) -> "RGBDDenoiser":
        """``text_encoder``: the encoder to use (else built from the saved name). Version 0 (a
        saved pipeline's ``dit/`` written before formats were recorded) has no name: pass it."""
        config = dict(config)
        name = config.pop("text_encoder", None)
        text_config = config.pop("text_encoder_config", None)
        if text_config is not None and name == ByteTextEncoder.name and \
                (text_encoder is None or isinstance(text_encoder, ByteTextEncoder)):
            # trained with the DiT: rebuilt at its saved sizes (its weights are in this directory)
            text_encoder = ByteTextEncoder.from_saved_config(text_config, version)
        if text_encoder is None:
            if name is None:
                raise ValueError("the saved config names no text encoder; pass text_encoder=")
            text_encoder = build_text_encoder(name)
        return cls(DiT(DiTConfig.from_dict(config)), text_encoder, name)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.dit.blocks

    def encode_text(self, prompts: Sequence[str], drop: torch.Tensor | None = None,
                    device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) embeddings and (B, L) bool mask; dropped prompts are all-masked zeros."""
        encoder = self.text_encoder if self.text_encoder is not None else self._frozen_text
        emb, mask = encoder.encode(list(prompts))
        return self._drop(emb, mask, drop, device)

    def _drop(self, emb, mask, drop, device):
        device = device or next(self.dit.parameters()).device
        emb, mask = emb.to(device), mask.to(device)
        if drop is not None:
            keep = ~drop.to(device).bool()
            emb = emb * keep.view(-1, 1, 1).to(emb.dtype)
            mask = mask & keep.view(-1, 1)
        return emb, mask

    def forward(self, x: torch.Tensor, t: torch.Tensor, prompts: Sequence[str],
                cond: torch.Tensor | None = None, cond_mask: torch.Tensor | None = None,
                drop_text: torch.Tensor | None = None,
                text: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if text is not None:
            if self.text_encoder is not None:
                raise ValueError("precomputed text embeddings need a frozen text encoder; this "
                                 "denoiser trains its own")
            emb, mask = self._drop(text[0], text[1].bool(), drop_text, x.device)
        else:
            emb, mask = self.encode_text(prompts, drop_text, x.device)
        return self.dit(x, t, emb, text_mask=mask, cond=cond, cond_mask=cond_mask)
