"""Optional libraries behind the attention backends (Transformer Engine, flash-attn), imported
on first use only, and the one-time warnings the fallbacks give.

* :func:`optional_module` -- a module, or None when it is not installed or does not import
  (the import error is kept: :func:`missing_reason` reports it).
* :func:`transformer_engine` / :func:`flash_attn` -- ``transformer_engine.pytorch`` /
  ``flash_attn``, or None.
* :func:`missing_reason` -- why "te" or "flash" cannot run, with the install command.
* :func:`te_fp8_recipe` / :func:`te_autocast` -- the FP8 recipe and Transformer Engine's
  autocast context (``te.autocast`` on TE >= 2.8, else ``te.fp8_autocast``).
* :func:`warn_once` -- a RuntimeWarning given once per message per process.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import warnings

__all__ = ["INSTALL_HINTS", "IMPORT_ERRORS", "optional_module", "missing_reason",
           "transformer_engine", "flash_attn", "te_fp8_recipe", "te_autocast", "warn_once",
           "WARNED"]

INSTALL_HINTS = {
    "te": "transformer-engine is not installed: pip install 'rgbd-world[fp8]' "
          "(transformer-engine[pytorch]; needs a CUDA build of torch)",
    "flash": "flash-attn is not installed: pip install 'rgbd-world[flash]' --no-build-isolation "
             "(flash-attn; needs a CUDA build of torch)",
}

IMPORT_ERRORS: dict[str, str] = {}


@functools.lru_cache(maxsize=None)
def optional_module(name: str):
    """``importlib.import_module(name)``, or None when not installed or broken (the error is
    recorded in :data:`IMPORT_ERRORS`)."""
    if importlib.util.find_spec(name.split(".")[0]) is None:
        return None
    try:
        return importlib.import_module(name)
    except Exception as err:  # a broken install (e.g. CUDA mismatch): unusable, and say why
        IMPORT_ERRORS[name] = f"{type(err).__name__}: {err}"
        return None


def missing_reason(backend: str) -> str:
    """Why ``backend`` ("te" / "flash") is unavailable: not installed, or its import error."""
    name = {"te": "transformer_engine.pytorch", "flash": "flash_attn"}[backend]
    if name in IMPORT_ERRORS:
        return f"{name} is installed but does not import ({IMPORT_ERRORS[name]})"
    return INSTALL_HINTS[backend]


def transformer_engine():
    """``transformer_engine.pytorch``, or None."""
    return optional_module("transformer_engine.pytorch")


def flash_attn():
    """``flash_attn``, or None."""
    return optional_module("flash_attn")


WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """A RuntimeWarning with ``message``, the first time only (per process)."""
    if message not in WARNED:
        WARNED.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


@functools.lru_cache(maxsize=1)
def te_fp8_recipe():
    """The DelayedScaling recipe used for FP8 attention (HYBRID format, fp8_dpa=True: FP8
    inside the attention kernel, not only the linears). One object for the process."""
    from transformer_engine.common import recipe

    return recipe.DelayedScaling(fp8_format=recipe.Format.HYBRID, amax_history_len=16,
                                 amax_compute_algo="max", fp8_dpa=True)


def te_autocast(fp8: bool):
    """Transformer Engine's autocast context with FP8 ``fp8`` (the :func:`te_fp8_recipe`)."""
    te = transformer_engine()
    if hasattr(te, "autocast"):  # TE >= 2.8
        return te.autocast(enabled=fp8, recipe=te_fp8_recipe() if fp8 else None)
    return te.fp8_autocast(enabled=fp8, fp8_recipe=te_fp8_recipe() if fp8 else None)
