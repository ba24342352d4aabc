"""torch.distributed set-up for ``torchrun`` (or one plain process): DDP or FSDP2 wrapping."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group (gloo on CPU, NCCL on GPU); one process without torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"run.device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("run.device='cuda' but CUDA is not available here (torch "
                         f"{torch.__version__}, CUDA build {torch.version.cuda}); use "
                         "run.device=cpu or auto")
    if device == "cuda" and local_rank >= torch.cuda.device_count():
        raise ValueError(f"run.device='cuda': LOCAL_RANK={local_rank} but only "
                         f"{torch.cuda.device_count()} GPU(s) are visible")
    dev = torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank, world, local_rank, dev)


def shutdown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (a copy on ``t``'s device; ``t`` itself on one process). A CPU
    tensor travels through the current GPU when the backend is NCCL (which reduces GPU tensors
    only)."""
    if not dist.is_initialized():
        return t
    out = t.detach().clone()
    if out.device.type != "cuda" and dist.get_backend() == "nccl":
        out = out.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return (out / dist.get_world_size()).to(t.device)


def wrap_model(model: nn.Module, strategy: str, info: DistInfo, blocks: list[nn.Module]) -> nn.Module:
    """DDP or FSDP2 (``fully_shard`` per block, then the root). One process: the model itself."""
    if strategy not in ("ddp", "fsdp"):
        raise ValueError(f"parallel.strategy must be 'ddp' or 'fsdp', got {strategy!r}")
    if not info.distributed:
        return model
    if strategy == "ddp":
        ids = [info.device.index] if info.device.type == "cuda" else None
        # static_graph: some models (Cosmos's tokenizer) own parameters that a given
        # configuration never uses; DDP learns that from the first iteration.
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, static_graph=True)
    from torch.distributed.fsdp import fully_shard

    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
