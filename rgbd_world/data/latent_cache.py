"""Latent cache for stage 2: encode a dataset once, then train on the stored latents.

:func:`encode_dataset` runs any callable ``encoder`` (the RGBD tokenizer's encoder, or any
function of the same contract) over an :class:`~rgbd_world.data.RGBDVideoDataset` and writes
``latents-000000.npz`` shards atomically (temporary name, then rename), resuming by skipping
finished shards. Encoder contract: it takes a float tensor (B, 4, T, H, W) — RGB in [-1, 1] and
normalized disparity, concatenated on channels — and returns latents (B, C, t, h, w) (a tuple's
first element is used). An optional ``rgb_encoder`` (the frozen RGB tokenizer) gets the RGB
channels alone (B, 3, T, H, W); its latents are what stage 2 conditions on in video mode. An
optional ``text_encoder`` (a frozen :mod:`rgbd_world.dit.text` encoder, whose ``encode`` returns
embeddings and a token mask, or a callable returning (B, L, D) or such a pair) embeds the captions.

Shard members: ``meta`` (0-d unicode JSON: format, encoder names, per-sample ``name``,
``caption``, ``source``, ``latent_shape``) and per sample ``<name>/latent`` (C, t, h, w)
float16 or float32, ``<name>/K`` (T, 3, 3), ``<name>/poses`` (T, 4, 4), ``<name>/disparity_shift``,
``<name>/disparity_scale``, optionally ``<name>/rgb_latent`` (C_rgb, t, h, w) and
``<name>/text`` (L_i, D): the caption's valid tokens only. :class:`LatentDataset` reads them.

Augmented datasets are encoded as they come (one random crop per sample); pass
``augment=False`` to the dataset for a canonical cache.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .dataset import SkippingDataset
from .shards import (progress_bar, remove_stale_temporaries, write_npz_atomic, write_text_atomic,
                     writers_in_flight)

__all__ = ["LATENT_GLOB", "encode_dataset", "LatentDataset", "collate_latents",
           "pool_encoder"]

LATENT_GLOB = "latents-*.npz"
LATENT_FORMAT = "rgbd-world-latents"
_MANIFEST = "latents-manifest.json"


def pool_encoder(video: torch.Tensor, spatial: int = 8, temporal: int = 8) -> torch.Tensor:
    """A parameter-free stand-in with the tokenizer's shapes (for plumbing and tests only).

    (B, C, 1 + temporal * k, H, W) -> (B, C, 1 + k, H / spatial, W / spatial): frame 0 alone,
    then groups of ``temporal`` frames, each average-pooled (Cosmos' causal frame grouping).
    """
    if (video.shape[2] - 1) % temporal:
        raise ValueError(f"need 1 + {temporal} * k frames, got {video.shape[2]}")
    first = video[:, :, :1]
    rest = video[:, :, 1:]
    b, c, t, h, w = rest.shape
    parts = [first]
    if t:
        parts.append(rest.reshape(b, c, t // temporal, temporal, h, w).mean(3))
    x = torch.cat(parts, 2)
    return torch.nn.functional.avg_pool3d(x, (1, spatial, spatial))


def _text_tokens(text_encoder, captions: list[str]) -> list[torch.Tensor]:
    """Per caption, its valid token embeddings (L_i, D)."""
    out = text_encoder.encode(captions) if hasattr(text_encoder, "encode") else text_encoder(captions)
    emb, mask = out if isinstance(out, (tuple, list)) else (out, None)
    if not isinstance(emb, torch.Tensor) or emb.dim() != 3 or emb.shape[0] != len(captions):
        raise ValueError(f"text_encoder must return (B, L, D) embeddings for B = {len(captions)}, "
                         f"got {getattr(emb, 'shape', emb)}")
    if mask is None:
        return list(emb)
    return [e[m.to(torch.bool)] for e, m in zip(emb, mask)]


def _encoder_name(fn, given: str | None) -> str | None:
    """The name a cache records for an encoder: ``given``, else its ``name`` attribute (the
    frozen text encoders), else its qualified name; None for no encoder."""
    if fn is None:
        return None
    return given or getattr(fn, "name", None) or getattr(fn, "__qualname__", type(fn).__name__)


def _describe_dataset(dataset) -> dict:
    """What a resumed cache must match besides its length: the clips' roots, frames and size."""
    roots = getattr(dataset, "roots", None)
    size = getattr(dataset, "size", None)
    return {"type": type(dataset).__name__,
            "roots": [str(Path(r).resolve()) for r in roots] if roots else None,
            "frames": getattr(dataset, "frames", None),
            "size": list(size) if size is not None else None,
            "augment": getattr(dataset, "augment", None)}


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _to_numpy(x: torch.Tensor, dtype: str) -> np.ndarray:
    return x.detach().to("cpu", torch.float32).numpy().astype(dtype)


def encode_dataset(dataset, encoder: Callable, out_dir: str | os.PathLike, *,
                   batch_size: int = 4, samples_per_shard: int = 64, num_workers: int = 0,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   storage_dtype: str = "float16", rgb_encoder: Callable | None = None,
                   text_encoder: Callable | None = None, encoder_name: str | None = None,
                   rgb_encoder_name: str | None = None, text_encoder_name: str | None = None,
                   progress: bool = True,
                   on_shard: Callable[[int], None] | None = None) -> list[Path]:
    """Encode every sample of ``dataset`` into latent shards under ``out_dir``; return paths.

    Sample ``i`` goes to shard ``i // samples_per_shard``, so an interrupted run resumes by
    skipping shards that exist (``latents-manifest.json`` must match). Encoding runs under
    ``torch.no_grad`` on ``device`` in ``dtype``; latents are stored as ``storage_dtype``.
    """
    if batch_size < 1 or samples_per_shard < 1:
        raise ValueError(f"batch_size and samples_per_shard must be >= 1, got {batch_size}, "
                         f"{samples_per_shard}")
    if storage_dtype not in ("float16", "float32"):
        raise ValueError(f"storage_dtype must be 'float16' or 'float32', got {storage_dtype!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    name = _encoder_name(encoder, encoder_name)
    config = {"format": LATENT_FORMAT, "version": 1, "num_samples": n,
              "samples_per_shard": samples_per_shard, "encoder": name,
              "rgb_encoder": _encoder_name(rgb_encoder, rgb_encoder_name),
              "text_encoder": _encoder_name(text_encoder, text_encoder_name),
              "storage_dtype": storage_dtype, "dataset": _describe_dataset(dataset)}
    manifest = out / _MANIFEST
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text())
            old = old.get("config") if isinstance(old, dict) else None
        except (OSError, ValueError):
            old = None  # unreadable: only replaced when no shard depends on it
        # a manifest without shards is what a failed run left: nothing to keep, start afresh
        if old != config and (any(out.glob(LATENT_GLOB)) or writers_in_flight(out)):
            raise ValueError(f"{out} holds a latent cache made with other settings ({old}); "
                             f"use another directory (asked for {config})")
    write_text_atomic(manifest, json.dumps({"config": config, "complete": False}, indent=1))
    remove_stale_temporaries(out)

    num_shards = -(-n // samples_per_shard)
    paths = [out / f"latents-{s:06d}.npz" for s in range(num_shards)]
    todo = [s for s in range(num_shards) if not paths[s].exists()]
    bar = progress_bar(total=n, desc="cache-latents", unit="clip", disable=not progress)
    bar.update(n - sum(len(range(s * samples_per_shard, min(n, (s + 1) * samples_per_shard)))
                       for s in todo))
    try:
        for s in todo:
            ids = list(range(s * samples_per_shard, min(n, (s + 1) * samples_per_shard)))
            loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, ids),
                                                 batch_size=batch_size, shuffle=False,
                                                 num_workers=num_workers)
            arrays: dict[str, np.ndarray] = {}
            samples = []
            k = 0
            for batch in loader:
                video = torch.cat([batch["rgb"], batch["disparity"]], 1).to(device, dtype)
                with torch.no_grad():
                    latent = _first(encoder(video))
                    rgb_latent = _first(rgb_encoder(video[:, :3])) if rgb_encoder else None
                    text = _text_tokens(text_encoder, list(batch["caption"])) if text_encoder else None
                for what, value in (("encoder", latent), ("rgb_encoder", rgb_latent)):
                    if value is not None and (not isinstance(value, torch.Tensor)
                                              or value.shape[0] != video.shape[0]):
                        raise ValueError(f"{what} must return a (B, ...) tensor for B = "
                                         f"{video.shape[0]}, got {getattr(value, 'shape', value)}")
                for b in range(video.shape[0]):
                    key = f"sample-{ids[k]:08d}"
                    arrays[f"{key}/latent"] = _to_numpy(latent[b], storage_dtype)
                    arrays[f"{key}/K"] = batch["K"][b].numpy()
                    arrays[f"{key}/poses"] = batch["poses"][b].numpy()
                    arrays[f"{key}/disparity_shift"] = batch["disparity_shift"][b].numpy()
                    arrays[f"{key}/disparity_scale"] = batch["disparity_scale"][b].numpy()
                    if rgb_latent is not None:
                        arrays[f"{key}/rgb_latent"] = _to_numpy(rgb_latent[b], storage_dtype)
                    if text is not None:
                        arrays[f"{key}/text"] = _to_numpy(text[b], storage_dtype)
                    index = int(batch["index"][b]) if "index" in batch else ids[k]  # bad clips
                    samples.append({"name": key, "index": index, "caption": batch["caption"][b],
                                    "source": batch["source"][b],
                                    "latent_shape": list(latent[b].shape)})
                    k += 1
                bar.update(video.shape[0])
            meta = {"format": LATENT_FORMAT, "version": 1, "encoder": name,
                    "rgb_encoder": config["rgb_encoder"], "text_encoder": config["text_encoder"],
                    "samples": samples}
            arrays["meta"] = np.array(json.dumps(meta))
            write_npz_atomic(paths[s], arrays, compress=False)
            if on_shard:
                on_shard(s)
    finally:
        bar.close()
    write_text_atomic(manifest, json.dumps({"config": config, "complete": True}, indent=1))
    return paths


