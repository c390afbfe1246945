"""Class imbalance: loss weights (``--class-weights balanced``) and a class-balanced order of
the training samples (``--sampler balanced``).

Both read the class counts of the whole training split (every rank sees the same labels). The
sampler draws each epoch's order from the loader's generator, seeded by (seed, epoch), so the
ranks agree on it and a resumed run draws what the uninterrupted one drew.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import WeightedRandomSampler

from ..config import RunConfig
from ..data.sampling import Sampler


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(labels.long().cpu(), minlength=num_classes)


def balanced_class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """scikit-learn's ``compute_class_weight("balanced")``: n_samples / (n_classes * count), so
    every class carries the same total weight (King & Zeng 2001). A class absent from the
    training split gets weight 0 (its label never occurs; scikit-learn refuses such a class)."""
    counts = class_counts(labels, num_classes).double()
    present = int((counts > 0).sum())
    weights = labels.numel() / (present * counts.clamp(min=1))
    return torch.where(counts > 0, weights, torch.zeros_like(weights)).float()


def balanced_sampler(labels: torch.Tensor, num_classes: int) -> Sampler:
    """An epoch order of ``len(labels)`` indices drawn with replacement, each sample with weight
    1 / (its class's count): every class is drawn equally often in expectation."""
    labels = labels.long().cpu()
    per_sample = (1.0 / class_counts(labels, num_classes).double().clamp(min=1))[labels]

    def order(generator: torch.Generator) -> torch.Tensor:
        drawn = WeightedRandomSampler(per_sample, labels.numel(), replacement=True, generator=generator)
        return torch.tensor(list(drawn), dtype=torch.long)

    return order


def setup_imbalance(cfg: RunConfig, loader: Any, num_classes: int, device: torch.device
                    ) -> torch.Tensor | None:
    """Give the training loader the ``--sampler`` order and return the ``--class-weights`` loss
    weights on ``device`` (None: unweighted)."""
    if cfg.sampler == "shuffle" and cfg.class_weights == "none":
        return None
    labels = loader.targets()
    if cfg.sampler == "balanced":
        loader.sampler = balanced_sampler(labels, num_classes)
    if cfg.class_weights == "balanced":
        return balanced_class_weights(labels, num_classes).to(device)
    return None
