"""Device and numeric precision (what ``--device`` and ``--precision`` resolve to), CPU threads,
and the one timing loop that every images/s figure comes from."""
from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator

import torch

from .config import check_choice
from .errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """auto: CUDA if available, else Apple MPS, else CPU. An unavailable device is a UserError."""
    check_choice("device", name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    if device.type == "mps" and not _mps_available():
        raise UserError("--device mps: Apple MPS is not available here; use --device cpu or auto")
    return device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


@dataclass(frozen=True)
class Precision:
    """The resolved ``--precision``: autocast dtype (None: plain fp32) and whether fp16 needs
    a GradScaler (bf16 has fp32's exponent range, so its gradients do not underflow)."""

    name: str  # fp32 | bf16 | fp16
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    @property
    def needs_scaler(self) -> bool:
        return self.name == "fp16" and self.device_type == "cuda"

    def autocast(self) -> ContextManager[object]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device_type) if self.needs_scaler else None


def resolve_precision(name: str, device: torch.device) -> Precision:
    """auto: bf16 on CUDA where supported (Ampere and later), else fp16 with loss scaling;
    fp32 on CPU and MPS. Training resolves auto on a CPU by measurement first (resnetkit.probe)."""
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            name = "fp32"
    check_choice("precision", name)
    if name == "fp16" and device.type == "cpu":
        raise UserError("--precision fp16 needs a GPU; on CPU use bf16 or fp32")
    return Precision(name, device.type)


# glibc's mallopt parameters (malloc.h) and the values resnetkit sets: PyTorch's CPU allocator
# frees each activation after use, and glibc hands large blocks back to the kernel (above its mmap
# threshold, or as the heap's top is trimmed), so the next step takes page faults to get them back:
# thousands per training step of a small net, 10-15% of its time. Keeping freed memory in the
# process is what the allocators PyTorch's CPU tuning guides preload (jemalloc, tcmalloc) do.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
TRIM_THRESHOLD = 2**31 - 1  # never trim the heap's top
MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit: blocks up to 32 MiB come from the heap
ALLOCATOR_OPT_OUT = "RESNETKIT_SYSTEM_MALLOC"
_ALLOCATOR: dict[str, str] = {}


def keep_freed_memory() -> str:
    """Tune glibc's malloc to keep freed memory for reuse, once per process, and say what the
    allocator is: "kept" (tuned here), or why not: "preloaded" (LD_PRELOAD names jemalloc,
    tcmalloc or mimalloc), "env" (RESNETKIT_SYSTEM_MALLOC=1, or glibc's thresholds set through
    MALLOC_TRIM_THRESHOLD_, MALLOC_MMAP_THRESHOLD_ or GLIBC_TUNABLES), "not glibc". The process
    then holds its peak heap until it exits, which a training run does anyway."""
    if not _ALLOCATOR:
        _ALLOCATOR["state"] = _tune_allocator()
    return _ALLOCATOR["state"]


def _tune_allocator() -> str:
    env = os.environ
    if any(name in env.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return "preloaded"
    tunables = env.get("GLIBC_TUNABLES", "")
    if (env.get(ALLOCATOR_OPT_OUT, "0") not in ("", "0") or "MALLOC_TRIM_THRESHOLD_" in env or "MALLOC_MMAP_THRESHOLD_" in env
            or "trim_threshold" in tunables or "mmap_threshold" in tunables):
        return "env"
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    try:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        ok = 0
    return "kept" if ok else "not glibc"


@contextlib.contextmanager
def cpu_threads(threads: int | None, device: torch.device) -> Iterator[None]:
    """Run with ``threads`` intra-op CPU threads (on a CPU device), then restore the previous
    count. The count is part of a run's config because it changes the order of float sums.
    On a CPU it also keeps freed memory in the process (:func:`keep_freed_memory`)."""
    if device.type == "cpu":
        keep_freed_memory()
    if not threads or device.type != "cpu" or threads == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------ timing
def sync(device: torch.device | str | None) -> None:
    """Wait for the work queued on ``device`` (CUDA and MPS run asynchronously; CPU does not)."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device is not None and device.type == "mps":
        torch.mps.synchronize()


def timed(fn: Callable[[], Any], *, steps: int = 1, min_seconds: float = 0.0, warmup: int = 0,
          device: torch.device | str | None = None) -> tuple[int, float]:
    """(calls, seconds) of ``fn()`` repeated at least ``steps`` times and for at least
    ``min_seconds``, after ``warmup`` untimed calls. The device is synchronised before each read
    of the clock, so queued GPU work is counted."""
    for _ in range(warmup):
        fn()
    sync(device)
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        if n >= steps:
            sync(device)
            seconds = time.perf_counter() - start
            if seconds >= min_seconds:
                return n, seconds


def images_per_second(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, *, runs: int = 3,
                      min_seconds: float = 0.2, warmup: int = 1) -> float:
    """Median over ``runs`` of images/s; each run repeats ``fn(x)`` for at least ``min_seconds``."""
    for _ in range(warmup):
        fn(x)
    rates = []
    for _ in range(runs):
        n, seconds = timed(lambda: fn(x), min_seconds=min_seconds)
        rates.append(n * len(x) / seconds)
    return statistics.median(rates)
