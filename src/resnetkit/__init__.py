"""resnetkit: residual networks to build, train, evaluate, explain, predict with and export."""
from __future__ import annotations

from typing import Any

from ._version import __version__
from .config import RunConfig

__all__ = ["__version__", "create_model", "list_models", "train", "load", "evaluate", "RunConfig"]


def __getattr__(name: str) -> Any:
    # The public API loads on first use: `import resnetkit` and the CLI's --help stay without torch.
    if name in ("create_model", "list_models"):
        from . import models  # lazy public API: torch loads on first use

        return getattr(models, name)
    if name == "train":
        from .train import train  # lazy public API: torch loads on first use

        return train
    if name == "evaluate":
        from .evaluate import evaluate  # lazy public API: torch loads on first use

        return evaluate
    if name == "load":
        from .predict import load  # lazy public API: torch loads on first use

        return load
    raise AttributeError(f"module 'resnetkit' has no attribute {name!r}")
