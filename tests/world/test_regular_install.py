"""A regular (non-editable) install works from an empty directory: the wheel carries the shipped
configs and the default pipeline (``tiny-rgbd``), so the README's generate command,
``RGBDPipeline.from_pretrained("tiny-rgbd")`` and a 2-step ``python -m rgbd_world.train --stage
tokenizer-rgb --config tiny-cpu`` run without the source tree.

The wheel is built once from a copy of the package sources (``RGBD_KERNELS_SKIP_BUILD=1``: the
compiled ops are not what this checks, and compiling them would take minutes) and installed with
``--no-deps`` into a virtual environment made with ``--system-site-packages`` (torch and the
other dependencies come from the running interpreter's environment, added by a .pth file
when that is itself a virtual environment). Marked ``slow``
(about a minute on 2 CPU cores).
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "rgbd_kernels", "rgbd_world", "csrc")

pytestmark = pytest.mark.slow


def _run(cmd, cwd, env, timeout=600):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n" \
                              f"{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python, bin directory, environment) of a fresh venv holding the built wheel."""
    base = tmp_path_factory.mktemp("regular-install")
    src = base / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info", "build")
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, src / name)
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "PYTHONPATH", "RGBD_TEST_SEED")}
    env["RGBD_KERNELS_SKIP_BUILD"] = "1"
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
          "-w", str(base / "dist"), str(src)], base, env)
    wheel, = (base / "dist").glob("rgbd_world-*.whl")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
         base, env)
    python = venv / "bin" / "python"
    # the running interpreter may itself be a virtual environment: its packages (torch, ...)
    # are made visible after the new environment's own (.pth lines are plain path entries,
    # so an editable install of this project there is not activated)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     base, env).stdout.strip())
    outer = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    (site / "outer-environment.pth").write_text("\n".join(sorted(outer)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", "-q", str(wheel)], base, env)
    empty = base / "empty"
    empty.mkdir()
    return python, venv / "bin", env, empty


def test_wheel_installs_the_package_not_the_source_tree(installed):
    python, _, env, empty = installed
    r = _run([str(python), "-c", "import rgbd_world, rgbd_world.package_data as p; "
              "print(rgbd_world.__file__); print(p.shipped_configs(), p.shipped_pipelines())"],
             empty, env)
    where, names = r.stdout.splitlines()[-2:]
    assert str(ROOT) not in where and "site-packages" in where, where
    assert "tiny-cpu" in names and "tiny-rgbd" in names


def test_readme_generate_command_from_an_empty_directory(installed):
    _, bin_dir, env, empty = installed
    readme = (ROOT / "README.md").read_text()
    command = 'rgbd-world generate --prompt "a red sphere rolls left" --out outputs/gen'
    assert command in readme                        # the README's command, as written there
    _run([str(bin_dir / "rgbd-world"), "generate", "--prompt", "a red sphere rolls left",
          "--out", "outputs/gen", "--steps", "2"], empty, env)
    out = empty / "outputs" / "gen"
    assert (out / "rgbd.npz").is_file() and list((out / "disparity").glob("frame_*.png"))


def test_from_pretrained_by_name_from_an_empty_directory(installed):
    python, _, env, empty = installed
    r = _run([str(python), "-c", "from rgbd_world.pipeline import RGBDPipeline; "
              "p = RGBDPipeline.from_pretrained('tiny-rgbd'); "
              "o = p(prompt='a red sphere', steps=2, progress=False); "
              "d = p.defaults; print(tuple(o.rgb.shape) == (d['num_frames'], d['height'], "
              "d['width'], 3), tuple(o.rgb.shape))"],
             empty, env)
    assert r.stdout.strip().splitlines()[-1].startswith("True ("), r.stdout


def test_two_training_steps_with_a_shipped_config_from_an_empty_directory(installed):
    python, _, env, empty = installed
    r = _run([str(python), "-m", "rgbd_world.train", "--stage", "tokenizer-rgb", "--config",
              "tiny-cpu", "run.steps=2", "run.out_dir=runs/rgb", "run.sample_every=0",
              "data.num_clips=4"], empty, env)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["done"] == 2 and summary["exported"]
    assert (empty / "runs" / "rgb" / "exported" / "model.safetensors").is_file()
