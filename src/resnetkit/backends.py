"""Exported files and the engines that run them: the torch, ONNX and TorchScript backends.

An exported file is self-describing, as a checkpoint is: ONNX keeps ``resnetkit.*`` entries in
``metadata_props`` (JSON strings), TorchScript keeps one ``resnetkit.json`` in ``_extra_files``
(:class:`ExportInfo` both ways). So ``resnetkit predict model.onnx img.png`` needs nothing else:
:func:`open_exported` reads the spec back, and the image goes through the same eval transform
as for the PyTorch model. :func:`check_parity` compares a backend with eager PyTorch on real
test images (:func:`sample_inputs`) or random ones.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch
from torch import nn

from . import _version
from ._io import write_atomic
from .checkpoint import resolve_checkpoint_path
from .config import recorded_config
from .data import build_eval_loader
from .errors import UserError, first_line
from .specs import DatasetSpec

SUFFIXES = {"onnx": ".onnx", "torchscript": ".ts"}
METADATA_PREFIX = "resnetkit."
FORMAT_VERSION = "1"
ONNX_HINT = "pip install resnetkit[onnx]"
# Eager fp32 vs onnxruntime / TorchScript fp32 differ by float reassociation (fused BN, other
# conv kernels): ~1e-6 on these nets; 1e-3 leaves room for deep nets and large logits.
DEFAULT_ATOL = 1e-3
# float32 rounding grows with the logits: random-init deep nets reach |logits| of 1e4..1e8, where
# 1e-3 is below float32 resolution. The tolerance is atol + rtol * max |logit|; 1e-5 adds only
# 1e-4 for a trained net with logits near 10 and covers resnet152 at random init (6e-7 measured).
DEFAULT_RTOL = 1e-5


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


def make_info(spec: DatasetSpec, arch: str = "", model_args: Mapping[str, Any] | None = None,
              **extra: Any) -> ExportInfo:
    return ExportInfo(spec, arch, dict(model_args or {}), _version.__version__, dict(extra))


def default_output(checkpoint: str | os.PathLike[str], fmt: str) -> Path:
    """model.onnx / model.ts next to the checkpoint (inside a run folder when given one)."""
    p = Path(checkpoint)
    return (p if p.is_dir() else p.parent) / f"model{SUFFIXES[fmt]}"


class EvalMode:
    """Export in eval mode (BatchNorm uses running statistics) and restore the caller's mode."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> nn.Module:
        return self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


def save_onnx(proto: Any, info: ExportInfo, out: str | os.PathLike[str]) -> Path:
    """Attach the metadata, validate with onnx.checker and write the file atomically."""
    import onnx

    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, info.to_metadata())
    proto.doc_string = f"resnetkit {info.arch or 'model'} for {info.spec.name}"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise UserError(f"the exported ONNX graph is invalid: {first_line(e)}") from None
    out = Path(out)
    write_atomic(out, lambda tmp: onnx.save_model(proto, str(tmp)))
    return out


# ------------------------------------------------------------------ the backends
class Backend(Protocol):
    """What a :class:`resnetkit.predict.Classifier` runs: any object with ``predict_logits``."""

    def predict_logits(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) normalized float32 on the CPU -> (N, num_classes) float logits on the CPU."""
        ...


class TorchBackend:
    """A PyTorch module in eval mode on a device, fp32."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.device = device

    @torch.no_grad()
    def predict_logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch.to(self.device)).float().cpu()


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
            raise UserError(f"cannot load {self.path} with onnxruntime: {first_line(e)}") from None
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
                raise UserError(f"cannot load {self.path} as TorchScript: {first_line(e)}") from None
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


def open_exported(path: str | os.PathLike[str], *, device: torch.device | str | None = None
                  ) -> OnnxBackend | TorchScriptBackend:
    """A backend for an exported file, chosen by its suffix (.onnx, else TorchScript)."""
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        return OnnxBackend(p, device=device)
    return TorchScriptBackend(p, device=device or "cpu")


# ------------------------------------------------------------------ beside a checkpoint
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
    ckpt, exported = resolve_checkpoint_path(p), default_output(p, fmt)
    how = f"write it with 'resnetkit export {p} --format {fmt}'"
    if not exported.is_file():
        raise UserError(f"no {exported.name} beside {ckpt}; {how}")
    if exported.stat().st_mtime < ckpt.stat().st_mtime:
        # A stale export would silently answer with the old weights.
        raise UserError(f"{exported} is older than {ckpt.name}; {how} again")
    return exported


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
    with EvalMode(model):
        parity = compare_logits(lambda x: model(x.to(device)), backend, inputs.cpu(), source)
    if atol is not None and not parity.within(atol, rtol):
        raise UserError(f"exported model differs from PyTorch: {parity} exceeds --atol {atol:g} "
                        f"+ --rtol {rtol:g} x max |logit|")
    return parity


def random_inputs(spec: DatasetSpec, n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, spec.in_chans, spec.img_size, spec.img_size, generator=gen)


def batches(x: torch.Tensor, size: int) -> Sequence[torch.Tensor]:
    return [x[i:i + size] for i in range(0, len(x), size)]


# ------------------------------------------------------------------ from a checkpoint
def _eval_config(config: Mapping[str, Any], data_dir: str | os.PathLike[str] | None) -> Any:
    cfg = recorded_config(dict(config))
    # Exporting reads data only to check; never download, and stay on the CPU beside onnxruntime.
    cfg = cfg.replace(device="cpu", download=False, workers=0)
    return cfg.replace(data_dir=str(data_dir)) if data_dir is not None else cfg


def dataset_loader(config: Mapping[str, Any] | None, spec: DatasetSpec, split: str = "test",
                   data_dir: str | os.PathLike[str] | None = None) -> Any | None:
    """The checkpoint's dataset split with its own preprocessing, or None when it is not at hand."""
    if not config:
        return None
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


