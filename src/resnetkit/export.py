"""Export a network to ONNX or TorchScript with its classes and preprocessing inside the file.

The file format (metadata both ways) and the engines that run exported files live in
:mod:`resnetkit.backends`; this module writes the files and checks each against eager PyTorch.

ONNX goes through the torch.export-based exporter (``dynamo=True``, the default since torch 2.9)
with a symbolic batch dimension; the TorchScript-based exporter is only the fallback for a model
that torch.export cannot capture and for opsets below 18, which the dynamo exporter cannot write.
Every export is checked against eager PyTorch (:func:`resnetkit.backends.check_parity`).
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import json
import math
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from . import quantize
from ._io import write_atomic
from .backends import (DEFAULT_ATOL, DEFAULT_RTOL, ONNX_HINT, SUFFIXES, EvalMode, Parity, check_parity,
                       default_output, make_info, open_exported, sample_inputs, save_onnx)
from .checkpoint import load_checkpoint
from .errors import UserError, first_line
from .specs import DatasetSpec

FORMATS = ("onnx", "torchscript")
INPUT_NAME, OUTPUT_NAME = "input", "logits"
MIN_DYNAMO_OPSET = 18
# The TorchScript-based exporter's floor (torch.onnx._constants.ONNX_MIN_OPSET) and onnxruntime's:
# below 7 the exporter either refuses or writes graphs that onnxruntime cannot run.
MIN_OPSET = 7


# ------------------------------------------------------------------ writing
def _example_input(model: nn.Module, spec: DatasetSpec, batch: int) -> torch.Tensor:
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, spec.in_chans, spec.img_size, spec.img_size, generator=gen).to(device)


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise UserError(f"ONNX export needs the onnx package; {ONNX_HINT}") from None
    return onnx


def max_opset() -> int:
    """The newest opset the installed onnx package knows: the dynamo exporter converts its graph
    up to it; beyond it the conversion fails and the exporter silently writes opset 18."""
    return int(_require_onnx().defs.onnx_opset_version())


def check_opset(opset: int | None) -> None:
    """Refuse an opset no exporter can write, before any work."""
    if opset is not None and not MIN_OPSET <= opset <= max_opset():
        raise UserError(f"--opset {opset} is out of range: the ONNX exporters write opsets {MIN_OPSET} to "
                        f"{max_opset()}; pick one in that range or leave --opset out")


@contextlib.contextmanager
def _muted() -> Iterator[None]:
    """Swallow what the exporters print: the TorchScript exporter dumps its whole IR graph (tens of
    KB) from C++ on a failure, onnxscript logs its version conversions. The C++ output goes to
    file descriptors 1 and 2, so they are pointed at a scratch file, not just sys.stdout/stderr;
    our own one-line message says what went wrong."""
    with contextlib.ExitStack() as stack:
        sink = io.StringIO()
        stack.enter_context(contextlib.redirect_stdout(sink))
        stack.enter_context(contextlib.redirect_stderr(sink))
        scratch = stack.enter_context(tempfile.TemporaryFile())
        _flush_all()  # what was printed before goes where it was meant to
        saved = []
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                saved.append((fd, os.dup(fd)))
                os.dup2(scratch.fileno(), fd)
        try:
            yield
        finally:
            _flush_all()  # what is still buffered was written while muted: into the scratch file
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)


def _flush_all() -> None:
    """Flush the interpreter's standard streams and every C stdio stream (C++ code writes there)."""
    for stream in (sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(OSError, ValueError, AttributeError):  # closed, or None
            stream.flush()  # type: ignore[union-attr]
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)  # POSIX: fflush(NULL) flushes every C stream


def onnx_model_proto(model: nn.Module, spec: DatasetSpec, *, dynamic_batch: bool = True,
                     opset: int | None = None) -> tuple[Any, str]:
    """The ONNX graph of ``model`` and the exporter that made it ("dynamo" or "legacy").

    torch.export specializes a dimension whose example size is 1, so the example batch is 2
    when the batch is dynamic; a static export has batch 1. The dynamo exporter writes opset 18
    and newer only (an older request would silently come out as 18), so older opsets go through
    the TorchScript-based exporter."""
    _require_onnx()
    check_opset(opset)
    x = _example_input(model, spec, 2 if dynamic_batch else 1)
    kw: dict[str, Any] = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset)
    with EvalMode(model), torch.no_grad(), warnings.catch_warnings(), _muted():
        warnings.simplefilter("ignore")
        if opset is not None and opset < MIN_DYNAMO_OPSET:
            return _legacy_proto(model, x, dynamic_batch, kw, None), "legacy"
        try:
            dyn = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
            prog = torch.onnx.export(model, (x,), None, dynamo=True, verbose=False,
                                     dynamic_shapes=dyn, **kw)
            return prog.model_proto, "dynamo"
        except ImportError as e:
            raise UserError(f"ONNX export needs {e.name or 'onnxscript'}; {ONNX_HINT}") from None
        except Exception as dynamo_error:  # noqa: BLE001 - any capture failure: try the old exporter
            return _legacy_proto(model, x, dynamic_batch, kw, dynamo_error), "legacy"


