"""The CUDA sources in csrc/cuda compile (nvcc, compile only): they run only on GPU machines,
so this is what catches a broken .cu on a machine without a GPU. Skipped without nvcc."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))


def _nvcc():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    candidates = [Path(home) / "bin" / "nvcc"] if home else []
    found = shutil.which("nvcc")
    return next((str(c) for c in candidates if c.exists()), found)


def test_there_are_cuda_sources():
    assert SOURCES, "csrc/cuda/*.cu is empty: setup.py would build no CUDA ops"


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles(source, tmp_path):
    include = Path(torch.__file__).parent / "include"
    stub = tmp_path / "stub"
    if not (include / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists():
        # CPU wheels of torch ship c10/cuda headers without this generated one
        macros = stub / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
        macros.parent.mkdir(parents=True)
        macros.write_text("#pragma once\n")
    cmd = [_nvcc(), "-std=c++17", "-c", str(source), "-o", str(tmp_path / "out.o"),
           "-I", str(ROOT / "csrc"), "-I", str(stub), "-I", str(include),
           "-I", str(include / "torch" / "csrc" / "api" / "include"), "-DRGBD_WITH_CUDA",
           "-gencode", "arch=compute_90,code=sm_90", "-diag-suppress", "3306"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "out.o").stat().st_size > 0
