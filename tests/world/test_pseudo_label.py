"""Pseudo-labelling ordinary videos into RGB-D shards, with tiny local depth and caption models
built from their configs (random weights, nothing downloaded)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from rgbd_world.data.pseudo_label import (DepthEstimator, find_videos, pseudo_label_videos,  # noqa: E402
                                          read_video, stabilize_disparity)
from rgbd_world.data.readers import find_shard_clips  # noqa: E402
from rgbd_world.validation import InvalidArgument  # noqa: E402


def _save_tiny_depth_model(path):
    cfg = transformers.DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                 intermediate_size=37, image_size=32, patch_size=8,
                                 neck_hidden_sizes=[8, 16, 16, 16], fusion_hidden_size=16,
                                 backbone_out_indices=[0, 1, 2, 3], head_hidden_size=8)
    torch.manual_seed(0)
    transformers.DPTForDepthEstimation(cfg).eval().save_pretrained(path)
    transformers.DPTImageProcessor(size={"height": 32, "width": 32},
                                   keep_aspect_ratio=False).save_pretrained(path)
    return path


def _save_tiny_captioner(path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    words = ["a red sphere moves left", "a blue box rolls right", "green cylinder"]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(words, trainers.WordLevelTrainer(
        special_tokens=["[UNK]", "[BOS]", "[EOS]", "[PAD]"]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                                bos_token="[BOS]", eos_token="[EOS]",
                                                pad_token="[PAD]")
    enc = transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=16, image_size=32, patch_size=16)
    dec = transformers.GPT2Config(vocab_size=len(fast), n_embd=16, n_layer=1, n_head=2,
                                  n_positions=64, add_cross_attention=True, is_decoder=True,
                                  bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id)
    cfg = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id, cfg.pad_token_id = fast.bos_token_id, fast.pad_token_id
    cfg.eos_token_id = fast.eos_token_id
    torch.manual_seed(0)
    model = transformers.VisionEncoderDecoderModel(cfg).eval()
    gen = model.generation_config
    gen.decoder_start_token_id, gen.pad_token_id = fast.bos_token_id, fast.pad_token_id
    gen.eos_token_id, gen.min_new_tokens = fast.eos_token_id, 3
    gen.bad_words_ids = [[fast.convert_tokens_to_ids(t)] for t in ("[UNK]", "[BOS]", "[PAD]")]
    for obj in (model, transformers.ViTImageProcessor(size={"height": 32, "width": 32}), fast):
        obj.save_pretrained(path)
    return path, set(" ".join(words).split())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    depth = _save_tiny_depth_model(root / "depth")
    captioner, vocab = _save_tiny_captioner(root / "captioner")
    return depth, captioner, vocab


def _moving_video(frames, h=24, w=28, seed=0):
    """A textured background with a bright square moving right: uint8 (T, H, W, 3)."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 200, (h, w, 3), dtype=np.uint8)
    video = np.repeat(bg[None], frames, 0)
    for t in range(frames):
        video[t, 6:14, 2 + t:10 + t] = (250, 40, 40)
    return video


def _write_videos(root):
    """Two GIFs, one folder of PNG frames, and three bad inputs (text, empty, too short)."""
    import imageio.v3 as iio

    root.mkdir()
    iio.imwrite(root / "a.gif", _moving_video(10, seed=1), loop=0)
    iio.imwrite(root / "b.gif", _moving_video(6, seed=2), loop=0)
    frames = root / "c_frames"
    frames.mkdir()
    for t, frame in enumerate(_moving_video(5, seed=3)):
        iio.imwrite(frames / f"frame_{t}.png", frame)
    (root / "notes.mp4").write_text("not a video")
    (root / "empty.gif").write_bytes(b"")
    iio.imwrite(root / "short.gif", _moving_video(2, seed=4), loop=0)
    return root


def test_stabilisation_recovers_a_consistent_sequence():
    """Per-frame disparity scales and shifts perturbed on purpose are undone (up to one global
    affine map): the temporal alignment error against the unperturbed clip drops to ~0."""
    rng = np.random.default_rng(0)
    T, H, W = 9, 20, 24
    yy, xx = np.mgrid[0:H, 0:W]
    true = np.stack([1.0 + 0.05 * yy + 0.02 * xx + 0.3 * np.sin(0.4 * xx + 0.2 * t)
                     * ((xx > 8 + t) & (xx < 14 + t)) for t in range(T)])
    rgb = np.repeat((true[..., None] * 80).clip(0, 255), 3, -1).astype(np.uint8)
    scales, shifts = rng.uniform(0.3, 3.0, T), rng.uniform(-2, 2, T)
    perturbed = scales[:, None, None] * true + shifts[:, None, None]
    aligned, fits = stabilize_disparity(perturbed, rgb)

    def tae(seq):  # error after one global least-squares fit to the truth, relative to its spread
        a = np.stack([seq.ravel(), np.ones(seq.size)], 1)
        coef = np.linalg.lstsq(a, true.ravel(), rcond=None)[0]
        return np.abs(a @ coef - true.ravel()).mean() / true.std()

    assert tae(perturbed) > 0.2
    assert tae(aligned) < 0.02, tae(aligned)
    assert len(fits) == T and all(s > 0 for s, _ in fits)


