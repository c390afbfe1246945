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


class Collector:
    """Builds an Interpretation batch by batch (:meth:`add`), from any pass that has the inputs,
    logits and targets at hand: :func:`collect`'s, or the trainer's one test pass."""

    def __init__(self, k: int = 12) -> None:
        self.k, self.seen = k, 0
        self.logits: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.best_loss = torch.empty(0)
        self.best_index = torch.empty(0, dtype=torch.long)
        self.best_images: torch.Tensor | None = None

    @torch.no_grad()
    def add(self, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """On the batch's device, without waiting for it (a GPU pass is not held up per batch);
        :meth:`result` brings everything to the CPU once."""
        device = logits.device
        logits, y, x = logits.float(), y.to(device), x.to(device).contiguous()
        self.logits.append(logits)
        self.targets.append(y)
        pool_images = x if self.best_images is None else torch.cat([self.best_images, x])
        pool_loss = torch.cat([self.best_loss.to(device), per_sample_loss(logits, y)])
        pool_index = torch.cat([self.best_index.to(device),
                                torch.arange(self.seen, self.seen + len(y), device=device)])
        # stable sort: among equal losses the earlier sample wins, whatever the batch size
        order = torch.sort(pool_loss, descending=True, stable=True).indices[:self.k]
        self.best_loss, self.best_index, self.best_images = pool_loss[order], pool_index[order], pool_images[order]
        self.seen += len(y)

    def result(self) -> Interpretation:
        if not self.logits:
            return Interpretation(torch.empty(0, 0), torch.empty(0, dtype=torch.long),
                                  self.best_index.cpu(), torch.empty(0))
        return Interpretation(torch.cat(self.logits).cpu(), torch.cat(self.targets).cpu(), self.best_index.cpu(),
                              self.best_images.cpu() if self.best_images is not None else torch.empty(0))


@torch.no_grad()
def collect(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], k: int = 12) -> Interpretation:
    """One pass in eval mode: all logits and targets, and the ``k`` highest-loss inputs."""
    was_training = model.training
    model.eval()
    collector = Collector(k)
    for x, y in batches:
        collector.add(x, model(x), y)
    model.train(was_training)
    return collector.result()


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
