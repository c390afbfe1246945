"""Mixup and CutMix of whole batches on the training device (``--mixup``, ``--cutmix``).

As torchvision's classification references (references/classification/train.py) do, with
``torchvision.transforms.v2.MixUp`` / ``CutMix`` picked by ``v2.RandomChoice``: each batch is
mixed with itself rolled by one sample, with one Beta(alpha, alpha) weight per batch (Zhang et
al. 2017, arXiv:1710.09412; Yun et al. 2019, arXiv:1905.04899). The references mix every batch;
``--mix-prob`` mixes a share of them, as timm does. Targets come back as class probabilities
(N, classes) either way; the loss adds its label smoothing to them.

The random draws come from torch's global generator, which the trainer seeds and saves with the
resume state, so a resumed run mixes as the uninterrupted one did.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F
from torchvision.transforms import v2

from ..config import RunConfig


class Mixer:
    """``(x, y) -> (x, targets)``: a mixed batch and its soft targets, or (x, y) unchanged when
    neither --mixup nor --cutmix is on."""

    def __init__(self, cfg: RunConfig, num_classes: int) -> None:
        ops: list[v2.Transform] = []
        if cfg.mixup > 0:
            ops.append(v2.MixUp(alpha=cfg.mixup, num_classes=num_classes))
        if cfg.cutmix > 0:
            ops.append(v2.CutMix(alpha=cfg.cutmix, num_classes=num_classes))
        probs = [1 - cfg.mix_switch_prob, cfg.mix_switch_prob] if len(ops) == 2 else [1.0]
        self.choice = v2.RandomChoice(ops, p=probs) if ops else None
        self.prob = cfg.mix_prob
        self.num_classes = num_classes

    @property
    def active(self) -> bool:
        return self.choice is not None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.choice is None:
            return x, y
        if self.prob < 1 and float(torch.rand(())) >= self.prob:
            return x, F.one_hot(y, self.num_classes).float()  # unmixed, in the same target form
        return self.choice(x, y)
