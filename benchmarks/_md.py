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


# The instruction sets that decide which precision is fast; "amx" is amx_tile or amx_bf16.
FLAGS = {"avx2": ("avx2",), "avx512f": ("avx512f",), "avx512_bf16": ("avx512_bf16",),
         "amx": ("amx_tile", "amx_bf16")}
_PEAKS: dict[str, float] = {}


def cpu_flags_text() -> str:
    """``avx2, avx512f; no avx512_bf16, amx``."""
    from resnetkit.probe import cpu_flags

    have = cpu_flags() or frozenset()
    yes = [name for name, alts in FLAGS.items() if any(a in have for a in alts)]
    no = [name for name in FLAGS if name not in yes]
    return ", ".join(yes) + (f"; no {', '.join(no)}" if no else "")


def matmul_peaks() -> dict[str, float]:
    """fp32 and bf16 matmul GFLOP/s of this machine, measured once per process."""
    if not _PEAKS:
        import torch

        from resnetkit.probe import matmul_gflops

        _PEAKS.update(fp32=matmul_gflops(torch.float32), bf16=matmul_gflops(torch.bfloat16))
    return _PEAKS


def provenance(cmd: str) -> str:
    """What a number belongs to: the exact command, the date, the CPU with its flags and matmul
    peaks, its cores, torch's threads, torch, Python."""
    import torch

    from resnetkit.probe import cpu_model

    peaks = matmul_peaks()
    return (f"`{cmd}` on {datetime.date.today().isoformat()}: {cpu_model()} ({cpu_flags_text()}), "
            f"{os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s), torch "
            f"{torch.__version__.split('+')[0]}, Python {platform.python_version()}. Matmul peak "
            f"(1024x1024, fastest of 1 s of products): fp32 {peaks['fp32']:,.1f} GFLOP/s, bf16 "
            f"{peaks['bf16']:,.1f} GFLOP/s.")
