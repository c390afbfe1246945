"""resnetkit: residual networks to build, train, evaluate, explain, predict with and export."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .config import RunConfig

if TYPE_CHECKING:  # what the lazy names below are, for type checkers and IDEs
    from .evaluation import evaluate
    from .models import create_model, list_models
    from .predict import load
    from .training import train

__all__ = ["__version__", "create_model", "list_models", "train", "load", "evaluate", "RunConfig"]

# The public API loads on first use, so `import resnetkit` and the CLI's --help stay without
# torch: name -> the module that defines it (PEP 562 module __getattr__). No submodule is named
# train or evaluate, so importing one never replaces these functions with a module.
_LAZY = {"create_model": ".models", "list_models": ".models", "train": ".training",
         "evaluate": ".evaluation", "load": ".predict"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'resnetkit' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
