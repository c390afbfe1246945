"""Small shared helpers: the data warning category and file-list summaries."""
from __future__ import annotations

import warnings
from typing import Sequence

from ..errors import DataWarning

__all__ = ["DataWarning", "summarize_names", "warn"]


_seen: set[str] = set()


def warn(message: str, *, once: bool = False) -> None:
    if once:
        if message in _seen:
            return
        _seen.add(message)
    warnings.warn(message, DataWarning, stacklevel=3)


def summarize_names(names: Sequence[str], first: int = 5) -> str:
    """'a, b, c and 7 more' - the first few names of a list and how many were left out."""
    shown = ", ".join(names[:first])
    rest = len(names) - first
    return f"{shown} and {rest} more" if rest > 0 else shown
