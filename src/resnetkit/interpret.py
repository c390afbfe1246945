"""What a classifier gets wrong, per sample: fastai's ClassificationInterpretation without fastai.

:func:`collect` runs a model over a loader once and keeps every sample's logits and target, and
the input images of the ``k`` samples with the highest loss (a running top-k, so a whole test
split never sits in memory as images). :func:`most_confused` ranks the off-diagonal cells of a
confusion matrix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .data.augment import TTA


@dataclass
class Interpretation:
    logits: torch.Tensor  # (N, classes), CPU float32, already divided by any temperature
    targets: torch.Tensor  # (N,) int64
    top_index: torch.Tensor  # (k,) positions in the split of the highest-loss samples, worst first
    top_images: torch.Tensor  # (k, C, H, W) their normalized inputs

    @property
    def losses(self) -> torch.Tensor:
        return per_sample_loss(self.logits, self.targets)

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(1)


def per_sample_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each sample (no label smoothing: how wrong, not how it was trained)."""
    return nn.functional.cross_entropy(logits.float(), targets, reduction="none")


@torch.no_grad()
def collect(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], k: int = 12) -> Interpretation:
    """One pass in eval mode: all logits and targets, and the ``k`` highest-loss inputs."""
    was_training = model.training
    model.eval()
    logits_all, targets_all = [], []
    best_loss = torch.empty(0)
    best_index = torch.empty(0, dtype=torch.long)
    best_images: torch.Tensor | None = None
    seen = 0
    for x, y in batches:
        logits = model(x).float().cpu()
        y = y.cpu()
        logits_all.append(logits)
        targets_all.append(y)
        loss = per_sample_loss(logits, y)
        pool_images = x.cpu() if best_images is None else torch.cat([best_images, x.cpu()])
        pool_loss = torch.cat([best_loss, loss])
        pool_index = torch.cat([best_index, torch.arange(seen, seen + len(y))])
        # stable sort: among equal losses the earlier sample wins, whatever the batch size
        order = torch.sort(pool_loss, descending=True, stable=True).indices[:k]
        best_loss, best_index, best_images = pool_loss[order], pool_index[order], pool_images[order]
        seen += len(y)
    model.train(was_training)
    if not logits_all:
        return Interpretation(torch.empty(0, 0), torch.empty(0, dtype=torch.long),
                              best_index, torch.empty(0))
    return Interpretation(torch.cat(logits_all), torch.cat(targets_all), best_index,
                          best_images if best_images is not None else torch.empty(0))


class TTAveraged(nn.Module):
    """The mean of the logits of the views of x (``data.augment.TTA``): ``--tta``, as the run
    evaluated."""

    def __init__(self, model: nn.Module, tta: TTA) -> None:
        super().__init__()
        self.model, self.tta = model, tta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.model(v).float() for v in self.tta.views(x)]).mean(0)


def most_confused(cm: np.ndarray | Sequence[Sequence[int]], classes: Sequence[str], top: int = 10,
                  min_count: int = 1) -> list[tuple[str, str, int]]:
    """(true, predicted, count) of the largest off-diagonal cells, largest first; ties in matrix
    order (as fastai's ``most_confused``)."""
    cm = np.asarray(cm)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:top]
    pairs = [(classes[i], classes[j], int(off[i, j])) for i, j in zip(*np.unravel_index(flat, off.shape))]
    return [p for p in pairs if p[2] >= min_count]
