"""Per-dataset presets: statistics, image size, augmentation and defaults.

A preset is what ``--dataset NAME`` means when no flag overrides it. Mean and std are the
published training-set statistics on the 0..1 scale; augmentation follows the usual recipe of
each family: random crop with padding (plus horizontal flip where the classes are symmetric:
CIFAR, Fashion-MNIST; never for digits, where a flipped 2 is no 2), and random resized crop with
flip for photos (``imagefolder``).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from ..config import check_choice
from ..errors import UserError
from ..specs import IMAGENET_MEAN, IMAGENET_STD, PHOTO_RESIZE_RATIO, DatasetSpec
from .augment import TTA


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    in_chans: int
    img_size: int  # default model input size
    native_size: int | None  # stored image size of the source (None: varies, photos)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    batch_size: int  # fallback when neither the flag nor the recipe sets one
    # -- augmentation at level "basic" ("strong" adds cutout; "none" nothing)
    pad: int = 0  # random-crop padding, in pixels at native_size (scaled with img_size)
    pad_mode: str = "constant"  # constant (black) | reflect
    flip: bool = False
    rrc_scale: tuple[float, float] | None = None  # random resized crop area range (photos)
    cutout: float = 0.25  # strong: side of the erased square, as a fraction of img_size
    photo: bool = False  # eval: resize shorter side to img_size*256/224 then center crop

    def pad_at(self, img_size: int) -> int:
        if not self.pad:
            return 0
        return max(1, round(self.pad * img_size / (self.native_size or img_size)))

    def resize_size(self, img_size: int) -> int | None:
        return round(img_size * PHOTO_RESIZE_RATIO) if self.photo else None


_GRAY_DIGITS = tuple(str(i) for i in range(10))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("digits", "scikit-learn's 1,797 8x8 handwritten digits (bundled, no download)",
               in_chans=1, img_size=8, native_size=8,
               # computed on the fixed 80% training split, pixels scaled 0..16 -> 0..255
               mean=(0.3054,), std=(0.3760,), batch_size=64,
               pad=1, cutout=0.375),
        Preset("mnist", "MNIST handwritten digits, 60,000 train / 10,000 test, 28x28",
               in_chans=1, img_size=28, native_size=28, mean=(0.1307,), std=(0.3081,),
               batch_size=128, pad=2),
        Preset("fashion-mnist", "Fashion-MNIST clothing, 60,000 train / 10,000 test, 28x28",
               in_chans=1, img_size=28, native_size=28, mean=(0.2860,), std=(0.3530,),
               batch_size=128, pad=2, flip=True),
        Preset("cifar10", "CIFAR-10, 50,000 train / 10,000 test, 32x32 RGB",
               in_chans=3, img_size=32, native_size=32,
               mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
               batch_size=128, pad=4, pad_mode="reflect", flip=True, cutout=0.5),
        Preset("cifar100", "CIFAR-100, 50,000 train / 10,000 test, 32x32 RGB",
               in_chans=3, img_size=32, native_size=32,
               mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
               batch_size=128, pad=4, pad_mode="reflect", flip=True, cutout=0.5),
        # 64 px: small enough to train on a laptop CPU and to take the cached in-memory path.
        Preset("imagefolder", "your photos: --data-dir DIR with one sub-folder per class",
               in_chans=3, img_size=64, native_size=None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
               batch_size=64, flip=True, rrc_scale=(0.35, 1.0), photo=True),
        # Channels, size and statistics come from the training arrays (data/arrays.py); no flip,
        # since a mirrored digit or hand sign may be another class.
        Preset("arrays", "your arrays: --data-dir FILE (.npz, .npy, .h5; Keras or SIGNS keys)",
               in_chans=3, img_size=32, native_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
               batch_size=64, pad=4, pad_mode="reflect"),
        Preset("csv", "your photos listed in a CSV: --data-dir labels.csv (columns path,label[,split])",
               in_chans=3, img_size=64, native_size=None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
               batch_size=64, flip=True, rrc_scale=(0.35, 1.0), photo=True),
    )
}


def list_datasets() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"unknown dataset {name!r}; {hint}choose one of {', '.join(PRESETS)}") from None


def tta_for(dataset: str, spec: DatasetSpec) -> TTA:
    """The views ``--tta`` averages for ``dataset`` normalized as ``spec``: those its training
    augmentation teaches (a flip only where it trains with flips; no flipped digits)."""
    preset = get_preset(dataset)
    crop = bool(preset.pad) or preset.photo
    return TTA.of(flip=preset.flip, crop=crop, pad_mode="reflect" if preset.photo else preset.pad_mode,
                  mean=spec.mean, std=spec.std)


def check_augment(level: str | None) -> str:
    return check_choice("augment", level or "basic")


def default_classes(name: str) -> tuple[str, ...] | None:
    """Class names known without reading any file (None: they come from the data)."""
    return {"digits": _GRAY_DIGITS, "mnist": _GRAY_DIGITS, "fashion-mnist": FASHION_CLASSES,
            "cifar10": CIFAR10_CLASSES}.get(name)