def _legacy_proto(model: nn.Module, x: torch.Tensor, dynamic_batch: bool, kw: dict[str, Any],
                  dynamo_error: Exception | None) -> Any:
    import io

    import onnx

    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    buf = io.BytesIO()
    try:
        torch.onnx.export(model, (x,), buf, dynamo=False, dynamic_axes=axes,
                          **{**kw, "opset_version": kw["opset_version"] or 17})
    except Exception as e:  # noqa: BLE001
        legacy = f"{type(e).__name__}: {_gist(e)}"
        if dynamo_error is None:  # in range, but too old for this model (resnet20's strided slice needs 10)
            raise UserError(f"ONNX export at opset {kw['opset_version']} failed ({legacy}); try a newer "
                            f"--opset (up to {max_opset()}) or leave --opset out") from None
        raise UserError(f"ONNX export failed with both exporters: {type(dynamo_error).__name__}: "
                        f"{_gist(dynamo_error)} / {legacy}") from None
    return onnx.load_model_from_string(buf.getvalue())


def _gist(e: BaseException) -> str:
    """The exporter's reason without the graph node it quotes ("... [Caused by the value '62
    defined in (%62 : Float(...) = onnx::Relu(...), scope: ...")."""
    return first_line(e).split(" [Caused by")[0].strip()


def export_onnx(model: nn.Module, spec: DatasetSpec, out: str | os.PathLike[str], *, arch: str = "",
                model_args: Mapping[str, Any] | None = None, dynamic_batch: bool = True,
                opset: int | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` as ONNX with ``spec`` (classes and preprocessing) in its metadata."""
    proto, exporter = onnx_model_proto(model, spec, dynamic_batch=dynamic_batch, opset=opset)
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    info = make_info(spec, arch, model_args, exporter=exporter, opset=opset_used,
                     dynamic_batch=dynamic_batch, **dict(extra or {}))
    return save_onnx(proto, info, out)


def export_torchscript(model: nn.Module, spec: DatasetSpec, out: str | os.PathLike[str], *,
                       arch: str = "", model_args: Mapping[str, Any] | None = None,
                       extra: Mapping[str, Any] | None = None) -> Path:
    """Trace ``model`` (straight-line ResNets trace exactly) and save it with its metadata."""
    info = make_info(spec, arch, model_args, **dict(extra or {}))
    files = {"resnetkit.json": json.dumps(info.to_dict())}
    with EvalMode(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but still works
        traced = torch.jit.trace(model, _example_input(model, spec, 2))
        out = Path(out)
        write_atomic(out, lambda tmp: torch.jit.save(traced, str(tmp), _extra_files=files))
    return out


def export_model(model: nn.Module, spec: DatasetSpec, out: str | os.PathLike[str], *,
                 fmt: str = "onnx", **kwargs: Any) -> Path:
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        return export_onnx(model, spec, out, **kwargs)
    kwargs.pop("dynamic_batch", None)  # a traced ResNet takes any batch size
    kwargs.pop("opset", None)
    return export_torchscript(model, spec, out, **kwargs)


@dataclass
class ExportResult:
    path: Path
    fmt: str
    exporter: str = ""
    parity: Parity | None = None
    int8_path: Path | None = None
    int8_parity: Parity | None = None
    int8_report: quantize.Int8Report | None = None

    def lines(self) -> list[str]:
        how = f" ({self.exporter} exporter)" if self.exporter else ""
        out = [f"wrote {self.path}{how}"]
        if self.parity is not None:
            out.append(f"{self.fmt} vs PyTorch: {self.parity}")
        if self.int8_report is not None:
            out += self.int8_report.lines()
        if self.int8_parity is not None:
            out.append(f"  int8 vs PyTorch: {self.int8_parity}")
        return out


def export_checkpoint(checkpoint: str | os.PathLike[str], *, fmt: str = "onnx",
                      out: str | os.PathLike[str] | None = None, dynamic_batch: bool = True,
                      opset: int | None = None, check: int = 64, atol: float = DEFAULT_ATOL,
                      rtol: float = DEFAULT_RTOL,
                      int8: bool = False, calib: int = 256,
                      data_dir: str | os.PathLike[str] | None = None) -> ExportResult:
    """Export a checkpoint (or run folder), check it against PyTorch, optionally quantize it."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if int8 and fmt != "onnx":
        raise UserError("--int8 needs --format onnx (quantization runs in onnxruntime)")
    if check < 0 or calib < 1:
        raise UserError(f"--check must be >= 0 and --calib >= 1 (got {check} and {calib})")
    for name, tol in (("--atol", atol), ("--rtol", rtol)):  # nan passes every comparison: no check at all
        if not (math.isfinite(tol) and tol >= 0):
            raise UserError(f"{name} is a tolerance and must be a finite number >= 0, got {tol:g}")

    if fmt == "onnx":
        check_opset(opset)
    ckpt = load_checkpoint(checkpoint)
    out = Path(out) if out is not None else default_output(checkpoint, fmt)
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"cannot write --out {out}: {blocker} is a file, not a folder; choose another path")
    if out.is_dir():
        out = out / f"model{SUFFIXES[fmt]}"
    extra = {"metrics": ckpt.metrics} if ckpt.metrics else {}
    if ckpt.meta.get("calibration"):  # the graph gives raw logits; predict divides by the temperature
        extra["calibration"] = ckpt.meta["calibration"]
    path = export_model(ckpt.model, ckpt.spec, out, fmt=fmt, arch=ckpt.arch, model_args=ckpt.model_args,
                        dynamic_batch=dynamic_batch, opset=opset, extra=extra)
    backend = open_exported(path)
    result = ExportResult(path, fmt, str(backend.info.extra.get("exporter", "")))
    if check:
        inputs, source = sample_inputs(ckpt.config, ckpt.spec, check, "test", data_dir)
        result.parity = check_parity(ckpt.model, backend, inputs, source, atol, rtol)
    if int8:
        result.int8_path, result.int8_parity, result.int8_report = quantize.int8_copy(
            path, ckpt, max(check, 16), calib, data_dir)
    return result


