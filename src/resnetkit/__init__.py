"""resnetkit: residual networks to build, train, evaluate, explain, predict with and export."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models", "train", "load", "evaluate", "RunConfig"]


def __getattr__(name: str) -> Any:
    # Lazy so that `import resnetkit` and `resnetkit --help` stay fast (torch loads on first use).
    if name in ("create_model", "list_models"):
        from . import models

        return getattr(models, name)
    if name == "RunConfig":
        from .config import RunConfig

        return RunConfig
    if name == "train":
        from .train import train

        return train
    if name == "evaluate":
        from .evaluate import evaluate

        return evaluate
    if name == "load":
        from .predict import load

        return load
    raise AttributeError(f"module 'resnetkit' has no attribute {name!r}")
