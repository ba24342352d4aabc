"""Latent cache: encode once with any callable, read back, atomic resumable shards, CLI."""
import numpy as np
import pytest
import torch

from rgbd_world.cli import main
from rgbd_world.data.dataset import RGBDVideoDataset
from rgbd_world.data.latent_cache import (LatentDataset, collate_latents, encode_dataset,
                                          pool_encoder)
from rgbd_world.data.shards import generate_dataset


pytestmark = pytest.mark.usefixtures("one_thread")


def dead_pid() -> int:
    """The pid of a process that has exited (a killed writer's temporary carries one)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("latent_src")
    torch.set_num_threads(1)
    generate_dataset(out, num_clips=5, frames=9, height=16, width=24, seed=2, clips_per_shard=5,
                     progress=False)
    return out


class CountingEncoder:
    """Not the tokenizer: a fixed random 1x1x1 projection after pooling, counting its calls."""

    def __init__(self):
        self.weight = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
        self.samples = 0

    def __call__(self, video):
        self.samples += video.shape[0]
        pooled = pool_encoder(video)
        return torch.einsum("oc,bcthw->bothw", self.weight, pooled)


def test_encode_and_read_back(data, tmp_path):
    ds = RGBDVideoDataset(data, frames=9, size=(16, 24), augment=False)
    enc = CountingEncoder()
    texts = lambda captions: torch.stack([torch.full((3, 2), float(len(c))) for c in captions])  # noqa: E731
    encode_dataset(ds, enc, tmp_path, batch_size=2, samples_per_shard=2, text_encoder=texts,
                   progress=False)
    cache = LatentDataset(tmp_path)
    assert len(cache) == 5 and enc.samples == 5
    for i in (0, 3, 4):
        item, sample = cache[i], ds[i]
        video = torch.cat([sample["rgb"], sample["disparity"]], 0)[None]
        expected = enc(video)[0]
        assert item["latent"].shape == (6, 2, 2, 3)
        torch.testing.assert_close(item["latent"], expected, rtol=2e-3, atol=2e-3)  # float16
        assert item["caption"] == sample["caption"] and item["source"] == sample["source"]
        assert torch.equal(item["K"], sample["K"]) and torch.equal(item["poses"], sample["poses"])
        assert torch.equal(item["text"], torch.full((3, 2), float(len(sample["caption"]))))
    batch = next(iter(torch.utils.data.DataLoader(cache, batch_size=2, num_workers=0)))
    assert batch["latent"].shape == (2, 6, 2, 2, 3)


class PairTextEncoder:
    """A frozen-encoder stand-in: ``encode`` gives (B, L, D) and a mask of len(caption) % 5 + 1
    tokens, token j of caption i being j + 100 * len(caption)."""

    name = "pair-test"

    def encode(self, captions):
        n = [len(c) % 5 + 1 for c in captions]
        emb = torch.zeros(len(captions), max(n) + 2, 3)
        mask = torch.zeros(len(captions), max(n) + 2, dtype=torch.bool)
        for i, (c, k) in enumerate(zip(captions, n)):
            emb[i, :k] = (torch.arange(k, dtype=torch.float32) + 100 * len(c))[:, None]
            mask[i, :k] = True
        return emb, mask


def test_rgb_latents_and_masked_text_are_cached_and_collated(data, tmp_path):
    ds = RGBDVideoDataset(data, frames=9, size=(16, 24), augment=False)
    rgb_seen = []

    def rgb_encoder(video):
        rgb_seen.append(video.shape[1])
        return pool_encoder(video) * 2

    encode_dataset(ds, CountingEncoder(), tmp_path, batch_size=3, samples_per_shard=4,
                   rgb_encoder=rgb_encoder, text_encoder=PairTextEncoder(),
                   storage_dtype="float32", progress=False)
    assert set(rgb_seen) == {3}  # the RGB encoder gets the RGB channels alone
    cache = LatentDataset(tmp_path)
    assert cache.encoders["encoder"] == "CountingEncoder"
    assert cache.encoders["rgb_encoder"].endswith("rgb_encoder")  # a function's qualified name
    assert cache.encoders["text_encoder"] == "pair-test"
    items = [cache[i] for i in range(len(cache))]
    for item, i in zip(items, range(len(ds))):
        sample = ds[i]
        rgb = sample["rgb"][None]
        torch.testing.assert_close(item["rgb_latent"], pool_encoder(rgb)[0] * 2)
        k = len(sample["caption"]) % 5 + 1
        assert item["text"].shape == (k, 3)  # valid tokens only
        assert item["text"][-1, 0] == k - 1 + 100 * len(sample["caption"])
    batch = collate_latents(items[:3])
    longest = max(it["text"].shape[0] for it in items[:3])
    assert batch["text"].shape == (3, longest, 3) and batch["text_mask"].shape == (3, longest)
    assert batch["rgb_latent"].shape == (3, 3, 2, 2, 3) and batch["latent"].shape[0] == 3
    assert batch["caption"] == [it["caption"] for it in items[:3]]
    for i, it in enumerate(items[:3]):
        k = it["text"].shape[0]
        assert batch["text_mask"][i].sum() == k and batch["text_mask"][i, :k].all()
        assert torch.equal(batch["text"][i, :k], it["text"])
        assert (batch["text"][i, k:] == 0).all()


def test_text_encoder_must_return_embeddings(data, tmp_path):
    ds = RGBDVideoDataset(data, frames=9, size=(16, 24), augment=False)
    with pytest.raises(ValueError, match="text_encoder must return"):
        encode_dataset(ds, pool_encoder, tmp_path, text_encoder=lambda c: torch.zeros(len(c), 4),
                       progress=False)


def test_latent_shards_are_atomic_and_resume(data, tmp_path):
    ds = RGBDVideoDataset(data, frames=9, size=(16, 24), augment=False)

    class Interrupted(Exception):
        pass

    def stop(shard):
        raise Interrupted

    first = CountingEncoder()
    with pytest.raises(Interrupted):
        encode_dataset(ds, first, tmp_path, samples_per_shard=2, progress=False, on_shard=stop,
                       encoder_name="counting")
    (tmp_path / f".latents-000001.npz.tmp-{dead_pid()}").write_bytes(b"garbage from a killed run")
    assert len(LatentDataset(tmp_path)) == 2  # the finished shard only; the temp is ignored
    again = CountingEncoder()
    encode_dataset(ds, again, tmp_path, samples_per_shard=2, progress=False,
                   encoder_name="counting")
    assert first.samples == 2 and again.samples == 3  # shard 0 was not re-encoded
    assert len(LatentDataset(tmp_path)) == 5
    assert not list(tmp_path.glob(".*.tmp-*"))
    with pytest.raises(ValueError, match="other settings"):
        encode_dataset(ds, again, tmp_path, samples_per_shard=3, progress=False,
                       encoder_name="counting")
    smaller = RGBDVideoDataset(data, frames=9, size=(8, 16), augment=False)  # same length
    with pytest.raises(ValueError, match="other settings"):
        encode_dataset(smaller, again, tmp_path, samples_per_shard=2, progress=False,
                       encoder_name="counting")
    assert [LatentDataset(tmp_path)[i]["index"] for i in range(5)] == list(range(5))


def test_bad_latent_shard_is_skipped_and_empty_cache_raises(data, tmp_path):
    with pytest.raises(ValueError, match="no latent samples"):
        LatentDataset(tmp_path)
    with pytest.raises(FileNotFoundError):
        LatentDataset(tmp_path / "missing")
    ds = RGBDVideoDataset(data, frames=9, size=(16, 24), augment=False)
    encode_dataset(ds, pool_encoder, tmp_path, samples_per_shard=3, progress=False)
    path = tmp_path / "latents-000001.npz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match="latents-000001.npz"):
        cache = LatentDataset(tmp_path)
    assert len(cache) == 3 and cache.num_skipped == 1


def _cli(argv):
    return main(argv)


def test_cli_cache_latents(data, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["cache-latents", "--data", str(data), "--out", str(out), "--frames", "9",
            "--height", "16", "--width", "24", "--no-progress"]
    assert _cli(base[:1] + ["--tokenizer", str(tmp_path / "none.pt")] + base[1:]) == 2
    assert "does not exist" in capsys.readouterr().err
    # a tokenizer training run directory (as train.py writes it) is accepted by path
    import json

    from safetensors.torch import save_file

    from rgbd_world.tokenizer import VideoTokenizer
    from rgbd_world.tokenizer.checkpoint import config_to_dict

    tok = VideoTokenizer("tiny", in_channels=4)
    run = tmp_path / "tok-run"
    step = run / "checkpoints" / "step_000000001"
    step.mkdir(parents=True)
    (run / "model_config.json").write_text(json.dumps({"tokenizer": config_to_dict(tok.config)}))
    state = {k: v.contiguous() for k, v in tok.state_dict().items()}
    save_file(state, step / "model.safetensors")
    save_file({}, step / "ema.safetensors")
    (step / "COMPLETE").write_text("ok")
    argv = ["cache-latents", "--tokenizer", str(run), "--data", str(data), "--out",
            str(tmp_path / "tok-out"), "--frames", "9", "--height", "16", "--width", "24",
            "--no-progress"]
    assert _cli(argv) == 0
    real = LatentDataset(tmp_path / "tok-out")
    latent = real[0]["latent"]
    assert latent.shape == (16, 2, 2, 3) and torch.isfinite(latent).all() and latent.std() > 0
    spec = "rgbd_world.data.latent_cache:pool_encoder"
    assert _cli(base[:1] + ["--tokenizer", spec] + base[1:]) == 0
    cache = LatentDataset(out)
    assert len(cache) == 5 and cache[0]["latent"].shape == (4, 2, 2, 3)
    assert np.isfinite(cache[0]["latent"].numpy()).all() and cache[0]["latent"].std() > 0


def test_failed_run_does_not_poison_the_cache_directory(data, tmp_path):
    ds = RGBDVideoDataset(data, frames=9, size=(16, 24), augment=False)

    def broken(video):
        raise RuntimeError("encoder failed on the first batch")

    with pytest.raises(RuntimeError):
        encode_dataset(ds, broken, tmp_path, progress=False, encoder_name="broken")
    assert (tmp_path / "latents-manifest.json").exists() and not list(tmp_path.glob("latents-*.npz"))
    # the corrected run (another encoder) is not refused: nothing was cached yet
    encode_dataset(ds, pool_encoder, tmp_path, progress=False, encoder_name="pool")
    assert len(LatentDataset(tmp_path)) == 5


def test_cli_refuses_an_rgb_tokenizer_before_writing(data, tmp_path, capsys):
    import json

    from safetensors.torch import save_file

    from rgbd_world.tokenizer import VideoTokenizer
    from rgbd_world.tokenizer.checkpoint import config_to_dict

    tok = VideoTokenizer("tiny", in_channels=3)      # what train.py --stage tokenizer-rgb makes
    run = tmp_path / "rgb-run"
    step = run / "checkpoints" / "step_000000001"
    step.mkdir(parents=True)
    (run / "model_config.json").write_text(json.dumps({"tokenizer": config_to_dict(tok.config)}))
    save_file({k: v.contiguous() for k, v in tok.state_dict().items()}, step / "model.safetensors")
    save_file({}, step / "ema.safetensors")
    (step / "COMPLETE").write_text("ok")
    out = tmp_path / "out"
    assert _cli(["cache-latents", "--tokenizer", str(run), "--data", str(data), "--out", str(out),
                 "--frames", "9", "--height", "16", "--width", "24", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--tokenizer" in err and "--rgb-tokenizer" in err
    assert not out.exists()
