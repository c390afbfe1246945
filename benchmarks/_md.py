"""Shared by the benchmark scripts: rewrite one named section of a markdown file between
``<!-- NAME:start -->`` and ``<!-- NAME:end -->``, and the provenance line every section starts with."""
from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_section(old: str, name: str, text: str) -> str:
    """``old`` with the section ``name`` holding ``text``; appended at the end when absent."""
    start, end = markers(name)
    block = f"{start}\n{text}\n{end}"
    if start in old and end in old.split(start, 1)[1]:
        head, rest = old.split(start, 1)
        return head + block + rest.split(end, 1)[1]
    return (old.rstrip("\n") + "\n\n" if old else "") + block + "\n"


def write_section(path: Path, name: str, text: str) -> None:
    from resnetkit._io import write_text_atomic

    old = path.read_text(encoding="utf-8") if path.exists() else ""
    write_text_atomic(path, replace_section(old, name, text))


def provenance(cmd: str) -> str:
    """What a number belongs to: the exact command, the date, the CPU, its cores, torch, Python."""
    import torch

    from resnetkit.bench import cpu_model

    return (f"`{cmd}` on {datetime.date.today().isoformat()}: {cpu_model()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__.split('+')[0]}, Python {platform.python_version()}.")
