"""Class imbalance: scikit-learn's balanced weights, the balanced sampler's class frequencies."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from resnetkit.data.memory import MemoryLoader
from resnetkit.data.transforms import Normalizer
from resnetkit.training.sampler import balanced_class_weights, balanced_sampler, class_counts

LABELS = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)


def test_class_weights_follow_sklearns_formula() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    expected = compute_class_weight("balanced", classes=np.arange(3), y=LABELS.numpy())
    got = balanced_class_weights(LABELS, 3)
    assert torch.allclose(got.double(), torch.from_numpy(expected), rtol=1e-6)
    assert got.tolist() == pytest.approx([100 / (3 * 90), 100 / (3 * 9), 100 / 3], rel=1e-6)
    # every class carries the same total weight
    totals = got * class_counts(LABELS, 3)
    assert torch.allclose(totals, totals[0].expand(3))


def test_a_class_absent_from_training_gets_weight_zero() -> None:
    got = balanced_class_weights(torch.tensor([0, 0, 2, 2]), 3)
    assert got.tolist() == pytest.approx([1.0, 0.0, 1.0])


def test_balanced_sampler_draws_classes_equally_often_and_is_seeded() -> None:
    order = balanced_sampler(LABELS, 3)
    draws = torch.cat([order(torch.Generator().manual_seed(s)) for s in range(200)])
    assert draws.numel() == 200 * 100
    freq = torch.bincount(LABELS[draws], minlength=3).double() / draws.numel()
    assert torch.allclose(freq, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.02), freq
    a, b = (order(torch.Generator().manual_seed(7)) for _ in range(2))
    assert torch.equal(a, b)


def test_memory_loader_uses_the_sampler_per_epoch_reproducibly() -> None:
    images = torch.zeros(100, 1, 4, 4, dtype=torch.uint8)
    loader = MemoryLoader(images, LABELS, batch_size=25, normalizer=Normalizer((0.5,), (0.5,)), train=True)
    loader.sampler = balanced_sampler(LABELS, 3)

    def epoch(e: int) -> torch.Tensor:
        loader.set_epoch(e)
        return torch.cat([y for _, y in loader])

    first, again, second = epoch(1), epoch(1), epoch(2)
    assert torch.equal(first, again) and not torch.equal(first, second)
    assert (first == 2).sum() > 10  # the single sample of class 2 is drawn about a third of the time


def test_streaming_loader_uses_the_sampler_too(tmp_path) -> None:
    from resnetkit.data.streaming import FolderDataset, FolderLoader

    labels = LABELS.tolist()
    ds = FolderDataset([tmp_path / f"{i}.png" for i in range(100)], labels, transform=None, in_chans=3,
                       strict=False)
    loader = FolderLoader(ds, batch_size=25, train=True, seed=0, device=torch.device("cpu"),
                          normalizer=Normalizer((0.5,), (0.5,)), workers=0)
    assert torch.equal(loader.targets(), LABELS)
    loader.sampler = balanced_sampler(loader.targets(), 3)
    loader.set_epoch(1)
    drawn = torch.tensor([i for batch in loader.batch_indices() for i in batch])
    loader.set_epoch(1)
    assert drawn.tolist() == [i for batch in loader.batch_indices() for i in batch]
    assert (LABELS[drawn] == 2).sum() > 10 and len(set(drawn.tolist())) < 100  # with replacement
