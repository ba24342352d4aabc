"""The ``rgbd-world`` CLI under bad input: one line naming the argument, exit code 2, nothing
written; tracebacks only with RGBD_TRACEBACK=1. Plus what must hold when processes die."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rgbd_world.cli import main

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "rgbd_world" / "assets" / "tiny-rgbd"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Bad input files of every kind the issue lists, and an empty dataset directory."""
    d = tmp_path_factory.mktemp("inputs")
    (d / "text.txt").write_text("not a video\n")
    (d / "random.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (d / "empty.mp4").write_bytes(b"")
    (d / "a_file").write_text("x")
    (d / "empty_data").mkdir()
    from PIL import Image

    frames = [Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)) for i in range(3)]
    frames[0].save(d / "three.gif", save_all=True, append_images=frames[1:], duration=100)
    return d


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


G = ["generate", "--pipeline", str(PIPELINE)]
# (argv with {in} = the inputs folder and {out} = a fresh output path, the flag and the value
# the message must name)
CASES = [
    (G + ["--frames", "10", "--out", "{out}"], "--frames", "10"),
    (G + ["--frames", "-1", "--out", "{out}"], "--frames", "-1"),
    (G + ["--frames", "0", "--out", "{out}"], "--frames", "0"),
    (G + ["--steps", "-3", "--out", "{out}"], "--steps", "-3"),
    (G + ["--steps", "0", "--out", "{out}"], "--steps", "0"),
    (G + ["--height", "20", "--out", "{out}"], "--height", "20"),
    (G + ["--width", "0", "--out", "{out}"], "--width", "0"),
    (G + ["--guidance", "nan", "--out", "{out}"], "--guidance", "nan"),
    (G + ["--guidance", "inf", "--out", "{out}"], "--guidance", "inf"),
    (G + ["--seed", "-1", "--out", "{out}"], "--seed", "-1"),
    (G + ["--ply-frame", "99", "--out", "{out}"], "--ply-frame", "99"),
    (G + ["--ply-frame", "-1", "--out", "{out}"], "--ply-frame", "-1"),
    (["generate", "--pipeline", "{in}/missing", "--out", "{out}"], "--pipeline", "missing"),
    (["generate", "--pipeline", "{in}/empty_data", "--out", "{out}"], "--pipeline", "empty_data"),
    (G + ["--image", str(ROOT / "README.md"), "--out", "{out}"], "--image", "README.md"),
    (G + ["--image", "{in}/missing.png", "--out", "{out}"], "--image", "missing.png"),
    (G + ["--device", "no-such-device", "--out", "{out}"], "--device", "no-such-device"),
    (G + ["--out", "{in}/a_file"], "--out", "a_file"),
    (G + ["--out", "{in}/a_file/sub"], "--out", "a_file"),
    (["depthify", "--video", "{in}/text.txt", "--out", "{out}"], "--video", "text.txt"),
    (["depthify", "--video", "{in}/random.mp4", "--out", "{out}"], "--video", "random.mp4"),
    (["depthify", "--video", "{in}/empty.mp4", "--out", "{out}"], "--video", "empty.mp4"),
    (["depthify", "--video", "{in}/missing.mp4", "--out", "{out}"], "--video", "missing.mp4"),
    (["depthify", "--video", "{in}/three.gif", "--out", "{out}"], "--video", "three.gif"),
    (["make-data", "--out", "{out}", "--num-clips", "0"], "--num-clips", "0"),
    (["make-data", "--out", "{out}", "--num-clips", "-2"], "--num-clips", "-2"),
    (["make-data", "--out", "{out}", "--num-clips", "1", "--frames", "0"], "--frames", "0"),
    (["make-data", "--out", "{out}", "--num-clips", "1", "--height", "-4"], "--height", "-4"),
    (["make-data", "--out", "{out}", "--num-clips", "1", "--width", "0"], "--width", "0"),
    (["make-data", "--out", "{out}", "--num-clips", "1", "--clips-per-shard", "0"],
     "--clips-per-shard", "0"),
    (["make-data", "--out", "{out}", "--num-clips", "1", "--workers", "-1"], "--workers", "-1"),
    (["make-data", "--out", "{out}", "--num-clips", "1", "--num-objects", "99"],
     "--num-objects", "99"),
    (["make-data", "--out", "{out}", "--num-clips", "1", "--seed", "-5"], "--seed", "-5"),
    (["make-data", "--out", "{out}", "--num-clips", "1", "--device", "bogus"], "--device", "bogus"),
    (["make-data", "--out", "{in}/a_file", "--num-clips", "1"], "--out", "a_file"),
    (["eval-tokenizer", "--run", "/nonexistent"], "--run", "/nonexistent"),
    (["eval-tokenizer", "--run", "{in}", "--num-clips", "0"], "--num-clips", "0"),
    (["eval-generation", "--num-clips", "0", "--data", "{out}"], "--num-clips", "0"),
    (["eval-generation", "--steps", "0", "--data", "{out}"], "--steps", "0"),
    (["eval-generation", "--num-clips", "1", "--data", "{out}"], "--num-clips", "1"),
    (["eval-generation", "--seed", "-3", "--data", "{out}"], "--seed", "-3"),
    (["demo", "--steps", "0", "--out", "{out}"], "--steps", "0"),
    (["cache-latents", "--tokenizer", "x", "--data", "{in}/empty_data", "--out", "{out}"],
     "--data", "empty_data"),
    (["cache-latents", "--tokenizer", "x", "--data", "{in}/missing", "--out", "{out}"],
     "--data", "missing"),
    (["cache-latents", "--tokenizer", "x", "--data", "{in}", "--out", "{out}",
      "--batch-size", "0"], "--batch-size", "0"),
]
if not torch.cuda.is_available():
    CASES.append((G + ["--device", "cuda", "--out", "{out}"], "--device", "cuda"))


