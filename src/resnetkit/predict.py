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
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import numpy as np
import torch
from torch import nn

from . import calibrate, explain as cam
from ._io import write_atomic
from .backends import Backend, OnnxBackend, TorchBackend, TorchScriptBackend, exported_file
from .checkpoint import load_checkpoint
from .data.transforms import ImageReadError, Normalizer, eval_geometry, eval_transform, is_image_file
from .errors import UserError
from .runtime import resolve_device
from .specs import DatasetSpec

ImageInput = Union[str, "os.PathLike[str]", Any, torch.Tensor]  # path, PIL image, numpy array or tensor
UNKNOWN = "unknown"


@dataclass
class Classifier:
    """A model with its classes and preprocessing; ``predict`` returns one dict per image."""

    backend: Backend
    spec: DatasetSpec
    classes: list[str]
    model: nn.Module | None = None  # the torch module, when the backend has one
    path: Path | None = None
    temperature: float = 1.0  # logits are divided by it (``resnetkit calibrate``)

    def predict(self, images: ImageInput | Sequence[ImageInput], topk: int = 5, *,
                batch_size: int = 64, min_confidence: float | None = None) -> list[dict[str, Any]]:
        """Per image ``{"path", "top": [{"class", "index", "prob"}...], "label"}``, or
        ``{"path", "error"}`` for an input that cannot be read.

        ``images``, as Keras' ``model.predict(x)`` takes them: file paths, PIL images, numpy
        arrays or tensors, one or a sequence. numpy arrays hold pixels, HWC or CHW (HW: gray),
        uint8 0..255 or float 0..1 (``x / 255``); a 4-D array, or a 3-D one whose both ends are
        no channel count (N, H, W: gray images), is a batch. Tensors: float is already normalized
        CHW as ``eval_transform`` gives, uint8 raw CHW pixels; an NCHW tensor is a batch.
        ``label`` is the top class, or "unknown" when its probability is below ``min_confidence``.
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

    def _read_chunk(self, items: Sequence[tuple[str, Any]]
                    ) -> tuple[list[dict[str, Any]], list[torch.Tensor], list[int]]:
        """One result row per item ({"path"} or {"path", "error"}), the preprocessed tensors of
        the readable ones, and the row each tensor belongs to."""
        out: list[dict[str, Any]] = []
        tensors: list[torch.Tensor] = []
        slots: list[int] = []
        for name, item in items:
            try:
                tensors.append(self._preprocess(item))
                slots.append(len(out))
                out.append({"path": name})
            except ImageReadError as e:
                out.append({"path": name, "error": read_error(item, e.reason)})
        return out, tensors, slots

    def _predict_chunk(self, items: Sequence[tuple[str, Any]], topk: int,
                       min_confidence: float | None) -> list[dict[str, Any]]:
        out, tensors, slots = self._read_chunk(items)
        if tensors:
            probs = (self.backend.predict_logits(torch.stack(tensors)) / self.temperature).softmax(dim=1)
            values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
            for slot, v, i in zip(slots, values.tolist(), indices.tolist()):
                top = [{"class": self.classes[c], "index": c, "prob": p} for p, c in zip(v, i)]
                out[slot]["top"] = top
                sure = min_confidence is None or top[0]["prob"] >= min_confidence
                out[slot]["label"] = top[0]["class"] if sure else UNKNOWN
        return out

    def explain(self, images: ImageInput | Sequence[ImageInput], *, target: str | int | None = None,
                method: str = "gradcam", batch_size: int = 16, layer: str | None = None) -> list[dict[str, Any]]:
        """Grad-CAM heat maps: per image ``{"path", "class", "index", "prob", "target",
        "heatmap", "image"}`` or ``{"path", "error"}``.

        ``class``/``index``/``prob``: the prediction; ``target``: the class the map explains
        (``target`` as a name or index, default the predicted class); ``heatmap``: (H, W) float
        array in [0, 1] at the model's input size; ``image``: a PIL picture of the input and its
        overlay side by side, captioned. ``method``: ``gradcam`` or ``gradcam++``; ``layer``: the
        module to explain (default: the last stage whose map is at least 7x7).
        """
        if self.model is None:
            raise UserError("heat maps need the PyTorch model: load the .safetensors checkpoint, "
                            "not an exported file")
        index = None if target is None else self.class_index(target)
        results: list[dict[str, Any]] = []
        items = _as_items(images)
        for start in range(0, len(items), max(1, batch_size)):
            results.extend(self._explain_chunk(items[start:start + batch_size], index, method, layer))
        return results

    def class_index(self, name: str | int) -> int:
        """The index of a class given by name (or by index, checked)."""
        if isinstance(name, int) and not isinstance(name, bool) and 0 <= name < len(self.classes):
            return name
        if name in self.classes:
            return self.classes.index(name)
        shown = ", ".join(self.classes[:20]) + (", ..." if len(self.classes) > 20 else "")
        raise UserError(f"unknown class {name!r}; the model's classes are {shown}")

    def _explain_chunk(self, items: Sequence[tuple[str, Any]], target: int | None,
                       method: str, layer: str | None = None) -> list[dict[str, Any]]:
        out, tensors, slots = self._read_chunk(items)
        if not tensors:
            return out
        assert self.model is not None
        device = next(self.model.parameters()).device
        x = torch.stack(tensors)
        maps = cam.grad_cam(self.model, x.to(device), target, method=method, layer=layer)
        probs = (maps.logits / self.temperature).softmax(1).cpu()
        for row, slot in enumerate(slots):
            pred = int(probs[row].argmax())
            shown = int(maps.targets[row])
            caption = f"{self.classes[pred]} ({100 * float(probs[row, pred]):.1f}%)"
            if shown != pred:
                caption += f"; map of {self.classes[shown]}"
            rgb = cam.to_rgb(x[row], self.spec.mean, self.spec.std)
            heat = maps.heatmaps[row].numpy()
            out[slot].update({"class": self.classes[pred], "index": pred, "prob": float(probs[row, pred]),
                              "target": self.classes[shown], "heatmap": heat,
                              "image": cam.side_by_side(rgb, heat, caption)})
        return out

    def _preprocess(self, item: Any) -> torch.Tensor:
        if isinstance(item, np.ndarray):  # pixels, as a file holds them: the file's very path
            return self._transform(array_image(item))
        if isinstance(item, torch.Tensor):
            if item.dtype == torch.uint8:
                x = eval_geometry(self.spec)(item)
                return Normalizer(self.spec.mean, self.spec.std)(x)
            return item.float()
        if not (_is_pil(item) or isinstance(item, (str, os.PathLike))):
            raise UserError(f"cannot classify a {type(item).__name__}: pass file paths, PIL images, numpy "
                            f"arrays or tensors (one, a list, or a batch)")
        return self._transform(item)

    @functools.cached_property
    def _transform(self) -> Callable[[Any], torch.Tensor]:
        return eval_transform(self.spec)


CHANNELS = (1, 3, 4)  # gray, RGB, RGBA: the channel counts a numpy image may have


def _is_pil(item: Any) -> bool:
    from PIL import Image

    return isinstance(item, Image.Image)


def _array_batch(a: np.ndarray) -> bool:
    """Whether a numpy array is several images: NHWC/NCHW, or N gray HxW images (MNIST's x_test)."""
    return a.ndim == 4 or (a.ndim == 3 and a.shape[0] not in CHANNELS and a.shape[-1] not in CHANNELS)


def array_image(a: np.ndarray) -> Any:
    """One numpy image (HWC, CHW or HW; uint8 0..255 or float 0..1) as a PIL image."""
    from PIL import Image

    if a.ndim == 3 and a.shape[-1] not in CHANNELS and a.shape[0] in CHANNELS:
        a = np.moveaxis(a, 0, -1)  # CHW -> HWC
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in CHANNELS):
        raise UserError(f"a numpy image of shape {a.shape}: expected HxW, HxWxC or CxHxW with C in 1, 3, 4")
    if a.dtype != np.uint8:
        if a.dtype.kind not in "fiu":
            raise UserError(f"a numpy image of dtype {a.dtype}: expected uint8 or float pixels")
        if a.dtype.kind == "f":
            low, high = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
            if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > 1:
                raise UserError(f"a float numpy image holds values from {low:g} to {high:g}; float pixels are "
                                f"read as 0..1 (x / 255): divide by 255, or pass uint8")
            a = a * 255.0 + 0.5
        elif a.size and (a.min() < 0 or a.max() > 255):
            raise UserError(f"an integer numpy image holds values from {a.min()} to {a.max()}, not 0..255")
        a = a.astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a))


