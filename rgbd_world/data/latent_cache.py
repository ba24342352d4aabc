"""Latent cache for stage 2: encode a dataset once, then train on the stored latents.

:func:`encode_dataset` runs any callable ``encoder`` (the RGBD tokenizer's encoder, or any
function of the same contract) over an :class:`~rgbd_world.data.RGBDVideoDataset` and writes
``latents-000000.npz`` shards atomically (temporary name, then rename), resuming by skipping
finished shards. Encoder contract: it takes a float tensor (B, 4, T, H, W) — RGB in [-1, 1] and
normalized disparity, concatenated on channels — and returns latents (B, C, t, h, w) (a tuple's
first element is used). An optional ``text_encoder`` maps a list of captions to a tensor
(B, L, D) stored next to the latents.

Shard members: ``meta`` (0-d unicode JSON: format, encoder name, per-sample ``name``,
``caption``, ``source``, ``latent_shape``) and per sample ``<name>/latent`` (C, t, h, w)
float16 or float32, ``<name>/K`` (T, 3, 3), ``<name>/poses`` (T, 4, 4), ``<name>/disparity_shift``,
``<name>/disparity_scale`` and optionally ``<name>/text``. :class:`LatentDataset` reads them.

Augmented datasets are encoded as they come (one random crop per sample); pass
``augment=False`` to the dataset for a canonical cache.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .dataset import SkippingDataset
from .shards import progress_bar, remove_stale_temporaries, write_npz_atomic, write_text_atomic

__all__ = ["LATENT_GLOB", "encode_dataset", "LatentDataset", "load_encoder", "pool_encoder"]

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


def load_encoder(spec: str, device: str | torch.device = "cpu") -> Callable:
    """An encoder from a CLI spec: ``package.module:callable`` or a tokenizer checkpoint path.

    Checkpoints need the RGBD tokenizer (``rgbd_world.tokenizer``); until it exists this raises
    NotImplementedError with what to do instead.
    """
    if ":" in spec and not os.path.exists(spec):
        module, _, attr = spec.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot load encoder {spec!r}: {err}") from err
        if not callable(obj):
            raise ValueError(f"encoder {spec!r} is not callable")
        return obj
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer checkpoint {path} does not exist")
    try:
        tokenizer = importlib.import_module("rgbd_world.tokenizer")
        loader = getattr(tokenizer, "load_encoder")
    except (ImportError, AttributeError) as err:
        raise NotImplementedError(
            f"cannot load tokenizer checkpoint {path}: the RGBD tokenizer (rgbd_world.tokenizer"
            f".load_encoder) is not available in this build yet ({err}). Pass --tokenizer "
            "package.module:callable for any encoder, or call "
            "rgbd_world.data.latent_cache.encode_dataset(dataset, encoder, out_dir) from "
            "Python.") from err
    return loader(path, device=device)


def _to_numpy(x: torch.Tensor, dtype: str) -> np.ndarray:
    return x.detach().to("cpu", torch.float32).numpy().astype(dtype)


def encode_dataset(dataset, encoder: Callable, out_dir: str | os.PathLike, *,
                   batch_size: int = 4, samples_per_shard: int = 64, num_workers: int = 0,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   storage_dtype: str = "float16", text_encoder: Callable | None = None,
                   encoder_name: str | None = None, progress: bool = True,
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
    name = encoder_name or getattr(encoder, "__qualname__", type(encoder).__name__)
    config = {"format": LATENT_FORMAT, "version": 1, "num_samples": n,
              "samples_per_shard": samples_per_shard, "encoder": name,
              "storage_dtype": storage_dtype}
    manifest = out / _MANIFEST
    if manifest.exists():
        old = json.loads(manifest.read_text()).get("config")
        if old != config:
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
                    latent = encoder(video)
                    if isinstance(latent, (tuple, list)):
                        latent = latent[0]
                    text = text_encoder(list(batch["caption"])) if text_encoder else None
                if not isinstance(latent, torch.Tensor) or latent.shape[0] != video.shape[0]:
                    raise ValueError(f"encoder must return a (B, ...) tensor for B = "
                                     f"{video.shape[0]}, got {getattr(latent, 'shape', latent)}")
                for b in range(video.shape[0]):
                    key = f"sample-{ids[k]:08d}"
                    arrays[f"{key}/latent"] = _to_numpy(latent[b], storage_dtype)
                    arrays[f"{key}/K"] = batch["K"][b].numpy()
                    arrays[f"{key}/poses"] = batch["poses"][b].numpy()
                    arrays[f"{key}/disparity_shift"] = batch["disparity_shift"][b].numpy()
                    arrays[f"{key}/disparity_scale"] = batch["disparity_scale"][b].numpy()
                    if text is not None:
                        arrays[f"{key}/text"] = _to_numpy(text[b], storage_dtype)
                    samples.append({"name": key, "index": ids[k], "caption": batch["caption"][b],
                                    "source": batch["source"][b],
                                    "latent_shape": list(latent[b].shape)})
                    k += 1
                bar.update(video.shape[0])
            meta = {"format": LATENT_FORMAT, "version": 1, "encoder": name, "samples": samples}
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
    ``disparity_shift``/``disparity_scale``, ``text`` (if cached), ``source``, ``index``.

    Bad shards are skipped and counted like :class:`~rgbd_world.data.RGBDVideoDataset`'s clips.
    """

    def __init__(self, root: str | os.PathLike | Sequence[str | os.PathLike]):
        roots = [root] if isinstance(root, (str, os.PathLike)) else list(root)
        self.entries: list[tuple[str, dict]] = []
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
            if f"{key}/text" in z.files:
                out["text"] = torch.from_numpy(z[f"{key}/text"].astype(np.float32))
        if list(out["latent"].shape) != m["latent_shape"]:
            raise ValueError(f"{path}[{key}]: latent shape {list(out['latent'].shape)} != "
                             f"{m['latent_shape']} in meta")
        out.update(caption=m["caption"], source=m["source"], index=m["index"])
        return out
