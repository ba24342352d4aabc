"""The README's picture: text -> RGBD generations of a pipeline, a row per prompt.

Each row shows frames ``--frames`` (default: the first, middle and last) of one generation, each frame as RGB beside its colorized
disparity (near = bright), upscaled ``--scale`` times (nearest neighbour, so pixels stay
visible). Written as a PNG::

    python benchmarks/quality/readme_picture.py --out assets/sample_strip.png

uses the shipped pipeline (``tiny-rgbd``) and the prompts below; ``--pipeline DIR`` takes a saved
one, ``--prompt`` (repeatable) other prompts. ``--round-trip PATH`` also writes, for held-out
procedural clips, the true clip beside the pipeline's tokenizer round trip of it (middle frame,
RGB and disparity): what the latents the DiT generates in can show at all.
"""
from __future__ import annotations

import argparse
from pathlib import Path

PROMPTS = (
    "a red sphere rolls left in front of a blue box while the camera orbits right",
    "a yellow cube slides to the right on a grey floor, the camera stays still",
    "a green cylinder and a purple ball in front of a beige wall as the camera pans left",
)


def _stack_rows(rows, scale: int):
    """Rows (H, W, 3) uint8 stacked with 2-pixel white gaps, upscaled ``scale`` times."""
    import torch

    gap = torch.full((2, rows[0].shape[1], 3), 255, dtype=torch.uint8)
    parts = [rows[0]]
    for r in rows[1:]:
        parts += [gap, r]
    return torch.cat(parts, 0).repeat_interleave(scale, 0).repeat_interleave(scale, 1)


def picture(pipe, prompts, frames, steps: int, seed: int, scale: int):
    """(H_total, W_total, 3) uint8: a row per prompt, frames side by side (RGB | depth)."""
    import torch

    from rgbd_world.viz import rgbd_strip, side_by_side

    rows = []
    for i, prompt in enumerate(prompts):
        out = pipe(prompt=prompt, num_inference_steps=steps,
                   generator=torch.Generator().manual_seed(seed + i), progress=False)
        rgb = out.rgb.permute(3, 0, 1, 2)                       # (3, T, H, W) in [0, 1]
        strip = rgbd_strip(rgb, out.disparity, value_range=(0.0, 1.0))   # (T, H, 2W, 3)
        picked = [strip[f:f + 1] for f in frames if f < strip.shape[0]]
        if len(picked) != len(frames):
            raise SystemExit(f"--frames {frames}: the pipeline makes {strip.shape[0]} frames")
        rows.append(side_by_side(*picked)[0])
    return _stack_rows(rows, scale)


def round_trip_picture(pipe, clips: int, seed: int, scale: int, data_dir: Path):
    """(H_total, W_total, 3) uint8: a row per held-out clip, true | round trip (RGB | depth)."""
    import torch

    from rgbd_world.data import RGBDVideoDataset, generate_dataset
    from rgbd_world.viz import rgbd_strip, side_by_side

    d = pipe.defaults
    generate_dataset(data_dir, clips, frames=d["num_frames"], height=d["height"],
                     width=d["width"], seed=seed, progress=False)
    ds = RGBDVideoDataset(data_dir, frames=d["num_frames"], size=(d["height"], d["width"]),
                          augment=False, temporal_compression=pipe.tokenizer.temporal_compression)
    mid = d["num_frames"] // 2
    rows = []
    for i in range(min(clips, len(ds))):
        clip = ds[i]
        x = torch.cat([clip["rgb"], clip["disparity"]], 0)[None]
        with torch.no_grad():
            recon = pipe.tokenizer(x).reconstruction[0].clamp(-1, 1)
        true = rgbd_strip(clip["rgb"], clip["disparity"][0], clip["valid"][0])[mid:mid + 1]
        back = rgbd_strip(recon[:3], recon[3], clip["valid"][0])[mid:mid + 1]
        rows.append(side_by_side(true, back)[0])
    return _stack_rows(rows, scale)


def _save_png(image, out: Path) -> None:
    from PIL import Image

    from rgbd_world.atomic import temporary_path

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(out)
    Image.fromarray(image.numpy()).save(tmp, format="PNG")
    tmp.replace(out)
    print(f"wrote {out} ({image.shape[1]}x{image.shape[0]})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pipeline", default="tiny-rgbd")
    p.add_argument("--prompt", action="append", default=None)
    p.add_argument("--frames", type=int, nargs="+", default=None)
    p.add_argument("--steps", type=int, default=None, help="default: the pipeline's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--round-trip", type=Path, default=None,
                   help="also write the true-vs-round-trip picture of held-out clips here")
    p.add_argument("--round-trip-clips", type=int, default=3)
    args = p.parse_args(argv)

    import tempfile

    from rgbd_world.pipeline import RGBDPipeline

    pipe = RGBDPipeline.from_pretrained(args.pipeline)
    steps = args.steps or pipe.defaults["steps"]
    last = pipe.defaults["num_frames"] - 1
    frames = args.frames or [0, last // 2, last]
    _save_png(picture(pipe, args.prompt or PROMPTS, frames, steps, args.seed, args.scale),
              args.out)
    if args.round_trip is not None:
        with tempfile.TemporaryDirectory() as tmp:    # held-out clips: a seed training never used
            _save_png(round_trip_picture(pipe, args.round_trip_clips, 12345, args.scale,
                                         Path(tmp) / "clips"), args.round_trip)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
