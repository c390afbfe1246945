"""Device and numeric precision: the choices ``--device`` and ``--precision`` resolve to."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager, Iterator

import torch

from ..errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """auto: CUDA if available, else Apple MPS, else CPU. An unavailable device is a UserError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r}; choose auto, cpu, cuda, cuda:N or mps") from None
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
    if name not in ("fp32", "bf16", "fp16"):
        raise UserError(f"unknown --precision {name!r}; choose auto, fp32, bf16 or fp16")
    if name == "fp16" and device.type == "cpu":
        raise UserError("--precision fp16 needs a GPU; on CPU use bf16 or fp32")
    return Precision(name, device.type)


@contextlib.contextmanager
def cpu_threads(threads: int | None, device: torch.device) -> Iterator[None]:
    """Run with ``threads`` intra-op CPU threads (on a CPU device), then restore the previous
    count. The count is part of a run's config because it changes the order of float sums."""
    if not threads or device.type != "cpu" or threads == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
