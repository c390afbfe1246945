"""Images already in arrays: ``--dataset arrays --data-dir FILE`` and the arrays of Python calls.

Files: ``.npz`` (``numpy.savez``), ``.npy`` (every ``NAME.npy`` of the file's folder is one key
``NAME``) and ``.h5``/``.hdf5`` (the top-level datasets of the file; h5py is the ``[h5]`` extra).
A file whose name holds ``train`` is joined by its siblings with ``test`` or ``val`` in that
place (``train_signs.h5`` -> ``test_signs.h5``), as the SIGNS files of the Keras hand-signs
tutorial come. Keys are found by convention (:data:`CONVENTIONS`: Keras' ``x_train``/``y_train``,
the SIGNS ``train_set_x``/``train_set_y``/``list_classes``, plain ``x``/``y``) or named with
``--keys`` (:func:`parse_keys`).

Images: (N, H, W), (N, H, W, C) or (N, C, H, W) with C 1 or 3 (a 4th, alpha, channel is dropped
as Pillow's RGB conversion does); uint8, another integer type within 0..255 (beyond it, up to
16-bit: scaled by 255 over the largest value, with a note), or float in 0..1 or 0..255. They are
kept as uint8, the in-memory fast path's form: floats are rounded to the nearest of 256 levels
(an error of at most 1/510 of the range). Any other finite float array (not pixels: spectrograms,
standardised measurements) is kept as float32 times 255, the scale the loaders read pixels on,
so that its own mean and std normalise it; it trains at its own size, with crops and flips but
no pixel policy (RandAugment, TrivialAugment).
Labels: integers (N,), (N, 1) or (1, N); one-hot rows (N, K) (any other row is refused by
index); or strings. Class names come from ``list_classes``/``--classes`` (integer labels index
them), else from the label values (integers 0..max name themselves, and must all occur; strings
sort as image-folder names do).
Without a test or validation split the training arrays are split per class by
``--val-fraction``, seeded by ``--seed``, as an image folder in one tree is.
"""
from __future__ import annotations

import functools
import os
import re
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..errors import DataWarning, UserError
from ._util import summarize_names, warn
from .datasets import ArraySplit
from .folders import natural_order
from .presets import Preset
from .sampling import seeded_generator

SUFFIXES = (".npz", ".npy", ".h5", ".hdf5")
ROLES = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "classes")
# Role -> accepted key names, first match wins. The SIGNS files name their arrays train_set_x ...
CONVENTIONS: dict[str, tuple[str, ...]] = {
    "x_train": ("x_train", "train_set_x", "train_images", "x", "images"),
    "y_train": ("y_train", "train_set_y", "train_labels", "y", "labels"),
    "x_val": ("x_val", "val_set_x", "val_images", "x_valid"),
    "y_val": ("y_val", "val_set_y", "val_labels", "y_valid"),
    "x_test": ("x_test", "test_set_x", "test_images"),
    "y_test": ("y_test", "test_set_y", "test_labels"),
    "classes": ("list_classes", "classes", "class_names"),
}
HELD_OUT = ("val", "test")


@dataclass
class ArraySource:
    """Images in memory, by split (train, and val and/or test), with their class names."""

    splits: dict[str, ArraySplit]
    classes: tuple[str, ...]
    source: str
    layout: str
    kind: str = "arrays"
    mean: tuple[float, ...] | None = None  # None: the training images' own (computed once)
    std: tuple[float, ...] | None = None

    @property
    def in_chans(self) -> int:
        return int(self.splits["train"].images.shape[1])

    @property
    def img_size(self) -> int:
        return int(max(self.splits["train"].images.shape[-2:]))

    def split(self, name: str) -> ArraySplit:
        """``train``, or ``test``: the test arrays, else the val arrays, else the held-out part."""
        # a copy: the loaders' --subset replaces its tensors, and the source is cached
        if name == "train":
            return replace(self.splits["train"])
        for held in ("test", "val"):
            if held in self.splits:
                return replace(self.splits[held])
        raise UserError(f"{self.source} holds no {name} split")

    def preset(self, base: Preset) -> Preset:
        """``base`` (the arrays preset) with this data's channels, size and statistics."""
        if self.mean is None or self.std is None:
            self.mean, self.std = channel_stats(self.splits["train"].images)
        mean, std = self.mean, self.std
        size = self.img_size
        return replace(base, in_chans=self.in_chans, img_size=size, native_size=size, mean=mean, std=std,
                       pad=max(1, round(size / 8)))  # 4 px at 32, as CIFAR's random crop


