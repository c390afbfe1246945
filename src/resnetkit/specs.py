"""DatasetSpec: what a model needs to know about its data, stored in every checkpoint.

Like torchvision's ``Weights.meta`` and timm's ``PretrainedCfg``, the spec carries the labels and
the preprocessing, so predict, evaluate and export never ask again for mean, std, size or classes.
:class:`Preprocessing` is what pretrained weights expect; :meth:`DatasetSpec.with_preprocessing`
makes a dataset's spec use it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

# torchvision's ImageNet statistics, on the 0..1 scale: the customary choice for photos, and what
# pretrained torchvision weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Eval resize of photos: shorter side to img_size * 256/224, then center crop (the ImageNet habit).
PHOTO_RESIZE_RATIO = 256 / 224


@dataclass(frozen=True)
class Preprocessing:
    """What pretrained weights were trained with, as DatasetSpec fields. ``img_size`` None (the
    weights do not say) changes only mean and std; the data keeps its size."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    img_size: int | None = None  # the center crop
    resize_size: int | None = None
    interpolation: str = "bilinear"


def channel_stats(values: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """Per-channel statistics for ``in_chans`` channels, mapped as conv1 is: averaged for 1 channel,
    repeated for more."""
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if in_chans == 1:
        return (round(sum(values) / len(values), 6),)
    return tuple(values[i % len(values)] for i in range(in_chans))


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: tuple[str, ...]
    in_chans: int  # 1 for grayscale data, 3 for RGB
    img_size: int  # the square model input size, in pixels
    mean: tuple[float, ...]  # per channel, on the 0..1 scale
    std: tuple[float, ...]
    # Eval preprocessing: resize the shorter side to `resize_size` then center-crop `img_size`;
    # None resizes the whole image straight to img_size x img_size (small images such as MNIST).
    resize_size: int | None = None
    interpolation: str = "bilinear"  # bilinear | bicubic | nearest (torchvision InterpolationMode)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def with_preprocessing(self, pre: Preprocessing, img_size: int | None = None) -> "DatasetSpec":
        """This spec with ``pre``'s statistics and geometry (channels mapped as conv1 is). An
        ``img_size`` other than the weights' crop wins, with the eval resize at img_size * 256/224."""
        changes: dict[str, Any] = {"mean": channel_stats(pre.mean, self.in_chans),
                                   "std": channel_stats(pre.std, self.in_chans)}
        if pre.img_size is not None:
            size = pre.img_size if img_size is None else img_size
            resize = pre.resize_size
            if size != pre.img_size and resize is not None:
                resize = round(size * PHOTO_RESIZE_RATIO)
            changes.update(img_size=size, resize_size=resize, interpolation=pre.interpolation)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["classes"] = list(self.classes)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DatasetSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("classes", "mean", "std"):
            kw[k] = tuple(kw[k])
        return cls(**kw)
