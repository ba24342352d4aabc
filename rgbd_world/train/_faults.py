"""Fault injection for the kill-and-resume tests: ``RGBD_TRAIN_KILL_AT=<where>:<step>``.

``where`` is "step" (after the optimizer step ``step``) or "save" (in the middle of writing the
checkpoint of ``step``). The process kills itself with SIGKILL, like ``kill -9``. Unset: no-op.
"""
from __future__ import annotations

import os
import signal


def maybe_crash(where: str, step: int) -> None:
    spec = os.environ.get("RGBD_TRAIN_KILL_AT")
    if spec and spec == f"{where}:{step}" and os.environ.get("RANK", "0") == "0":
        os.kill(os.getpid(), signal.SIGKILL)
