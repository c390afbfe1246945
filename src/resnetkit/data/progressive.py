"""Progressive resizing: early epochs train at a lower input resolution.

Cheaper epochs first, full resolution last (fast.ai's DAWNBench ImageNet runs; FFCV's ResNet
configs ramp 160 -> 192 px). Compute per image scales with the pixel count, so an epoch at
20 px costs about half of one at 28 px for the CIFAR-style nets. The final epochs at full size
let BatchNorm statistics and filters settle at the test resolution (Touvron et al. 2019,
arXiv:1906.06423, on the train/test resolution discrepancy).
"""
from __future__ import annotations

from ..errors import UserError

# Sizes are rounded to a multiple of 4: with a stride-2 stem and two more stride-2 stages, sizes
# 25-28 all give 14/7/4 px feature maps and cost nearly the same, so only multiples of 4 pay.
SIZE_STEP = 4


def epoch_img_size(epoch: int, epochs: int, full: int, min_size: int | None, until: float) -> int:
    """The training input size of ``epoch`` (1-based): linear from ``min_size`` at epoch 1 to
    ``full`` at epoch ``round(until * epochs)``, ``full`` afterwards (and always when min_size is None),
    rounded to a multiple of SIZE_STEP within [min_size, full]."""
    if not min_size or min_size >= full:
        return full
    last = max(1, round(until * epochs))  # the first epoch at full size
    if epoch >= last:
        return full
    size = min_size + (full - min_size) * (epoch - 1) / (last - 1)
    return min(full, max(min_size, SIZE_STEP * round(size / SIZE_STEP)))


def epoch_img_sizes(epochs: int, full: int, min_size: int | None, until: float) -> list[int]:
    """The input size of every epoch, first to last."""
    return [epoch_img_size(e, epochs, full, min_size, until) for e in range(1, epochs + 1)]


def check_progressive(min_size: int | None, until: float, full: int, in_memory: bool) -> None:
    """One clear line for values no run can use."""
    if min_size is None:
        return
    if not 4 <= min_size <= full:
        raise UserError(f"--min-img-size must be between 4 and the input size {full}, got {min_size}")
    if not 0 < until <= 1:
        raise UserError(f"--progressive-until is a fraction of the epochs in (0, 1], got {until}")
    if not in_memory:
        raise UserError("--min-img-size resizes batches of the in-memory path (digits, MNIST, "
                        "Fashion-MNIST, CIFAR); drop it for image folders that stream from disk")
