"""Errors a user can cause. The CLI prints them as one line and exits with status 2."""
from __future__ import annotations

import re


class UserError(Exception):
    """Bad input: a wrong flag, a missing file, a mismatched checkpoint.

    The message says what is wrong and what to do; it never needs a traceback.
    """


def first_line(e: BaseException, limit: int = 200) -> str:
    """The gist of an exception for a one-line message: its first line (for torch.load, the
    reason after "WeightsUnpickler error"), at most ``limit`` characters; its type name when
    it says nothing."""
    text = str(e)
    inner = re.search(r"WeightsUnpickler error: ?\s*(\S.*)", text)
    line = (inner.group(1) if inner else text.strip().split("\n")[0] if text.strip() else "").strip()
    return (line[:limit] if line else type(e).__name__).rstrip(".")


class DataWarning(UserWarning):
    """Something about the data the user should know: skipped files, a class order. The CLI
    shows it as one line, without the source line that raised it."""
