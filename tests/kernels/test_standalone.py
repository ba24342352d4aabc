"""rgbd_kernels stands alone: importing every module of it never imports rgbd_world."""
import pkgutil
import subprocess
import sys
from pathlib import Path

import rgbd_kernels

ROOT = Path(__file__).resolve().parents[2]


def test_no_source_file_mentions_an_import_of_rgbd_world():
    for path in (ROOT / "rgbd_kernels").rglob("*.py"):
        for line in path.read_text().splitlines():
            code = line.split("#")[0].strip()
            assert not (code.startswith(("import rgbd_world", "from rgbd_world"))), (path, line)


def test_importing_every_module_leaves_rgbd_world_unimported():
    names = [m.name for m in pkgutil.walk_packages(rgbd_kernels.__path__, "rgbd_kernels.")
             if m.name != "rgbd_kernels._C"]
    assert "rgbd_kernels.nn" in names and "rgbd_kernels.disparity" in names
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'rgbd_world')\n"
            "assert not bad, bad\n"
            "print('OK')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
