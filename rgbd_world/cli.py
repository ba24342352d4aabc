"""Command line entry point: ``rgbd-world <command> ...``."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rgbd-world", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="print versions and which kernel backends can run here")
    info.set_defaults(func=_info)
    from rgbd_world.data.cli import add_cache_latents_parser, add_make_data_parser

    add_make_data_parser(sub)
    add_cache_latents_parser(sub)
    ev = sub.add_parser("eval-tokenizer", help="PSNR/SSIM and depth AbsRel/delta1/boundary F1 "
                        "of a tokenizer training run on held-out clips")
    ev.add_argument("--run", required=True, help="run directory of train.py --stage tokenizer[-rgb]")
    ev.add_argument("--data", default=None, help="dataset directory (default: fresh procedural clips)")
    ev.add_argument("--num-clips", type=int, default=16)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    ev.set_defaults(func=_eval_tokenizer)
    return parser


def _eval_tokenizer(args: argparse.Namespace) -> int:
    import json

    from rgbd_world.eval import evaluate_run

    metrics = evaluate_run(args.run, args.data, args.num_clips, args.device, ema=not args.no_ema)
    for key, value in metrics.items():
        print(f"{key:12s} {value:.4f}" if isinstance(value, float) else f"{key:12s} {value}")
    print(json.dumps(metrics))
    return 0


def _info(args: argparse.Namespace) -> int:
    import torch

    import rgbd_kernels
    import rgbd_world

    print(f"rgbd_world {rgbd_world.__version__}, rgbd_kernels {rgbd_kernels.__version__}, "
          f"torch {torch.__version__}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for name, reason in rgbd_kernels.available_backends(device).items():
            print(f"  {device:5s} {name:10s} {'ok' if reason is None else 'unavailable: ' + reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
