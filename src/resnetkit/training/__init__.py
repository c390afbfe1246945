"""Training: ``train(cfg) -> TrainResult``, recipes, optimisers, fine-tuning, data parallelism."""
from __future__ import annotations

from .api import train
from .trainer import Trainer, TrainingDiverged, TrainResult

__all__ = ["train", "Trainer", "TrainResult", "TrainingDiverged"]
