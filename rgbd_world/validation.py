"""Argument validation shared by the Python API and the ``rgbd-world`` CLI.

Bad input raises :class:`InvalidArgument` (a ``ValueError``) naming the argument, the value and
what is allowed. The CLI prints it as one line with the argument's command-line flag and exits
with code 2. Nothing here imports models or training code (the data layer uses it too).
"""
from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

__all__ = ["InvalidArgument", "check_int", "check_finite", "check_seed", "check_device",
           "check_choice", "check_output_dir", "process_alive"]


class InvalidArgument(ValueError):
    """``argument`` got ``value``; ``allowed`` says what it accepts (``reason``: what was wrong,
    when not obvious from the value)."""

    def __init__(self, argument: str, value, allowed: str, reason: str | None = None):
        self.argument, self.value, self.allowed, self.reason = argument, value, allowed, reason
        super().__init__(self.format(argument))

    def __reduce__(self):  # survives pickling (worker processes re-raise it in the parent)
        return type(self), (self.argument, self.value, self.allowed, self.reason)

    def format(self, name: str) -> str:
        """The one-line message, with the argument called ``name`` (e.g. its CLI flag)."""
        text = f"{name}={self.value!r}" + (f": {self.reason}" if self.reason else "")
        return " ".join(f"{text} (allowed: {self.allowed})".split())


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None,
              allow_none: bool = False):
    """``value`` as an int in [minimum, maximum]; a bool, float or string is refused (0 is
    never read as "default": pass None for that, with ``allow_none``)."""
    if value is None and allow_none:
        return None
    if maximum is None:
        allowed = "an integer" + ("" if minimum is None else f" >= {minimum}")
    else:
        allowed = f"an integer <= {maximum}" if minimum is None \
            else f"an integer in [{minimum}, {maximum}]"
    allowed += " (or None for the default)" if allow_none else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgument(name, value, allowed)
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise InvalidArgument(name, value, allowed)
    return value


def check_finite(name: str, value, allow_none: bool = False, minimum: float | None = None):
    """``value`` as a finite float (>= ``minimum``); NaN, inf, bools and strings are refused."""
    if value is None and allow_none:
        return None
    allowed = "a finite number" + (f" >= {minimum}" if minimum is not None else "") \
        + (" (or None for the default)" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(float(value)) or (minimum is not None and value < minimum):
        raise InvalidArgument(name, value, allowed)
    return float(value)


def check_seed(value, name: str = "seed") -> int:
    """A seed for ``torch.Generator.manual_seed``: an integer in [0, 2**64 - 1]."""
    return check_int(name, value, 0, 2 ** 64 - 1)


def check_choice(name: str, value, choices) -> object:
    if value not in choices:
        raise InvalidArgument(name, value, "one of " + ", ".join(map(repr, choices)))
    return value


def check_device(value, name: str = "device") -> str:
    """A torch device string that can run here ("cpu", "cuda", "cuda:1", ...)."""
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise InvalidArgument(name, value, "a torch device such as 'cpu' or 'cuda:0'") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InvalidArgument(name, value, "'cpu'", "CUDA is not available here")
        if device.index is not None and device.index >= count:
            raise InvalidArgument(name, value, f"'cpu' or 'cuda:0'..'cuda:{count - 1}'",
                                  f"{count} CUDA devices here")
    elif device.type not in ("cpu", "cuda", "mps", "xpu", "meta"):
        raise InvalidArgument(name, value, "'cpu' or 'cuda[:i]'")
    return str(value)


def check_output_dir(name: str, path: str | os.PathLike) -> Path:
    """``path`` can be a directory we create or write into: not a file, no file among its
    parents, its nearest existing parent writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InvalidArgument(name, str(path), "a directory (this is a file)")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InvalidArgument(name, str(path), "a directory path", f"{probe} is a file")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise InvalidArgument(name, str(path), "a writable location", f"{probe} is not writable")
    return path


def process_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True
