"""The ``resnetkit`` command line: ``main(argv) -> int``.

Each sub-command lives in its own module of this package with two functions,
``add_parser(subparsers)`` and ``run(args) -> int``; this module only parses and dispatches.
A :class:`~resnetkit.errors.UserError` becomes one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from ..errors import UserError

# Sub-command modules, in the order `resnetkit --help` lists them.
COMMANDS = ("train", "evaluate", "predict", "finetune", "models", "summary", "data",
            "export", "bench", "experiment", "report", "explain", "calibrate")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="resnetkit",
        description="Residual networks: build, train, evaluate, predict, export.",
    )
    parser.add_argument("--version", action="version", version=f"resnetkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{name}":
                continue  # command not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"resnetkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resnetkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError as e:
        if _stdout_is_closed():
            # the reader went away (`resnetkit models | head`): stop quietly, as Unix tools do
            _silence_stdout()
            return 141
        print(f"resnetkit: error: {e}", file=sys.stderr)  # a pipe of something else broke
        return 1


def _stdout_is_closed() -> bool:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    except (OSError, ValueError):
        return False
    return False


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
