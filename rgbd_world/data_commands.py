"""``rgbd-world make-data``, ``cache-latents`` and ``pseudo-label`` (registered by rgbd_world.cli).

The data commands sit beside the other commands, above every layer: ``cache-latents`` builds the
tokenizers and the text encoder (from training runs, saved models or Cosmos files) and hands
them to :func:`rgbd_world.data.latent_cache.encode_dataset`, which knows no model."""
from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path
from typing import Callable


def add_make_data_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "make-data", help="render procedural RGB-D clips with captions into shards",
        description="Render procedural RGB-D videos (exact depth, poses, captions) into "
                    "shard-*.npz files. Resumable: rerun the same command after an interruption.")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num-clips", type=int, required=True)
    p.add_argument("--frames", type=int, default=17, help="frames per clip (default 17)")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="render processes (0: in-process)")
    p.add_argument("--clips-per-shard", type=int, default=16)
    p.add_argument("--num-objects", type=int, default=None,
                   help="objects per scene (default: random 1..6)")
    p.add_argument("--device", default="cpu", help="torch device to render on")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_make_data)
    return p


def _make_data(args: argparse.Namespace) -> int:
    from rgbd_world.data.shards import generate_dataset

    paths = generate_dataset(args.out, args.num_clips, args.frames, args.height, args.width,
                             args.seed, args.workers, clips_per_shard=args.clips_per_shard,
                             num_objects=args.num_objects, device=args.device,
                             progress=not args.no_progress)
    print(f"{args.num_clips} clips in {len(paths)} shards under {args.out}")
    return 0


def add_pseudo_label_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "pseudo-label", help="ordinary videos -> RGB-D shards with estimated depth and captions",
        description="Read every video under --videos (mp4/webm/mov/mkv/avi/gif files and folders "
                    "of frames), split it into clips, estimate per-frame relative depth with a "
                    "local model, make it consistent over time, caption each clip, and write "
                    "shards that training reads like make-data's. Nothing is downloaded. "
                    "Resumable: rerun the same command after an interruption.")
    p.add_argument("--videos", required=True, help="directory of videos")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--depth-model", required=True,
                   help="local Hugging Face depth-estimation directory (DPT, Depth Anything, ...) "
                        "or a TorchScript file (float32 (N, 3, H, W) in [0, 1] -> (N, H, W))")
    p.add_argument("--depth-output", default="disparity", choices=["disparity", "depth"],
                   help="what the depth model returns (default: disparity, as DPT and Depth "
                        "Anything do)")
    p.add_argument("--video-depth-model", action="store_true",
                   help="the depth model is temporally consistent (no per-frame alignment)")
    p.add_argument("--captioner", default=None,
                   help="local Hugging Face image-to-text model directory (one caption per clip)")
    p.add_argument("--captions", default=None,
                   help="captions file instead: JSON {video name: caption} or "
                        "'<video name><TAB><caption>' lines")
    p.add_argument("--frames", type=int, default=17, help="frames per clip (default 17)")
    p.add_argument("--stride", type=int, default=None,
                   help="first frames of consecutive clips this far apart (default: --frames)")
    p.add_argument("--height", type=int, default=None, help="resize and centre-crop to this")
    p.add_argument("--width", type=int, default=None, help="resize and centre-crop to this")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_pseudo_label)
    return p


def _pseudo_label(args: argparse.Namespace) -> int:
    from rgbd_world.data.pseudo_label import pseudo_label_videos

    report = pseudo_label_videos(args.videos, args.out, depth_model=args.depth_model,
                                 captioner=args.captioner, captions=args.captions,
                                 frames=args.frames, stride=args.stride, height=args.height,
                                 width=args.width, depth_output=args.depth_output,
                                 temporally_consistent=args.video_depth_model,
                                 device=args.device, progress=not args.no_progress)
    print(f"{report['clips']} clips from {report['shards_written']} videos written "
          f"({report['shards_present']} already there, {len(report['skipped'])} skipped: see "
          f"{Path(args.out) / 'report.json'}) under {args.out}")
    return 0


