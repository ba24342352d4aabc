"""Training system: configs, kill-and-resume equality, DDP/FSDP2 == 1 process, divergence guard."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rgbd_world.train.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
BASE = ["--config", "tiny-cpu", "run.ckpt_every=3", "run.sample_every=0", "data.num_clips=8",
        "data.batch_size=2", "data.height=32", "data.width=32", "data.frames=9"]


def _env(**extra):
    env = dict(os.environ)
    env.pop("RGBD_TRAIN_KILL_AT", None)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra})
    return env


def run_train(out_dir, *args, stage="tokenizer", kill_at=None, nproc=1, data_root=None, timeout=600):
    cmd = [sys.executable]
    if nproc > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}"]
    cmd += [str(ROOT / "train.py"), "--stage", stage, *BASE, f"run.out_dir={out_dir}",
            f"data.root={data_root}", *args]
    env = _env(**({"RGBD_TRAIN_KILL_AT": kill_at} if kill_at else {}))
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def losses(out_dir):
    lines = (Path(out_dir) / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"], r.get("rgb"), r.get("disparity")) for r in map(json.loads, lines)]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from rgbd_world.data import generate_dataset

    root = tmp_path_factory.mktemp("rgbd-data")
    generate_dataset(root, 8, frames=9, height=32, width=32, seed=0, progress=False)
    return root


# ----------------------------------------------------------------------------- configs

@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "rgbd_world" / "configs").glob("*.toml")))
def test_every_config_builds_its_models(name):
    """Each shipped config names presets that exist: the tokenizer (RGB and RGBD) and the DiT
    are built on the meta device (no memory, no time)."""
    import torch

    from rgbd_world.dit import DiT, DiTConfig
    from rgbd_world.tokenizer import VideoTokenizer

    m = load_config(name)["model"]
    with torch.device("meta"):
        for channels in (3, 4):
            tok = VideoTokenizer(m["preset"], in_channels=channels,
                                 geometry_channels=m["geometry_channels"] if channels == 4 else 0)
        dit = DiT(DiTConfig.preset(m["dit_preset"], latent_channels=tok.latent_channels,
                                   cond_channels=16))
    assert sum(p.numel() for p in tok.parameters()) > 0
    assert sum(p.numel() for p in dit.parameters()) > 0


def test_setup_errors_exit_2_with_the_message(tmp_path, data_root):
    r = run_train(tmp_path / "fp8", "parallel.fp8=true", data_root=data_root)
    assert r.returncode == 2 and "has no FP8 path" in r.stderr and "Traceback" not in r.stderr, \
        r.stderr[-2000:]
    r = run_train(tmp_path / "dit", stage="dit", data_root=data_root)
    assert r.returncode == 2 and "needs model.tokenizer" in r.stderr, r.stderr[-2000:]


def test_config_presets_and_overrides():
    cfg = load_config("tiny-cpu", ["optim.lr=3e-4", "run.steps=7", "parallel.strategy=fsdp",
                                   "optim.betas=[0.8, 0.9]"])
    assert cfg["optim"]["lr"] == 3e-4 and cfg["run"]["steps"] == 7
    assert cfg["parallel"]["strategy"] == "fsdp" and cfg["optim"]["betas"] == [0.8, 0.9]
    for name in ("small-gpu", "cosmos-cv8x8x8"):
        assert load_config(name)["model"]["preset"]
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        load_config("tiny-cpu", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="parallel.precision.*one of.*'fp16'"):
        load_config("tiny-cpu", ["parallel.precision=fp16"])
    with pytest.raises(ConfigError, match="run.steps' takes an int.*'abc'"):
        load_config("tiny-cpu", ["run.steps=abc"])
    with pytest.raises(ConfigError, match="data.flip' takes a bool"):
        load_config("tiny-cpu", ["data.flip=1"])
    assert load_config("tiny-cpu", ["optim.lr=1"])["optim"]["lr"] == 1  # ints are numbers
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config("tiny-cpu", ["steps"])
    with pytest.raises(ConfigError, match="not found.*tiny-cpu"):
        load_config("no-such-config")


def test_typed_stage_configs_hold_only_their_stage_keys():
    from rgbd_world.train.config import (DataConfig, DiTStageConfig, TokenizerStageConfig,
                                         TrainConfig, load_stage_config)

    dit = load_stage_config("dit", "tiny-cpu", ["model.tokenizer=runs/rgbd", "data.frames=17",
                                                "model.preset=small"])
    assert isinstance(dit.model, DiTStageConfig) and dit.model.tokenizer == "runs/rgbd"
    assert isinstance(dit.data, DataConfig) and dit.data.frames == 17
    as_dict = dit.to_dict()
    assert "preset" not in as_dict["model"] and "loss" not in as_dict     # stage 1's keys
    tok = load_stage_config("tokenizer", "tiny-cpu", ["loss.distill=0.5", "model.init=x"])
    assert isinstance(tok.model, TokenizerStageConfig) and tok.model.loss.distill == 0.5
    assert "init" not in tok.to_dict()["model"] and tok.to_dict()["loss"]["distill"] == 0.5
    # the same strict errors as load_config, also for a dict handed to the trainer directly
    with pytest.raises(ConfigError, match="unknown config key 'model.tokenizr'"):
        load_stage_config("dit", "tiny-cpu", ["model.tokenizr=x"])
    with pytest.raises(ConfigError, match="run.steps' takes an int"):
        TrainConfig.from_dict("dit", {"run": {"steps": "many"}})
    with pytest.raises(ConfigError, match="optim.lr' must be"):
        TrainConfig.from_dict("tokenizer", {"optim": {"lr": -1.0}})
    with pytest.raises(ConfigError, match="data.mix"):
        TrainConfig.from_dict("tokenizer", {"data": {"mix": [["a", 0]]}})
    with pytest.raises(ConfigError, match="unknown stage"):
        TrainConfig.from_dict("vae", {})
    # the dict form round-trips and is what load_config gives for the shared sections
    cfg = load_config("tiny-cpu")
    again = TrainConfig.from_dict("tokenizer", tok.to_dict())
    assert again == tok and tok.to_dict()["run"] == cfg["run"]


# ----------------------------------------------------------------------------- resume

@pytest.mark.parametrize("kill_at", ["step:5", "save:6"], ids=["mid-run", "mid-save"])
def test_kill_and_resume_reproduces_uninterrupted_losses(tmp_path, data_root, kill_at):
    ref = run_train(tmp_path / "ref", "run.steps=8", data_root=data_root)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "killed"
    killed = run_train(out, "run.steps=8", kill_at=kill_at, data_root=data_root)
    assert killed.returncode == -9, killed.stderr[-3000:]
    if kill_at.startswith("save"):  # the half-written checkpoint must not be taken
        assert (out / "checkpoints" / ".tmp_step_000000006").exists()
    again = run_train(out, "run.steps=8", data_root=data_root)
    assert again.returncode != 0 and "--resume" in again.stderr  # refuses to overwrite a run
    resumed = run_train(out, "run.steps=8", "--resume", data_root=data_root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "step_000000003" in resumed.stdout
    assert losses(out) == losses(tmp_path / "ref")  # bit-identical per-step losses
    assert len(losses(out)) == 8


# ----------------------------------------------------------------------------- distributed

@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, data_root, strategy):
    args = ["run.steps=4", f"parallel.strategy={strategy}", "data.batch_size=4"]
    one = run_train(tmp_path / "one", *args, data_root=data_root)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_train(tmp_path / "two", *args, nproc=2, data_root=data_root)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [s for s, *_ in a] == [s for s, *_ in b] == [1, 2, 3, 4]
    for (_, la, *_), (_, lb, *_) in zip(a, b):
        assert abs(la - lb) <= 1e-4 * abs(la), (a, b)
    assert a[0][1] != a[-1][1]


# ----------------------------------------------------------------------------- divergence

def test_nonfinite_losses_are_skipped_then_stop_with_checkpoint(tmp_path, data_root):
    out = tmp_path / "diverge"
    result = run_train(out, "run.steps=20", "optim.lr=1e30", "optim.warmup_steps=0",
                       "optim.grad_clip=1e30", "run.max_consecutive_nonfinite=3",
                       stage="tokenizer-rgb", data_root=data_root)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "consecutive non-finite losses" in result.stderr
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in records][-3:] == [True, True, True]
    assert records[-1]["nonfinite_total"] >= 3
    from rgbd_world.train.checkpoint import latest_checkpoint

    assert latest_checkpoint(out) is not None


# ----------------------------------------------------------------------------- learning

def test_stage1_lowers_reconstruction_losses_and_evaluates(tmp_path, data_root):
    out = tmp_path / "stage1"
    result = run_train(out, "run.steps=120", "run.ckpt_every=120", "optim.warmup_steps=10",
                       data_root=data_root)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    first = {k: sum(r[k] for r in records[:3]) / 3 for k in ("rgb", "disparity")}
    last = {k: sum(r[k] for r in records[-10:]) / 10 for k in ("rgb", "disparity")}
    assert last["rgb"] < 0.5 * first["rgb"], (first, last)
    assert last["disparity"] < 0.6 * first["disparity"], (first, last)
    ev = subprocess.run([sys.executable, "-m", "rgbd_world.cli", "eval-tokenizer", "--run", str(out),
                         "--num-clips", "2"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=300)
    assert ev.returncode == 0, ev.stderr[-3000:]
    metrics = json.loads(ev.stdout.strip().splitlines()[-1])
    assert set(metrics) >= {"psnr", "ssim", "abs_rel", "delta1", "boundary_f1"}
    assert 0 <= metrics["delta1"] <= 1 and metrics["abs_rel"] >= 0
    # against the same architecture untrained (seeded like the run), on the same held-out clips
    import torch

    from rgbd_world.data import RGBDVideoDataset
    from rgbd_world.eval.tokenizer_eval import evaluate_tokenizer
    from rgbd_world.tokenizer import VideoTokenizer

    torch.manual_seed(0)
    untrained = VideoTokenizer("tiny", in_channels=4)
    held_out = RGBDVideoDataset(next(out.glob("eval-data-*")), frames=9, size=(32, 32),
                                augment=False)
    before = evaluate_tokenizer(untrained, held_out, max_clips=2, progress=False)
    assert metrics["psnr"] > before["psnr"] + 3, (before, metrics)
    assert metrics["abs_rel"] < before["abs_rel"], (before, metrics)


@pytest.fixture(scope="module")
def tokenizer_runs(tmp_path_factory, data_root):
    """(RGB tokenizer run, RGBD tokenizer run distilled from it), 20 steps each; the RGBD run
    also has a perceptual loss (a local TorchScript network) and writes samples at step 20."""
    import torch

    base = tmp_path_factory.mktemp("tokenizers")
    net = base / "features.pt"
    torch.manual_seed(0)
    torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())).save(str(net))
    rgb, rgbd = base / "rgb", base / "rgbd"
    for out, stage, extra in ((rgb, "tokenizer-rgb", []),
                              (rgbd, "tokenizer", [f"model.teacher={rgb}", "loss.perceptual=0.1",
                                                   f"model.perceptual_net={net}",
                                                   "run.sample_every=20"])):
        r = run_train(out, "run.steps=20", "run.ckpt_every=20", *extra, stage=stage, data_root=data_root)
        assert r.returncode == 0, r.stderr[-3000:]
    return rgb, rgbd


def test_tokenizer_run_logs_perceptual_throughput_and_samples(tokenizer_runs):
    _, rgbd = tokenizer_runs
    records = [json.loads(l) for l in (rgbd / "metrics.jsonl").read_text().splitlines()]
    assert all(r["perceptual"] > 0 for r in records)
    # latent tokens per step: batch 2 x (1 + 8/8) x (32/8)^2 = 64 per step
    assert all(r["tokens_per_s"] > 0 for r in records)
    assert (rgbd / "samples" / "recon_step0000020.gif").stat().st_size > 0
    assert list((rgbd / "tensorboard").glob("events.*"))


def test_forward_flops_counts_convolutions_and_linears():
    import torch

    from rgbd_kernels.nn import CausalConv3d
    from rgbd_world.train.flops import forward_flops

    model = torch.nn.Sequential(CausalConv3d(3, 5, (3, 3, 3), padding=1), torch.nn.Flatten(2),
                                torch.nn.Linear(4 * 6 * 6, 7))
    x = torch.randn(2, 3, 4, 6, 6)
    conv = 2 * (2 * 5 * 4 * 6 * 6) * (3 * 27)
    linear = 2 * (2 * 5 * 7) * (4 * 6 * 6)
    assert forward_flops(model, x) == conv + linear
    assert model.training  # the mode is restored


def test_stage2_dit_run_lowers_flow_loss(tmp_path, data_root, tokenizer_runs):
    rgb, rgbd = tokenizer_runs
    dit = tmp_path / "dit"
    r = run_train(dit, "run.steps=150", "run.ckpt_every=150", "run.sample_every=150",
                  f"model.tokenizer={rgbd}",
                  "optim.lr=1e-3", "optim.warmup_steps=10", stage="dit", data_root=data_root)
    assert r.returncode == 0, r.stderr[-3000:]
    loss = [json.loads(l)["flow_mse"] for l in (dit / "metrics.jsonl").read_text().splitlines()]
    assert sum(loss[-20:]) / 20 < 0.5 * sum(loss[:5]) / 5, (loss[:5], loss[-20:])
    from rgbd_world.train.run_models import pipeline_from_training_runs

    out = pipeline_from_training_runs(rgbd, dit)(prompt="a box", num_inference_steps=2,
                                                  progress=False)
    assert out.rgb.shape == (9, 32, 32, 3) and torch_finite(out.disparity)
    sample = dit / "samples" / "sample_step0000150.gif"
    assert sample.stat().st_size > 0 and sample.with_suffix(".txt").read_text().strip()


@pytest.mark.parametrize("kill_at", ["step:4", "save:6"], ids=["mid-run", "mid-save"])
def test_stage2_kill_and_resume_reproduces_uninterrupted_losses(tmp_path, data_root,
                                                                tokenizer_runs, kill_at):
    """The DiT step draws its noise, timesteps and conditioning from the global RNG: a resumed
    run must continue those draws exactly where the checkpoint left them."""
    _, rgbd = tokenizer_runs
    args = ("run.steps=6", f"model.tokenizer={rgbd}")
    ref = run_train(tmp_path / "ref", *args, stage="dit", data_root=data_root)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "killed"
    killed = run_train(out, *args, stage="dit", kill_at=kill_at, data_root=data_root)
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = run_train(out, *args, "--resume", stage="dit", data_root=data_root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step_000000003" in resumed.stdout
    flow = [(s, l) for s, l, *_ in losses(out)]
    assert flow == [(s, l) for s, l, *_ in losses(tmp_path / "ref")]  # bit-identical
    assert len(flow) == 6


def torch_finite(t):
    import torch

    return bool(torch.isfinite(t).all())


def test_stage2_on_cached_latents_matches_on_the_fly(tmp_path, data_root, tokenizer_runs):
    """Caching the latents (and the RGB tokenizer's) changes nothing but the cost: same losses."""
    _, rgbd = tokenizer_runs
    def cache_latents(out, *extra):
        cmd = [sys.executable, "-m", "rgbd_world.cli", "cache-latents", "--tokenizer", str(rgbd),
               "--data", str(data_root), "--out", str(out), "--frames", "9", "--height", "32",
               "--width", "32", "--storage-dtype", "float32", "--no-progress", *extra]
        return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                              timeout=600)

    cache = tmp_path / "cache"
    r = cache_latents(cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "8 samples" in r.stdout and "with RGB latents" in r.stdout, r.stdout
    common = ("run.steps=6", "run.ckpt_every=6", f"model.tokenizer={rgbd}", "data.flip=false")
    fly, cached = tmp_path / "fly", tmp_path / "cached"
    r = run_train(fly, *common, stage="dit", data_root=data_root)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_train(cached, *common, "data.source=latents", stage="dit", data_root=cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "8 cached latents" in r.stdout, r.stdout
    a, b = ([json.loads(l)["flow_mse"] for l in (d / "metrics.jsonl").read_text().splitlines()]
            for d in (fly, cached))
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-4 * abs(x), (a, b)
    # a cache without the RGB latents is refused with what to do
    bare = tmp_path / "bare"
    r = cache_latents(bare, "--rgb-tokenizer", "none")
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_train(tmp_path / "bad", *common, "data.source=latents", stage="dit", data_root=bare)
    assert r.returncode != 0 and "--rgb-tokenizer" in r.stderr, r.stderr[-3000:]


def test_stage2_uses_cached_caption_embeddings_of_its_frozen_encoder(tmp_path, data_root,
                                                                    tokenizer_runs):
    """cache-latents --text-encoder <local HF encoder> stores the caption embeddings; a DiT run
    with that same frozen encoder reads them instead of encoding captions every step."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    import torch

    words = ["<pad>", "</s>", "<unk>", "a", "red", "blue", "sphere", "box", "the", "camera"]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)},
                                                           unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    t5 = tmp_path / "t5"
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                         unk_token="<unk>").save_pretrained(t5)
    torch.manual_seed(0)
    transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=len(words), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
        decoder_start_token_id=0)).save_pretrained(t5)
    _, rgbd = tokenizer_runs
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "rgbd_world.cli", "cache-latents", "--tokenizer", str(rgbd),
           "--data", str(data_root), "--out", str(cache), "--frames", "9", "--height", "32",
           "--width", "32", "--text-encoder", str(t5), "--no-progress"]
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "text embeddings" in r.stdout, r.stderr[-3000:]
    r = run_train(tmp_path / "dit", "run.steps=3", "run.ckpt_every=3", f"model.tokenizer={rgbd}",
                  f"model.text_encoder={t5}", "data.source=latents", stage="dit", data_root=cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "caption embeddings from the cache" in r.stdout, r.stdout[-2000:]
    # the byte encoder is trained with the DiT: the same cache is used, captions encoded per step
    r = run_train(tmp_path / "dit-byte", "run.steps=3", "run.ckpt_every=3",
                  f"model.tokenizer={rgbd}", "data.source=latents", stage="dit", data_root=cache)
    assert r.returncode == 0 and "computed per step" in r.stdout, r.stderr[-3000:]
