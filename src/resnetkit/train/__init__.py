"""Training: ``train(cfg) -> TrainResult``, recipes, optimisers, steps, fine-tuning, data parallelism."""
from __future__ import annotations

import sys
import types
from typing import Any

from .api import train
from .trainer import Trainer, TrainingDiverged, TrainResult

__all__ = ["train", "Trainer", "TrainResult", "TrainingDiverged"]


class _CallableModule(types.ModuleType):
    # Importing this package sets the attribute ``resnetkit.train`` to the package itself,
    # shadowing the function of the same name that ``resnetkit/__init__`` exposes lazily;
    # calling the package calls the function, so ``resnetkit.train(...)`` always works.
    def __call__(self, *args: Any, **kwargs: Any) -> TrainResult:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
