"""Data handed over in Python: ``resnetkit.train(data=(x, y), ...)`` or ``data=a_torch_dataset``.

Arrays and tensors become an :class:`~resnetkit.data.arrays.ArraySource` (the rules of
:mod:`.arrays`: NHWC or NCHW, uint8 or float, 1-D or one-hot labels) and take the in-memory
fast path with resnetkit's augmentation.

A ``torch.utils.data.Dataset`` returning ``(image, label)`` is streamed as it is, through a
DataLoader each epoch, so its own transforms (augmentation included) run on every sample; each
sample's random draws are seeded by (seed, epoch, index), as for image folders. Images: CHW
tensors (or HW, NumPy arrays, PIL images), all of one square size. Labels: integers, or class
names with ``classes``. What reaches the checkpoint, so that predict repeats it:

- ``mean``/``std`` given: the Dataset already normalizes with them (``v2.Normalize(mean, std)``
  after ``ToTensor``/``ToDtype(scale=True)``), and the model learns on its output as it is;
- else: its images are pixels (uint8, or float in 0..1 as ``ToTensor`` gives) and resnetkit
  computes mean and std over the training Dataset (one pass) and normalizes on the device.

Either way the spec records the image size and mean/std; predict resizes a photo to the size
and normalizes it. Other steps of the Dataset's transform (a crop) are not recorded.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import UserError
from .arrays import ArraySource, build_source
from .datasets import ArraySplit
from .presets import Preset
from .sampling import seeded_generator
from .streaming import FolderLoader
from .transforms import Normalizer

IN_MEMORY = "arrays in memory"
PROBE_BATCH = 256


def as_source(data: Any, val_data: Any = None, test_data: Any = None, *,
              classes: Sequence[str] | None = None, mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None, val_fraction: float = 0.2, seed: int = 0) -> Any:
    """An ArraySource from ``(x, y)`` pairs, or a DatasetSource from torch Datasets."""
    if (mean is None) != (std is None):
        raise UserError("pass mean and std together (one value per channel, on the 0..1 scale)")
    names = tuple(str(c) for c in classes) if classes is not None else None
    if isinstance(data, Dataset):
        return dataset_source(data, val_data, test_data, classes=names, mean=mean, std=std,
                              val_fraction=val_fraction, seed=seed)
    arrays = dict(zip(("x_train", "y_train"), _pair(data, "data")))
    for split, pair in (("val", val_data), ("test", test_data)):
        if pair is not None:
            arrays[f"x_{split}"], arrays[f"y_{split}"] = _pair(pair, f"{split}_data")
    held = [s for s in ("val", "test") if f"x_{s}" in arrays]
    layout = "arrays in memory: train" + "".join(f", {s}" for s in held)
    src = build_source(arrays, names=names, source=IN_MEMORY, layout=layout, val_fraction=val_fraction,
                       seed=seed)
    if mean is not None:
        src.mean, src.std = _stats(mean, std, src.in_chans)
    return src


def _pair(value: Any, what: str) -> tuple[Any, Any]:
    if isinstance(value, Dataset):
        raise UserError(f"{what}: a Dataset goes with a Dataset as data=; with arrays pass an (x, y) pair")
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise UserError(f"{what} takes an (images, labels) pair of arrays or tensors, or a torch Dataset")
    return value[0], value[1]


def _stats(mean: Sequence[float], std: Sequence[float], in_chans: int
           ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    m, s = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(m) != in_chans or len(s) != in_chans or min(s) <= 0:
        raise UserError(f"mean and std take {in_chans} value(s), one per channel (std > 0); "
                        f"got {list(m)} and {list(s)}")
    return m, s


# ------------------------------------------------------------------ torch Datasets
@dataclass
class DatasetSource:
    """Torch Datasets by split, streamed; see the module doc for what is recorded."""

    datasets: dict[str, Dataset]
    classes: tuple[str, ...]
    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalized: bool  # the Dataset normalizes itself with mean/std
    scale: float  # float pixels times this are 0..255 (255 for ToTensor's 0..1)
    source: str
    layout: str
    kind: str = "dataset"

    def preset(self, base: Preset) -> Preset:
        return replace(base, in_chans=self.in_chans, img_size=self.img_size, native_size=self.img_size,
                       mean=self.mean, std=self.std)

    @property
    def test_is_val(self) -> bool:
        return "test" not in self.datasets

    @property
    def val_source(self) -> str:
        return "held out of data at random" if "held out at random" in self.layout else "val_data"

    def _dataset(self, split: str) -> "_Prepared":
        order = {"train": ("train",), "val": ("val", "test"), "test": ("test", "val")}[split]
        ds = next(self.datasets[s] for s in order if s in self.datasets)
        return _Prepared(ds, self.classes, None if self.normalized else self.scale)

    def loader(self, split: str, *, train: bool, device: torch.device, batch_size: int, seed: int,
               workers: int | None, rank: int = 0, world_size: int = 1) -> FolderLoader:
        norm: Callable[[torch.Tensor], torch.Tensor] = (
            _as_float if self.normalized else Normalizer(self.mean, self.std, device))
        return FolderLoader(self._dataset(split), batch_size=batch_size, train=train, seed=seed,  # type: ignore[arg-type]
                            device=device, normalizer=norm, workers=workers or 0, rank=rank,
                            world_size=world_size)

    def split(self, name: str) -> ArraySplit:
        """The split as uint8 pixels in memory (for ``data check``)."""
        xs, ys = [], []
        for x, y in DataLoader(self._dataset(name), batch_size=PROBE_BATCH):
            if self.normalized:  # back to pixels: x * std + mean on the 0..1 scale
                x = x * torch.tensor(self.std).view(-1, 1, 1) + torch.tensor(self.mean).view(-1, 1, 1)
                x = x * 255
            xs.append(x.float().round().clamp(0, 255).to(torch.uint8))
            ys.append(y)
        return ArraySplit(torch.cat(xs), torch.cat(ys).long(), self.classes, self.source)


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32)


class _Prepared(Dataset):
    """A user's Dataset with seeded per-sample randomness, CHW images and int labels; ``scale``
    None keeps float images as they are (already normalized), else gives 0..255 values."""

    def __init__(self, ds: Dataset, classes: Sequence[str], scale: float | None) -> None:
        self.ds, self.scale = ds, scale
        self.index = {c: i for i, c in enumerate(classes)}
        self.epoch_seed = 0  # set by FolderLoader each epoch

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    @functools.cached_property
    def labels(self) -> list[int]:
        """Every label, read once through the Dataset (for --sampler and --class-weights)."""
        return [label_index(self.ds[i][1], self.index) for i in range(len(self))]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeded_generator(self.epoch_seed, i).initial_seed())
            x, y = self.ds[i]
        x = image_tensor(x)
        if self.scale is not None and x.is_floating_point():
            x = x.to(torch.float32) * self.scale
        return x, label_index(y, self.index)


def image_tensor(x: Any) -> torch.Tensor:
    """A Dataset's image as a CHW tensor (from CHW/HW tensors or arrays, or a PIL image)."""
    if isinstance(x, Image.Image):
        from torchvision.transforms.v2.functional import pil_to_tensor

        return pil_to_tensor(x)
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise UserError(f"a Dataset image must be a CHW tensor (or HW, or a PIL image); got shape "
                        f"{tuple(t.shape)}")
    return t


