"""The run directory ``run.out_dir``: checked writable before anything runs, JSON files written
atomically, and ``metrics.jsonl`` trimmed back to a checkpoint on resume."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


def warn(message: str) -> None:
    """One line on stderr: something was wrong and was worked around."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def prepare_run_dir(out_dir: Path) -> None:
    """Create ``out_dir`` and check it takes files; a ValueError naming ``run.out_dir`` says why not
    (a path under a regular file, a read-only or full filesystem, no permission)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        blocker = next((p for p in [out_dir, *out_dir.parents] if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            why = f"{blocker} is a file, not a directory"
        else:
            why = f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
        raise ValueError(f"run.out_dir={os.fspath(out_dir)!r} cannot be used as the run "
                         f"directory: {why}") from None


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON through a temporary file and a rename: never half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=1, default=str))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when it is missing or unparsable."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def trim_metrics(path: Path, last_step: int) -> None:
    """Keep the lines of ``metrics.jsonl`` up to ``last_step`` (the checkpoint resumed from):
    lines a run logged after its last checkpoint go, and so does a line a kill cut short
    mid-append (a warning says how many such lines were dropped). Rewritten atomically."""
    if not path.exists():
        return
    keep, broken = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = record["step"]
        except (json.JSONDecodeError, TypeError, KeyError):
            broken += 1
            continue
        if isinstance(step, int) and step <= last_step:
            keep.append(line)
    if broken:
        warn(f"{path}: dropped {broken} unreadable line(s) (a write cut short by a kill); "
             "those steps are logged again")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
