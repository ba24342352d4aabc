"""Training system: ``train.py`` under torchrun, for both stages (see README "Training")."""
from .config import load_config
from .trainer import TrainingDiverged, train

__all__ = ["load_config", "train", "TrainingDiverged"]
