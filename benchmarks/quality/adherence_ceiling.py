"""How much of a prompt survives a tokenizer: the prompt adherence of held-out procedural clips
after its encode/decode round trip, for every checkpoint of training runs (RGB-only runs keep
the true disparity, so only their colours are judged). Prints one line per checkpoint::

    python benchmarks/quality/adherence_ceiling.py runs/long/rgb --clips 16

The clips are rendered at each run's frames and size from seed 100003, which no training used.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="train.py tokenizer[-rgb] run directories")
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--every", type=int, default=1, help="every n-th checkpoint")
    args = p.parse_args(argv)

    from ablation import HELD_OUT_SEED, _adherence_ceiling, _round_trips

    from rgbd_world.data import RGBDVideoDataset, generate_dataset
    from rgbd_world.train.run_models import load_tokenizer

    for run in args.runs:
        d = json.loads((run / "config.json").read_text())["data"]
        steps = sorted(int(c.name.split("_")[-1]) for c in (run / "checkpoints").glob("step_*")
                       if (c / "COMPLETE").exists())
        with tempfile.TemporaryDirectory() as tmp:
            generate_dataset(Path(tmp), args.clips, frames=d["frames"], height=d["height"],
                             width=d["width"], seed=HELD_OUT_SEED, progress=False)
            for step in steps[args.every - 1::args.every]:
                model = load_tokenizer(run, step=step)
                ds = RGBDVideoDataset(Path(tmp), frames=d["frames"], size=(d["height"], d["width"]),
                                      augment=False,
                                      temporal_compression=model.config.temporal_compression)
                got = _adherence_ceiling(_round_trips(model, ds), ds)
                print(f"{run} step {step}: adherence ceiling {got['adherence_ceiling']:.3f} "
                      f"(shuffled {got['adherence_ceiling_shuffled']:.3f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
