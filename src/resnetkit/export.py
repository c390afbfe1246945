"""Export a network to ONNX or TorchScript with its classes and preprocessing inside the file.

An exported file is self-describing, as a checkpoint is: ONNX keeps ``resnetkit.*`` entries in
``metadata_props`` (JSON strings), TorchScript keeps one ``resnetkit.json`` in ``_extra_files``.
So ``resnetkit predict model.onnx img.png`` needs nothing else: :class:`OnnxBackend` reads the
spec back, and the image goes through the same eval transform as for the PyTorch model.

ONNX goes through the torch.export-based exporter (``dynamo=True``, the default since torch 2.9)
with a symbolic batch dimension; the TorchScript-based exporter is only the fallback for a model
that torch.export cannot capture and for opsets below 18, which the dynamo exporter cannot write.
Every export is checked against eager PyTorch (:func:`check_parity`).
"""
from __future__ import annotations

import json
import os
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ._io import write_atomic
from .calibrate import temperature_of
from .data.specs import DatasetSpec
from .errors import UserError

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".ts"}
METADATA_PREFIX = "resnetkit."
FORMAT_VERSION = "1"
INPUT_NAME, OUTPUT_NAME = "input", "logits"
ONNX_HINT = "pip install resnetkit[onnx]"
# Eager fp32 vs onnxruntime / TorchScript fp32 differ by float reassociation (fused BN, other
# conv kernels): ~1e-6 on these nets; 1e-3 leaves room for deep nets and large logits.
DEFAULT_ATOL = 1e-3
# float32 rounding grows with the logits: random-init deep nets reach |logits| of 1e4..1e8, where
# 1e-3 is below float32 resolution. The tolerance is atol + rtol * max |logit|; 1e-5 adds only
# 1e-4 for a trained net with logits near 10 and covers resnet152 at random init (6e-7 measured).
DEFAULT_RTOL = 1e-5
MIN_DYNAMO_OPSET = 18


# ------------------------------------------------------------------ what the file carries
@dataclass(frozen=True)
class ExportInfo:
    """The metadata of an exported file: everything predict needs besides the graph."""

    spec: DatasetSpec
    arch: str = ""
    model_args: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # metrics, quantization, exporter, ...

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "version": self.version, "arch": self.arch,
                "model_args": self.model_args, "spec": self.spec.to_dict(),
                "classes": self.classes, **self.extra}

    def to_metadata(self) -> dict[str, str]:
        """Flat ``resnetkit.<key>`` -> string map for ONNX ``metadata_props``."""
        return {METADATA_PREFIX + k: v if isinstance(v, str) else json.dumps(v)
                for k, v in self.to_dict().items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "file") -> "ExportInfo":
        if "spec" not in d:
            raise UserError(f"{source} has no resnetkit metadata (classes, preprocessing); "
                            f"export it with 'resnetkit export' or predict from the checkpoint")
        known = {"format_version", "version", "arch", "model_args", "spec", "classes"}
        spec = DatasetSpec.from_dict(d["spec"])
        extra = {k: v for k, v in d.items() if k not in known}
        return cls(spec, str(d.get("arch", "")), dict(d.get("model_args") or {}),
                   str(d.get("version", "")), extra)

    @classmethod
    def from_metadata(cls, props: Mapping[str, str], source: str = "file") -> "ExportInfo":
        d: dict[str, Any] = {}
        for key, value in props.items():
            if key.startswith(METADATA_PREFIX):
                name = key[len(METADATA_PREFIX):]
                d[name] = value if name in ("arch", "version", "format_version") else _json_or_str(value)
        return cls.from_dict(d, source)


def _json_or_str(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _version() -> str:
    from . import __version__

    return __version__


def make_info(spec: DatasetSpec, arch: str = "", model_args: Mapping[str, Any] | None = None,
              **extra: Any) -> ExportInfo:
    return ExportInfo(spec, arch, dict(model_args or {}), _version(), dict(extra))


def default_output(checkpoint: str | os.PathLike[str], fmt: str) -> Path:
    """model.onnx / model.ts next to the checkpoint (inside a run folder when given one)."""
    p = Path(checkpoint)
    return (p if p.is_dir() else p.parent) / f"model{SUFFIXES[fmt]}"


# ------------------------------------------------------------------ writing
def _example_input(model: nn.Module, spec: DatasetSpec, batch: int) -> torch.Tensor:
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, spec.in_chans, spec.img_size, spec.img_size, generator=gen).to(device)