# ------------------------------------------------------------------ arrays -> tensors
def as_images(x: Any, what: str) -> torch.Tensor:
    """Any image array (see the module doc) -> uint8 (N, C, H, W), contiguous."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        last, first = x.shape[3] in (1, 3, 4), x.shape[1] in (1, 3, 4)
        if last and not first:  # NHWC, Keras' and the SIGNS files' layout
            x = x.transpose(0, 3, 1, 2)
        elif not first:
            raise UserError(f"{what}: images of shape {x.shape} have no channel axis of 1, 3 or 4 "
                            f"values; pass (N, H, W, C) or (N, C, H, W) arrays")
    else:
        raise UserError(f"{what}: images must be 3-D (N, H, W) or 4-D (NHWC or NCHW), got shape {x.shape}")
    if x.shape[1] == 4:
        x = x[:, :3]  # RGBA: alpha dropped, as torchvision's ImageFolder loader does
    if x.shape[0] == 0:
        raise UserError(f"{what}: no images (shape {x.shape})")
    # a writable C-ordered copy only where needed (a memory-mapped .npy is read-only)
    return torch.from_numpy(np.require(to_uint8(x, what), requirements=["C", "W"]))


def to_uint8(x: np.ndarray, what: str) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.bool_:
        return x.astype(np.uint8) * 255
    if np.issubdtype(x.dtype, np.integer):
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 65535:
            raise UserError(f"{what}: integer pixels in {lo}..{hi}; expected 0..255 (or 16-bit 0..65535)")
        if hi <= 255:
            return x.astype(np.uint8)
        # a 12-bit sensor's 0..4095 (or 0..1600) shifted right by 8 would keep a few grey levels
        warnings.warn(f"{what}: integer pixels in {lo}..{hi}, beyond 0..255: scaled by 255/{hi} "
                      f"(the largest value) to 0..255; pass uint8 or float images to choose the scale",
                      DataWarning, stacklevel=2)
        return np.rint(x.astype(np.float64) * (255.0 / hi)).astype(np.uint8)
    if not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"{what}: images of dtype {x.dtype}; expected uint8 or float pixels")
    if not np.isfinite(x).all():
        raise UserError(f"{what}: images hold NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 255:
        # not pixels (spectrograms, standardised measurements, intensities): kept as float32 on
        # the pixel scale the loaders use (1.0 <-> 255), so the recorded mean and std, computed on
        # it, normalise the values themselves: (x - mean) / std
        warn(f"{what}: float values in {lo:.3g}..{hi:.3g}, not pixels (0..1 or 0..255): kept as "
             f"float32; their own mean and std normalise them", once=True)
        return (x.astype(np.float64) * 255.0).astype(np.float32)
    scale = 255.0 if hi <= 1.0 else 1.0
    return np.rint(x.astype(np.float64) * scale).astype(np.uint8)


def as_labels(y: Any, n: int, what: str) -> np.ndarray:
    """Labels as a 1-D array of n values (integers or strings); one-hot rows become indices."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim == 2 and 1 in y.shape:
        y = y.reshape(-1)  # (N, 1) or the SIGNS files' (1, N)
    elif y.ndim == 2:
        if not np.issubdtype(y.dtype, np.number) and y.dtype != np.bool_:
            raise UserError(f"{what}: 2-D labels of dtype {y.dtype}; expected one-hot rows")
        y = one_hot_indices(y, what)
    if y.ndim != 1:
        raise UserError(f"{what}: labels of shape {y.shape}; expected (N,), (N, 1) or one-hot (N, K)")
    if len(y) != n:
        raise UserError(f"{what}: {n} images but {len(y)} labels")
    if y.dtype.kind in "SO":
        y = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in y])
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise UserError(f"{what}: float labels that are not whole numbers")
        y = y.astype(np.int64)
    return y


def one_hot_indices(y: np.ndarray, what: str) -> np.ndarray:
    """The class index of each one-hot row (one 1, the rest 0). Any other row is refused by
    index: argmax would silently make a row of zeros, or of probabilities, class 0 or a guess."""
    values = np.asarray(y, dtype=np.float64)
    ones, zeros = values == 1, values == 0
    bad = np.flatnonzero((ones.sum(axis=1) != 1) | ((ones | zeros).sum(axis=1) != y.shape[1]))
    if len(bad):
        rows = ", ".join(str(i) for i in bad[:5].tolist()) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise UserError(f"{what}: {len(bad)} of {len(y)} rows of the {y.shape[0]}x{y.shape[1]} labels are "
                        f"not one-hot (one 1, the rest 0): row(s) {rows}; fix them, or pass integer "
                        f"labels (soft labels are not supported)")
    return ones.argmax(axis=1)


