"""The tokenizer ablation: which latent design keeps depth boundaries (and still fits an RGB prior).

Trains, at one equal budget each, on the same procedural RGB-D clips:

* ``rgb-8x8x8`` / ``rgb-4x8x8``: RGB-only tokenizers (the frozen teachers, and the RGB PSNR every
  RGBD variant is compared against);
* ``a``: the shared latent, distilled against the RGB teacher (the original design);
* ``b4`` / ``b8``: ``a`` plus 4 / 8 latent channels reserved for geometry;
* ``c``: ``a`` plus the boundary-aware disparity loss (``loss.boundary``);
* ``d``: ``a`` with the 4x8x8 tokenizer (temporal compression 4, its own 4x8x8 RGB teacher);
* ``e``: the combination given by ``--combo`` (default: geometry channels, boundary loss, 4x8x8).

Each RGBD variant is evaluated on held-out clips rendered from a seed the training never used
(RGB PSNR/SSIM; disparity AbsRel/delta1 under this project's protocol and DepthCrafter's;
boundary precision/recall/F1; agreement of the latent with the frozen RGB teacher), and a DiT is
trained for ``--dit-steps`` on each variant's latents: ``dit_loss`` is its mean flow-matching loss
over the last 20% of the steps and ``dit_loss_rel`` that loss over the loss of predicting zero
velocity (E|z|^2 + 1 per element), so variants with different latent scales compare.
``adherence_ceiling``: the prompt adherence (``rgbd_world.eval.prompt_adherence``) of the held-out
clips after the variant's encode/decode round trip, beside its shuffled-caption chance level: what
a DiT generating in these latents can reach at most. ``boundary_f1_t005``: boundary F1 at a 5%
disparity jump (the standard threshold is 10%): a blurred edge passes it, a missing one does not.

Usage (the README's table came from the first line; about 50 minutes on 2 CPU cores)::

    python benchmarks/quality/ablation.py --out runs/ablation
    python benchmarks/quality/ablation.py --out /tmp/abl --steps 20 --dit-steps 5 --train-clips 8 \\
        --eval-clips 2 --variants a c                      # a smoke run in about a minute

Writes ``<out>/commands.sh`` (every training command, as run), ``<out>/results.json`` and
``<out>/table.md``; finished runs are reused when the script is run again.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "train.py"
HELD_OUT_SEED = 100_003          # the evaluation clips' seed; training uses seed 0

VARIANTS: dict[str, dict] = {
    "a": {"about": "shared latent, distilled (original design)"},
    "b4": {"about": "a + 4 geometry latent channels", "geometry_channels": 4},
    "b8": {"about": "a + 8 geometry latent channels", "geometry_channels": 8},
    "c": {"about": "a + boundary-aware disparity loss", "boundary": 1.0},
    "d": {"about": "a at 4x8x8 (temporal compression 4)", "preset": "tiny-4x8x8"},
}
TEACHERS = {"tiny": "rgb-8x8x8", "tiny-4x8x8": "rgb-4x8x8"}


def parse_combo(text: str) -> dict:
    """"geometry_channels=8,boundary=1,preset=tiny-4x8x8" -> the variant dict of ``e``."""
    out: dict = {"about": f"combination: {text}"}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in ("geometry_channels", "boundary", "preset"):
            raise SystemExit(f"--combo: unknown key {key!r} (geometry_channels, boundary, preset)")
        out[key] = value if key == "preset" else (int(value) if key == "geometry_channels"
                                                 else float(value))
    return out


def common_overrides(args) -> list[str]:
    return [f"data.frames={args.frames}", f"data.height={args.size}", f"data.width={args.size}",
            f"data.root={args.out / 'data'}", f"data.num_clips={args.train_clips}",
            "run.sample_every=0", "run.log_every=50", "run.seed=0"]


def tokenizer_command(args, name: str, variant: dict | None) -> list[str]:
    """The train.py command of an RGB teacher (variant None) or an RGBD variant."""
    run = args.out / name
    base = [sys.executable, str(TRAIN), "--config", "tiny-cpu"] + common_overrides(args) + [
        f"run.out_dir={run}", f"run.steps={args.steps}", f"run.ckpt_every={args.steps}"]
    if variant is None:
        preset = "tiny" if name == "rgb-8x8x8" else "tiny-4x8x8"
        return base[:2] + ["--stage", "tokenizer-rgb"] + base[2:] + [f"model.preset={preset}"]
    preset = variant.get("preset", "tiny")
    return base[:2] + ["--stage", "tokenizer"] + base[2:] + [
        f"model.preset={preset}", f"model.teacher={args.out / TEACHERS[preset]}",
        f"model.geometry_channels={variant.get('geometry_channels', 0)}",
        f"loss.boundary={variant.get('boundary', 0.0)}"]


def dit_command(args, name: str) -> list[str]:
    return [sys.executable, str(TRAIN), "--stage", "dit", "--config", "tiny-cpu"] + \
        common_overrides(args) + [f"run.out_dir={args.out / ('dit-' + name)}",
                                  f"model.tokenizer={args.out / name}",
                                  f"run.steps={args.dit_steps}", f"run.ckpt_every={args.dit_steps}",
                                  "optim.lr=1e-3", "optim.warmup_steps=20"]


def run(cmd: list[str], log: Path, threads: int) -> None:
    """Run one training command (skipped when its run already exported a model)."""
    out_dir = Path(next(a.split("=", 1)[1] for a in cmd if a.startswith("run.out_dir=")))
    if (out_dir / "exported").is_dir() and any((out_dir / "exported").iterdir()):
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {shlex.join(cmd)}; see {log}")
    print(f"  done in {time.time() - t0:.0f} s: {out_dir.name}", flush=True)


def evaluate(args, name: str, variant: dict | None) -> dict:
    import torch

    from rgbd_world.data import RGBDVideoDataset
    from rgbd_world.eval import evaluate_tokenizer
    from rgbd_world.train.run_models import load_tokenizer

    model = load_tokenizer(args.out / name)
    teacher = None
    if variant is not None:
        teacher = load_tokenizer(args.out / TEACHERS[variant.get("preset", "tiny")])
    ds = RGBDVideoDataset(args.out / "heldout", frames=args.frames, size=(args.size, args.size),
                          augment=False, temporal_compression=model.config.temporal_compression)
    with torch.no_grad():
        metrics = evaluate_tokenizer(model, ds, teacher=teacher, progress=False)
    if variant is not None:
        trips = _round_trips(model, ds)
        metrics["boundary_f1_t005"] = _boundary_f1_at(trips, 0.05)
        metrics |= _adherence_ceiling(trips, ds)
    metrics["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
    metrics["latent_channels"] = model.config.total_latent_channels
    return metrics


def _round_trips(model, ds) -> list[tuple[dict, "torch.Tensor"]]:
    """Every clip of ``ds`` with its encode/decode reconstruction (C, T, H, W), computed once
    for the metrics below (an RGB-only model gets the RGB channels)."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(len(ds)):
            clip = ds[i]
            x = torch.cat([clip["rgb"], clip["disparity"]]) if model.config.in_channels >= 4 \
                else clip["rgb"]
            out.append((clip, model(x[None]).reconstruction[0]))
    return out