def label_index(y: Any, index: dict[str, int]) -> int:
    if isinstance(y, str):
        if y not in index:
            raise UserError(f"label {y!r} is not among the classes {list(index)}")
        return index[y]
    return int(y.item() if isinstance(y, torch.Tensor) else y)


def dataset_source(train: Dataset, val: Any, test: Any, *, classes: tuple[str, ...] | None,
                   mean: Sequence[float] | None, std: Sequence[float] | None, val_fraction: float,
                   seed: int) -> DatasetSource:
    datasets = {"train": train}
    for split, ds in (("val", val), ("test", test)):
        if ds is not None:
            if not isinstance(ds, Dataset):
                raise UserError(f"{split}_data: pass a torch Dataset, as data= is one")
            datasets[split] = ds
    if len(train) < 2:  # type: ignore[arg-type]
        raise UserError("data: the Dataset holds fewer than two samples")
    probe = probe_dataset(train, classes, need_stats=mean is None)
    in_chans, size = probe["shape"][0], probe["shape"][1]
    names = classes or tuple(str(i) for i in range(probe["max_label"] + 1))
    if probe["max_label"] >= len(names) or len(names) < 2:
        raise UserError(f"data: labels go up to {probe['max_label']} but there are {len(names)} classes "
                        f"({', '.join(names)}); pass classes= with one name per label, two or more")
    if mean is not None:
        m, s = _stats(mean, std or (), in_chans)
    else:
        m, s = probe["mean"], probe["std"]
    layout = "torch Dataset " + ", ".join(f"{k}: {type(v).__name__}" for k, v in datasets.items())
    if len(datasets) == 1:
        datasets["train"], datasets["val"] = _random_split(train, val_fraction, seed)
        layout += f"; no val_data or test_data: {val_fraction:g} held out at random with seed {seed}"
    return DatasetSource(datasets, names, in_chans, size, m, s, mean is not None, probe["scale"],
                         f"<{type(train).__name__}>", layout)


