"""benchmarks/quality/ablation.py end to end at a smoke size: every stage it runs (RGB teachers,
RGBD variants, DiT trainability, evaluation) and the files it writes."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "quality" / "ablation.py"


@pytest.mark.slow
def test_ablation_smoke_run_writes_commands_results_and_table(tmp_path):
    out = tmp_path / "abl"
    args = [sys.executable, str(SCRIPT), "--out", str(out), "--steps", "3", "--dit-steps", "2",
            "--frames", "9", "--size", "32", "--train-clips", "4", "--eval-clips", "2",
            "--variants", "a", "e", "--combo", "geometry_channels=4,boundary=1.0,preset=tiny-4x8x8"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())["results"]
    assert set(results) == {"rgb-8x8x8", "rgb-4x8x8", "a", "e"}
    for name in ("a", "e"):
        for key in ("psnr", "abs_rel", "abs_rel_depthcrafter", "boundary_f1",
                    "boundary_precision", "boundary_recall", "teacher_rel_mse", "dit_loss_rel"):
            assert isinstance(results[name][key], float), (name, key)
    assert results["e"]["latent_channels"] == 20 and results["a"]["latent_channels"] == 16
    commands = (out / "commands.sh").read_text()
    assert "model.preset=tiny-4x8x8" in commands and "loss.boundary=1.0" in commands
    assert "| e: combination" in (out / "table.md").read_text()
    # a second run reuses every finished training
    r2 = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0 and "done in" not in r2.stdout


def test_ablation_rejects_unknown_variants_and_combo_keys(tmp_path):
    for extra, msg in ((["--variants", "z"], "unknown"), (["--combo", "size=3"], "unknown key")):
        r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "x")] + extra,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and msg in r.stderr, r.stderr


def test_readme_picture_script_writes_both_pictures(tmp_path):
    from PIL import Image

    script = SCRIPT.parent / "readme_picture.py"
    out, trip = tmp_path / "strip.png", tmp_path / "trip.png"
    r = subprocess.run([sys.executable, str(script), "--out", str(out), "--steps", "1",
                        "--prompt", "a red ball", "--prompt", "a blue box", "--scale", "2",
                        "--round-trip", str(trip), "--round-trip-clips", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    from rgbd_world.pipeline import RGBDPipeline

    d = RGBDPipeline.from_pretrained("tiny-rgbd").defaults
    h, w = d["height"], d["width"]
    strip = np.array(Image.open(out))
    # 2 rows (prompts) of 3 frames, each RGB | disparity, 2-pixel gaps, upscaled 2x
    assert strip.shape == (2 * (2 * h + 2), 2 * (3 * 2 * w + 4), 3)
    assert np.array(Image.open(trip)).shape == (2 * (2 * h + 2), 2 * (4 * w + 2), 3)
