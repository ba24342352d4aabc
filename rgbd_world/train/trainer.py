"""The training loop shared by every stage: distributed, resumable, observable.

One function, :func:`train`, runs a :class:`~rgbd_world.train.stages.Stage` (tokenizer,
tokenizer-rgb, dit) for ``run.steps`` optimizer steps: AdamW + warmup/cosine, gradient clipping,
EMA, DDP or FSDP2, bf16 autocast on GPU, checkpoints (atomic, resumable bit-for-bit on CPU), a
guard that skips steps with a non-finite loss or gradient norm and never checkpoints non-finite
weights, a progress bar, ``metrics.jsonl`` (one line per step) and TensorBoard.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from rgbd_kernels import nvtx_range

from . import _faults
from .checkpoint import checkpoint_step, complete_checkpoints, restore_rng, save_checkpoint
from .distributed import DistInfo, all_reduce_mean, init_distributed, shutdown, wrap_model
from .ema import init_ema, update_ema
from .resume import resume_checkpoint
from .run_dir import prepare_run_dir, trim_metrics, write_json_atomic
from .sampler import SeededSamples, StepBatchSampler
from .schedule import warmup_cosine
from .throughput import throughput


class TrainingDiverged(RuntimeError):
    """Too many consecutive skipped steps (non-finite loss or gradient norm), or weights that
    became non-finite; the message names the newest checkpoint with finite weights."""


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _all_finite(tensors) -> bool:
    """Whether every floating-point tensor (this rank's shard of a DTensor) is finite on every
    rank (collective; one device sync)."""
    flags = [torch.isfinite(_local(t).detach()).all() for t in tensors if t.is_floating_point()]
    ok = torch.stack(flags).all().float().reshape(1).cpu() if flags else torch.ones(1)
    return all_reduce_mean(ok).item() == 1.0


class _Logger:
    """metrics.jsonl (every step) + TensorBoard (every ``run.log_every`` steps) + progress bar,
    on rank 0 only."""

    def __init__(self, out_dir: Path, info: DistInfo, start: int, total: int, every: int = 1):
        self.main, self.every = info.is_main, max(1, every)
        self.metrics_path = out_dir / "metrics.jsonl"
        self.writer = self.bar = None
        if not self.main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))
        except ImportError:  # tensorboard is a declared dependency; tolerate its absence
            self.writer = None
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)

    def step(self, record: dict[str, Any]) -> None:
        if not self.main:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None and record["step"] % self.every == 0:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, record["step"])
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{record['lr']:.2e}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def train(stage_name: str, cfg, resume: bool = False) -> dict[str, Any]:
    """Run training; returns a summary (final step, last loss, counters, checkpoint path).
    ``cfg``: a :class:`~rgbd_world.train.config.TrainConfig` or :func:`load_config`'s dict.

    Raises ValueError (a ConfigError, a CheckpointError, a run directory that cannot be used),
    FileExistsError (checkpoints there without ``resume``), OSError (a failed write) or
    :class:`TrainingDiverged`; each message is one line saying what to change."""
    from .config import TrainConfig
    from .stages import build_stage

    # typed and checked; the stage sees only its own model keys (TrainConfig.to_dict)
    typed = cfg if isinstance(cfg, TrainConfig) else TrainConfig.from_dict(stage_name, cfg)
    cfg = typed.to_dict()
    run, optim_cfg, par = cfg["run"], cfg["optim"], cfg["parallel"]
    info = init_distributed(run["device"])
    out_dir = Path(run["out_dir"])
    logger = None
    try:
        prepare_run_dir(out_dir)  # every rank: the same error everywhere, no rank left waiting
        newest = next(iter(complete_checkpoints(out_dir)), None)
        if newest is not None and not resume:
            raise FileExistsError(f"{out_dir} already holds checkpoints (newest {newest.name}); "
                                  "pass --resume to continue it, or choose another run.out_dir")
        _seed_everything(run["seed"])  # the same initial weights on every rank (FSDP2 shards them)
        stage = build_stage(stage_name, cfg, info)
        if par["fp8"] and not stage.supports_fp8:
            raise ValueError(f"parallel.fp8=true: stage {stage_name!r} has no FP8 path (FP8 is "
                             "for the DiT's attention, stage 'dit'); drop the override")
        model = stage.build_model().to(info.device)
        blocks = stage.blocks(model)
        if par["activation_checkpointing"]:
            from torch.distributed._composable import checkpoint as activation_checkpoint

            for block in blocks:
                activation_checkpoint(block)
        wrapped = wrap_model(model, par["strategy"], info, blocks)
        if par["compile"]:
            wrapped = torch.compile(wrapped)
        _seed_everything(run["seed"] * 1000 + 1 + info.rank)  # per-rank randomness from here on
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=optim_cfg["lr"], betas=tuple(optim_cfg["betas"]),
                                      weight_decay=optim_cfg["weight_decay"])
        scheduler = warmup_cosine(optimizer, optim_cfg["warmup_steps"], run["steps"],
                                  optim_cfg["min_lr_ratio"])
        ema = init_ema(model)

        start_step, counters, rng = 0, {"nonfinite_total": 0}, None
        if resume:
            ckpt = resume_checkpoint(out_dir, stage_name, cfg, model, optimizer, scheduler, ema,
                                     info)
            if ckpt is not None:
                start_step, rng = ckpt.step, ckpt.rng
                counters = {**counters, **ckpt.trainer.get("counters", {})}
                if info.is_main:
                    print(f"resuming from {ckpt.path} (step {start_step})", flush=True)
        if info.is_main:
            write_json_atomic(out_dir / "config.json", {"stage": stage_name, **cfg})
            write_json_atomic(out_dir / "model_config.json", stage.model_config())
            trim_metrics(out_dir / "metrics.jsonl", start_step)

        dataset = stage.build_dataset()
        sampler = StepBatchSampler(len(dataset), cfg["data"]["batch_size"], info.rank,
                                   info.world_size, run["seed"], start_step, run["steps"])
        # its own generator: making the iterator draws a worker base seed, which must not come
        # from (and shift) the global RNG that the steps draw noise from
        loader = DataLoader(SeededSamples(dataset), batch_sampler=sampler,
                            num_workers=cfg["data"]["num_workers"], collate_fn=stage.collate,
                            persistent_workers=False,
                            generator=torch.Generator().manual_seed(run["seed"]))
        logger = _Logger(out_dir, info, start_step, run["steps"], run["log_every"])
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (
            info.device.type == "cuda" and par["precision"] in ("auto", "bf16")) else None

        def good_checkpoint(step: int) -> Path | None:
            """Checkpoint the live state if its weights and EMA are finite (else write nothing);
            returns the newest checkpoint with finite weights, or None."""
            if not _all_finite([*model.parameters(), *ema.values()]):
                return next(iter(complete_checkpoints(out_dir)), None)
            return save_checkpoint(out_dir, step, model, optimizer, scheduler, ema,
                                   {"counters": counters}, info, keep=run["keep_checkpoints"])

        limit = run["max_consecutive_nonfinite"]  # 0: never stop
        consecutive, step, last = 0, start_step, {}
        data_iter = iter(loader)
        if rng is not None:  # last thing before the first step: nothing may draw in between
            restore_rng(rng)
        t_prev = time.perf_counter()
        while step < run["steps"]:
            with nvtx_range("train.data"):
                batch = _to_device(next(data_iter), info.device)
            step += 1
            with nvtx_range("train.forward"):
                if autocast is not None:
                    with autocast:
                        loss, terms = stage.compute_loss(wrapped, batch)
                else:
                    loss, terms = stage.compute_loss(wrapped, batch)
            finite = all_reduce_mean(torch.isfinite(loss.detach()).float().reshape(1)).item() == 1.0
            grad_norm, skipped = torch.tensor(float("nan")), "loss"
            if finite:
                with nvtx_range("train.backward"):
                    loss.backward()
                with nvtx_range("train.optimizer"):
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, optim_cfg["grad_clip"])
                    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
                        grad_norm = grad_norm.full_tensor()
                    grad_norm = grad_norm.detach().float().cpu()
                    if all_reduce_mean(torch.isfinite(grad_norm).float().reshape(1)).item() == 1.0:
                        optimizer.step()
                        scheduler.step()
                        update_ema(ema, model, optim_cfg["ema_decay"], step)
                        skipped = ""
                    else:
                        skipped = "gradient norm"
            if skipped:  # skip the update, keep the last good weights
                counters["nonfinite_total"] += 1
                consecutive += 1
            else:
                consecutive = 0
            optimizer.zero_grad(set_to_none=True)
            now = time.perf_counter()
            reduced = {k: all_reduce_mean(v.detach().float()).item() for k, v in terms.items()}
            last = {"step": step, "loss": all_reduce_mean(loss.detach().float()).item(), **reduced,
                    "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                    "skipped": bool(skipped), "nonfinite_total": counters["nonfinite_total"],
                    **throughput(stage, now - t_prev, info.device, info.world_size)}
            t_prev = now
            logger.step(last)
            if skipped and info.is_main:
                print(f"step {step}: non-finite {skipped}, update skipped "
                      f"({consecutive} in a row, {counters['nonfinite_total']} in total)", flush=True)
            if limit and consecutive >= limit:
                path = good_checkpoint(step)
                good = (f"The last good weights are in {path}" if path
                        else "No checkpoint holds finite weights")
                raise TrainingDiverged(
                    f"{consecutive} consecutive non-finite losses or gradient norms at step "
                    f"{step}: stopping. {good}; lower optim.lr or check the data.")
            _faults.maybe_crash("step", step)
            if run["sample_every"] and step % run["sample_every"] == 0 and (
                    info.is_main or par["strategy"] == "fsdp"):  # FSDP: all ranks gather shards
                stage.log_samples(model, batch, logger.writer if info.is_main else None, step,
                                  out_dir)
            if step % run["ckpt_every"] == 0 or step == run["steps"]:
                with nvtx_range("train.checkpoint"):
                    path = good_checkpoint(step)
                if path is None or checkpoint_step(path) != step:
                    good = (f"The last good weights are in {path}" if path
                            else "No checkpoint holds finite weights")
                    raise TrainingDiverged(
                        f"the weights became non-finite by step {step} (the losses and gradient "
                        f"norms were finite): not checkpointing them. {good}; lower optim.lr.")
        final = next(iter(complete_checkpoints(out_dir)), None)
        return {"step": step, "last": last, "counters": counters, "rank": info.rank,
                "checkpoint": os.fspath(final) if final else None}
    finally:
        if logger is not None:
            logger.close()  # ends the progress bar's line before any error message
        shutdown()
