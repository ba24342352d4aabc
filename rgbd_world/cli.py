"""Command line entry point: ``rgbd-world <command> ...``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


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

    def generation_args(p, with_prompt=True):
        p.add_argument("--pipeline", default=str(DEFAULT_PIPELINE),
                       help="saved RGBDPipeline directory (default: the shipped tiny checkpoint)")
        if with_prompt:
            p.add_argument("--prompt", default="", help="text prompt")
        p.add_argument("--out", default="outputs", help="output directory")
        p.add_argument("--frames", type=int, default=None, help="1 + 8k frames")
        p.add_argument("--height", type=int, default=None)
        p.add_argument("--width", type=int, default=None)
        p.add_argument("--steps", type=int, default=None, help="solver steps")
        p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--ply-frame", type=int, default=0, help="frame of the point cloud")
        p.add_argument("--device", default="cpu")

    gen = sub.add_parser("generate", help="generate an RGBD video from a prompt, image or video")
    generation_args(gen)
    src = gen.add_mutually_exclusive_group()
    src.add_argument("--image", default=None, help="RGB image: its frame conditions the video")
    src.add_argument("--video", default=None, help="RGB video: generate its coherent depth")
    gen.set_defaults(func=_generate)
    dep = sub.add_parser("depthify", help="RGB video -> RGBD video (depth coherent with the RGB)")
    generation_args(dep)
    dep.add_argument("--video", required=True, help="RGB video file (mp4, gif, ...)")
    dep.set_defaults(func=_generate, image=None)
    evg = sub.add_parser("eval-generation", help="depth accuracy, TAE and RGB-depth coherence "
                         "of a pipeline on held-out procedural clips")
    evg.add_argument("--pipeline", default=str(DEFAULT_PIPELINE))
    evg.add_argument("--num-clips", type=int, default=4)
    evg.add_argument("--steps", type=int, default=10)
    evg.add_argument("--data", default=None, help="where to render the held-out clips")
    evg.add_argument("--no-text-mode", action="store_true", help="skip the text-mode coherence")
    evg.set_defaults(func=_eval_generation)
    demo = sub.add_parser("demo", help="make data, train the tiny tokenizers and DiT on CPU, "
                          "generate an RGBD video into outputs/")
    demo.add_argument("--out", default="outputs/demo")
    demo.add_argument("--skip-training", action="store_true",
                      help="use the shipped tiny checkpoint instead of training")
    demo.add_argument("--steps", type=int, default=300, help="training steps of each stage")
    demo.add_argument("--prompt", default="a red sphere moves left in front of a blue box "
                      "while the camera orbits right")
    demo.set_defaults(func=_demo)
    return parser


DEFAULT_PIPELINE = Path(__file__).resolve().parent.parent / "assets" / "tiny-rgbd"


def _generate(args: argparse.Namespace) -> int:
    from rgbd_world.export import write_outputs
    from rgbd_world.pipeline import RGBDPipeline

    pipe = RGBDPipeline.from_pretrained(args.pipeline, device=args.device)
    out = pipe(prompt=getattr(args, "prompt", ""), image=args.image, video=args.video,
               num_frames=args.frames, height=args.height, width=args.width, steps=args.steps,
               guidance=args.guidance, seed=args.seed)
    paths = write_outputs(out, args.out, ply_frame=args.ply_frame)
    for kind, path in paths.items():
        print(f"{kind:14s} {path}")
    return 0


def _eval_generation(args: argparse.Namespace) -> int:
    import json

    from rgbd_world.eval.generation_eval import evaluate_generation
    from rgbd_world.pipeline import RGBDPipeline

    pipe = RGBDPipeline.from_pretrained(args.pipeline)
    metrics = evaluate_generation(pipe, num_clips=args.num_clips, steps=args.steps,
                                  data_dir=args.data, text_mode=not args.no_text_mode)
    for key, value in metrics.items():
        print(f"{key:24s} {value:.4f}" if isinstance(value, float) else f"{key:24s} {value}")
    print(json.dumps(metrics))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from rgbd_world.demo import run_demo

    run_demo(Path(args.out), steps=args.steps, skip_training=args.skip_training, prompt=args.prompt)
    return 0


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