def test_pseudo_label_end_to_end_and_dataset_reads_it(models, tmp_path):
    from rgbd_world.data.dataset import RGBDVideoDataset

    depth, captioner, vocab = models
    videos = _write_videos(tmp_path / "videos")
    out = tmp_path / "out"
    report = pseudo_label_videos(videos, out, depth_model=depth, captioner=captioner, frames=5,
                                 height=16, width=16, progress=False)
    assert report["videos"] == 6 and report["shards_written"] == 3
    assert report["clips"] == 2 + 1 + 1  # a.gif: 10 frames -> 2 clips; b: 1; c_frames: 1
    reasons = {os.path.basename(s["video"]): s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"notes.mp4", "empty.gif", "short.gif"}
    assert "shorter than one clip" in reasons["short.gif"]
    assert json.loads((out / "report.json").read_text()) == report

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pseudo_label"]["depth_model"]["model_type"] == "dpt"
    assert "static-looking" in manifest["pseudo_label"]["temporal_stabilisation"]
    clips, problems = find_shard_clips(out)
    assert not problems and len(clips) == 4
    assert all(c.caption and set(c.caption.split()) <= vocab for c in clips)

    ds = RGBDVideoDataset(out, frames=5, size=(16, 16), augment=False, temporal_compression=4)
    assert len(ds) == 4
    sample = ds[0]
    assert sample["rgb"].shape == (3, 5, 16, 16) and sample["valid"].float().mean() > 0.9
    disparity = sample["disparity"][sample["valid"]]
    assert torch.isfinite(disparity).all() and disparity.std() > 0.1
    assert not bool(sample["has_poses"])


def test_pseudo_label_resume_after_kill_gives_the_same_shards(models, tmp_path):
    """A run killed with SIGKILL right after its first shard, then resumed, writes byte-for-byte
    the shards of an uninterrupted run. Every run is a fresh process with one thread, so the
    depth model's float reductions run in the same order in all three."""
    depth, _, _ = models
    videos = _write_videos(tmp_path / "videos")
    captions = _captions_file(tmp_path)

    def run(out, kill_after_first_shard=False):
        script = textwrap.dedent(f"""
            import os, signal
            from rgbd_world.data.pseudo_label import pseudo_label_videos
            report = pseudo_label_videos({str(videos)!r}, {str(out)!r},
                depth_model={str(depth)!r}, frames=5, height=16, width=16,
                captions={str(captions)!r}, progress=False,
                on_shard=(lambda i: os.kill(os.getpid(), signal.SIGKILL))
                if {kill_after_first_shard} else None)
            print(report["shards_present"], report["shards_written"])
        """)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env=env, timeout=300)

    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert run(full).returncode == 0
    proc = run(resumed, kill_after_first_shard=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert len(list(resumed.glob("shard-*.npz"))) == 1
    proc = run(resumed)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["1", "2"]          # 1 shard present, 2 written
    names = sorted(p.name for p in full.glob("shard-*.npz"))
    assert names == sorted(p.name for p in resumed.glob("shard-*.npz"))
    for name in names:
        with np.load(full / name) as a, np.load(resumed / name) as b:
            assert sorted(a.files) == sorted(b.files)
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key])
    clips, _ = find_shard_clips(resumed)
    assert {c.caption for c in clips} == {"video a", "video b", "frames c"}


def _captions_file(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("a.gif\tvideo a\nb.gif\tvideo b\nc_frames\tframes c\n")
    return path


def test_depth_output_and_torchscript_model(tmp_path):
    """A TorchScript depth model returning depth is inverted to disparity at the input size."""
    class Depth(torch.nn.Module):
        def forward(self, x):  # (N, 3, H, W) in [0, 1] -> depth (N, 1, H/2, W/2)
            return 1.0 + torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), 2)

    path = tmp_path / "depth.pt"
    torch.jit.script(Depth()).save(str(path))
    est = DepthEstimator.load(path, depth_output="depth")
    frames = (np.random.default_rng(0).random((3, 8, 10, 3)) * 255).astype(np.uint8)
    disparity = est(frames)
    assert disparity.shape == (3, 8, 10) and np.isfinite(disparity).all()
    assert (disparity > 0.4).all() and (disparity <= 1.0).all()
    assert est.record["kind"] == "torchscript" and est.record["output"] == "depth"


