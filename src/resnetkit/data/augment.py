"""Augmentation of whole batches with tensor ops, on the device that holds the data.

airbench style: every random number of an epoch is drawn at once on the CPU from a seeded
``torch.Generator`` (so a seed gives the same batches on every device), copied to the device
once, and each batch is augmented by a few gathers: no per-sample Python, no host sync.

- random crop with padding: a gather of rows and one of columns, with indices shifted per
  sample; padding is either black (indices out of range are masked) or reflect (indices folded
  back), so no padded copy of the batch is made;
- horizontal flip: folded into the column gather (the indices run backwards);
- random resized crop (photos): one ``affine_grid`` + ``grid_sample`` with per-sample scale,
  aspect ratio, position and flip;
- cutout (DeVries & Taylor 2017, arXiv:1708.04552): a square per sample set to 0 after
  normalization, i.e. to the mean color.

Test-time augmentation (``--tta``) averages the logits of the views ``TTA.views`` makes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BatchAugment:
    out_size: int  # model input size
    pad: int = 0  # random crop padding, pixels
    pad_mode: str = "constant"  # constant (black) | reflect
    flip_p: float = 0.0  # probability of a horizontal flip
    rrc_scale: tuple[float, float] | None = None  # random resized crop: area fraction range
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    cutout: int = 0  # side of the erased square, pixels (0: none)

    @property
    def active(self) -> bool:
        return bool(self.pad or self.flip_p or self.rrc_scale or self.cutout)

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """All random parameters for n samples, drawn in a fixed order (CPU tensors)."""
        p: dict[str, torch.Tensor] = {}
        p["flip"] = torch.rand(n, generator=generator) < self.flip_p
        if self.rrc_scale is not None:
            lo, hi = self.rrc_scale
            area = torch.empty(n).uniform_(lo, hi, generator=generator)
            log_r = torch.empty(n).uniform_(math.log(self.rrc_ratio[0]), math.log(self.rrc_ratio[1]),
                                            generator=generator)
            p["crop_w"] = torch.sqrt(area * torch.exp(log_r)).clamp_(max=1.0)
            p["crop_h"] = torch.sqrt(area / torch.exp(log_r)).clamp_(max=1.0)
            p["center"] = torch.rand(n, 2, generator=generator) * 2 - 1
        elif self.pad:
            p["shift"] = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=generator)
        if self.cutout:
            p["cut"] = torch.randint(0, self.out_size, (n, 2), generator=generator)
        return p

    def geometry(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """Crop/flip a uint8 batch. Random resized crop returns float (0..255) at out_size;
        crop and flip keep uint8 and the input size."""
        if self.rrc_scale is not None:
            return resized_crop(x, p["crop_w"], p["crop_h"], p["center"], p["flip"], self.out_size)
        if self.pad or self.flip_p:
            shift = p.get("shift")
            return crop_flip(x, shift, self.pad, self.pad_mode, p["flip"])
        return x

    def erase(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cutout on a normalized batch."""
        if not self.cutout:
            return x
        return cutout(x, p["cut"], self.cutout)


def crop_flip(x: torch.Tensor, shift: torch.Tensor | None, pad: int, pad_mode: str,
              flip: torch.Tensor) -> torch.Tensor:
    """Per-sample padded random crop and horizontal flip of a batch (B, C, H, W): two gathers,
    rows then columns, with per-sample shifted (and, for a flip, reversed) indices.

    ``shift`` (B, 2) holds (dy, dx) in [0, 2 * pad]: the crop's top-left corner in the padded image.
    """
    b, c, h, w = x.shape
    dev = x.device
    rows = torch.arange(h, device=dev).expand(b, h)
    cols = torch.arange(w, device=dev).expand(b, w)
    if shift is not None and pad:
        rows = rows + (shift[:, :1] - pad)
        cols = cols + (shift[:, 1:] - pad)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    mask = None
    if pad_mode == "reflect":
        rows, cols = _reflect(rows, h), _reflect(cols, w)
    else:
        mask = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[:, None, None, :]
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    out = x.gather(2, rows[:, None, :, None].expand(b, c, h, w))
    out = out.gather(3, cols[:, None, None, :].expand(b, c, h, w))
    return out * mask if mask is not None else out


