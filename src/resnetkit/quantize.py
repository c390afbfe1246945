"""Int8 post-training quantization of an exported ONNX model for CPU inference.

Static quantization in QDQ format (onnxruntime's recommended format for CNNs on CPU): weights
int8 per output channel, activations uint8 with ranges calibrated (MinMax) on real images.
Conv + BatchNorm are folded before calibration (``quant_pre_process``), so the int8 graph has
one quantized conv per residual conv. If static quantization fails, dynamic quantization
(weights only, activations quantized on the fly) is the fallback, and the report says so.
:func:`int8_copy` is ``resnetkit export --int8``: quantize, then compare with fp32 and PyTorch.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from .backends import (ExportInfo, OnnxBackend, Parity, _require_ort, batches, check_parity, dataset_loader,
                       sample_inputs, save_onnx)
from .checkpoint import LoadedCheckpoint
from .errors import UserError
from .runtime import images_per_second


@dataclass(frozen=True)
class Quantized:
    path: Path
    method: str  # "static QDQ, per-channel, MinMax" or "dynamic"
    notes: tuple[str, ...] = ()


def _calibration_reader(input_name: str, batches: Iterable[torch.Tensor]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it: Iterator[torch.Tensor] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.it, None)
            return None if x is None else {input_name: x.detach().cpu().float().numpy()}

    return Reader()


def quantize_onnx(fp32_path: str | os.PathLike[str], out: str | os.PathLike[str],
                  calibration: Iterable[torch.Tensor], *, calib_source: str = "images",
                  per_channel: bool = True) -> Quantized:
    """Write an int8 copy of ``fp32_path`` to ``out`` (atomically), keeping its metadata."""
    _require_ort()
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = OnnxBackend(fp32_path)
    info = source.info
    if source.fixed_batch:  # a --no-dynamic-batch file takes calibration batches of its own size
        calibration = [b for x in calibration for b in x.split(source.fixed_batch) if len(b) == source.fixed_batch]
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="resnetkit-int8-") as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        except Exception as e:  # noqa: BLE001 - optional optimisation; quantize the raw graph instead
            notes.append(f"pre-processing skipped ({type(e).__name__})")
            pre = Path(fp32_path)
        try:
            quantize_static(str(pre), str(q), _calibration_reader(source.input_name, calibration),
                            quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            method = f"static QDQ int8, {'per-channel' if per_channel else 'per-tensor'}, " \
                     f"MinMax calibration on {calib_source}"
        except Exception as e:  # noqa: BLE001 - fall back to weight-only quantization
            notes.append(f"static quantization failed ({type(e).__name__}: {str(e)[:120]}); used dynamic")
            quantize_dynamic(str(pre), str(q), weight_type=QuantType.QInt8)
            method = "dynamic int8 (weights only)"
        proto = onnx.load(str(q))
    extra = {**info.extra, "quantization": method}
    save_onnx(proto, ExportInfo(info.spec, info.arch, info.model_args, info.version, extra), out)
    return Quantized(Path(out), method, tuple(notes))


@dataclass(frozen=True)
class Int8Report:
    quantized: Quantized
    fp32_ips: dict[int, float]  # batch size -> images/s
    int8_ips: dict[int, float]
    fp32_acc: float | None = None  # test accuracy, when the dataset is at hand
    int8_acc: float | None = None
    agreement: float | None = None  # int8 top-1 == fp32 top-1, over the test set (or check inputs)
    n_eval: int = 0

    def lines(self) -> list[str]:
        out = [f"int8: {self.quantized.path} ({self.quantized.method})"]
        out += [f"  note: {n}" for n in self.quantized.notes]
        if self.fp32_acc is not None and self.int8_acc is not None:
            out.append(f"  test accuracy on {self.n_eval} images: fp32 {self.fp32_acc:.2%}, "
                       f"int8 {self.int8_acc:.2%} ({(self.int8_acc - self.fp32_acc) * 100:+.2f} points); "
                       f"top-1 agreement {self.agreement:.2%}")
        elif self.agreement is not None:
            out.append(f"  top-1 agreement with fp32 on {self.n_eval} random inputs: {self.agreement:.2%} "
                       f"(no test set at hand, so no accuracy)")
        for b in sorted(self.fp32_ips):
            f, i = self.fp32_ips[b], self.int8_ips[b]
            out.append(f"  speed at batch {b}: fp32 {f:.0f} images/s, int8 {i:.0f} images/s ({i / f:.2f}x)")
        return out


def accuracy_and_agreement(fp32: OnnxBackend, int8: OnnxBackend, loader: Iterable[Any]
                           ) -> tuple[float, float, float, int]:
    """Test accuracy of both files and their top-1 agreement over one pass of ``loader``."""
    n = c32 = c8 = same = 0
    for x, y in loader:
        p32, p8 = fp32.predict_logits(x).argmax(1).cpu(), int8.predict_logits(x).argmax(1).cpu()
        y = y.cpu()
        n += len(y)
        c32 += int((p32 == y).sum())
        c8 += int((p8 == y).sum())
        same += int((p32 == p8).sum())
    if n == 0:
        raise UserError("the test split is empty; cannot measure int8 accuracy")
    return c32 / n, c8 / n, same / n, n


def speed(fp32: OnnxBackend, int8: OnnxBackend, sample: torch.Tensor,
          batch_sizes: tuple[int, ...] = (1, 64)) -> tuple[dict[int, float], dict[int, float]]:
    """images/s of both files at each batch size (median of 3 runs), on ``sample`` repeated."""
    f, i = {}, {}
    for b in batch_sizes:
        x = sample.repeat((b + len(sample) - 1) // len(sample), 1, 1, 1)[:b]
        f[b] = images_per_second(fp32.predict_logits, x)
        i[b] = images_per_second(int8.predict_logits, x)
    return f, i


def int8_copy(fp32_path: Path, ckpt: LoadedCheckpoint, n_check: int, calib: int,
              data_dir: str | os.PathLike[str] | None) -> tuple[Path, Parity, Int8Report]:
    """``<name>-int8.onnx`` beside ``fp32_path``: its path, its parity with the checkpoint's eager
    model, and its report (accuracy and speed against fp32 when the test set is at hand)."""
    # Calibrate on training images: ranges fitted to the test set would flatter its accuracy.
    calib_x, calib_source = sample_inputs(ckpt.config, ckpt.spec, calib, "train", data_dir)
    int8_path = fp32_path.with_name(f"{fp32_path.stem}-int8.onnx")
    q = quantize_onnx(fp32_path, int8_path, batches(calib_x, 32), calib_source=f"{len(calib_x)} {calib_source}")
    fp32_b, int8_b = OnnxBackend(fp32_path), OnnxBackend(int8_path)
    inputs, source = sample_inputs(ckpt.config, ckpt.spec, n_check, "test", data_dir)
    parity = check_parity(ckpt.model, int8_b, inputs, source, atol=None)
    loader = dataset_loader(ckpt.config, ckpt.spec, "test", data_dir)
    accs: tuple[float | None, ...] = (None, None, parity.top1_agreement, len(inputs))
    if loader is not None:
        accs = accuracy_and_agreement(fp32_b, int8_b, loader)
    fp32_ips, int8_ips = speed(fp32_b, int8_b, inputs)
    return int8_path, parity, Int8Report(q, fp32_ips, int8_ips, accs[0], accs[1], accs[2], int(accs[3]))


__all__ = ["quantize_onnx", "Quantized", "Int8Report", "accuracy_and_agreement", "speed", "int8_copy"]
