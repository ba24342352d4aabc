"""Atomic writes: files and directories appear complete under their final name, or not at all.

One helper for every writer (data shards, training checkpoints, saved models, output sets):

* :func:`temporary_path` -- this process's temporary name beside a target,
  ``.<name>.tmp-<pid>@<host>``; readers never match it, concurrent writers never collide.
* :func:`write_text_atomic` -- a text file through a temporary file and ``os.replace``.
* :func:`replace_directory` -- a finished temporary directory swapped in for the target in one
  step (Linux ``renameat2(RENAME_EXCHANGE)``, else two renames).
* :func:`atomic_directory` -- a context manager yielding an empty temporary directory that
  replaces the target when the block ends without an exception (deleted otherwise).
* :func:`fsync_tree` / :func:`fsync_dir` -- durability before a rename (training checkpoints).
* :func:`remove_stale_temporaries` -- deletes leftovers of interrupted writers that no longer run;
  another live writer's temporaries are left alone.

Knows no other module of the package except :mod:`rgbd_world.validation` (``process_alive``).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import sys
from pathlib import Path
from typing import Iterator

from rgbd_world.validation import process_alive

__all__ = ["temporary_path", "temporary_owner_gone", "writers_in_flight", "remove_stale_temporaries",
           "write_text_atomic", "replace_directory", "atomic_directory", "fsync_tree", "fsync_dir"]

_HOST = socket.gethostname().replace("/", "_")
_TMP_PATTERN = re.compile(r"\.tmp-(\d+)(?:@(.*?))?(?:\.old)?$")


def temporary_path(path: Path) -> Path:
    """This process's temporary name for ``path`` (``.<name>.tmp-<pid>@<host>``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}@{_HOST}")


def _temporary_owner(path: Path) -> tuple[int, str | None] | None:
    """(pid, host) of a temporary's writer (host None for names without one), None if ``path``
    is not a temporary."""
    m = _TMP_PATTERN.search(path.name)
    return None if m is None else (int(m.group(1)), m.group(2))


def temporary_owner_gone(path: Path) -> bool:
    """Whether the process that owns the temporary ``path`` is gone (its pid no longer runs on
    this host). Temporaries of another host are never judged gone: their writer may still run."""
    owner = _temporary_owner(path)
    if owner is None or (owner[1] is not None and owner[1] != _HOST):
        return False
    return owner[0] != os.getpid() and not process_alive(owner[0])


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename (no temporary
    is left behind on failure)."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def writers_in_flight(out_dir: Path) -> list[Path]:
    """Temporaries in ``out_dir`` whose writer still runs (another process is writing there)."""
    mine = (os.getpid(), _HOST)
    return sorted(p for p in out_dir.glob(".*.tmp-*") if _temporary_owner(p) not in (None, mine)
                  and not temporary_owner_gone(p))


def remove_stale_temporaries(out_dir: Path, prefix: str = ".") -> list[Path]:
    """Delete ``<prefix>*.tmp-*`` leftovers of interrupted writes (never matched by readers)
    whose writer is gone; another writer's in-flight temporaries are left alone."""
    stale = sorted(p for p in out_dir.glob(".*.tmp-*")
                   if p.name.startswith(prefix) and temporary_owner_gone(p))
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE); False when the
    platform or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        at_fdcwd, rename_exchange = -100, 2
        rc = libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    except (OSError, AttributeError):
        return False
    return rc == 0


def replace_directory(tmp: Path, out: Path) -> None:
    """Put the finished directory ``tmp`` at ``out`` in one step; the old ``out`` is deleted."""
    if not out.exists():
        os.rename(tmp, out)
        return
    if _exchange(tmp, out):              # out is the new set now, tmp holds the old one
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = tmp.with_name(tmp.name + ".old")
    os.rename(out, old)                  # fallback: two renames (a tiny window without out)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def fsync_dir(directory: Path) -> None:
    """fsync a directory (its entries: a rename into it is durable)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    """fsync every file directly in ``directory`` and the directory itself."""
    for f in Path(directory).iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    with contextlib.suppress(OSError):
        fsync_dir(directory)


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_directory(out) as tmp:`` write files into ``tmp`` (an empty directory of this
    process); on success ``tmp`` replaces ``out`` in one step, on an exception it is deleted and
    ``out`` is untouched. Stale temporaries of ``out`` left by dead writers are removed first."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out.parent, prefix=f".{out.name}.tmp-")
    tmp = temporary_path(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        replace_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
