"""Command line entry point: ``rgbd-world <command> ...``.

Failures end in one line on stderr, ``rgbd-world <command>: error: <message>``: bad input (an
argument out of range, a missing or unreadable file, a directory that cannot take the output)
names the argument, the value and what is allowed, and exits with code 2; other failures exit
with code 1 (an interrupted run with 130). ``RGBD_TRACEBACK=1`` (or the older
``RGBD_TRAIN_TRACEBACK=1``) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rgbd_world.package_data import DEFAULT_PIPELINE_NAME, shipped_pipeline
from rgbd_world.validation import (InvalidArgument, check_device, check_finite, check_int,
                                   check_output_dir, check_seed)

TRACEBACK_VARIABLES = ("RGBD_TRACEBACK", "RGBD_TRAIN_TRACEBACK")
EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


class OneLineParser(argparse.ArgumentParser):
    """argparse with usage errors as one line (exit code 2), like every other bad input."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {' '.join(message.split())} "
                                  f"(see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="rgbd-world", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="print versions and which kernel backends can run here")
    info.set_defaults(func=_info)
    from rgbd_world.data_commands import (add_cache_latents_parser, add_make_data_parser,
                                          add_pseudo_label_parser)

    add_make_data_parser(sub)
    add_cache_latents_parser(sub)
    add_pseudo_label_parser(sub)
    ev = sub.add_parser("eval-tokenizer", help="PSNR/SSIM, depth AbsRel/delta1/boundary F1 and "
                        "agreement with the RGB teacher of a tokenizer (a training run, or a "
                        "pipeline's) on held-out clips")
    which = ev.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="run directory of train.py --stage tokenizer[-rgb]")
    which.add_argument("--pipeline", help="a saved pipeline directory or a shipped pipeline's "
                       "name: its RGBD tokenizer, against its RGB tokenizer, at its default size")
    ev.add_argument("--data", default=None, help="dataset directory (default: fresh procedural clips)")
    ev.add_argument("--num-clips", type=int, default=16)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    ev.set_defaults(func=_eval_tokenizer)
    exp = sub.add_parser("export-run", help="write a training run's checkpoint as a saved model "
                         "(a tokenizer, or a whole pipeline for a DiT run) that from_pretrained reads")
    exp.add_argument("--run", required=True, help="run directory of train.py")
    exp.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    exp.add_argument("--out", default=None, help="output directory (default: <run>/exported)")
    exp.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    exp.set_defaults(func=_export_run)

    def generation_args(p, with_prompt=True):
        p.add_argument("--pipeline", default=DEFAULT_PIPELINE_NAME,
                       help="saved RGBDPipeline directory, or the name of a shipped one "
                       "(default: %(default)s, the shipped tiny checkpoint)")
        if with_prompt:
            p.add_argument("--prompt", default="", help="text prompt")
        p.add_argument("--out", default=f"outputs/{p.prog.split()[-1]}",
                       help="output directory (replaced by the new set; default: %(default)s)")
        p.add_argument("--frames", type=int, default=None,
                       help="frames: 1 + k x the tokenizer's temporal compression (default: the "
                       "pipeline's)")
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
    evg = sub.add_parser("eval-generation", help="depth accuracy, TAE, RGB-depth coherence and "
                         "prompt adherence (against its shuffled-caption chance level) of a "
                         "pipeline on held-out procedural clips")
    evg.add_argument("--pipeline", default=DEFAULT_PIPELINE_NAME)
    evg.add_argument("--num-clips", type=int, default=4)
    evg.add_argument("--steps", type=int, default=10)
    evg.add_argument("--data", default=None, help="where to render the held-out clips")
    evg.add_argument("--seed", type=int, default=12345,
                     help="seed of the held-out clips (and of the caption shuffle)")
    evg.add_argument("--no-text-mode", action="store_true",
                     help="skip text mode (coherence and prompt adherence)")
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


DEFAULT_PIPELINE = shipped_pipeline(DEFAULT_PIPELINE_NAME)  # ships inside the package