class _EvalMode:
    """Export in eval mode (BatchNorm uses running statistics) and restore the caller's mode."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> nn.Module:
        return self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise UserError(f"ONNX export needs the onnx package; {ONNX_HINT}") from None
    return onnx


def onnx_model_proto(model: nn.Module, spec: DatasetSpec, *, dynamic_batch: bool = True,
                     opset: int | None = None) -> tuple[Any, str]:
    """The ONNX graph of ``model`` and the exporter that made it ("dynamo" or "legacy").

    torch.export specializes a dimension whose example size is 1, so the example batch is 2
    when the batch is dynamic; a static export has batch 1. The dynamo exporter writes opset 18
    and newer only (an older request would silently come out as 18), so older opsets go through
    the TorchScript-based exporter."""
    _require_onnx()
    x = _example_input(model, spec, 2 if dynamic_batch else 1)
    kw: dict[str, Any] = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset)
    with _EvalMode(model), torch.no_grad(), warnings.catch_warnings():
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
        legacy = f"{type(e).__name__}: {_first_line(e)}"
        if dynamo_error is None:
            raise UserError(f"ONNX export at opset {kw['opset_version']} failed ({legacy}); "
                            f"try --opset {MIN_DYNAMO_OPSET} or newer") from None
        raise UserError(f"ONNX export failed with both exporters: {type(dynamo_error).__name__}: "
                        f"{_first_line(dynamo_error)} / {legacy}") from None
    return onnx.load_model_from_string(buf.getvalue())


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""


def save_onnx(proto: Any, info: ExportInfo, out: str | os.PathLike[str]) -> Path:
    """Attach the metadata, validate with onnx.checker and write the file atomically."""
    import onnx

    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, info.to_metadata())
    proto.doc_string = f"resnetkit {info.arch or 'model'} for {info.spec.name}"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise UserError(f"the exported ONNX graph is invalid: {_first_line(e)}") from None
    out = Path(out)
    write_atomic(out, lambda tmp: onnx.save_model(proto, str(tmp)))
    return out


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
    with _EvalMode(model), torch.no_grad(), warnings.catch_warnings():
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


# ------------------------------------------------------------------ reading and running
def _require_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"onnxruntime is not installed; {ONNX_HINT}") from None
    return onnxruntime


def read_info(path: str | os.PathLike[str]) -> ExportInfo:
    """The metadata of an exported .onnx or .ts file."""
    return open_exported(path).info


class OnnxBackend:
    """Runs an ONNX file with onnxruntime; ``predict_logits`` matches the PyTorch backend's."""

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None,
                 device: torch.device | str | None = None) -> None:
        ort = _require_ort()
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"ONNX file not found: {self.path}")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3  # onnxruntime prints its own warnings otherwise
        providers = ["CPUExecutionProvider"]
        if device is not None and torch.device(device).type == "cuda" \
                and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as e:  # noqa: BLE001 - a corrupt or foreign file is the user's input
            raise UserError(f"cannot load {self.path} with onnxruntime: {_first_line(e)}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info = ExportInfo.from_metadata(meta, str(self.path))
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

    @property
    def spec(self) -> DatasetSpec:
        return self.info.spec

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    def predict_logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalized float NCHW -> logits (N, num_classes), on ``batch``'s device."""
        x = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        step = self.fixed_batch or len(x) or 1
        outs = [self.session.run(None, {self.input_name: x[i:i + step]})[0] for i in range(0, len(x), step)]
        if not outs:
            return torch.empty(0, self.spec.num_classes, device=batch.device)
        import numpy as np

        return torch.from_numpy(np.concatenate(outs)).to(batch.device)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.predict_logits(batch)


class TorchScriptBackend:
    """Runs a TorchScript file saved by :func:`export_torchscript`."""

    def __init__(self, path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"TorchScript file not found: {self.path}")
        files = {"resnetkit.json": ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            try:
                self.module = torch.jit.load(str(self.path), map_location=device, _extra_files=files)
            except RuntimeError as e:
                raise UserError(f"cannot load {self.path} as TorchScript: {_first_line(e)}") from None
        raw = files["resnetkit.json"]
        self.info = ExportInfo.from_dict(json.loads(raw) if raw else {}, str(self.path))
        self.module.eval()
        self.device = torch.device(device)

    @property
    def spec(self) -> DatasetSpec:
        return self.info.spec

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @torch.no_grad()
    def predict_logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self.module(batch.to(self.device, torch.float32)).float().to(batch.device)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.predict_logits(batch)


Backend = OnnxBackend | TorchScriptBackend


def open_exported(path: str | os.PathLike[str], *, device: torch.device | str | None = None) -> Backend:
    """A backend for an exported file, chosen by its suffix (.onnx, else TorchScript)."""
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        return OnnxBackend(p, device=device)
    return TorchScriptBackend(p, device=device or "cpu")


def is_exported_file(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in (".onnx", ".ts", ".torchscript") and Path(path).is_file()


# ------------------------------------------------------------------ checking
@dataclass(frozen=True)
class Parity:
    """How an exported file's logits compare with eager PyTorch on the same inputs."""

    n: int
    source: str  # "test images (digits)" or "random normal inputs"
    top1_agreement: float  # 0..1
    max_abs_diff: float  # largest |logit difference|
    max_abs_logit: float = 0.0  # largest |reference logit|, the scale of the difference

    def __str__(self) -> str:
        return (f"parity on {self.n} {self.source}: top-1 agreement {self.top1_agreement:.2%}, "
                f"max |logit diff| {self.max_abs_diff:.2e} (max |logit| {self.max_abs_logit:.3g})")

    def within(self, atol: float, rtol: float = DEFAULT_RTOL) -> bool:
        return self.max_abs_diff <= atol + rtol * self.max_abs_logit


@torch.no_grad()
def compare_logits(reference: Callable[[torch.Tensor], torch.Tensor],
                   candidate: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                   source: str = "inputs", batch_size: int = 64) -> Parity:
    """Top-1 agreement and max |logit diff| of ``candidate`` against ``reference`` on ``inputs``."""
    agree, worst, scale = 0, 0.0, 0.0
    for i in range(0, len(inputs), batch_size):
        x = inputs[i:i + batch_size]
        ref = reference(x).float().cpu()
        got = candidate(x).float().cpu()
        agree += int((ref.argmax(1) == got.argmax(1)).sum())
        worst = max(worst, float((ref - got).abs().max()))
        scale = max(scale, float(ref.abs().max()))
    return Parity(len(inputs), source, agree / max(len(inputs), 1), worst, scale)


def check_parity(model: nn.Module, backend: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                 source: str = "inputs", atol: float | None = DEFAULT_ATOL,
                 rtol: float = DEFAULT_RTOL) -> Parity:
    """Compare an exported backend with the eager model; UserError beyond
    ``atol + rtol * max|logit|`` (``atol`` None: report only)."""
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    with _EvalMode(model):
        parity = compare_logits(lambda x: model(x.to(device)), backend, inputs.cpu(), source)
    if atol is not None and not parity.within(atol, rtol):
        raise UserError(f"exported model differs from PyTorch: {parity} exceeds --atol {atol:g} "
                        f"+ --rtol {rtol:g} x max |logit|")
    return parity


def random_inputs(spec: DatasetSpec, n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, spec.in_chans, spec.img_size, spec.img_size, generator=gen)


def images_per_second(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, *, runs: int = 3,
                      min_seconds: float = 0.2, warmup: int = 1) -> float:
    """Median over ``runs`` of images/s; each run repeats ``fn(x)`` for at least ``min_seconds``."""
    for _ in range(warmup):
        fn(x)
    rates = []
    for _ in range(runs):
        n, t0 = 0, time.perf_counter()
        while True:
            fn(x)
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_seconds:
                break
        rates.append(n * len(x) / dt)
    return statistics.median(rates)


def batches(x: torch.Tensor, size: int) -> Sequence[torch.Tensor]:
    return [x[i:i + size] for i in range(0, len(x), size)]


# ------------------------------------------------------------------ from a checkpoint
def _eval_config(config: Mapping[str, Any], data_dir: str | os.PathLike[str] | None) -> Any:
    from .evaluate import run_config

    cfg = run_config(dict(config))
    # Exporting reads data only to check; never download, and stay on the CPU beside onnxruntime.
    cfg = cfg.replace(device="cpu", download=False, workers=0)
    return cfg.replace(data_dir=str(data_dir)) if data_dir is not None else cfg


def dataset_loader(config: Mapping[str, Any] | None, spec: DatasetSpec, split: str = "test",
                   data_dir: str | os.PathLike[str] | None = None) -> Any | None:
    """The checkpoint's dataset split with its own preprocessing, or None when it is not at hand."""
    if not config:
        return None
    from .data import build_eval_loader

    try:
        return build_eval_loader(_eval_config(config, data_dir), split, "cpu", spec=spec)
    except (UserError, OSError):
        return None


def take(loader: Any, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The first ``n`` samples of ``loader`` as (x, y) on the CPU; None if it yields nothing."""
    xs, ys, count = [], [], 0
    try:
        for x, y in loader:
            xs.append(x.cpu())
            ys.append(y.cpu())
            count += len(x)
            if count >= n:
                break
    except (UserError, OSError):
        return None
    if count == 0:
        return None
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def sample_inputs(config: Mapping[str, Any] | None, spec: DatasetSpec, n: int, split: str = "test",
                  data_dir: str | os.PathLike[str] | None = None) -> tuple[torch.Tensor, str]:
    """``n`` real images of ``split`` when the dataset is at hand, else random normal inputs."""
    loader = dataset_loader(config, spec, split, data_dir)
    got = take(loader, n) if loader is not None else None
    if got is None:
        return random_inputs(spec, n), "random normal inputs (dataset not at hand)"
    return got[0], f"{spec.name} {split} images"


@dataclass
class ExportResult:
    path: Path
    fmt: str
    exporter: str = ""
    parity: Parity | None = None
    int8_path: Path | None = None
    int8_parity: Parity | None = None
    int8_report: Any = None  # quantize.Int8Report

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
    from .train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    out = Path(out) if out is not None else default_output(checkpoint, fmt)
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
        _add_int8(result, ckpt, max(check, 16), calib, data_dir)
    return result


def _add_int8(result: ExportResult, ckpt: Any, n_check: int, calib: int,
              data_dir: str | os.PathLike[str] | None) -> None:
    from . import quantize

    # Calibrate on training images: ranges fitted to the test set would flatter its accuracy.
    calib_x, calib_source = sample_inputs(ckpt.config, ckpt.spec, calib, "train", data_dir)
    int8_path = result.path.with_name(f"{result.path.stem}-int8.onnx")
    q = quantize.quantize_onnx(result.path, int8_path, batches(calib_x, 32),
                               calib_source=f"{len(calib_x)} {calib_source}")
    fp32_b, int8_b = OnnxBackend(result.path), OnnxBackend(int8_path)
    inputs, source = sample_inputs(ckpt.config, ckpt.spec, n_check, "test", data_dir)
    result.int8_path = int8_path
    result.int8_parity = check_parity(ckpt.model, int8_b, inputs, source, atol=None)
    loader = dataset_loader(ckpt.config, ckpt.spec, "test", data_dir)
    accs: tuple[float | None, ...] = (None, None, result.int8_parity.top1_agreement, len(inputs))
    if loader is not None:
        accs = quantize.accuracy_and_agreement(fp32_b, int8_b, loader)
    fp32_ips, int8_ips = quantize.speed(fp32_b, int8_b, inputs)
    result.int8_report = quantize.Int8Report(q, fp32_ips, int8_ips, accs[0], accs[1], accs[2], int(accs[3]))


# ------------------------------------------------------------------ predict backends
def exported_file(path: str | os.PathLike[str], fmt: str) -> Path:
    """The exported file to run: ``path`` itself, or model.onnx / model.ts beside a checkpoint."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() == SUFFIXES[fmt]:
        return p
    if not p.exists():
        raise UserError(f"not found: {p}; pass a {SUFFIXES[fmt]} file, a run folder or a checkpoint")
    if not (p.is_dir() or p.suffix.lower() == ".safetensors"):
        raise UserError(f"--backend {fmt} runs a {SUFFIXES[fmt]} file (or a run folder or checkpoint "
                        f"with one beside it), not {p}")
    from .train.checkpoint import resolve_checkpoint_path

    ckpt, exported = resolve_checkpoint_path(p), default_output(p, fmt)
    how = f"write it with 'resnetkit export {p} --format {fmt}'"
    if not exported.is_file():
        raise UserError(f"no {exported.name} beside {ckpt}; {how}")
    if exported.stat().st_mtime < ckpt.stat().st_mtime:
        # A stale export would silently answer with the old weights.
        raise UserError(f"{exported} is older than {ckpt.name}; {how} again")
    return exported


def exported_classifier(path: str | os.PathLike[str], device: str = "auto", fmt: str = "onnx") -> Any:
    """A :class:`resnetkit.predict.Classifier` running an exported file; its metadata supplies
    the classes and the preprocessing, so no checkpoint is needed."""
    from .predict import Classifier

    file = exported_file(path, fmt)
    dev = None if device == "auto" else device
    if fmt == "onnx":
        backend: Backend = OnnxBackend(file, device=dev)
    else:
        from .train.runtime import resolve_device

        backend = TorchScriptBackend(file, device=resolve_device(device))
    return Classifier(backend, backend.spec, backend.classes, path=file,
                      temperature=temperature_of(backend.info.extra))
