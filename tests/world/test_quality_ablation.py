"""benchmarks/quality/ablation.py end to end at a smoke size: every stage it runs (RGB teachers,
RGBD variants, DiT trainability, evaluation) and the files it writes."""
import json
import subprocess
import sys
from pathlib import Path

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
