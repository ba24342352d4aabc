"""Weighted mixtures of datasets (for example synthetic and pseudo-labelled clips).

``WeightedMix([(dataset_a, 0.5), (dataset_b, 0.5)], length=N, seed=0)`` is a map-style dataset
of ``length`` items (default: the sum of the sources' lengths). Item ``i`` comes from source
``k`` with probability proportional to its weight; the assignment is drawn once from ``seed``
and each source's items are visited in a seeded permutation (cycled when a source is drawn more
often than it has items), so the mix is deterministic, resumable and the same in every
DataLoader worker. ``mixed_rgbd_dataset(sources, **kwargs)`` builds one ``RGBDVideoDataset`` per
directory with the same settings and mixes them.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch

from rgbd_world.validation import InvalidArgument, check_int

__all__ = ["WeightedMix", "mixed_rgbd_dataset", "check_sources"]


def check_sources(sources, name: str = "sources") -> list[tuple[object, float]]:
    """``[(item, weight), ...]`` with finite weights > 0 (at least one pair)."""
    if not isinstance(sources, (list, tuple)) or not sources:
        raise InvalidArgument(name, sources, "a non-empty list of (source, weight) pairs")
    checked = []
    for i, pair in enumerate(sources):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise InvalidArgument(f"{name}[{i}]", pair, "a (source, weight) pair")
        item, weight = pair
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                or not math.isfinite(weight) or weight <= 0:
            raise InvalidArgument(f"{name}[{i}] weight", weight, "a finite number > 0")
        checked.append((item, float(weight)))
    return checked


class WeightedMix(torch.utils.data.Dataset):
    """Items of several datasets, drawn with the given weights (see the module docstring)."""

    def __init__(self, sources: Sequence[tuple[torch.utils.data.Dataset, float]],
                 length: int | None = None, seed: int = 0):
        sources = check_sources(sources)
        self.datasets = [d for d, _ in sources]
        for i, d in enumerate(self.datasets):
            if len(d) == 0:
                raise InvalidArgument(f"sources[{i}]", type(d).__name__, "a non-empty dataset")
        weights = np.array([w for _, w in sources], np.float64)
        self.weights = (weights / weights.sum()).tolist()
        self.length = check_int("length", length, 1, allow_none=True) \
            or sum(len(d) for d in self.datasets)
        rng = np.random.default_rng(check_int("seed", seed, 0))
        self._source = rng.choice(len(self.datasets), size=self.length, p=self.weights)
        self._orders = [rng.permutation(len(d)) for d in self.datasets]
        self._item = np.zeros(self.length, np.int64)
        seen = np.zeros(len(self.datasets), np.int64)
        for i, k in enumerate(self._source):
            order = self._orders[k]
            self._item[i] = order[seen[k] % len(order)]
            seen[k] += 1

    def __len__(self) -> int:
        return self.length

    def source_of(self, index: int) -> int:
        """Which source item ``index`` comes from."""
        return int(self._source[index])

    def __getitem__(self, index: int):
        return self.datasets[self._source[index]][int(self._item[index])]


def mixed_rgbd_dataset(sources: Sequence[tuple[str | os.PathLike, float]], *,
                       length: int | None = None, seed: int = 0, **dataset_kwargs) -> WeightedMix:
    """One ``RGBDVideoDataset(directory, **dataset_kwargs)`` per ``(directory, weight)``, mixed."""
    from .dataset import RGBDVideoDataset

    pairs = check_sources(sources)
    return WeightedMix([(RGBDVideoDataset(root, **dataset_kwargs), w) for root, w in pairs],
                       length=length, seed=seed)