def _reflect(idx: torch.Tensor, n: int) -> torch.Tensor:
    # Reflection without repeating the edge (torch's "reflect" padding); valid while pad < n.
    idx = idx.abs()
    return torch.where(idx >= n, 2 * (n - 1) - idx, idx)


def resized_crop(x: torch.Tensor, crop_w: torch.Tensor, crop_h: torch.Tensor, center: torch.Tensor,
                 flip: torch.Tensor, out_size: int) -> torch.Tensor:
    """Random resized crop of a batch: crop_w/crop_h are fractions of the source side, center in
    [-1, 1] scaled so the crop stays inside; bilinear, output float (B, C, out, out)."""
    b, c = x.shape[:2]
    cx = center[:, 0] * (1 - crop_w)
    cy = center[:, 1] * (1 - crop_h)
    sx = torch.where(flip, -crop_w, crop_w)
    zero = torch.zeros_like(cx)
    theta = torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, crop_h, cy], 1)], 1)
    grid = F.affine_grid(theta, [b, c, out_size, out_size], align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def cutout(x: torch.Tensor, cut: torch.Tensor, size: int) -> torch.Tensor:
    """Zero a size x size square per sample, centered at ``cut`` (B, 2) = (row, col), clipped."""
    h, w = x.shape[-2:]
    top = (cut[:, :1] - size // 2)
    left = (cut[:, 1:] - size // 2)
    r = torch.arange(h, device=x.device)[None]
    q = torch.arange(w, device=x.device)[None]
    inside = ((r >= top) & (r < top + size))[:, :, None] & ((q >= left) & (q < left + size))[:, None, :]
    return x * (~inside)[:, None].to(x.dtype)


def resize_float(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a float batch to size x size (antialiased bilinear: a downscale averages, not skips)."""
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8-valued batch to size x size (antialiased bilinear), rounded like uint8 data."""
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255)


# --tta (Jordan 2024, airbench, arXiv:2404.00498): the logits of the views the training
# augmentation taught, averaged with equal weights: the image, its horizontal flip where the
# dataset trains with flips, and each shifted by one pixel up-left and down-right where it
# trains with random crops, padded as training pads (black, or reflected). On 11 trained
# Fashion-MNIST runs of the fast net (7-30 epochs) the shifted views added a median 0.22 points
# of test accuracy to flip alone (-0.03 to +0.44; BENCHMARKS.md).
@dataclass(frozen=True)
class TTA:
    flip: bool = True
    shift: bool = True
    fill: tuple[float, ...] | None = None  # per channel, normalized: the padding; None: reflect

    @classmethod
    def of(cls, flip: bool, crop: bool, pad_mode: str, mean: tuple[float, ...],
           std: tuple[float, ...]) -> "TTA":
        """The views of data that trains with ``flip`` and random crops (``crop``) padded in
        ``pad_mode`` ("constant" is black), normalized by ``mean`` and ``std``."""
        fill = tuple(-m / s for m, s in zip(mean, std)) if pad_mode == "constant" else None
        return cls(flip=flip, shift=crop, fill=fill)

    @property
    def count(self) -> int:
        return (1 + self.flip) * (1 + 2 * self.shift)

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The ``count`` views of a normalized batch ``x`` (B, C, H, W), each of its size."""
        h, w = x.shape[-2:]
        images = [x, x.flip(-1)] if self.flip else [x]
        views = list(images)
        if self.shift:
            for img in images:
                if self.fill is None:
                    padded = F.pad(img, (1, 1, 1, 1), mode="reflect")
                else:
                    fill = torch.tensor(self.fill, dtype=img.dtype, device=img.device).view(1, -1, 1, 1)
                    padded = F.pad(img - fill, (1, 1, 1, 1)) + fill  # pads with the black of each channel
                views += [padded[..., :h, :w], padded[..., 2:, 2:]]
        return views