def _load_pipeline(args: argparse.Namespace, device: str = "cpu"):
    """``--pipeline`` loaded; any problem with it is an InvalidArgument naming ``--pipeline``."""
    from rgbd_world.pipeline import RGBDPipeline

    try:
        return RGBDPipeline.from_pretrained(args.pipeline, device=device)
    except (ValueError, OSError) as err:
        if isinstance(err, InvalidArgument):
            raise
        raise InvalidArgument("pipeline", args.pipeline, "a directory written by "
                              "RGBDPipeline.save_pretrained (or rgbd-world demo)",
                              " ".join(str(err).split())) from None


def _generate(args: argparse.Namespace) -> int:
    import torch

    from rgbd_world.export import check_output_set_dir, write_outputs

    device = check_device(args.device)
    for name in ("frames", "height", "width", "steps"):  # omitted: the pipeline's default
        if getattr(args, name) is not None:
            check_int(name, getattr(args, name), 1)
    if args.guidance is not None:
        check_finite("guidance", args.guidance)
    check_seed(args.seed)
    check_int("ply_frame", args.ply_frame, 0)
    for name in ("image", "video"):
        path = getattr(args, name)
        if path is not None and not Path(path).is_file():
            raise InvalidArgument(name, path, "an existing image or video file",
                                  "no such file" if not Path(path).exists() else "not a file")
    check_output_set_dir(args.out, "out")
    pipe = _load_pipeline(args, device)
    call = {"prompt": getattr(args, "prompt", ""), "image": args.image, "video": args.video,
            "num_frames": args.frames, "height": args.height, "width": args.width,
            "num_inference_steps": args.steps, "guidance_scale": args.guidance,
            "generator": torch.Generator().manual_seed(args.seed)}
    resolved = pipe.check_arguments(**call)
    if args.ply_frame >= resolved["num_frames"]:
        raise InvalidArgument("ply_frame", args.ply_frame,
                              f"a frame in [0, {resolved['num_frames'] - 1}]")
    out = pipe(**call)
    paths = write_outputs(out, args.out, ply_frame=args.ply_frame)
    for kind, path in paths.items():
        print(f"{kind:14s} {path}")
    return 0


def _eval_generation(args: argparse.Namespace) -> int:
    import json

    from rgbd_world.eval.generation_eval import evaluate_generation

    # text mode scores adherence against other clips' captions: it needs two clips or more
    check_int("num_clips", args.num_clips, 1 if args.no_text_mode else 2)
    check_int("steps", args.steps, 1)
    check_seed(args.seed)
    if args.data is not None:
        check_output_dir("data", args.data)
    pipe = _load_pipeline(args)
    metrics = evaluate_generation(pipe, num_clips=args.num_clips, steps=args.steps,
                                  seed=args.seed, data_dir=args.data,
                                  text_mode=not args.no_text_mode)
    for key, value in metrics.items():
        print(f"{key:24s} {value:.4f}" if isinstance(value, float) else f"{key:24s} {value}")
    print(json.dumps(metrics))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from rgbd_world.demo import run_demo

    check_int("steps", args.steps, 1)
    check_output_dir("out", args.out)
    run_demo(Path(args.out), steps=args.steps, skip_training=args.skip_training, prompt=args.prompt)
    return 0


def _export_run(args: argparse.Namespace) -> int:
    from rgbd_world.train.run_models import export_run

    if args.step is not None:
        check_int("step", args.step, 0)
    run = Path(args.run)
    if not (run / "model_config.json").is_file():
        raise InvalidArgument("run", args.run, "a train.py run directory (with model_config.json)",
                              "no such directory" if not run.exists() else "no model_config.json")
    try:
        out = export_run(run, args.out, ema=not args.no_ema, step=args.step)
    except FileNotFoundError as err:
        raise InvalidArgument("step" if args.step is not None else "run",
                              args.step if args.step is not None else args.run,
                              "a step with a complete checkpoint", " ".join(str(err).split())) from None
    print(f"exported {run} to {out}")
    return 0


