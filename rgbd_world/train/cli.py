"""Command line of ``train.py`` (also ``python -m rgbd_world.train``)."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .config import ConfigError, load_stage_config
from .stages import STAGES


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Train a stage of rgbd-world (1 process or torchrun).")
    p.add_argument("--stage", required=True, choices=sorted(STAGES), help="what to train")
    p.add_argument("--config", required=True, help="name of a shipped config (tiny-cpu, small-gpu, cosmos-cv8x8x8), or a .toml path")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in run.out_dir")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. optim.lr=3e-4 run.steps=200")
    return p


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and exc.filename not in text:
        text += f" ({exc.filename})"
    return text


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 a setup problem (bad config value, unusable run directory or
    checkpoint, a failed write such as a full disk), 3 the run diverged. Each failure is one
    line on stderr; ``RGBD_TRAIN_TRACEBACK=1`` raises instead, to show where."""
    args = build_parser().parse_intermixed_args(argv)
    show_traceback = os.environ.get("RGBD_TRAIN_TRACEBACK", "0") not in ("", "0")
    try:
        cfg = load_stage_config(args.stage, args.config, args.overrides)
    except ConfigError as exc:
        print(f"train.py: {exc}", file=sys.stderr)
        return 2
    from .trainer import TrainingDiverged, train

    try:
        summary = train(args.stage, cfg, resume=args.resume)
    except TrainingDiverged as exc:
        print(f"train.py: {exc}", file=sys.stderr)
        return 3
    except (ValueError, OSError) as exc:
        # set up wrong (a bad value, a missing run directory, a mismatched cache or checkpoint)
        # or the filesystem refused a write (full, read-only): the message says what to change
        if show_traceback:
            raise
        print(f"train.py: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    if summary.get("rank", 0) == 0:  # one summary line per run, not per process
        exported = _export(cfg.run.out_dir) if summary["checkpoint"] else None
        print(json.dumps({"done": summary["step"], "checkpoint": summary["checkpoint"],
                          "last": summary["last"], "exported": exported}, default=str))
    return 0


def _export(out_dir: str) -> str | None:
    """The finished run as a ``from_pretrained`` directory (``<run>/exported``); a failure
    here is a warning (the training itself is done and checkpointed)."""
    from .run_models import export_run

    try:
        return os.fspath(export_run(out_dir))
    except (ValueError, OSError, KeyError) as exc:
        print(f"train.py: warning: the run finished but could not be exported "
              f"({_one_line(exc)}); retry with: rgbd-world export-run --run {out_dir}",
              file=sys.stderr)
        return None