def _as_items(images: ImageInput | Sequence[ImageInput]) -> list[tuple[str, Any]]:
    """(name, image) pairs; a path's name is the path, others get "<image N>" / "<array N>" /
    "<tensor N>"."""
    if isinstance(images, torch.Tensor):
        images = list(images) if images.dim() == 4 else [images]
    elif isinstance(images, np.ndarray):
        images = list(images) if _array_batch(images) else [images]
    elif isinstance(images, (str, os.PathLike)) or not isinstance(images, Iterable) or _is_pil(images):
        images = [images]
    items = []
    for n, img in enumerate(images):
        if isinstance(img, (str, os.PathLike)):
            items.append((str(img), img))
        elif isinstance(img, torch.Tensor):
            items.append((f"<tensor {n}>", img))
        elif isinstance(img, np.ndarray):
            items.append((f"<array {n}>", img))
        else:
            items.append((f"<image {n}>", img))
    return items


# ------------------------------------------------------------------ loading
def _torch_classifier(path: str | os.PathLike[str], device: str) -> Classifier:
    dev = resolve_device(device)
    loaded = load_checkpoint(path, map_location=dev)
    return Classifier(TorchBackend(loaded.model, dev), loaded.spec, loaded.classes, model=loaded.model,
                      path=loaded.path, temperature=calibrate.temperature_of(loaded.meta))