def class_names(values: Any) -> tuple[str, ...]:
    """Names from a list_classes array or a list: bytes decoded, numbers as text."""
    out = []
    for v in np.asarray(values).reshape(-1).tolist():
        out.append(v.decode() if isinstance(v, bytes) else str(v))
    return tuple(out)


def label_indices(labels: Sequence[np.ndarray], names: Sequence[str] | None, what: str
                  ) -> tuple[list[torch.Tensor], tuple[str, ...]]:
    """Every split's labels as int64 indices into one class list (see the module doc)."""
    text = any(y.dtype.kind == "U" for y in labels)
    if text:
        found = natural_order(sorted({str(v) for y in labels for v in y}))
        classes = tuple(names) if names else tuple(found)
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise UserError(f"{what}: labels {summarize_names(unknown)} are not among the classes "
                            f"{summarize_names(list(classes))}")
        index = {c: i for i, c in enumerate(classes)}
        return [torch.tensor([index[str(v)] for v in y], dtype=torch.long) for y in labels], classes
    ints = [np.asarray(y).astype(np.int64) for y in labels]
    lo = min(int(y.min()) for y in ints)
    hi = max(int(y.max()) for y in ints)
    if not names and lo >= 0:
        check_no_empty_classes(ints, what)
    classes = tuple(names) if names else tuple(str(i) for i in range(hi + 1))
    if lo < 0 or hi >= len(classes):
        raise UserError(f"{what}: labels range over {lo}..{hi} but there are {len(classes)} classes "
                        f"({summarize_names(list(classes))}); integer labels index the class list")
    if len(classes) < 2:
        raise UserError(f"{what}: one class only ({classes[0]}); a classifier needs at least two")
    return [torch.from_numpy(y) for y in ints], classes


def check_no_empty_classes(ints: Sequence[np.ndarray], what: str) -> None:
    """Integer labels without --classes name the classes 0..max: a stray value (0..8 and one 42)
    would build a head of 43 classes, 33 of them never seen. Refused, naming the strays."""
    counts = np.bincount(np.concatenate([np.asarray(y).reshape(-1) for y in ints]))
    present = np.flatnonzero(counts)
    if len(present) == len(counts):
        return
    if counts[0] == 0:
        raise UserError(f"{what}: integer labels start at {int(present[0])}, not 0, so class 0 would "
                        f"have no sample: number the classes from 0, or pass --classes naming "
                        f"{counts.size} classes")
    # the dense run from 0 is the real classes; values past the first gap are the strays
    gap = int(np.flatnonzero(counts == 0)[0])
    strays = present[present > gap]
    flat = np.concatenate([np.asarray(y).reshape(-1) for y in ints])
    where = ", ".join(f"{int(v)} (index {int(np.flatnonzero(flat == v)[0])})" for v in strays[:3])
    more = f" and {len(strays) - 3} more values" if len(strays) > 3 else ""
    run = f"0..{gap - 1}" if gap > 1 else "0"
    raise UserError(f"{what}: labels are {run} and {where}{more}, so {int(counts.size) - len(present)} of "
                    f"{counts.size} classes would have no sample: pass --classes to name {counts.size} "
                    f"classes, or fix the label(s)")


def build_source(arrays: Mapping[str, Any], *, names: Sequence[str] | None, source: str, layout: str,
                 val_fraction: float = 0.2, seed: int = 0) -> ArraySource:
    """An ArraySource from role -> array (``x_train``, ``y_train``, optional val/test pairs)."""
    splits = ["train"] + [s for s in HELD_OUT if f"x_{s}" in arrays]
    images = {s: as_images(arrays[f"x_{s}"], f"{source} ({s} images)") for s in splits}
    raw = [as_labels(arrays[f"y_{s}"], images[s].shape[0], f"{source} ({s} labels)") for s in splits]
    labels, classes = label_indices(raw, names, source)
    for s in splits[1:]:
        if tuple(images[s].shape[1:]) != tuple(images["train"].shape[1:]):
            raise UserError(f"{source}: {s} images are {tuple(images[s].shape[1:])} (C, H, W) but "
                            f"training images {tuple(images['train'].shape[1:])}")
    out = {s: ArraySplit(images[s], y, classes, source, ids=[f"{s}[{i}]" for i in range(len(y))])
           for s, y in zip(splits, labels)}
    if len(splits) == 1:
        out["train"], out["val"] = split_held_out(out["train"], classes, val_fraction, seed)
        layout += f"; no test or val arrays: split per class by --val-fraction {val_fraction} with seed {seed}"
    return ArraySource(out, classes, source, layout)