def _eval_pipeline_tokenizer(args: argparse.Namespace) -> dict:
    """A saved pipeline's RGBD tokenizer on held-out procedural clips at its default size
    (seed 100003, which no shipped training used), with its RGB tokenizer as the teacher, and
    that RGB tokenizer's own PSNR/SSIM on the same clips."""
    import tempfile

    from rgbd_world.data import RGBDVideoDataset, generate_dataset
    from rgbd_world.eval import evaluate_tokenizer

    pipe = _load_pipeline(args)
    d = pipe.defaults
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "clips"
            generate_dataset(data, args.num_clips, frames=d["num_frames"], height=d["height"],
                             width=d["width"], seed=100_003, progress=False)
        ds = RGBDVideoDataset(data, frames=d["num_frames"], size=(d["height"], d["width"]),
                              augment=False,
                              temporal_compression=pipe.tokenizer.temporal_compression)
        metrics = evaluate_tokenizer(pipe.tokenizer, ds, device=args.device,
                                     max_clips=args.num_clips, teacher=pipe.rgb_tokenizer)
        rgb_only = evaluate_tokenizer(pipe.rgb_tokenizer, ds, device=args.device,
                                      max_clips=args.num_clips, progress=False)
    # the RGB-only tokenizer of the same pipeline on the same clips, for the PSNR comparison
    return metrics | {"rgb_tokenizer_psnr": rgb_only["psnr"],
                      "rgb_tokenizer_ssim": rgb_only["ssim"]}


def _eval_tokenizer(args: argparse.Namespace) -> int:
    import json

    from rgbd_world.train.evaluate_run import evaluate_run

    check_int("num_clips", args.num_clips, 1)
    check_device(args.device)
    if args.data is not None and not Path(args.data).is_dir():
        raise InvalidArgument("data", args.data, "a dataset directory", "no such directory")
    if args.pipeline is not None:
        metrics = _eval_pipeline_tokenizer(args)
        for key, value in metrics.items():
            print(f"{key:12s} {value:.4f}" if isinstance(value, float) else f"{key:12s} {value}")
        print(json.dumps(metrics))
        return 0
    run = Path(args.run)
    if not (run / "config.json").is_file():
        raise InvalidArgument("run", args.run, "a run directory of train.py --stage "
                              "tokenizer[-rgb]", "no such directory" if not run.exists()
                              else "it has no config.json")
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


# CLI flags whose destination differs from the Python argument a validator names
_FLAG_OF = {"num_frames": "frames", "out_dir": "out", "directory": "out", "run_dir": "run",
            "data_dir": "data"}


def _flag(name: str, args: argparse.Namespace) -> str:
    """The command-line flag of a Python argument name (``num_frames`` -> ``--frames``)."""
    dest = name if hasattr(args, name) else _FLAG_OF.get(name, name)
    return "--" + dest.replace("_", "-") if hasattr(args, dest) else name


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 600 else text[:600] + " ..."


def run_command(args: argparse.Namespace, prog: str = "rgbd-world") -> int:
    """Run ``args.func(args)`` under the one error handler of every command (see the module
    docstring); returns the exit code."""
    import subprocess

    command = f"{prog} {args.command}" if getattr(args, "command", None) else prog
    show = any(os.environ.get(v, "0") not in ("", "0") for v in TRACEBACK_VARIABLES)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if show:
            raise
        print(f"{command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - the one handler: one line, a meaningful exit code
        if show:
            raise
        if isinstance(err, InvalidArgument):
            message, code = err.format(_flag(err.argument, args)), EXIT_BAD_INPUT
        elif isinstance(err, (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
                              IsADirectoryError, PermissionError)):
            message, code = _one_line(err), EXIT_BAD_INPUT
        elif isinstance(err, subprocess.CalledProcessError):
            message = f"{' '.join(map(str, err.cmd[:6]))} ... failed with exit code " \
                      f"{err.returncode} (its messages are above)"
            code = EXIT_FAILED
        elif isinstance(err, OSError):
            message, code = _one_line(err), EXIT_FAILED
        else:
            message = f"{type(err).__name__}: {_one_line(err)} (unexpected; " \
                      f"{TRACEBACK_VARIABLES[0]}=1 shows the traceback)"
            code = EXIT_FAILED
        print(f"{command}: error: {message}", file=sys.stderr)
        return code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
