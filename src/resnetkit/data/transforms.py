"""Reading images and the per-image transforms shared by loaders, predict and export.

Exactness contract: for a sample of any dataset, ``eval_transform(spec)(load_image(file))`` gives
the very tensor the test loader yields for it. Both paths run the same steps on uint8 tensors:

1. mode conversion to L or RGB (:func:`to_mode`), then ``pil_to_tensor``;
2. geometry on uint8 (:class:`Geometry`: resize, center crop; torchvision's antialiased kernels,
   which give bit-identical results for one image and for a batch);
3. normalization ``x * (1 / (255 * std)) - mean / std`` in float32 (:class:`Normalizer`), two
   correctly rounded elementwise ops, so CPU, GPU, one image or a batch agree to the bit.

Mode conversion: palette (with or without transparency), RGBA, LA, CMYK, 1-bit and YCbCr become
RGB or L through Pillow (alpha is dropped, as torchvision's ImageFolder loader does); 16-bit and
32-bit integer grayscale are scaled to 8 bits (Pillow's own conversion would clip them to white).
EXIF orientation is applied, so a phone photo is used the way a viewer shows it.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..specs import DatasetSpec

# File extensions read as images (torchvision's ImageFolder list), compared case-insensitively.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageReadError(Exception):
    """A file that cannot be used as an image: missing, empty, corrupt, truncated, not an image,
    or over Pillow's decompression-bomb limit. Not a UserError: callers decide per file."""

    def __init__(self, path: str | os.PathLike[str], reason: str = "unreadable") -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode an image file (EXIF orientation applied); raise ImageReadError."""
    p = Path(path)
    try:
        if p.stat().st_size == 0:
            raise ImageReadError(p, "empty file (0 bytes)")
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its pixel limit; treat that as refusal too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                im.load()
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(p, f"refused, over the decompression-bomb limit ({e})") from None
    except UnidentifiedImageError:
        raise ImageReadError(p, "not an image Pillow can read") from None
    except FileNotFoundError:
        raise ImageReadError(p, "file not found") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
        raise ImageReadError(p, f"corrupt or truncated ({str(e) or type(e).__name__})") from None
    return _exif_upright(im)


def _exif_upright(im: Image.Image) -> Image.Image:
    try:
        if im.getexif().get(0x0112, 1) in (None, 1):  # 0x0112: the EXIF Orientation tag
            return im
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make a good image unreadable
        return im


def to_mode(img: Image.Image, in_chans: int) -> Image.Image:
    """Convert any Pillow mode to L (in_chans 1) or RGB (in_chans 3)."""
    target = "L" if in_chans == 1 else "RGB"
    if img.mode == target:
        return img
    if img.mode.startswith("I") or img.mode == "F":
        img = _to_8bit_gray(img)
    elif img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    try:
        return img.convert(target)
    except (ValueError, OSError) as e:
        raise ImageReadError(getattr(img, "filename", "") or "<image>",
                             f"cannot convert mode {img.mode} to {target} ({e})") from None


def _to_8bit_gray(img: Image.Image) -> Image.Image:
    a = np.asarray(img)
    if img.mode == "F":
        a = a * 255.0 if a.size and float(a.max()) <= 1.0 else a
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    a = a.astype(np.int64)
    # I;16 is 16-bit by definition; a 32-bit "I" image with values above 255 is taken as 16-bit.
    if img.mode.startswith("I;16") or (a.size and int(a.max()) > 255):
        a = np.clip(a, 0, 65535) >> 8
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")


def pil_to_uint8(img: Image.Image, in_chans: int) -> torch.Tensor:
    """PIL image -> uint8 tensor (in_chans, H, W)."""
    return TF.pil_to_tensor(to_mode(img, in_chans))


def interpolation_mode(name: str) -> v2.InterpolationMode:
    return v2.InterpolationMode(name)


@dataclass(frozen=True)
class Geometry:
    """uint8 resize/crop to ``out`` x ``out``: with ``resize`` None the whole image is resized to
    out x out; else the shorter side goes to ``resize`` and the center out x out is kept."""

    out: int
    resize: int | None = None
    interpolation: str = "bilinear"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mode = interpolation_mode(self.interpolation)
        if self.resize is None:
            if tuple(x.shape[-2:]) != (self.out, self.out):
                x = TF.resize(x, [self.out, self.out], interpolation=mode, antialias=True)
            return x
        if min(x.shape[-2:]) != self.resize:
            x = TF.resize(x, [self.resize], interpolation=mode, antialias=True)
        if tuple(x.shape[-2:]) != (self.out, self.out):
            x = TF.center_crop(x, [self.out, self.out])
        return x


def eval_geometry(spec: DatasetSpec) -> Geometry:
    return Geometry(spec.img_size, spec.resize_size, spec.interpolation)


class Normalizer:
    """uint8 (or uint8-valued float) tensor -> float32 ``(x / 255 - mean) / std``, computed as
    ``x * scale - shift`` so that every device and batch size gives the same bits."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"):
        m = np.asarray(mean, dtype=np.float64)
        s = np.asarray(std, dtype=np.float64)
        self.scale = torch.tensor(1.0 / (255.0 * s), dtype=torch.float32, device=device).view(-1, 1, 1)
        self.shift = torch.tensor(m / s, dtype=torch.float32, device=device).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32).mul(self.scale).sub_(self.shift)


def eval_transform(spec: DatasetSpec) -> Callable[[Image.Image | str | os.PathLike[str]], torch.Tensor]:
    """PIL image (or a path) -> normalized float tensor (C, H, W), exactly as the test loader."""
    geometry = eval_geometry(spec)
    normalize = Normalizer(spec.mean, spec.std)

    def transform(img: Image.Image | str | os.PathLike[str]) -> torch.Tensor:
        if not isinstance(img, Image.Image):
            img = load_image(img)
        return normalize(geometry(pil_to_uint8(img, spec.in_chans)))

    return transform


def rgb_to_gray_uint8(x: torch.Tensor) -> torch.Tensor:
    """RGB uint8 (..., 3, H, W) -> L uint8 (..., 1, H, W) with Pillow's exact fixed-point formula
    (ITU-R 601-2 luma: L = (19595 R + 38470 G + 7471 B + 2**15) >> 16)."""
    r, g, b = x.to(torch.int32).unbind(-3)
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16).to(torch.uint8).unsqueeze(-3)


def match_channels(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Make a uint8 image batch gray or RGB the way Pillow's convert would."""
    c = x.shape[-3]
    if c == in_chans:
        return x
    if in_chans == 3 and c == 1:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()
    if in_chans == 1 and c == 3:
        return rgb_to_gray_uint8(x)
    raise ValueError(f"cannot turn {c} channels into {in_chans}")