@pytest.mark.parametrize("argv,flag,value", CASES, ids=[f"{c[0][0]} {c[1]}={c[2]}" for c in CASES])
def test_bad_argument_is_one_line_exit_2_and_writes_nothing(argv, flag, value, inputs, tmp_path,
                                                             capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative defaults (outputs/...) would land here
    monkeypatch.delenv("RGBD_TRACEBACK", raising=False)
    monkeypatch.delenv("RGBD_TRAIN_TRACEBACK", raising=False)
    argv = [a.replace("{in}", str(inputs)).replace("{out}", str(tmp_path / "out")) for a in argv]
    before_inputs = _files(inputs)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"rgbd-world {argv[0]}: error: ")
    assert flag in lines[0] and value in lines[0], lines[0]
    assert "allowed" in lines[0], lines[0]
    assert _files(tmp_path) == set(), "files left behind"
    assert _files(inputs) == before_inputs


def test_argparse_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--frames", "ten"])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--frames" in lines[0] and "'ten'" in lines[0]


def _run_cli(*argv, env=None, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "rgbd_world.cli", *argv], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd or ROOT,
                          env={**os.environ, **(env or {})})


def test_subprocess_message(tmp_path):
    r = _run_cli("generate", "--steps", "0", "--out", str(tmp_path / "o"),
                 env={"RGBD_TRACEBACK": "0", "RGBD_TRAIN_TRACEBACK": "0"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "rgbd-world generate: error: --steps=0 (allowed: an integer >= 1)"]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("variable", ["RGBD_TRACEBACK", "RGBD_TRAIN_TRACEBACK"])
def test_traceback_switch_new_and_old_name(variable, tmp_path, monkeypatch):
    from rgbd_world.validation import InvalidArgument

    monkeypatch.delenv("RGBD_TRACEBACK", raising=False)
    monkeypatch.delenv("RGBD_TRAIN_TRACEBACK", raising=False)
    monkeypatch.setenv(variable, "1")
    with pytest.raises(InvalidArgument, match="num_clips"):
        main(["make-data", "--out", str(tmp_path / "m"), "--num-clips", "0"])
    assert not (tmp_path / "m").exists()


def test_failed_make_data_does_not_poison_its_directory(tmp_path, capsys):
    out = tmp_path / "data"
    common = ["make-data", "--out", str(out), "--num-clips", "1", "--frames", "2", "--height",
              "8", "--width", "8", "--no-progress"]
    assert main(common + ["--num-objects", "99"]) == 2
    assert "--num-objects" in capsys.readouterr().err
    assert not out.exists()
    # a run that failed after writing its manifest (killed, or a render error) leaves no shard:
    # the corrected command starts afresh instead of refusing the directory
    from rgbd_world.data import shards

    real = shards._render_shard

    def broken(job):
        raise RuntimeError("render failed")

    shards._render_shard = broken
    try:
        with pytest.raises(RuntimeError):
            shards.generate_dataset(out, 1, 2, 8, 8, num_objects=3, progress=False)
    finally:
        shards._render_shard = real
    assert (out / "manifest.json").exists() and not list(out.glob("shard-*.npz"))
    assert main(common + ["--num-objects", "2"]) == 0
    assert len(list(out.glob("shard-*.npz"))) == 1


def test_another_writers_temporary_survives_cleanup(tmp_path):
    from rgbd_world.data.shards import generate_dataset, remove_stale_temporaries

    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tmp_path.mkdir(exist_ok=True)
        live = [tmp_path / f".shard-000003.npz.tmp-{writer.pid}",
                tmp_path / f".shard-000004.npz.tmp-{writer.pid}@{os.uname().nodename}"]
        for p in live:
            p.write_bytes(b"in flight")
        generate_dataset(tmp_path, 1, 2, 8, 8, progress=False)
        assert all(p.exists() for p in live)          # another writer's file: left alone
        # a directory another writer is filling (no shard yet) is not taken over
        busy = tmp_path / "busy"
        busy.mkdir()
        (busy / "manifest.json").write_text('{"config": {"num_clips": 7}, "complete": false}')
        (busy / f".shard-000000.npz.tmp-{writer.pid}@{os.uname().nodename}").write_bytes(b"x")
        with pytest.raises(ValueError, match="different settings"):
            generate_dataset(busy, 1, 2, 8, 8, progress=False)
    finally:
        writer.kill()
        writer.wait()
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(live)  # its writer is gone
    assert not any(p.exists() for p in live)
    generate_dataset(busy, 1, 2, 8, 8, progress=False)  # that writer died: start afresh
    assert len(list(busy.glob("shard-*.npz"))) == 1 and not list(busy.glob(".*.tmp-*"))


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_make_data_workers_die_with_their_parent(tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-m", "rgbd_world.cli", "make-data", "--out", str(tmp_path / "d"),
         "--num-clips", "8", "--clips-per-shard", "4", "--frames", "17", "--height", "64",
         "--width", "64", "--workers", "2", "--no-progress"], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.1)
            workers = _children(parent.pid)
        assert len(workers) == 2, "the pool did not start"
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 5
    while any(map(_running, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = [w for w in workers if _running(w)]
    for w in alive:  # do not leave them running if the test fails
        os.kill(w, signal.SIGKILL)
    assert not alive, "pool workers outlived their killed parent"


def test_invalid_argument_survives_pickling_and_renames():
    import pickle

    from rgbd_world.validation import InvalidArgument, check_int

    with pytest.raises(InvalidArgument) as exc:
        check_int("num_frames", True, 1)              # a bool is not a count
    again = pickle.loads(pickle.dumps(exc.value))  # as a worker process hands it back
    assert (again.argument, again.value, again.allowed) == ("num_frames", True, "an integer >= 1")
    assert again.format("--frames") == "--frames=True (allowed: an integer >= 1)"
