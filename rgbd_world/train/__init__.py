"""Training system: ``train.py`` under torchrun, for both stages (see README "Training")."""
from .config import (DataConfig, DiTStageConfig, OptimConfig, ParallelConfig, RunConfig,
                     TokenizerStageConfig, TrainConfig, load_config, load_stage_config)
from .trainer import TrainingDiverged, train

__all__ = ["load_config", "load_stage_config", "TrainConfig", "RunConfig", "DataConfig",
           "OptimConfig", "ParallelConfig", "TokenizerStageConfig", "DiTStageConfig", "train",
           "TrainingDiverged"]
