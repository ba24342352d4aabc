"""Training under faults and bad input: non-finite gradients and weights, damaged run files on
``--resume``, and setup mistakes that must end in one line and exit code 2, never a traceback.

Most runs here are in-process (``rgbd_world.train.cli.main``): the tiny RGB tokenizer, 32x32
clips, a few steps. Runs that must die with SIGKILL are subprocesses (see test_train.py)."""
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
BASE = ["--config", "tiny-cpu", "run.ckpt_every=3", "run.sample_every=0", "data.num_clips=8",
        "data.batch_size=2", "data.height=32", "data.width=32", "data.frames=9",
        "optim.warmup_steps=2"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from rgbd_world.data import generate_dataset

    root = tmp_path_factory.mktemp("rgbd-data")
    generate_dataset(root, 8, frames=9, height=32, width=32, seed=0, progress=False)
    return root


@pytest.fixture
def train(data_root, capsys, monkeypatch, one_thread):
    """train(out_dir, *overrides, resume=False, stage=...) -> (exit code, stderr, stdout),
    in-process."""
    from rgbd_world.train.cli import main

    monkeypatch.delenv("RGBD_TRAIN_KILL_AT", raising=False)
    monkeypatch.delenv("RGBD_TRAIN_TRACEBACK", raising=False)

    def run(out_dir, *args, resume=False, stage="tokenizer-rgb"):
        capsys.readouterr()
        code = main(["--stage", stage, *BASE, f"data.root={data_root}", f"run.out_dir={out_dir}",
                     *args, *(["--resume"] if resume else [])])
        captured = capsys.readouterr()
        return code, captured.err, captured.out

    return run


def complete_checkpoints(out_dir):
    """Checkpoint directories with their COMPLETE marker, newest first."""
    found = Path(out_dir, "checkpoints").glob("step_*/COMPLETE")
    return sorted((p.parent for p in found), key=lambda p: p.name, reverse=True)


def records(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def losses(out_dir):
    return [(r["step"], r["loss"]) for r in records(out_dir)]


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def assert_finite_checkpoint(path):
    for name in ("model.safetensors", "ema.safetensors"):
        for key, t in load_file(Path(path) / name).items():
            assert torch.isfinite(t).all(), f"{path}/{name}: {key} is not finite"


# ----------------------------------------------------------------------------- non-finite

@pytest.fixture
def nan_gradient_at(monkeypatch):
    """nan_gradient_at({2, 3}): on those steps the RGB tokenizer's loss gains a term that is
    0 in value (the loss stays finite) but has a NaN gradient (d sqrt(x)/dx at 0, times 0)."""
    from rgbd_world.train.stages.tokenizer import RGBTokenizerStage

    original = RGBTokenizerStage.compute_loss

    def install(steps):
        calls = {"n": 0}

        def compute_loss(self, model, batch):
            loss, terms = original(self, model, batch)
            calls["n"] += 1
            if calls["n"] in steps:
                p = next(model.parameters())
                loss = loss + 0.0 * torch.sqrt(0.0 * p.sum())
            return loss, terms

        monkeypatch.setattr(RGBTokenizerStage, "compute_loss", compute_loss)

    return install


def test_nonfinite_gradient_norm_skips_the_step(tmp_path, train, nan_gradient_at):
    nan_gradient_at({2, 4})
    code, err, out_text = train(tmp_path / "run", "run.steps=5", "run.ckpt_every=5")
    assert code == 0, err[-2000:]
    recs = records(tmp_path / "run")
    assert [r["skipped"] for r in recs] == [False, True, False, True, False]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in recs)  # no poisoned weights
    assert recs[-1]["nonfinite_total"] == 2
    assert "step 2: non-finite gradient norm, update skipped" in out_text
    assert_finite_checkpoint(complete_checkpoints(tmp_path / "run")[0])


def test_consecutive_nonfinite_gradients_stop_with_finite_checkpoint(tmp_path, train,
                                                                     nan_gradient_at):
    nan_gradient_at({2, 3, 4, 5})
    code, err, out_text = train(tmp_path / "run", "run.steps=8", "run.ckpt_every=8",
                      "run.max_consecutive_nonfinite=3")
    assert code == 3, err[-2000:]
    assert "last good weights are in" in last_line(err)
    ckpt = complete_checkpoints(tmp_path / "run")[0]
    assert ckpt.name == "step_000000004" and str(ckpt) in last_line(err)
    assert_finite_checkpoint(ckpt)


def test_nonfinite_weights_are_never_checkpointed(tmp_path, train, monkeypatch):
    """An update that overflows the weights although the loss and gradient norm were finite
    (simulated: step 2's update writes inf into one weight). The run stops (exit 3) naming the
    step-1 checkpoint as the last good weights instead of writing the overflowed ones."""
    import rgbd_world.train.trainer as trainer_mod

    real_update = trainer_mod.update_ema

    def overflowing_update(ema, model, decay, step):
        if step == 2:
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("inf")
        return real_update(ema, model, decay, step)

    monkeypatch.setattr(trainer_mod, "update_ema", overflowing_update)
    code, err, _ = train(tmp_path / "run", "run.steps=3", "run.ckpt_every=1")
    assert code == 3, err[-2000:]
    assert "weights became non-finite by step 2" in last_line(err)
    assert "last good weights are in" in last_line(err) and "step_000000001" in last_line(err)
    assert [p.name for p in complete_checkpoints(tmp_path / "run")] == ["step_000000001"]
    assert_finite_checkpoint(complete_checkpoints(tmp_path / "run")[0])


def test_max_consecutive_nonfinite_zero_does_not_stop_a_healthy_run(tmp_path, train):
    code, err, out_text = train(tmp_path / "run", "run.steps=2", "run.max_consecutive_nonfinite=0")
    assert code == 0, err[-2000:]
    assert [r["skipped"] for r in records(tmp_path / "run")] == [False, False]


# ----------------------------------------------------------------------------- resume

@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_root):
    """An uninterrupted 6-step run with checkpoints at steps 3 and 6 (in a subprocess, so the
    in-process tests' fixtures do not apply)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--stage", "tokenizer-rgb", *BASE,
                        f"data.root={data_root}", f"run.out_dir={out}", "run.steps=6"],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "RGBD_TRAIN_KILL_AT"}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def test_resume_after_a_kill_mid_append_of_metrics(tmp_path, data_root, reference_run):
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), "--stage", "tokenizer-rgb", *BASE,
           f"data.root={data_root}", f"run.out_dir={out}", "run.steps=6"]
    killed = subprocess.run(cmd, cwd=ROOT, env=_env(RGBD_TRAIN_KILL_AT="step:5"),
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    with open(out / "metrics.jsonl", "a") as f:  # what a kill in the middle of an append leaves
        f.write('{"step": 6, "loss": 0.12')
    resumed = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=_env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "dropped 1 unreadable line" in resumed.stderr
    assert losses(out) == losses(reference_run)


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _scramble(f: Path) -> None:  # same size, so only parsing can tell
    data = bytearray(f.read_bytes())
    data[: min(len(data), 64)] = b"\x00" * min(len(data), 64)
    f.write_bytes(bytes(data))


def _bad_json(f: Path) -> None:  # same size, not JSON
    f.write_text("{" * f.stat().st_size)


@pytest.mark.parametrize("name,damage", [("model.safetensors", _truncate),
                                         ("optimizer.pt", _scramble),
                                         ("trainer.json", _bad_json),
                                         ("ema.safetensors", _scramble)])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, train, reference_run,
                                                              name, damage):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    damage(out / "checkpoints" / "step_000000006" / name)
    code, err, out_text = train(out, "run.steps=6", resume=True)
    assert code == 0, err[-2000:]
    warning = next(line for line in err.splitlines() if line.startswith("warning: checkpoint"))
    assert f"step_000000006/{name}" in warning and "previous complete checkpoint" in warning
    assert (out / "checkpoints" / "damaged_step_000000006").is_dir()
    assert losses(out) == losses(reference_run)  # steps 4-6 redone exactly from step 3


def test_no_usable_checkpoint_is_one_line_naming_the_file(tmp_path, train, reference_run):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    shutil.rmtree(out / "checkpoints" / "step_000000003")
    _bad_json(out / "checkpoints" / "step_000000006" / "trainer.json")
    code, err, out_text = train(out, "run.steps=6", resume=True)
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert "step_000000006/trainer.json is not valid JSON" in err
    assert (out / "checkpoints" / "step_000000006").is_dir()  # nothing renamed on failure


def test_resume_with_another_model_size_says_what_differs(tmp_path, train, reference_run):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    code, err, out_text = train(out, "run.steps=6", "model.preset=small", resume=True)
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert "model.preset='tiny' in the run, 'small' now" in err


# ----------------------------------------------------------------------------- setup faults

def _read_only_parent(tmp_path, monkeypatch):
    """A run.out_dir to be created inside a read-only filesystem (os.mkdir fails with EROFS
    there, as on a read-only mount: the tests run as root, where chmod does not stop writes)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(str(ro)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    return [f"run.out_dir={ro / 'run'}"], ["run.out_dir", str(ro / "run"), "Read-only"]


def _under_a_file(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "run"
    return [f"run.out_dir={out}"], ["run.out_dir", str(out), "is a file"]


def _no_cuda(tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: run.device=cuda is valid")
    return ["run.device=cuda"], ["run.device", "'cuda'", "not available"]


BAD_SETUPS = {
    "ckpt_every=0": lambda *_: (["run.ckpt_every=0"], ["run.ckpt_every", "0"]),
    "batch_size=0": lambda *_: (["data.batch_size=0"], ["data.batch_size", "0"]),
    "betas=[0.9]": lambda *_: (["optim.betas=[0.9]"], ["optim.betas", "[0.9]"]),
    "lr=nan": lambda *_: (["optim.lr=nan"], ["optim.lr", "nan"]),
    "max_consecutive_nonfinite=-1": lambda *_: (["run.max_consecutive_nonfinite=-1"],
                                                ["run.max_consecutive_nonfinite", "-1"]),
    "device=cuda without CUDA": _no_cuda,
    "out_dir under a file": _under_a_file,
    "read-only out_dir": _read_only_parent,
}


@pytest.mark.parametrize("case", sorted(BAD_SETUPS))
def test_bad_setup_is_one_line_and_exit_code_2(tmp_path, train, monkeypatch, case):
    overrides, must_name = BAD_SETUPS[case](tmp_path, monkeypatch)
    out = tmp_path / "run"
    code, err, out_text = train(out, "run.steps=2", *overrides)
    assert code == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    for text in must_name:
        assert text in lines[0], (text, lines[0])
    assert not (out / "checkpoints").exists()


def test_disk_full_during_a_save_is_one_line_and_resumable(tmp_path, train, monkeypatch):
    """The filesystem fills up half-way through the weights of the step-2 checkpoint."""
    import rgbd_world.train.checkpoint as ckpt_mod

    real_save = ckpt_mod.save_file

    def save_file(tensors, path, *args, **kwargs):
        if "step_000000002" in str(path):
            Path(path).write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(ckpt_mod, "save_file", save_file)
    out = tmp_path / "run"
    code, err, out_text = train(out, "run.steps=2", "run.ckpt_every=1")
    assert code == 2 and "Traceback" not in err, err[-2000:]
    line = last_line(err)
    assert "step_000000002" in line and "No space left on device" in line, line
    assert "step_000000001 is intact" in line, line
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_000000001"]
    monkeypatch.setattr(ckpt_mod, "save_file", real_save)  # space freed: resume finishes the run
    code, err, out_text = train(out, "run.steps=2", "run.ckpt_every=1", resume=True)
    assert code == 0, err[-2000:]
    assert [r["step"] for r in records(out)] == [1, 2]