def test_bad_inputs_name_the_argument(models, tmp_path):
    depth, _, _ = models
    videos = _write_videos(tmp_path / "videos")
    with pytest.raises(InvalidArgument, match="depth_model"):
        pseudo_label_videos(videos, tmp_path / "o1", depth_model=tmp_path / "nope")
    with pytest.raises(InvalidArgument, match="frames"):
        pseudo_label_videos(videos, tmp_path / "o2", depth_model=depth, frames=0)
    with pytest.raises(InvalidArgument, match="captioner"):
        pseudo_label_videos(videos, tmp_path / "o3", depth_model=depth, captioner=tmp_path)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    assert not (tmp_path / "o3").exists()
    pseudo_label_videos(videos, tmp_path / "o4", depth_model=depth, frames=5, height=16,
                        width=16, captions=_captions_file(tmp_path), progress=False)
    with pytest.raises(InvalidArgument, match="other settings"):
        pseudo_label_videos(videos, tmp_path / "o4", depth_model=depth, frames=4, height=16,
                            width=16, captions=_captions_file(tmp_path), progress=False)


def test_find_and_read_videos(tmp_path):
    videos = _write_videos(tmp_path / "videos")
    found = [p.name for p in find_videos(videos)]
    assert found == ["a.gif", "b.gif", "c_frames", "empty.gif", "notes.mp4", "short.gif"]
    clip = read_video(videos / "c_frames")
    assert clip.shape == (5, 24, 28, 3) and clip.dtype == np.uint8
    with pytest.raises(ValueError):
        read_video(videos / "notes.mp4")


def test_weighted_mix_of_synthetic_and_pseudo_labelled_shards(models, tmp_path):
    from rgbd_world.data.mixing import WeightedMix, mixed_rgbd_dataset
    from rgbd_world.data.shards import generate_dataset

    depth, _, _ = models
    pseudo = tmp_path / "pseudo"
    pseudo_label_videos(_write_videos(tmp_path / "videos"), pseudo, depth_model=depth, frames=5,
                        height=16, width=16, captions=_captions_file(tmp_path), progress=False)
    synthetic = tmp_path / "synthetic"
    generate_dataset(synthetic, num_clips=3, frames=5, height=16, width=16, progress=False)
    kwargs = dict(frames=5, size=(16, 16), augment=False, temporal_compression=4)
    mix = mixed_rgbd_dataset([(synthetic, 1.0), (pseudo, 3.0)], length=400, seed=1, **kwargs)
    share = np.mean([mix.source_of(i) for i in range(len(mix))])
    assert abs(share - 0.75) < 0.08  # 3:1 weights, 400 draws (5 standard errors)
    again = mixed_rgbd_dataset([(synthetic, 1.0), (pseudo, 3.0)], length=400, seed=1, **kwargs)
    assert [again.source_of(i) for i in range(50)] == [mix.source_of(i) for i in range(50)]
    first = {mix.source_of(i): i for i in range(len(mix))}
    assert not bool(mix[first[1]]["has_poses"]) and bool(mix[first[0]]["has_poses"])
    with pytest.raises(InvalidArgument, match=r"sources\[1\] weight"):
        WeightedMix([(mix, 1.0), (mix, -1.0)])


def test_cli_pseudo_label_then_bad_depth_model(models, tmp_path, capsys):
    from rgbd_world.cli import main

    depth, captioner, _ = models
    videos = _write_videos(tmp_path / "videos")
    code = main(["pseudo-label", "--videos", str(videos), "--out", str(tmp_path / "out"),
                 "--depth-model", str(depth), "--captioner", str(captioner), "--frames", "5",
                 "--height", "16", "--width", "16", "--no-progress"])
    assert code == 0
    assert "4 clips from 3 videos written" in capsys.readouterr().out
    code = main(["pseudo-label", "--videos", str(videos), "--out", str(tmp_path / "bad"),
                 "--depth-model", str(videos / "notes.mp4"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--depth-model" in err[0], err
    assert not (tmp_path / "bad").exists()


def test_training_reads_a_mix_of_synthetic_and_pseudo_labelled_shards(models, tmp_path):
    """`data.mix` in a training config: a 2-step tokenizer run on procedural + pseudo shards."""
    from pathlib import Path

    from rgbd_world.data.shards import generate_dataset
    from rgbd_world.train.config import ConfigError, load_config

    depth, _, _ = models
    pseudo = tmp_path / "pseudo"
    pseudo_label_videos(_write_videos(tmp_path / "videos"), pseudo, depth_model=depth, frames=9,
                        stride=1, height=32, width=32, captions=_captions_file(tmp_path),
                        progress=False)
    synthetic = tmp_path / "synthetic"
    generate_dataset(synthetic, num_clips=2, frames=9, height=32, width=32, progress=False)
    mix = f'data.mix=[["{synthetic}", 1.0], ["{pseudo}", 1.0]]'
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, str(root / "train.py"), "--stage", "tokenizer", "--config", "tiny-cpu",
           "run.steps=2", "run.ckpt_every=2", "run.sample_every=0", "data.batch_size=2",
           "data.height=32", "data.width=32", "data.frames=9", "data.source=shards",
           f"run.out_dir={tmp_path / 'run'}", mix]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= 1 and all(np.isfinite(json.loads(x)["loss"]) for x in lines)
    with pytest.raises(ConfigError, match="data.mix"):
        load_config("tiny-cpu", ['data.mix=[["a", -1]]'])
