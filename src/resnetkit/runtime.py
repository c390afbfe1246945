"""Device and numeric precision (what ``--device`` and ``--precision`` resolve to), CPU threads,
and the one timing loop that every images/s figure comes from."""
from __future__ import annotations

import contextlib
import statistics
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


@contextlib.contextmanager
def cpu_threads(threads: int | None, device: torch.device) -> Iterator[None]:
    """Run with ``threads`` intra-op CPU threads (on a CPU device), then restore the previous
    count, also where the block changed it (the speed probe's choice of a run without
    --threads). The count is part of a run's config because it changes the order of float sums."""
    before = torch.get_num_threads()
    if threads and device.type == "cpu" and threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
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
