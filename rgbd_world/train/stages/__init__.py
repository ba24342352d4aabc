"""Training stages: ``tokenizer-rgb``, ``tokenizer`` (stage 1) and ``dit`` (stage 2)."""
from __future__ import annotations

from typing import Any

from ..distributed import DistInfo
from .base import Stage
from .dit import DiTStage
from .tokenizer import RGBTokenizerStage, TokenizerStage

STAGES: dict[str, type[Stage]] = {
    "tokenizer-rgb": RGBTokenizerStage,
    "tokenizer": TokenizerStage,
    "dit": DiTStage,
}


def build_stage(name: str, cfg: dict[str, dict[str, Any]], info: DistInfo) -> Stage:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; available: {sorted(STAGES)}")
    return STAGES[name](cfg, info)


__all__ = ["STAGES", "Stage", "build_stage"]
