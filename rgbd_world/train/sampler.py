"""Deterministic, resumable data order: the batch of a step is a function of (seed, step) alone.

Each epoch is a seeded permutation of the dataset; step s takes the s-th slice of ``global_batch``
indices (dropping the remainder), and rank r of W takes every W-th of them. Each sample also gets
its own seed, so augmentations are reproducible whatever the number of ranks or workers, and a
resumed run sees exactly the batches the uninterrupted run would have seen.
"""
from __future__ import annotations

import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, for steps start_step+1 .. total_steps, this rank's list of (index, sample_seed)."""

    def __init__(self, num_samples: int, global_batch: int, rank: int, world_size: int, seed: int,
                 start_step: int, total_steps: int):
        if global_batch % world_size:
            raise ValueError(f"data.batch_size (global) = {global_batch} must be divisible by the "
                             f"number of processes {world_size}")
        if num_samples < global_batch:
            raise ValueError(f"the dataset has {num_samples} samples, fewer than one global batch "
                             f"of {global_batch}")
        self.n, self.batch, self.rank, self.world = num_samples, global_batch, rank, world_size
        self.seed, self.start, self.total = seed, start_step, total_steps
        self.steps_per_epoch = num_samples // global_batch

    def batch_for_step(self, step: int) -> list[tuple[int, int]]:
        """Step numbers start at 1."""
        epoch, within = divmod(step - 1, self.steps_per_epoch)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n, generator=g)
        chosen = perm[within * self.batch:(within + 1) * self.batch].tolist()
        base = (self.seed * 7_919 + step) * self.batch
        pairs = [(idx, base + j) for j, idx in enumerate(chosen)]
        return pairs[self.rank::self.world]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start + 1, self.total + 1):
            yield self.batch_for_step(step)

    def __len__(self) -> int:
        return max(0, self.total - self.start)


class SeededSamples(Dataset):
    """Wraps a dataset: item (index, seed) runs ``dataset[index]`` with torch, numpy and python
    RNGs seeded from ``seed``, restoring the caller's random states afterwards."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % 2**32)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