def split_held_out(data: ArraySplit, classes: Sequence[str], fraction: float, seed: int
                   ) -> tuple[ArraySplit, ArraySplit]:
    """Per class round(n * fraction) samples held out (at least one each side from two up)."""
    if not 0.0 < fraction < 1.0:
        raise UserError(f"--val-fraction must be between 0 and 1 (exclusive), got {fraction}")
    held: list[int] = []
    for label in range(len(classes)):
        idx = torch.nonzero(data.labels == label).flatten()
        n = len(idx)
        k = min(max(round(n * fraction), 1), n - 1) if n >= 2 else 0
        perm = torch.randperm(n, generator=seeded_generator(seed, "val-split", classes[label]))
        held += idx[perm[:k]].tolist()
    mask = torch.zeros(len(data.labels), dtype=torch.bool)
    mask[held] = True
    return _take(data, ~mask), _take(data, mask)


def _take(data: ArraySplit, mask: torch.Tensor) -> ArraySplit:
    keep = torch.nonzero(mask).flatten()
    ids = [data.ids[i] for i in keep.tolist()] if data.ids else None
    return ArraySplit(data.images[keep].contiguous(), data.labels[keep], data.classes, data.source, ids=ids)


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images on the 0..1 scale (the training split's)."""
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    sq = torch.zeros(c, dtype=torch.float64)
    for i in range(0, images.shape[0], chunk):
        x = images[i:i + chunk].to(torch.float64).div_(255.0).transpose(0, 1).reshape(c, -1)
        s += x.sum(1)
        sq += (x * x).sum(1)
    n = images.numel() / c
    mean = s / n
    std = (sq / n - mean**2).clamp_min(0).sqrt().clamp_min(1e-3)  # a constant channel: no divide by 0
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


# ------------------------------------------------------------------ files
def parse_keys(text: str | None) -> dict[str, str]:
    """``--keys``: ``X,Y`` or ``X,Y,XTEST,YTEST`` by position, or ``role=name`` pairs
    (roles x_train, y_train, x_val, y_val, x_test, y_test, classes)."""
    if not text:
        return {}
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if all("=" in p for p in parts):
        out = dict(p.split("=", 1) for p in parts)
        unknown = sorted(set(out) - set(ROLES))
        if unknown:
            raise UserError(f"--keys: unknown role(s) {', '.join(unknown)}; use {', '.join(ROLES)}")
        return {k.strip(): v.strip() for k, v in out.items()}
    if any("=" in p for p in parts) or len(parts) not in (2, 4):
        raise UserError(f"--keys takes X,Y or X,Y,XTEST,YTEST (array names) or role=name pairs "
                        f"such as x_train=imgs,y_train=labels; got {text!r}")
    return dict(zip(("x_train", "y_train", "x_test", "y_test"), parts))


def parse_classes(text: str | None) -> tuple[str, ...] | None:
    if not text:
        return None
    names = tuple(c.strip() for c in text.split(","))
    if len(names) < 2 or not all(names) or len(set(names)) != len(names):
        raise UserError(f"--classes takes two or more distinct comma-separated names, got {text!r}")
    return names


def sibling_files(path: Path) -> dict[str, Path]:
    """train_signs.h5 -> {"train": it, "test": test_signs.h5, "val": ...} for the siblings that exist."""
    out = {"train": path}
    m = list(re.finditer("train", path.name, flags=re.IGNORECASE))
    if m:
        a, b = m[-1].span()
        for held in HELD_OUT:
            other = path.with_name(path.name[:a] + held + path.name[b:])
            if other.is_file():
                out[held] = other
    return out


def read_arrays(path: Path) -> dict[str, Any]:
    """name -> array of one file (lazy where the format allows: npz, h5)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        if suffix == ".npy":
            return {p.stem: np.load(p, mmap_mode="r", allow_pickle=False)
                    for p in sorted(path.parent.glob("*.npy"))}
        return _read_h5(path)
    except UserError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot read {path}: {read_failure(path, e)}") from None


def read_failure(path: Path, e: BaseException) -> str:
    """Why an array file could not be read, in words that never advise loading it unsafely
    (numpy's own message suggests allow_pickle, which runs whatever code the file holds)."""
    text = str(e)
    fix = "save the arrays with numpy.save/savez (numbers or text, no Python objects)"
    if "object" in text.lower() or "pickle" in text.lower():
        if path.suffix.lower() in (".npz", ".npy") and _looks_like_numpy(path):
            return f"it holds Python objects (pickled data), which are not loaded: {fix}"
        return f"not a plain {path.suffix.lower()} array file (damaged, or another format): {fix}"
    if isinstance(e, (zipfile.BadZipFile, EOFError)):
        return f"not a plain {path.suffix.lower()} array file (damaged, empty or another format): {fix}"
    if "file signature not found" in text:  # h5py on a file that is not HDF5
        return "not an HDF5 file (no HDF5 signature: damaged, or another format renamed .h5)"
    return text.splitlines()[0] if text else type(e).__name__


def _looks_like_numpy(path: Path) -> bool:
    """An .npy's magic string, or a zip (.npz) holding .npy members."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
        if head == b"\x93NUMPY":
            return True
        with zipfile.ZipFile(path) as z:
            return any(n.endswith(".npy") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _read_h5(path: Path) -> dict[str, Any]:
    try:
        import h5py  # optional: the [h5] extra
    except ImportError:
        raise UserError(f"reading {path.name} needs h5py: pip install 'resnetkit[h5]'") from None
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f.keys() if isinstance(f[k], h5py.Dataset)}


def role_arrays(files: Mapping[str, Path], keys: Mapping[str, str]) -> dict[str, Any]:
    """role -> array over a file and its siblings (a sibling's x/y or x_train/y_train fill its split)."""
    found: dict[str, Any] = {}
    for split, path in files.items():
        arrays = read_arrays(path)
        if split == "train":
            roles = {role: _pick(arrays, role, keys.get(role), path) for role in ROLES}
        else:
            roles = {f"{a}_{split}": _pick(arrays, f"{a}_{split}", None, path, also=f"{a}_train")
                     for a in ("x", "y")}
            roles["classes"] = _pick(arrays, "classes", None, path)
        found.update({r: v for r, v in roles.items() if v is not None and r not in found})
    return found


def _pick(arrays: Mapping[str, Any], role: str, name: str | None, path: Path, also: str | None = None) -> Any:
    if name is not None:
        if name not in arrays:
            raise UserError(f"--keys: no array {name!r} in {path.name}; it holds {summarize_names(sorted(arrays))}")
        return arrays[name]
    names = CONVENTIONS[role] + (CONVENTIONS[also] if also else ())
    return next((arrays[n] for n in names if n in arrays), None)


def load_file(path: str | os.PathLike[str], *, keys: str | None = None, classes: str | None = None,
              val_fraction: float = 0.2, seed: int = 0) -> ArraySource:
    """The arrays of ``--data-dir FILE`` (and its test/val siblings) as an ArraySource."""
    p = Path(path).expanduser()
    if p.suffix.lower() not in SUFFIXES:
        raise UserError(f"--dataset arrays reads {', '.join(SUFFIXES)} files; got {p}")
    if not p.is_file():
        raise UserError(f"array file {p} not found; pass --data-dir FILE (.npz, .npy or .h5)")
    st = p.stat()
    return _load_cached(str(p.resolve()), st.st_size, st.st_mtime_ns, keys, classes, val_fraction, seed)


@functools.lru_cache(maxsize=1)  # the spec, the train and the test loader all read the same file
def _load_cached(path: str, size: int, mtime: int, keys: str | None, classes: str | None,
                 val_fraction: float, seed: int) -> ArraySource:
    p = Path(path)
    files = sibling_files(p)
    found = role_arrays(files, parse_keys(keys))
    if "x_train" not in found or "y_train" not in found:
        have = sorted(read_arrays(p))
        raise UserError(f"{p.name}: no training images and labels found among {summarize_names(have)}; "
                        f"name them with --keys X,Y (or x_train=NAME,y_train=NAME)")
    names = parse_classes(classes) or (class_names(found["classes"]) if "classes" in found else None)
    layout = "arrays " + ", ".join(f"{s}: {f.name}" for s, f in files.items())
    return build_source(found, names=names, source=str(p), layout=layout,
                        val_fraction=val_fraction, seed=seed)
