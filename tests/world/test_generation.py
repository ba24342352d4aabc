"""Generation: pipeline determinism and round trip, held frames, CLI end to end on the shipped
tiny checkpoint (every promised file written and readable), a short stage-2 run learns."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rgbd_world.cli import DEFAULT_PIPELINE
from rgbd_world.pipeline import RGBDPipeline

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pipe():
    return RGBDPipeline.from_pretrained(DEFAULT_PIPELINE)


def test_shipped_checkpoint_is_small_and_records_its_training():
    size = sum(f.stat().st_size for f in DEFAULT_PIPELINE.rglob("*") if f.is_file())
    assert size < 30 * 2**20
    assert "train.py --stage dit" in (DEFAULT_PIPELINE / "TRAINING.md").read_text()


def test_pipeline_is_deterministic_and_round_trips(pipe, tmp_path):
    a = pipe(prompt="a red sphere", steps=3, seed=7, progress=False)
    b = pipe(prompt="a red sphere", steps=3, seed=7, progress=False)
    c = pipe(prompt="a red sphere", steps=3, seed=8, progress=False)
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.disparity, b.disparity)
    assert not torch.equal(a.latents, c.latents)
    assert a.rgb.shape == (9, 32, 32, 3) and a.disparity.shape == a.depth.shape == (9, 32, 32)
    assert 0 <= a.rgb.min() and a.rgb.max() <= 1 and (a.depth >= 1).all() and (a.depth <= 10).all()
    pipe.save_pretrained(tmp_path / "p")
    again = RGBDPipeline.from_pretrained(tmp_path / "p")(prompt="a red sphere", steps=3, seed=7,
                                                         progress=False)
    assert torch.equal(again.latents, a.latents)


def test_continuation_frames_come_back_unchanged(pipe):
    first = pipe(prompt="a blue box", steps=3, seed=1, progress=False)
    cont = pipe(prompt="a blue box", steps=3, seed=2, progress=False,
                given_latents=first.latents, given_frames=1)
    assert torch.equal(cont.latents[:, :1], first.latents[:, :1])
    assert not torch.equal(cont.latents[:, 1:], first.latents[:, 1:])


def test_image_and_video_conditioning_change_the_result(pipe):
    rng = np.random.default_rng(0)
    video = (rng.random((9, 40, 48, 3)) * 255).astype(np.uint8)
    base = pipe(prompt="", steps=2, seed=0, progress=False)
    img = pipe(prompt="", image=video[0], steps=2, seed=0, progress=False)
    vid = pipe(prompt="", video=video, steps=2, seed=0, progress=False)
    assert not torch.equal(base.latents, img.latents) and not torch.equal(img.latents, vid.latents)
    with pytest.raises(ValueError, match="image or video, not both"):
        pipe(image=video[0], video=video, progress=False)
    with pytest.raises(ValueError, match="frames"):
        pipe(num_frames=10, progress=False)


def test_cli_generate_writes_every_promised_file(tmp_path):
    out = tmp_path / "gen"
    r = subprocess.run([sys.executable, "-m", "rgbd_world.cli", "generate", "--prompt",
                        "a red sphere rolls left", "--out", str(out), "--steps", "3",
                        "--ply-frame", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    import imageio.v3 as iio
    from PIL import Image

    video = iio.imread(out / "rgbd.mp4", index=None)
    assert video.shape[0] == 9 and video.shape[2] == 64  # RGB beside disparity
    pngs = sorted((out / "disparity").glob("frame_*.png"))
    assert len(pngs) == 9
    frame = np.array(Image.open(pngs[0]))
    assert frame.dtype == np.uint16 and frame.shape == (32, 32) and frame.max() > frame.min()
    data = np.load(out / "rgbd.npz")
    assert data["rgb"].shape == (9, 32, 32, 3) and data["disparity"].shape == (9, 32, 32)
    ply = (out / "pointcloud_frame2.ply").read_text().splitlines()
    n = int(next(l for l in ply if l.startswith("element vertex")).split()[-1])
    body = ply[ply.index("end_header") + 1:]
    assert n == len(body) == 32 * 32 and len(body[0].split()) == 6
    # depthify: the RGB video -> RGBD mode from a file
    r2 = subprocess.run([sys.executable, "-m", "rgbd_world.cli", "depthify", "--video",
                         str(out / "rgbd.mp4"), "--out", str(tmp_path / "dep"), "--steps", "2"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert (tmp_path / "dep" / "rgbd.npz").exists()


def test_cli_eval_generation_reports_metrics(tmp_path):
    r = subprocess.run([sys.executable, "-m", "rgbd_world.cli", "eval-generation", "--num-clips",
                        "1", "--steps", "2", "--data", str(tmp_path / "d")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"video_abs_rel", "video_delta1", "tae", "tae_ground_truth",
            "text_coherence_abs_rel"} <= set(m)
    assert 0 <= m["video_delta1"] <= 1 and m["video_abs_rel"] >= 0