def exported_classifier(path: str | os.PathLike[str], device: str = "auto", fmt: str = "onnx") -> Classifier:
    """A Classifier running an exported file (or the one beside a checkpoint); its metadata
    supplies the classes and the preprocessing, so no checkpoint is read."""
    file = exported_file(path, fmt)
    if fmt == "onnx":
        backend: OnnxBackend | TorchScriptBackend = OnnxBackend(file, device=None if device == "auto" else device)
    else:
        backend = TorchScriptBackend(file, device=resolve_device(device))
    return Classifier(backend, backend.spec, backend.classes, path=file,
                      temperature=calibrate.temperature_of(backend.info.extra))


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


def read_error(item: Any, reason: str) -> str:
    """Why an input could not be read, in the user's terms when it is a path that does not exist:
    a glob (kept by :func:`collect_images`) that matched nothing, or a path through a file."""
    if not isinstance(item, (str, os.PathLike)) or os.path.lexists(item):
        return reason
    name = os.fspath(item)
    if glob.has_magic(name):
        matches = glob.glob(name, recursive=True)
        if not matches:
            return "the pattern matched no file"
        if all(os.path.isdir(m) for m in matches):
            return "the pattern matched only folders; name a folder itself to classify the images under it"
        return "the pattern matched no image file"
    blocker = next((p for p in Path(name).parents if p.exists() and not p.is_dir()), None)
    return f"{blocker} is a file, not a folder" if blocker is not None else reason


def output_folder(path: str | os.PathLike[str], flag: str) -> Path:
    """``path`` checked, before any work, as a folder to write pictures into (it is created on the
    first write): a UserError when it, or a folder on its way, is a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} must be a folder, but a file named {path} exists; choose a folder")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"{flag} must be a folder, but {blocker} in {path} is a file; choose a folder")
    return path


def output_names(paths: Sequence[str]) -> list[str]:
    """A file name stem per input path for pictures written into one folder: the path's stem,
    with -2, -3... where two inputs share one (a/1.png and b/1.png give 1 and 1-2)."""
    taken: set[str] = set()
    names = []
    for path in paths:
        stem = Path(path).stem or "image"
        name, n = stem, 1
        while name in taken:
            n += 1
            name = f"{stem}-{n}"
        taken.add(name)
        names.append(name)
    return names


def annotate_file(result: Mapping[str, Any], dest: str | os.PathLike[str]) -> None:
    """Write the image file of a :meth:`Classifier.predict` result to ``dest`` (PNG) with its
    answer, "class 97.3%" (or "unknown (class 41.0%)"), drawn across its top."""
    from PIL import Image, ImageOps

    best = f"{result['top'][0]['class']} {100 * result['top'][0]['prob']:.1f}%"
    text = best if result.get("label") != UNKNOWN else f"{UNKNOWN} ({best})"
    with Image.open(result["path"]) as im:
        labelled = cam.label_image(ImageOps.exif_transpose(im), text)
    write_atomic(dest, lambda tmp: labelled.save(tmp, format="PNG"))