def _random_split(ds: Dataset, fraction: float, seed: int) -> tuple[Subset, Subset]:
    if not 0.0 < fraction < 1.0:
        raise UserError(f"val_fraction must be between 0 and 1 (exclusive), got {fraction}")
    n = len(ds)  # type: ignore[arg-type]
    k = min(max(round(n * fraction), 1), n - 1)
    perm = torch.randperm(n, generator=seeded_generator(seed, "val-split", "dataset")).tolist()
    return Subset(ds, sorted(perm[k:])), Subset(ds, sorted(perm[:k]))


def probe_dataset(ds: Dataset, classes: Sequence[str] | None, need_stats: bool) -> dict[str, Any]:
    """One pass over a Dataset (the first sample only when no statistics are needed and the
    classes are named): image shape, the largest label, pixel scale, per-channel mean/std."""
    first = image_tensor(ds[0][0])
    c, h, w = first.shape
    if h != w:
        raise UserError(f"data: Dataset images are {h}x{w}; make them square (v2.Resize((s, s))) so that "
                        f"predict can give photos the same size")
    out: dict[str, Any] = {"shape": (c, h), "scale": 1.0, "max_label": len(classes or ()) - 1}
    if not need_stats and classes:
        return out
    total = torch.zeros(2, c, dtype=torch.float64)  # per channel: sum of x, sum of x**2
    count, lo, hi, top = 0, 0.0, 0.0, 0
    for x, y in DataLoader(_Prepared(ds, classes or (), None), batch_size=PROBE_BATCH):
        x = x.to(torch.float64).transpose(0, 1).reshape(c, -1)
        total += torch.stack([x.sum(1), (x * x).sum(1)])
        count += x.shape[1]
        lo, hi, top = min(lo, float(x.min())), max(hi, float(x.max())), max(top, int(y.max()))
    out["max_label"] = max(out["max_label"], top)
    if lo < 0 and need_stats:
        raise UserError("data: the Dataset's images hold negative values, so they look normalized "
                        "already; pass mean= and std= (the values it normalizes with)")
    out["scale"] = 255.0 if first.is_floating_point() and hi <= 1.0 else 1.0
    mean, sq = total / count * (out["scale"] / 255)  # on the 0..1 scale
    std = (sq * (out["scale"] / 255) - mean**2).clamp_min(0).sqrt().clamp_min(1e-3)
    out["mean"] = tuple(round(v, 4) for v in mean.tolist())
    out["std"] = tuple(round(v, 4) for v in std.tolist())
    return out