class LatentDataset(SkippingDataset):
    """Samples of a latent cache: ``latent`` (C, t, h, w) float32, ``caption``, ``K``, ``poses``,
    ``disparity_shift``/``disparity_scale``, ``rgb_latent`` and ``text`` (L_i, D) (if cached),
    ``source``, ``index``. ``encoders`` names the encoders the cache was made with
    (``{"encoder", "rgb_encoder", "text_encoder"}``, None where absent). Batch with
    :func:`collate_latents`, which pads the text tokens.

    Bad shards are skipped and counted like :class:`~rgbd_world.data.RGBDVideoDataset`'s clips.
    """

    def __init__(self, root: str | os.PathLike | Sequence[str | os.PathLike]):
        roots = [root] if isinstance(root, (str, os.PathLike)) else list(root)
        self.entries: list[tuple[str, dict]] = []
        self.encoders: dict[str, str | None] | None = None
        problems = []
        for r in map(Path, roots):
            if not r.is_dir():
                raise FileNotFoundError(f"latent cache {r} does not exist or is not a directory")
            shards = sorted(r.glob(LATENT_GLOB))
            for path in shards:
                try:
                    with np.load(path, allow_pickle=False) as z:
                        meta = json.loads(str(z["meta"]))
                    if meta.get("format") != LATENT_FORMAT:
                        raise ValueError(f"format {meta.get('format')!r}")
                    names = {k: meta.get(k) for k in ("encoder", "rgb_encoder", "text_encoder")}
                    if self.encoders is None:
                        self.encoders = names
                    elif names != self.encoders:
                        raise ValueError(f"made with other encoders ({names}) than the first "
                                         f"shard ({self.encoders})")
                    self.entries += [(str(path), m) for m in meta["samples"]]
                except Exception as err:  # noqa: BLE001 - skipped and counted
                    problems.append((str(path), f"unreadable latent shard ({type(err).__name__}: "
                                                f"{err})"))
        if not self.entries:
            raise ValueError(f"LatentDataset: no latent samples under {', '.join(map(str, roots))}"
                             f" (looked for {LATENT_GLOB}; {len(problems)} unreadable)")
        self._init_skipping([f"{p}[{m['name']}]" for p, m in self.entries], problems)

    def _load(self, index: int) -> dict:
        path, m = self.entries[index]
        key = m["name"]
        with np.load(path, allow_pickle=False) as z:
            out = {"latent": torch.from_numpy(z[f"{key}/latent"].astype(np.float32)),
                   "K": torch.from_numpy(z[f"{key}/K"]),
                   "poses": torch.from_numpy(z[f"{key}/poses"]),
                   "disparity_shift": torch.from_numpy(z[f"{key}/disparity_shift"]),
                   "disparity_scale": torch.from_numpy(z[f"{key}/disparity_scale"])}
            for member in ("rgb_latent", "text"):
                if f"{key}/{member}" in z.files:
                    out[member] = torch.from_numpy(z[f"{key}/{member}"].astype(np.float32))
        if list(out["latent"].shape) != m["latent_shape"]:
            raise ValueError(f"{path}[{key}]: latent shape {list(out['latent'].shape)} != "
                             f"{m['latent_shape']} in meta")
        out.update(caption=m["caption"], source=m["source"], index=m["index"])
        return out


def collate_latents(samples: list[dict]) -> dict:
    """Batch :class:`LatentDataset` samples: tensors stacked, ``caption``/``source`` as lists,
    ``text`` padded to the longest caption (B, L, D) with ``text_mask`` (B, L) bool."""
    from torch.utils.data import default_collate

    samples = [dict(s) for s in samples]
    lists = {k: [s.pop(k) for s in samples] for k in ("caption", "source") if k in samples[0]}
    texts = [s.pop("text") for s in samples] if "text" in samples[0] else None
    batch = default_collate(samples)
    batch.update(lists)
    if texts is not None:
        longest = max(1, max(t.shape[0] for t in texts))
        emb = texts[0].new_zeros(len(texts), longest, texts[0].shape[-1])
        mask = torch.zeros(len(texts), longest, dtype=torch.bool)
        for i, t in enumerate(texts):
            emb[i, :t.shape[0]], mask[i, :t.shape[0]] = t, True
        batch["text"], batch["text_mask"] = emb, mask
    return batch
