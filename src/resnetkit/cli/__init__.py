"""The ``resnetkit`` command line: ``main(argv) -> int``.

Each sub-command lives in its own module of this package with two functions,
``add_parser(subparsers)`` and ``run(args) -> int``; this module only parses and dispatches.
A :class:`~resnetkit.errors.UserError` becomes one line on stderr and exit status 2.

The command modules import nothing heavy at module level, so ``--version`` and every ``--help``
answer without torch; each ``run`` imports its job's module when the command runs (lazy dispatch).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import warnings
from typing import Iterator, Sequence

from .. import _omp
from .._version import __version__
from .._io import os_error_cause
from ..errors import DataWarning, UserError, first_line
from . import (bench, calibrate, data, evaluate, experiment, explain, export, finetune, lr_find, models, predict,
               report, summary, train)

# Sub-command modules, in the order `resnetkit --help` lists them.
_MODULES = (train, lr_find, evaluate, predict, finetune, models, summary, data, export, bench, experiment,
            report, explain, calibrate)
COMMANDS = tuple(m.__name__.rsplit(".", 1)[1].replace("_", "-") for m in _MODULES)  # lr_find: lr-find


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnetkit",
        description="Residual networks: build, train, evaluate, predict, export.",
    )
    parser.add_argument("--version", action="version", version=f"resnetkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _MODULES:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # before any command imports torch: OpenMP reads its wait policy once, when it loads
    _omp.set_at_entry(force_default="--reprobe" in (sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with _one_line_warnings():
            return int(args.func(args) or 0)
    except UserError as e:
        print(f"resnetkit: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError as e:
        if _stdout_is_closed():
            # the reader went away (`resnetkit models | head`): stop quietly, as Unix tools do
            _silence_stdout()
            return 141
        print(f"resnetkit: error: {e}", file=sys.stderr)  # a pipe of something else broke
        return 1
    except OSError as e:
        # the machine refused a read or write no check foresaw (a disk filling up, a folder made
        # read-only mid-run): name the path and the cause, not the line of resnetkit that asked
        if e.errno is None:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"resnetkit: error: {where}{os.strerror(e.errno)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("resnetkit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - only OS failures wrapped by a non-Python writer
        cause = os_error_cause(e)  # safetensors' SafetensorError, torch.save's RuntimeError
        if cause is None:
            raise
        print(f"resnetkit: error: {cause} ({first_line(e)})", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Show resnetkit's own warnings (skipped images, class order) as one line each, without
    the file, line and source text of the code that raised them."""
    show = warnings.showwarning

    def one_line(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
        if issubclass(category, DataWarning):
            print(f"resnetkit: warning: {message}", file=sys.stderr)
        else:
            show(message, category, *args, **kwargs)  # type: ignore[arg-type]

    warnings.showwarning = one_line
    try:
        yield
    finally:
        warnings.showwarning = show


def _stdout_is_closed() -> bool:
    """Whether stdout's reader went away (the BrokenPipeError came from stdout, not another pipe).

    Flushing again is no test: once a write fails, the buffer has dropped its bytes and the next
    flush succeeds. So ask the pipe itself: poll(2) reports POLLERR (Linux) or POLLHUP (macOS)
    on a pipe's write end once its last reader has closed it; a file or terminal reports neither."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    except (OSError, ValueError):
        return False
    try:
        poller = select.poll()  # not on Windows: AttributeError
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both of the last two
        return False


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
