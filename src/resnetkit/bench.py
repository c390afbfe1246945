"""Training and inference throughput (images/s) of one network under each speed setting.

A setting is a precision (fp32, or bf16/fp16 autocast) x channels_last on/off x torch.compile
on/off. The timing loop is the speed probe's (:mod:`resnetkit.probe`): ``resnetkit bench`` and
``--precision auto`` time the same step. Each measurement runs on a fresh copy of the model with
fixed random inputs, excludes its warm-up steps (compilation, allocator and cuDNN autotuning
happen there) and synchronises the device before reading the clock, so queued GPU work is
counted. No step reads a value back to the host, as in the trainer.
"""
from __future__ import annotations

import os
import platform
from typing import Any, Sequence

import torch
from torch import nn

from . import probe
from .config import RunConfig
from .errors import UserError
from .models import create_model
from .probe import Setting, cpu_model, failure, prepare, time_steps
from .steps import timing_step


MODES = ("train", "infer")
WARMUP_STEPS = 3  # compilation and one-off allocations land here, never in the timed steps


def precisions_for(device: torch.device) -> list[str]:
    """fp32 everywhere; bf16 autocast on CPU and on GPUs that support it; fp16 on CUDA only
    (on CPU fp16 autocast has few fast kernels, and trains only with a GradScaler on CUDA)."""
    if device.type == "cuda":
        return ["fp32", *(["bf16"] if torch.cuda.is_bf16_supported() else []), "fp16"]
    if device.type == "cpu":
        return ["fp32", "bf16"]
    return ["fp32"]


def settings(device: torch.device, *, compile: bool = True) -> list[dict[str, Any]]:
    """Every (precision, channels_last, compile) combination to measure, fp32 eager first."""
    return [{"precision": p, "channels_last": cl, "compile": c}
            for p in precisions_for(device) for c in ((False, True) if compile else (False,))
            for cl in (False, True)]


def _check_size(input_size: Sequence[int]) -> None:
    if len(input_size) != 3 or min(input_size) < 1:
        raise UserError(f"input size must be three positive integers C,H,W, got {tuple(input_size)}")


def _check(input_size: Sequence[int], batch_size: int, mode: str, precision: str, steps: int,
           device: torch.device) -> None:
    _check_size(input_size)
    if batch_size < 1 or steps < 1:
        raise UserError(f"batch size and steps must be positive, got {batch_size} and {steps}")
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}; choose train or infer")
    if precision not in precisions_for(device):
        raise UserError(f"precision {precision!r} is not measured on {device.type}; "
                        f"choose one of {', '.join(precisions_for(device))}")


def _build(model: str | nn.Module, input_size: Sequence[int], model_args: dict[str, Any] | None
           ) -> nn.Module:
    """A registry name becomes a fresh 10-class network taking ``input_size[0]`` channels."""
    if isinstance(model, nn.Module):
        return model
    _check_size(input_size)
    return create_model(model, num_classes=10, in_chans=int(input_size[0]), **(model_args or {}))


