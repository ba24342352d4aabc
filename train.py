"""Train a stage of rgbd-world.

    python train.py --stage tokenizer --config tiny-cpu [section.key=value ...] [--resume]
    torchrun --nproc_per_node=2 train.py --stage tokenizer --config tiny-cpu

Stages: ``tokenizer-rgb`` (an RGB teacher, when no Cosmos checkpoint is at hand), ``tokenizer``
(stage 1: the RGBD tokenizer distilled against the frozen RGB teacher), ``dit`` (stage 2).
Configs: a shipped name (``rgbd_world/configs/<name>.toml``) or a path; overrides like
``optim.lr=3e-4 run.steps=200``. At its end a run writes ``<run.out_dir>/exported``, a directory
that ``from_pretrained`` reads (``rgbd-world export-run --run <dir> --step N`` exports any
checkpoint).
"""
import sys

from rgbd_world.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