def _boundary_f1_at(trips, threshold: float) -> float:
    """Mean boundary F1 over the clips at another disparity-jump ``threshold`` (0.1 is the
    standard one): tells a blurred edge (found at 0.05, missed at 0.1) from a missing one."""
    import rgbd_kernels as rk
    from rgbd_world.eval import boundary_f1, disparity_metrics

    scores = []
    for clip, recon in trips:
        gt, valid = rk.depth_to_disparity(clip["depth"])
        valid = valid & clip["valid"]
        aligned = disparity_metrics(recon[None, 3], gt, valid, per="clip")["aligned"]
        scores.append(boundary_f1(aligned, gt, valid, threshold=threshold, align=False)["f1"].item())
    return sum(scores) / len(scores)


def _adherence_ceiling(trips, ds) -> dict:
    """Prompt adherence of the clips of ``ds`` after their round trips (``_round_trips``), and
    the shuffled-caption chance level: the most a DiT on these latents can reach. An RGB-only
    tokenizer is judged on its colours with the true disparity."""
    import rgbd_kernels as rk
    from rgbd_world.eval import prompt_adherence
    from rgbd_world.eval.generation_eval import clip_scene

    recon, scenes = [], []
    for clip, out in trips:
        disparity = out[3] if out.shape[0] >= 4 else rk.depth_to_disparity(clip["depth"][0])[0]
        recon.append((((out[:3].permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1), disparity))
        scenes.append(clip_scene(ds, clip["index"]))
    t, h, w = recon[0][0].shape[:3]
    got = prompt_adherence(recon, scenes, t, h, w)
    return {"adherence_ceiling": got["adherence"],
            "adherence_ceiling_shuffled": got["adherence_shuffled"]}


def _true_adherence(args) -> dict:
    """Prompt adherence of the held-out clips themselves (what a perfect generator scores)."""
    import rgbd_kernels as rk
    from rgbd_world.data import RGBDVideoDataset
    from rgbd_world.eval import prompt_adherence
    from rgbd_world.eval.generation_eval import clip_scene

    ds = RGBDVideoDataset(args.out / "heldout", frames=args.frames, size=(args.size, args.size),
                          augment=False)
    videos, scenes = [], []
    for i in range(len(ds)):
        clip = ds[i]
        videos.append((((clip["rgb"].permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1),
                       rk.depth_to_disparity(clip["depth"][0])[0]))
        scenes.append(clip_scene(ds, clip["index"]))
    got = prompt_adherence(videos, scenes, args.frames, args.size, args.size)
    return {"adherence": got["adherence"], "adherence_shuffled": got["adherence_shuffled"]}


def dit_trainability(args, name: str) -> dict:
    """Mean flow loss over the last 20% of the DiT's steps, and relative to predicting zero."""
    import torch

    from rgbd_world.data import RGBDVideoDataset
    from rgbd_world.train.run_models import load_tokenizer

    rows = [json.loads(line) for line in
            (args.out / f"dit-{name}" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in rows if "loss" in r and r.get("step", 0) > 0.8 * args.dit_steps]
    model = load_tokenizer(args.out / name)
    ds = RGBDVideoDataset(args.out / "data", frames=args.frames, size=(args.size, args.size),
                          augment=False, temporal_compression=model.config.temporal_compression)
    second = []
    with torch.no_grad():
        for i in range(min(8, len(ds))):
            clip = ds[i]
            x = torch.cat([clip["rgb"], clip["disparity"]], 0)[None]
            second.append(model.encode(x).float().square().mean().item())
    zero = sum(second) / len(second) + 1.0
    loss = sum(losses) / max(len(losses), 1)
    return {"dit_loss": loss, "dit_loss_rel": loss / zero}


def table(results: dict, order: list[str]) -> str:
    cols = [("psnr", "PSNR", 2), ("ssim", "SSIM", 3), ("abs_rel", "AbsRel", 3),
            ("delta1", "d1", 3), ("abs_rel_depthcrafter", "AbsRel DC", 3),
            ("delta1_depthcrafter", "d1 DC", 3), ("boundary_precision", "bnd P", 2),
            ("boundary_recall", "bnd R", 2), ("boundary_f1", "bnd F1", 2),
            ("boundary_f1_t005", "bnd F1 @5%", 2), ("adherence_ceiling", "adherence ceiling", 2),
            ("adherence_ceiling_shuffled", "(shuffled)", 2),
            ("teacher_rel_mse", "teacher rel-MSE", 3), ("dit_loss_rel", "DiT loss (rel)", 3)]
    lines = ["| variant | " + " | ".join(c[1] for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for name in order:
        r = results[name]
        cells = [f"{r[k]:.{p}f}" if isinstance(r.get(k), (int, float)) else "" for k, _, p in cols]
        lines.append(f"| {name}: {r['about']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=1200, help="training steps of every tokenizer")
    p.add_argument("--dit-steps", type=int, default=400)
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--train-clips", type=int, default=256)
    p.add_argument("--eval-clips", type=int, default=16)
    p.add_argument("--variants", nargs="+", default=["a", "b4", "b8", "c", "d", "e"])
    p.add_argument("--combo", default="geometry_channels=8,boundary=1.0,preset=tiny-4x8x8")
    p.add_argument("--jobs", type=int, default=2, help="trainings at once (1 thread each)")
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    variants = {**VARIANTS, "e": parse_combo(args.combo)}
    unknown = [v for v in args.variants if v not in variants]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {sorted(variants)}")
    chosen = {v: variants[v] for v in args.variants}

    from rgbd_world.data import generate_dataset

    for sub, n, seed in (("data", args.train_clips, 0), ("heldout", args.eval_clips, HELD_OUT_SEED)):
        if not (args.out / sub / "manifest.json").is_file():
            generate_dataset(args.out / sub, n, frames=args.frames, height=args.size,
                             width=args.size, seed=seed, progress=True)

    teachers = sorted({TEACHERS[v.get("preset", "tiny")] for v in chosen.values()})
    commands = {t: tokenizer_command(args, t, None) for t in teachers}
    commands |= {v: tokenizer_command(args, v, cfg) for v, cfg in chosen.items()}
    commands |= {f"dit-{v}": dit_command(args, v) for v in chosen}
    (args.out / "commands.sh").write_text(
        "# every training command of this ablation, in order of dependency\n"
        + "\n".join(shlex.join(c) for c in commands.values()) + "\n")
    threads = max(1, (os.cpu_count() or 2) // args.jobs)
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)

    def job(name):
        run(commands[name], logs / f"{name}.log", threads)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(job, teachers))
        list(pool.map(job, list(chosen)))
        list(pool.map(job, [f"dit-{v}" for v in chosen]))

    results = {}
    for t in teachers:
        results[t] = {"about": "RGB only (teacher)"} | evaluate(args, t, None)
    for v, cfg in chosen.items():
        results[v] = {"about": cfg["about"]} | evaluate(args, v, cfg) | dit_trainability(args, v)
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    truth = _true_adherence(args)
    (args.out / "results.json").write_text(json.dumps({"args": meta, "results": results,
                                                       "true_clips_adherence": truth}, indent=1))
    text = table(results, teachers + list(chosen))
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    print(f"prompt adherence of the true held-out clips: {truth['adherence']:.2f} "
          f"(shuffled captions: {truth['adherence_shuffled']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