def measure_throughput(model: str | nn.Module, input_size: Sequence[int], *, batch_size: int,
                       mode: str, precision: str, channels_last: bool, compile: bool, steps: int,
                       warmup: int = WARMUP_STEPS, device: torch.device | str = "cpu",
                       model_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Images/s of ``steps`` timed train or inference steps of one setting.

    ``model`` is a registry name (built with ``num_classes=10``, ``in_chans=C`` and
    ``model_args``) or a module, which is copied and left untouched. Returns the setting with
    ``images_per_s`` and ``seconds``; a setting that fails here (no C++ compiler for
    torch.compile, an unsupported kernel) returns ``images_per_s`` None and ``error``
    "failed: <one line>" instead of raising. Bad arguments or an unknown model raise UserError.
    """
    device = torch.device(device)
    _check(input_size, batch_size, mode, precision, steps, device)
    net = _build(model, input_size, model_args)
    row: dict[str, Any] = {"mode": mode, "precision": precision, "channels_last": channels_last,
                           "compile": compile, "batch_size": batch_size, "steps": steps,
                           "images_per_s": None, "seconds": None, "error": None}
    try:
        seconds = _timed(net, tuple(input_size), batch_size, mode, precision, channels_last, compile,
                         steps, device, warmup)
    except Exception as e:  # noqa: BLE001 - a setting this machine cannot run is a result, not a crash
        row["error"] = failure(e)
        return row
    row.update(seconds=round(seconds, 4), images_per_s=steps * batch_size / seconds)
    return row


def _timed(model: nn.Module, input_size: tuple[int, ...], batch_size: int, mode: str, precision: str,
           channels_last: bool, compile: bool, steps: int, device: torch.device, warmup: int) -> float:
    """The probe's timing loop (:func:`resnetkit.probe.time_steps`) on one setting."""
    setting = Setting(precision, channels_last, compile)
    step, x, y = prepare(model, input_size, batch_size, setting, mode, device, timing_step)
    time_steps(step, x, y, max(1, warmup), device)
    return time_steps(step, x, y, steps, device)


def bench_grid(model: str | nn.Module, input_size: Sequence[int], *, batch_size: int,
               modes: Sequence[str] = MODES, steps: int = 20, warmup: int = WARMUP_STEPS,
               device: torch.device | str = "cpu", compile: bool = True,
               model_args: dict[str, Any] | None = None, progress: Any = None) -> list[dict[str, Any]]:
    """measure_throughput for every mode x setting, each row with its ``speedup`` over fp32
    eager; ``progress(row)`` is called after each measurement."""
    device = torch.device(device)
    net = _build(model, input_size, model_args)  # an unknown name fails once, before any timing
    rows = []
    for mode in modes:
        for s in settings(device, compile=compile):
            row = measure_throughput(net, input_size, batch_size=batch_size, mode=mode, steps=steps,
                                     warmup=warmup, device=device, **s)
            rows.append(row)
            if progress is not None:
                progress(row)
    return add_speedups(rows)


def add_speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's ``speedup`` over fp32 eager (no channels_last, no compile) of its mode."""
    for row in rows:
        base = baseline(rows, row["mode"])
        ok = base is not None and base["images_per_s"] and row["images_per_s"]
        row["speedup"] = row["images_per_s"] / base["images_per_s"] if ok else None
    return rows


def baseline(rows: Sequence[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["mode"] == mode and r["precision"] == "fp32"
                 and not r["channels_last"] and not r["compile"]), None)


def fastest(rows: Sequence[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    measured = [r for r in rows if r["mode"] == mode and r["images_per_s"]]
    return max(measured, key=lambda r: r["images_per_s"], default=None)


def setting_name(row: dict[str, Any]) -> str:
    parts = [row["precision"]] + ["channels_last"] * row["channels_last"] + ["compile"] * row["compile"]
    return " + ".join(parts) if len(parts) > 1 else f"{parts[0]} eager"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table, then one "fastest" line per mode."""
    lines = [f"{'mode':5}  {'precision':9}  {'channels_last':13}  {'compile':7}  {'images/s':>10}  "
             f"{'vs fp32 eager':>13}"]
    for r in rows:
        speed = f"{r['images_per_s']:10,.0f}" if r["images_per_s"] else r["error"] or "n/a"
        ratio = f"{r['speedup']:12.2f}x" if r.get("speedup") else ""
        lines.append(f"{r['mode']:5}  {r['precision']:9}  {'yes' if r['channels_last'] else 'no':13}  "
                     f"{'yes' if r['compile'] else 'no':7}  {speed:>10}  {ratio:>13}".rstrip())
    for mode in dict.fromkeys(r["mode"] for r in rows):
        lines.append(fastest_line(rows, mode))
    return "\n".join(lines)


def fastest_line(rows: Sequence[dict[str, Any]], mode: str) -> str:
    best = fastest(rows, mode)
    if best is None:
        return f"fastest {mode}: none (every setting failed)"
    ratio = f", {best['speedup']:.2f}x fp32 eager" if best.get("speedup") else ""
    return f"fastest {mode}: {setting_name(best)} at {best['images_per_s']:,.0f} images/s{ratio}"


def environment(device: torch.device | str) -> dict[str, Any]:
    """The hardware and versions a throughput number belongs to."""
    device = torch.device(device)
    env = {"device": str(device), "cpu": cpu_model(), "cpu_cores": os.cpu_count(),
           "cpu_threads": torch.get_num_threads(), "torch_version": torch.__version__,
           "python_version": platform.python_version()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def reprobe(model: str, input_size: Sequence[int], batch_size: int, device: torch.device,
            model_args: dict[str, Any] | None = None) -> probe.Choice:
    """``resnetkit bench --reprobe``: the speed probe of a training run of ``model`` (a 10-class
    head, ``input_size[0]`` channels), measured now into the cache entry such a run reads, and on
    a CPU the OpenMP wait policy (``choice.wait_policy``)."""
    full = {"num_classes": 10, "in_chans": int(input_size[0]), **(model_args or {})}
    net = create_model(model, **full)
    choice = probe.choose(net, tuple(input_size), batch_size, device, precision="auto", channels_last=None,
                          compile=False, network=probe.network_key(RunConfig(model=model), full),
                          make_step=timing_step, reprobe=True)
    if device.type == "cpu":
        spec = {"model": model, "model_args": full, "input_size": list(input_size), "batch_size": batch_size,
                "precision": choice.precision, "channels_last": choice.channels_last}
        choice.wait_policy = probe.wait_policy_for_run(choice, spec, None, force=True)
    return choice
