"""DatasetSpec: what a model needs to know about its data, stored in every checkpoint.

Like torchvision's ``Weights.meta`` and timm's ``PretrainedCfg``, the spec carries the labels and
the preprocessing, so predict, evaluate and export never ask again for mean, std, size or classes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping


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