def add_cache_latents_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "cache-latents", help="encode a dataset into latent shards for stage 2",
        description="Encode RGB-D clips once with the tokenizer's encoder into latents-*.npz "
                    "shards (with captions). Resumable.")
    p.add_argument("--tokenizer", required=True,
                   help="tokenizer checkpoint, or package.module:callable for any encoder")
    p.add_argument("--data", required=True, nargs="+", help="dataset root(s)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", default="auto", help="data layout (default: detect)")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--samples-per-shard", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--device", default="cpu")
    p.add_argument("--storage-dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--rgb-tokenizer", default="auto",
                   help="also cache the RGB channels' latents from this RGB tokenizer (what "
                        "stage 2 conditions on in video mode): a checkpoint path, 'auto' (the "
                        "teacher of an RGBD tokenizer run, when it has one) or 'none'")
    p.add_argument("--text-encoder", default="none",
                   help="also cache caption embeddings from a frozen text encoder: 'minilm', a "
                        "local Hugging Face encoder directory, or 'none' (default)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cache_latents)
    return p


def _cache_latents(args: argparse.Namespace) -> int:
    import torch

    from rgbd_world.validation import InvalidArgument, check_device, check_int, check_output_dir

    from rgbd_world.data.dataset import RGBDVideoDataset
    from rgbd_world.data.latent_cache import encode_dataset

    # everything is checked before anything is written under --out
    for name in ("frames", "height", "width", "batch_size", "samples_per_shard"):
        check_int(name, getattr(args, name), 1)
    check_int("workers", args.workers, 0, 1024)
    check_device(args.device)
    check_output_dir("out", args.out)
    for root in args.data:
        if not Path(root).is_dir():
            raise InvalidArgument("data", root, "a dataset directory",
                                  "no such directory" if not Path(root).exists() else "not a directory")
    try:
        dataset = RGBDVideoDataset(args.data, args.frames, (args.height, args.width),
                                   format=args.format, augment=False)
    except InvalidArgument:
        raise
    except ValueError as err:
        raise InvalidArgument("data", " ".join(args.data), "a dataset with at least one usable "
                              "clip", " ".join(str(err).split())) from None
    try:
        encoder = load_encoder(args.tokenizer, device=args.device)
    except (FileNotFoundError, ValueError, NotImplementedError) as err:
        raise InvalidArgument("tokenizer", args.tokenizer, "a tokenizer checkpoint or run "
                              "directory, or package.module:callable", str(err)) from None
    _check_channels(encoder, 4, "tokenizer", args.tokenizer,
                    "an RGBD tokenizer (4 input channels); an RGB tokenizer goes to --rgb-tokenizer")
    rgb_encoder, rgb_name = _rgb_encoder(args)
    _check_channels(rgb_encoder, 3, "rgb_tokenizer", args.rgb_tokenizer,
                    "an RGB tokenizer (3 input channels)")
    text_encoder = None
    if args.text_encoder != "none":
        from rgbd_world.dit.text import build_text_encoder

        try:
            text_encoder = build_text_encoder(args.text_encoder)
        except (ValueError, OSError, ImportError) as err:
            raise InvalidArgument("text_encoder", args.text_encoder, "'minilm', a local Hugging "
                                  "Face encoder directory or 'none'", str(err)) from None
        if not hasattr(text_encoder, "name") or isinstance(text_encoder, torch.nn.Module):
            raise InvalidArgument("text_encoder", args.text_encoder, "a frozen encoder ('minilm', "
                                  "a Hugging Face directory) or 'none'",
                                  "it is trained with the DiT and cannot be cached")
        text_encoder.to(args.device)
    paths = encode_dataset(dataset, encoder, args.out, batch_size=args.batch_size,
                           samples_per_shard=args.samples_per_shard, num_workers=args.workers,
                           device=args.device, storage_dtype=args.storage_dtype,
                           rgb_encoder=rgb_encoder, text_encoder=text_encoder,
                           encoder_name=_spec_name(args.tokenizer), rgb_encoder_name=rgb_name,
                           progress=not args.no_progress)
    extras = [what for what, used in (("RGB latents", rgb_encoder), ("text embeddings",
                                                                     text_encoder)) if used]
    print(f"{len(dataset)} samples in {len(paths)} latent shards under {args.out}"
          + (f" (with {' and '.join(extras)})" if extras else ""))
    return 0


def _spec_name(spec: str) -> str:
    """An encoder spec as recorded in the cache: checkpoint paths made absolute."""
    return str(Path(spec).resolve()) if os.path.exists(spec) else spec


def _check_channels(encoder, channels: int, name: str, value: str, allowed: str) -> None:
    """A tokenizer encoder (``encode.model``) must take ``channels`` input channels."""
    from rgbd_world.validation import InvalidArgument

    model = getattr(encoder, "model", None)
    got = getattr(getattr(model, "config", None), "in_channels", None)
    if got is not None and got != channels:
        raise InvalidArgument(name, value, allowed, f"it takes {got} input channels")


def _rgb_encoder(args: argparse.Namespace):
    """(encoder, recorded name) of ``--rgb-tokenizer``, or (None, None)."""
    spec = args.rgb_tokenizer
    if spec == "none":
        return None, None
    if spec == "auto":
        from rgbd_world.train.run_models import run_teacher

        spec = run_teacher(args.tokenizer)  # "" for a run without one, or not a run directory
        if not spec:
            return None, None
    try:
        return load_encoder(spec, device=args.device), _spec_name(spec)
    except (FileNotFoundError, ValueError, NotImplementedError) as err:
        from rgbd_world.validation import InvalidArgument

        raise InvalidArgument("rgb_tokenizer", spec, "a tokenizer checkpoint, 'auto' or 'none'",
                              str(err)) from None


def load_encoder(spec: str, device: str = "cpu") -> Callable:
    """An encoder from a CLI spec: ``package.module:callable`` or a tokenizer checkpoint path
    (a training run directory, a saved tokenizer or a Cosmos checkpoint)."""
    if ":" in spec and not os.path.exists(spec):
        module, _, attr = spec.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot load encoder {spec!r}: {err}") from err
        if not callable(obj):
            raise ValueError(f"encoder {spec!r} is not callable")
        return obj
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer checkpoint {path} does not exist")
    from rgbd_world.train.run_models import load_encoder as load_tokenizer_encoder

    return load_tokenizer_encoder(path, device=device)
