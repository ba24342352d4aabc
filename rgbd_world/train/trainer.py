"""The training loop shared by every stage: distributed, resumable, observable.

One function, :func:`train`, runs a :class:`~rgbd_world.train.stages.Stage` (tokenizer,
tokenizer-rgb, dit) for ``run.steps`` optimizer steps: AdamW + warmup/cosine, gradient clipping,
EMA, DDP or FSDP2, bf16 autocast on GPU, checkpoints (atomic, resumable bit-for-bit on CPU), a
non-finite-loss guard, a progress bar, ``metrics.jsonl`` (one line per step) and TensorBoard.
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

from rgbd_kernels._nvtx import nvtx_range

from . import _faults
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .distributed import DistInfo, all_reduce_mean, init_distributed, shutdown, wrap_model
from .ema import init_ema, update_ema
from .sampler import SeededSamples, StepBatchSampler
from .schedule import warmup_cosine
from .throughput import throughput


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite losses; the last good state was checkpointed."""


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


def _trim_metrics(path: Path, last_step: int) -> None:
    """Drop lines logged after ``last_step`` by a run that died before its next checkpoint."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in keep))


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


def train(stage_name: str, cfg: dict[str, dict[str, Any]], resume: bool = False) -> dict[str, Any]:
    """Run training; returns a summary (final step, last loss, counters, checkpoint path)."""
    from .stages import build_stage

    run, optim_cfg, par = cfg["run"], cfg["optim"], cfg["parallel"]
    info = init_distributed(run["device"])
    out_dir = Path(run["out_dir"])
    try:
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

        start_step, counters = 0, {"nonfinite_total": 0}
        ckpt = latest_checkpoint(out_dir)
        if ckpt is not None and not resume:
            raise FileExistsError(f"{out_dir} already holds checkpoints (newest {ckpt.name}); pass "
                                  "--resume to continue it, or choose another run.out_dir")
        if resume and ckpt is not None:
            state = load_checkpoint(ckpt, model, optimizer, scheduler, ema, info)
            start_step, counters = state["step"], state["counters"]
            if info.is_main:
                print(f"resuming from {ckpt} (step {start_step})", flush=True)
        if info.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "config.json").write_text(json.dumps({"stage": stage_name, **cfg}, indent=1))
            (out_dir / "model_config.json").write_text(json.dumps(stage.model_config(), indent=1))
            _trim_metrics(out_dir / "metrics.jsonl", start_step)

        dataset = stage.build_dataset()
        sampler = StepBatchSampler(len(dataset), cfg["data"]["batch_size"], info.rank,
                                   info.world_size, run["seed"], start_step, run["steps"])
        loader = DataLoader(SeededSamples(dataset), batch_sampler=sampler,
                            num_workers=cfg["data"]["num_workers"], collate_fn=stage.collate,
                            persistent_workers=False)
        logger = _Logger(out_dir, info, start_step, run["steps"], run["log_every"])
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (
            info.device.type == "cuda" and par["precision"] in ("auto", "bf16")) else None

        def checkpoint(step: int) -> Path:
            return save_checkpoint(out_dir, step, model, optimizer, scheduler, ema,
                                   {"counters": counters}, info, keep=run["keep_checkpoints"])

        consecutive, step, last = 0, start_step, {}
        data_iter = iter(loader)
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
            if finite:
                with nvtx_range("train.backward"):
                    loss.backward()
                with nvtx_range("train.optimizer"):
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, optim_cfg["grad_clip"])
                    optimizer.step()
                    scheduler.step()
                    update_ema(ema, model, optim_cfg["ema_decay"], step)
                consecutive = 0
            else:  # skip the update, keep the last good weights
                grad_norm = torch.tensor(float("nan"))
                counters["nonfinite_total"] += 1
                consecutive += 1
            optimizer.zero_grad(set_to_none=True)
            now = time.perf_counter()
            reduced = {k: all_reduce_mean(v.detach().float()).item() for k, v in terms.items()}
            last = {"step": step, "loss": all_reduce_mean(loss.detach().float()).item(), **reduced,
                    "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                    "skipped": not finite, "nonfinite_total": counters["nonfinite_total"],
                    **throughput(stage, now - t_prev, info.device, info.world_size)}
            t_prev = now
            logger.step(last)
            if not finite and info.is_main:
                print(f"step {step}: non-finite loss, update skipped "
                      f"({consecutive} in a row, {counters['nonfinite_total']} in total)", flush=True)
            if consecutive >= run["max_consecutive_nonfinite"]:
                path = checkpoint(step)
                raise TrainingDiverged(
                    f"{consecutive} consecutive non-finite losses at step {step}: stopping. The "
                    f"last good weights are in {path}; lower optim.lr or check the data.")
            _faults.maybe_crash("step", step)
            if run["sample_every"] and step % run["sample_every"] == 0 and (
                    info.is_main or par["strategy"] == "fsdp"):  # FSDP: all ranks gather shards
                stage.log_samples(model, batch, logger.writer if info.is_main else None, step,
                                  out_dir)
            if step % run["ckpt_every"] == 0 or step == run["steps"]:
                with nvtx_range("train.checkpoint"):
                    checkpoint(step)
        logger.close()
        final = latest_checkpoint(out_dir)
        return {"step": step, "last": last, "counters": counters, "rank": info.rank,
                "checkpoint": os.fspath(final) if final else None}
    finally:
        shutdown()
