"""resnetkit: residual networks to build, train, evaluate, explain, predict with and export."""
from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .config import RunConfig

__all__ = ["__version__", "create_model", "list_models", "train", "load", "evaluate", "RunConfig"]

# The public API loads on first use, so `import resnetkit` and the CLI's --help stay without
# torch: name -> the module that defines it (PEP 562 module __getattr__).
_LAZY = {"create_model": ".models", "list_models": ".models", "train": ".train",
         "evaluate": ".evaluate", "load": ".predict"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'resnetkit' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
