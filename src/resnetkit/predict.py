"""Classify images with a checkpoint: ``load(path).predict(images)``.

The preprocessing comes from the checkpoint's DatasetSpec through
:func:`resnetkit.data.transforms.eval_transform`, the very steps of the test loader. Models run
behind a *backend*: any object with ``predict_logits(batch) -> logits`` (CPU float tensors,
batch NCHW normalized; see :mod:`resnetkit.backends`). :data:`BACKENDS` maps each ``--backend``
name to the factory that opens a checkpoint or an exported file with it.
"""
from __future__ import annotations

import functools
import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, Union

import torch
from torch import nn

from .backends import Backend, OnnxBackend, TorchBackend, TorchScriptBackend, exported_file
from .checkpoint import load_checkpoint
from .data.transforms import ImageReadError, Normalizer, eval_geometry, eval_transform, is_image_file
from .errors import UserError
from .runtime import resolve_device
from .specs import DatasetSpec

ImageInput = Union[str, "os.PathLike[str]", Any, torch.Tensor]  # path, PIL image or tensor
UNKNOWN = "unknown"


@dataclass
class Classifier:
    """A model with its classes and preprocessing; ``predict`` returns one dict per image."""

    backend: Backend
    spec: DatasetSpec
    classes: list[str]
    model: nn.Module | None = None  # the torch module, when the backend has one
    path: Path | None = None

    def predict(self, images: ImageInput | Sequence[ImageInput], topk: int = 5, *,
                batch_size: int = 64, min_confidence: float | None = None) -> list[dict[str, Any]]:
        """Per image ``{"path", "top": [{"class", "index", "prob"}...], "label"}``, or
        ``{"path", "error"}`` for an input that cannot be read.

        ``images``: file paths, PIL images or tensors (float: already normalized CHW as
        ``eval_transform`` gives; uint8: raw CHW pixels), one or a sequence; an NCHW tensor is a
        batch. ``label`` is the top class, or "unknown" when its probability is below
        ``min_confidence``.
        """
        items = _as_items(images)
        if topk < 1:
            raise UserError(f"--topk must be at least 1, got {topk}")
        if batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {batch_size}")
        results: list[dict[str, Any]] = []
        for start in range(0, len(items), batch_size):
            results.extend(self._predict_chunk(items[start:start + batch_size], topk, min_confidence))
        return results

    def _predict_chunk(self, items: Sequence[tuple[str, Any]], topk: int,
                       min_confidence: float | None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        tensors, slots = [], []
        for name, item in items:
            try:
                tensors.append(self._preprocess(item))
                slots.append(len(out))
                out.append({"path": name})
            except ImageReadError as e:
                out.append({"path": name, "error": e.reason})
        if tensors:
            probs = self.backend.predict_logits(torch.stack(tensors)).softmax(dim=1)
            values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
            for slot, v, i in zip(slots, values.tolist(), indices.tolist()):
                top = [{"class": self.classes[c], "index": c, "prob": p} for p, c in zip(v, i)]
                out[slot]["top"] = top
                sure = min_confidence is None or top[0]["prob"] >= min_confidence
                out[slot]["label"] = top[0]["class"] if sure else UNKNOWN
        return out

    def _preprocess(self, item: Any) -> torch.Tensor:
        if isinstance(item, torch.Tensor):
            if item.dtype == torch.uint8:
                x = eval_geometry(self.spec)(item)
                return Normalizer(self.spec.mean, self.spec.std)(x)
            return item.float()
        return self._transform(item)

    @functools.cached_property
    def _transform(self) -> Callable[[Any], torch.Tensor]:
        return eval_transform(self.spec)


def _as_items(images: ImageInput | Sequence[ImageInput]) -> list[tuple[str, Any]]:
    """(name, image) pairs; a path's name is the path, others get "<image N>" / "<tensor N>"."""
    if isinstance(images, torch.Tensor):
        images = list(images) if images.dim() == 4 else [images]
    elif isinstance(images, (str, os.PathLike)) or not isinstance(images, Iterable):
        images = [images]
    items = []
    for n, img in enumerate(images):
        if isinstance(img, (str, os.PathLike)):
            items.append((str(img), img))
        elif isinstance(img, torch.Tensor):
            items.append((f"<tensor {n}>", img))
        else:
            items.append((f"<image {n}>", img))
    return items


# ------------------------------------------------------------------ loading
def _torch_classifier(path: str | os.PathLike[str], device: str) -> Classifier:
    dev = resolve_device(device)
    loaded = load_checkpoint(path, map_location=dev)
    return Classifier(TorchBackend(loaded.model, dev), loaded.spec, loaded.classes,
                      model=loaded.model, path=loaded.path)


def exported_classifier(path: str | os.PathLike[str], device: str = "auto", fmt: str = "onnx") -> Classifier:
    """A Classifier running an exported file (or the one beside a checkpoint); its metadata
    supplies the classes and the preprocessing, so no checkpoint is read."""
    file = exported_file(path, fmt)
    if fmt == "onnx":
        backend: OnnxBackend | TorchScriptBackend = OnnxBackend(file, device=None if device == "auto" else device)
    else:
        backend = TorchScriptBackend(file, device=resolve_device(device))
    return Classifier(backend, backend.spec, backend.classes, path=file)


def _exported(fmt: str) -> Callable[[str | os.PathLike[str], str], Classifier]:
    return lambda path, device: exported_classifier(path, device, fmt)


# name -> factory(path, device) -> Classifier; `resnetkit predict --backend` lists these.
BACKENDS: dict[str, Callable[[str | os.PathLike[str], str], Classifier]] = {
    "torch": _torch_classifier, "onnx": _exported("onnx"), "torchscript": _exported("torchscript")}
# Exported files carry their classes and preprocessing in their metadata (resnetkit.backends).
EXPORTED_SUFFIXES = {".onnx": "onnx", ".ts": "torchscript"}


def load(path: str | os.PathLike[str], *, device: str = "auto", backend: str = "torch") -> Classifier:
    """A Classifier from a checkpoint file or run folder (its best checkpoint), or an exported
    .onnx / .ts file; ``backend="onnx"`` with a checkpoint runs the model.onnx beside it."""
    if backend == "torch":
        backend = EXPORTED_SUFFIXES.get(Path(path).suffix.lower(), backend)
    if backend not in BACKENDS:
        raise UserError(f"unknown --backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[backend](path, device)


# ------------------------------------------------------------------ finding the images
def collect_images(inputs: Sequence[str]) -> list[str]:
    """Files named, image files under folders (recursive, sorted) and glob matches, in order.

    A name that neither exists nor matches anything is kept, so that it is reported as an
    error in its place instead of vanishing.
    """
    found: list[str] = []
    for arg in inputs:
        p = Path(arg)
        if p.is_dir():
            found.extend(str(f) for f in sorted(p.rglob("*"))
                         if f.is_file() and is_image_file(f.name)
                         and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.exists() or not glob.has_magic(arg):
            found.append(arg)
        else:
            matches = [m for m in sorted(glob.glob(arg, recursive=True))
                       if Path(m).is_file() and is_image_file(m)]
            found.extend(matches or [arg])
    return found
