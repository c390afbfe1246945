"""Errors a user can cause. The CLI prints them as one line and exits with status 2."""
from __future__ import annotations


class UserError(Exception):
    """Bad input: a wrong flag, a missing file, a mismatched checkpoint.

    The message says what is wrong and what to do; it never needs a traceback.
    """
