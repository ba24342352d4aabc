"""Shared test fixtures: NaN-poisoned op outputs, fresh (reproducible) seeds, GPU skips."""
import os
import random
import zlib

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels run on CPU tensors through the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

from rgbd_kernels.testing import poisoned_outputs  # noqa: E402

# Fresh random inputs every run; RGBD_TEST_SEED=<n> replays a run.
SESSION_SEED = int(os.environ.get("RGBD_TEST_SEED", random.SystemRandom().randrange(2**31)))


def pytest_report_header(config):
    return f"rgbd test seed: RGBD_TEST_SEED={SESSION_SEED}"


@pytest.fixture(autouse=True)
def _poison_op_outputs():
    """Every output buffer rgbd_kernels allocates starts as NaN, so unwritten elements fail."""
    with poisoned_outputs():
        yield


@pytest.fixture(autouse=True)
def _seed(request):
    torch.manual_seed((SESSION_SEED ^ zlib.crc32(request.node.nodeid.encode())) % (2**31))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
