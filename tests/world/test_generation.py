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
    t, h, w = pipe.defaults["num_frames"], pipe.defaults["height"], pipe.defaults["width"]
    assert a.rgb.shape == (t, h, w, 3) and a.disparity.shape == a.depth.shape == (t, h, w)
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
    video = (rng.random((pipe.defaults["num_frames"], 40, 48, 3)) * 255).astype(np.uint8)
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
                        "--frames", "9", "--height", "32", "--width", "32", "--ply-frame", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
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
                         str(out / "rgbd.mp4"), "--out", str(tmp_path / "dep"), "--steps", "2",
                         "--frames", "9"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert (tmp_path / "dep" / "rgbd.npz").exists()


def test_cli_eval_generation_reports_metrics(tmp_path):
    r = subprocess.run([sys.executable, "-m", "rgbd_world.cli", "eval-generation", "--num-clips",
                        "2", "--steps", "2", "--data", str(tmp_path / "d")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"video_abs_rel", "video_delta1", "tae", "tae_ground_truth",
            "text_coherence_abs_rel", "adherence", "adherence_shuffled"} <= set(m)
    assert 0 <= m["video_delta1"] <= 1 and m["video_abs_rel"] >= 0


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs,name", [
    ({"steps": 0}, "steps"), ({"num_frames": 0}, "num_frames"), ({"height": 0}, "height"),
    ({"width": 0}, "width"), ({"steps": -3}, "steps"), ({"num_frames": 10}, "num_frames"),
    ({"height": 20}, "height"), ({"guidance": float("nan")}, "guidance"),
    ({"guidance": float("inf")}, "guidance"), ({"seed": "abc"}, "seed"), ({"seed": 1.5}, "seed"),
    ({"seed": -1}, "seed"), ({"seed": 2 ** 64}, "seed"), ({"method": "rk4"}, "method"),
    ({"prompt": 3}, "prompt"), ({"image": np.zeros((0, 32, 3), np.uint8)}, "image"),
    ({"video": np.zeros((9, 32, 0, 3), np.uint8)}, "video"),
    ({"image": np.full((8, 8, 3), 300, np.int64)}, "image"),
    ({"image": np.full((8, 8, 3), 200.0, np.float32)}, "image"),
    ({"image": np.full((8, 8, 3), np.nan, np.float32)}, "image"),
    ({"video": np.zeros((3, 8, 8, 3), np.uint8)}, "video"),
    ({"given_frames": 1, "given_latents": None}, "given_latents"),
])
def test_bad_arguments_are_refused_naming_the_argument(pipe, kwargs, name):
    from rgbd_world.validation import InvalidArgument

    with pytest.raises(InvalidArgument) as exc:
        pipe(progress=False, **kwargs)
    assert exc.value.argument == name and str(exc.value).startswith(f"{name}=")
    assert "allowed" in str(exc.value)


def test_integer_images_hold_0_to_255(pipe):
    image = np.random.default_rng(3).integers(0, 256, (32, 32, 3))
    as_uint8 = pipe(image=image.astype(np.uint8), steps=1, seed=0, progress=False)
    as_int64 = pipe(image=image.astype(np.int64), steps=1, seed=0, progress=False)
    as_float = pipe(image=image.astype(np.float32) / 255, steps=1, seed=0, progress=False)
    assert torch.equal(as_uint8.latents, as_int64.latents)
    assert torch.allclose(as_uint8.latents, as_float.latents, atol=1e-5)


def _copy_pipeline(tmp_path):
    import shutil

    return Path(shutil.copytree(DEFAULT_PIPELINE, tmp_path / "p"))


@pytest.mark.parametrize("damage,file", [
    ("truncate", "dit/model.safetensors"), ("mismatch", "dit/config.json"),
    ("bad_json", "tokenizer/config.json"), ("list", "rgb_tokenizer/config.json"),
    ("bad_json", "pipeline.json"), ("list", "pipeline.json"), ("missing", "dit/model.safetensors"),
])
def test_from_pretrained_errors_name_the_file(tmp_path, damage, file):
    root = _copy_pipeline(tmp_path)
    path = root / file
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "mismatch":
        cfg = json.loads(path.read_text())
        cfg["depth"] = cfg["depth"] + 1     # one more block than the weights hold
        path.write_text(json.dumps(cfg))
    elif damage == "bad_json":
        path.write_text('{"format": ')
    elif damage == "list":
        path.write_text("[1, 2]")
    else:
        path.unlink()
    with pytest.raises((ValueError, FileNotFoundError)) as exc:
        RGBDPipeline.from_pretrained(root)
    message = str(exc.value)
    assert str(path) in message and "\n" not in message and len(message) < 800


def test_generate_cli_names_a_damaged_pipeline(tmp_path, capsys):
    from rgbd_world.cli import main

    root = _copy_pipeline(tmp_path)
    weights = root / "dit" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["generate", "--pipeline", str(root), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--pipeline" in err and str(weights) in err
    assert not (tmp_path / "o").exists()


def test_output_sets_are_validated_first_and_replaced_whole(pipe, tmp_path, monkeypatch):
    from rgbd_world import export
    from rgbd_world.validation import InvalidArgument

    out = tmp_path / "gen"
    long = pipe(prompt="a red sphere", num_frames=17, steps=1, progress=False)
    short = pipe(prompt="a red sphere", num_frames=9, steps=1, progress=False)
    with pytest.raises(InvalidArgument, match="ply_frame=99"):
        export.write_outputs(short, out, ply_frame=99)
    assert not out.exists()                          # refused before anything was written
    export.write_outputs(long, out, ply_frame=12)
    assert len(list((out / "disparity").glob("frame_*.png"))) == 17
    export.write_outputs(short, out, ply_frame=3)
    assert len(list((out / "disparity").glob("frame_*.png"))) == 9       # no stale frames
    assert [p.name for p in out.glob("*.ply")] == ["pointcloud_frame3.ply"]
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def killed(*args, **kwargs):                    # a failure in the middle of the set
        raise OSError("No space left on device")

    monkeypatch.setattr(export, "write_ply", killed)
    with pytest.raises(OSError):
        export.write_outputs(long, out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # old set intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"]              # no temporaries
    monkeypatch.undo()
    # what a kill -9 leaves: a temporary directory of a dead writer; the next run removes it
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    stale = tmp_path / f".gen.tmp-{proc.pid}"
    (stale / "disparity").mkdir(parents=True)
    export.write_outputs(short, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"]
    (out / "notes.txt").write_text("mine")           # a directory with other files is not ours
    with pytest.raises(InvalidArgument, match="notes.txt"):
        export.write_outputs(short, out)
    assert (out / "notes.txt").exists()


def test_cli_eval_tokenizer_of_a_pipeline_reports_teacher_agreement_and_rgb_only_psnr(tmp_path):
    r = subprocess.run([sys.executable, "-m", "rgbd_world.cli", "eval-tokenizer", "--pipeline",
                        "tiny-rgbd", "--num-clips", "2"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["clips"] == 2 and 0 < m["teacher_cosine"] <= 1 and m["teacher_rel_mse"] >= 0
    assert m["rgb_tokenizer_psnr"] > 10 and m["psnr"] > 10 and 0 <= m["boundary_recall"] <= 1
    both = subprocess.run([sys.executable, "-m", "rgbd_world.cli", "eval-tokenizer", "--pipeline",
                           "tiny-rgbd", "--run", str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert both.returncode == 2 and "not allowed with" in both.stderr
