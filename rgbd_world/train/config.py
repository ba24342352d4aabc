"""Training configs: TOML files in ``rgbd_world/configs/`` (shipped with the package) plus dotted command-line overrides.

``load_config("tiny-cpu", ["optim.lr=3e-4", "run.steps=50"])`` reads the shipped ``tiny-cpu.toml``
(or any path to a .toml file), applies the overrides (values parsed as TOML: numbers, booleans,
strings, lists) and checks every key against :data:`DEFAULTS` and every number against
:data:`RANGES`, so a typo or an impossible value is an error that names the key and the value
instead of a silently ignored setting or a crash mid-run.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rgbd_world.package_data import config_dir

CONFIG_DIR = config_dir()   # rgbd_world/configs, shipped with the package

# ----------------------------------------------------------------------------- typed sections
# One dataclass per section (and per stage for the model keys): the source of every key, its
# type and its default. A TOML file may set the keys of both stages under [model] (one file
# serves every stage); a stage is handed only its own (:class:`TrainConfig`).

@dataclass
class RunConfig:
    out_dir: str = "runs/default"
    steps: int = 1000
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 500
    keep_checkpoints: int = 2          # 0: keep every checkpoint
    sample_every: int = 0              # 0: no samples
    device: str = "auto"               # "auto" | "cpu" | "cuda"
    max_consecutive_nonfinite: int = 5  # 0: never stop on skipped steps


@dataclass
class DataConfig:
    source: str = "synthetic"          # "synthetic", "shards", "latents" or a reader format
    root: str = ""
    num_clips: int = 64
    frames: int = 9
    height: int = 64
    width: int = 64
    batch_size: int = 2
    num_workers: int = 0
    flip: bool = True
    mix: list = field(default_factory=list)   # [[directory, weight], ...]


@dataclass
class OptimConfig:
    lr: float = 1e-3
    betas: list = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.999


@dataclass
class ParallelConfig:
    strategy: str = "ddp"              # "ddp" | "fsdp"
    precision: str = "auto"            # "auto" | "bf16" | "fp32"
    compile: bool = False
    activation_checkpointing: bool = False
    fp8: bool = False


@dataclass
class LossConfig:
    """Stage-1 loss weights (section [loss])."""
    rgb_l1: float = 1.0
    disparity_l1: float = 1.0
    gradient_matching: float = 0.5
    boundary: float = 0.0
    distill: float = 0.1
    perceptual: float = 0.0


@dataclass
class TokenizerStageConfig:
    """``tokenizer`` / ``tokenizer-rgb``: its [model] keys and the [loss] section."""
    preset: str = "tiny"
    geometry_channels: int = 0
    teacher: str = ""
    perceptual_net: str = ""
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass
class DiTStageConfig:
    """``dit``: its [model] keys."""
    dit_preset: str = "tiny"
    text_encoder: str = "byte"
    tokenizer: str = ""
    rgb_tokenizer: str = ""
    init: str = ""


def _model_keys(stage_cls) -> dict[str, Any]:
    return {f.name: getattr(stage_cls(), f.name) for f in dataclasses.fields(stage_cls)
            if f.name != "loss"}


# Every key a config may set, with its default (derived from the dataclasses above).
DEFAULTS: dict[str, dict[str, Any]] = {
    "run": dataclasses.asdict(RunConfig()),
    "data": dataclasses.asdict(DataConfig()),
    "model": {**_model_keys(TokenizerStageConfig), **_model_keys(DiTStageConfig)},
    "optim": dataclasses.asdict(OptimConfig()),
    "parallel": dataclasses.asdict(ParallelConfig()),
    "loss": dataclasses.asdict(LossConfig()),
}


# Keys whose value must be one of a few names.
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("parallel", "strategy"): ("ddp", "fsdp"),
    ("parallel", "precision"): ("auto", "bf16", "fp32"),
    ("run", "device"): ("auto", "cpu", "cuda"),
}


def _within(low: float, high: float = math.inf, *, open_low: bool = False,
            open_high: bool = False):
    """(test, description) of a number in [low, high] (ends open when asked); NaN never fits."""
    def test(v) -> bool:
        return (v > low if open_low else v >= low) and (v < high if open_high else v <= high) \
            and not math.isnan(v)
    lo = f"> {low}" if open_low else f">= {low}"
    if high == math.inf:
        desc = f"a finite number {lo}" if open_high else lo
    else:
        desc = f"{lo} and {'<' if open_high else '<='} {high}"
    return test, desc


_POSITIVE, _NONNEG = _within(1), _within(0)
_FINITE_NONNEG = _within(0, open_high=True)

# Numeric keys and the values they accept (a value outside is a ConfigError naming the key).
RANGES: dict[str, tuple[Any, str]] = {
    "run.steps": _POSITIVE, "run.seed": _NONNEG, "run.log_every": _POSITIVE,
    "run.ckpt_every": _POSITIVE, "run.keep_checkpoints": _within(0),  # 0: keep every checkpoint
    "run.sample_every": _NONNEG,  # 0: no samples
    "run.max_consecutive_nonfinite": _NONNEG,  # 0: never stop on skipped steps
    "data.num_clips": _POSITIVE, "data.frames": _POSITIVE, "data.height": _POSITIVE,
    "data.width": _POSITIVE, "data.batch_size": _POSITIVE, "data.num_workers": _NONNEG,
    "optim.lr": _within(0, open_low=True, open_high=True),
    "optim.weight_decay": _FINITE_NONNEG, "optim.warmup_steps": _NONNEG,
    "optim.min_lr_ratio": _within(0, 1), "optim.grad_clip": _within(0, open_low=True),
    "optim.ema_decay": _within(0, 1),
    **{f"loss.{k}": _FINITE_NONNEG for k in ("rgb_l1", "disparity_l1", "gradient_matching", "boundary",
                                             "distill", "perceptual")},
}


__all__ = ["load_config", "load_stage_config", "validate_config", "ConfigError", "DEFAULTS",
           "TrainConfig", "RunConfig", "DataConfig", "OptimConfig", "ParallelConfig",
           "LossConfig", "TokenizerStageConfig", "DiTStageConfig", "STAGE_CONFIGS"]


class ConfigError(ValueError):
    """A config file or override that does not fit :data:`DEFAULTS`."""


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string


def _resolve_path(name: str) -> Path:
    path = Path(name)
    if path.suffix == ".toml" and path.exists():
        return path
    candidate = CONFIG_DIR / f"{name}.toml"
    if candidate.exists():
        return candidate
    presets = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
    raise ConfigError(f"config {name!r} not found: give a .toml path or one of {presets}")


def _merge(base: dict, update: dict, where: str) -> None:
    for key, value in update.items():
        if key not in base:
            raise ConfigError(f"unknown config key '{where}{key}'; known: {sorted(base)}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{where}{key}' is a section, got {value!r}")
            _merge(base[key], value, f"{where}{key}.")
        else:
            default = base[key]
            ok = (isinstance(value, bool) if isinstance(default, bool)
                  else isinstance(value, (int, float)) and not isinstance(value, bool)
                  if isinstance(default, float)
                  else isinstance(value, int) and not isinstance(value, bool)
                  if isinstance(default, int)
                  else isinstance(value, type(default)))
            if not ok:
                kind = {"bool": "a bool", "int": "an int", "float": "a number", "str": "a string",
                        "list": "a list"}.get(type(default).__name__, type(default).__name__)
                raise ConfigError(f"config key '{where}{key}' takes {kind} (like {default!r}), "
                                  f"got {value!r}")
            choices = CHOICES.get(tuple(f"{where}{key}".split(".")))
            if choices and value not in choices:
                raise ConfigError(f"config key '{where}{key}' must be one of {choices}, got "
                                  f"{value!r}")
            base[key] = value


def validate_config(cfg: dict[str, dict[str, Any]]) -> None:
    """Check values, not only types: the ranges of :data:`RANGES` and ``optim.betas`` (two
    numbers in [0, 1)). Raises :class:`ConfigError` naming the key and the value."""
    for dotted, (test, desc) in RANGES.items():
        section, key = dotted.split(".")
        value = cfg.get(section, {}).get(key)
        if value is not None and not test(value):
            raise ConfigError(f"config key '{dotted}' must be {desc}, got {value!r}")
    mix = cfg.get("data", {}).get("mix")
    if mix:
        for item in mix:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                    and item[0] and isinstance(item[1], (int, float))
                    and not isinstance(item[1], bool) and math.isfinite(item[1]) and item[1] > 0):
                raise ConfigError("config key 'data.mix' must be a list of [directory, weight] "
                                  f"pairs with weights > 0 like [[\"data/synth\", 0.5], "
                                  f"[\"data/pseudo\", 0.5]], got {mix!r}")
    betas = cfg.get("optim", {}).get("betas")
    if betas is not None and not (
            isinstance(betas, list) and len(betas) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                    for b in betas)):
        raise ConfigError(f"config key 'optim.betas' must be two numbers in [0, 1) like "
                          f"[0.9, 0.99], got {betas!r}")


def load_config(name: str, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """The merged config: defaults <- file <- ``section.key=value`` overrides, checked by
    :func:`validate_config`."""
    cfg = copy.deepcopy(DEFAULTS)
    path = _resolve_path(name)
    with open(path, "rb") as f:
        _merge(cfg, tomllib.load(f), "")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, text = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) != 2:
            raise ConfigError(f"override key {dotted!r} must be section.key (e.g. optim.lr)")
        _merge(cfg, {parts[0]: {parts[1]: _parse_value(text.strip())}}, "")
    validate_config(cfg)
    return cfg


# ----------------------------------------------------------------------------- per stage

STAGE_CONFIGS: dict[str, type] = {"tokenizer-rgb": TokenizerStageConfig,
                                  "tokenizer": TokenizerStageConfig, "dit": DiTStageConfig}


@dataclass
class TrainConfig:
    """What one stage trains with: the shared sections and its own model config only.

    ``TrainConfig.from_dict(stage, cfg)`` takes :func:`load_config`'s dict (checked strictly
    again: unknown keys, wrong types, values out of range); ``to_dict()`` gives the nested dict
    the trainer and ``config.json`` use, whose [model] (and, for stage 1, [loss]) hold only this
    stage's keys."""
    stage: str
    run: RunConfig
    data: DataConfig
    optim: OptimConfig
    parallel: ParallelConfig
    model: TokenizerStageConfig | DiTStageConfig

    @classmethod
    def from_dict(cls, stage: str, cfg: dict[str, dict[str, Any]]) -> "TrainConfig":
        if stage not in STAGE_CONFIGS:
            raise ConfigError(f"unknown stage {stage!r}; available: {sorted(STAGE_CONFIGS)}")
        merged = copy.deepcopy(DEFAULTS)
        _merge(merged, cfg, "")
        validate_config(merged)
        stage_cls = STAGE_CONFIGS[stage]
        model = stage_cls(**{k: merged["model"][k] for k in _model_keys(stage_cls)})
        if stage_cls is TokenizerStageConfig:
            model.loss = LossConfig(**merged["loss"])
        return cls(stage=stage, run=RunConfig(**merged["run"]), data=DataConfig(**merged["data"]),
                   optim=OptimConfig(**merged["optim"]),
                   parallel=ParallelConfig(**merged["parallel"]), model=model)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        out = {name: dataclasses.asdict(getattr(self, name))
               for name in ("run", "data", "optim", "parallel")}
        model = dataclasses.asdict(self.model)
        loss = model.pop("loss", None)
        out["model"] = model
        if loss is not None:
            out["loss"] = loss
        return out


def load_stage_config(stage: str, name: str,
                      overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """:func:`load_config` typed for ``stage`` (only that stage's model keys)."""
    return TrainConfig.from_dict(stage, load_config(name, overrides))
