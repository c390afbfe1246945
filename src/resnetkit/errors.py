"""Errors a user can cause. The CLI prints them as one line and exits with status 2."""
from __future__ import annotations


class UserError(Exception):
    """Bad input: a wrong flag, a missing file, a mismatched checkpoint.

    The message says what is wrong and what to do; it never needs a traceback.
    """


class DataWarning(UserWarning):
    """Something about the data the user should know: skipped files, a class order. The CLI
    shows it as one line, without the source line that raised it."""
