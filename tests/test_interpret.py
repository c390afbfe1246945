"""Per-sample interpretation: the top-losses set is the true top-k, most-confused pairs are ranked."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from resnetkit.interpret import collect, most_confused, per_sample_loss


class Lookup(nn.Module):
    """Returns preset logits for inputs that carry their own row index in pixel [0, 0, 0]."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.table = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0].long()]


@pytest.mark.parametrize("batch", [1, 7, 64, 500])
def test_top_losses_are_the_k_highest_loss_samples_whatever_the_batching(batch: int) -> None:
    g = torch.Generator().manual_seed(0)
    n, classes, k = 300, 5, 12
    logits = torch.randn(n, classes, generator=g) * 3
    targets = torch.randint(0, classes, (n,), generator=g)
    images = torch.rand(n, 1, 4, 4, generator=g)
    images[:, 0, 0, 0] = torch.arange(n).float()
    loader = [(images[i:i + batch], targets[i:i + batch]) for i in range(0, n, batch)]
    out = collect(Lookup(logits), loader, k=k)
    losses = per_sample_loss(logits, targets)
    expected = torch.argsort(losses, descending=True, stable=True)[:k]
    assert out.top_index.tolist() == expected.tolist()
    assert torch.equal(out.top_images, images[expected])  # each image travels with its loss
    assert torch.equal(out.logits, logits) and torch.equal(out.targets, targets)
    assert torch.allclose(out.losses, losses)
    assert (out.losses[out.top_index].min() >= losses.sort(descending=True).values[k - 1])


def test_fewer_samples_than_k_keeps_them_all() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    x = torch.zeros(3, 1, 2, 2)
    x[:, 0, 0, 0] = torch.arange(3).float()
    out = collect(Lookup(logits), [(x, torch.tensor([1, 1, 0]))], k=12)
    assert out.top_index.tolist() == [0, 2, 1]  # wrong with p=0.88, a tie, right


def test_most_confused_ranks_off_diagonal_cells() -> None:
    cm = np.array([[50, 3, 0], [7, 40, 1], [0, 3, 60]])
    assert most_confused(cm, ["a", "b", "c"]) == [("b", "a", 7), ("a", "b", 3), ("c", "b", 3), ("b", "c", 1)]
    assert most_confused(cm, ["a", "b", "c"], top=2) == [("b", "a", 7), ("a", "b", 3)]
    assert most_confused(np.eye(3, dtype=int) * 5, ["a", "b", "c"]) == []


def test_tta_averaged_is_the_mean_of_the_views() -> None:
    from resnetkit.data.augment import TTA
    from resnetkit.interpret import TTAveraged

    torch.manual_seed(0)  # the means are compared with allclose: a logit near 0 fails 1 draw in 4,000
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.randn(2, 1, 3, 4)
    assert torch.allclose(TTAveraged(net, TTA(shift=False))(x), (net(x) + net(x.flip(-1))) / 2)
    views = TTA(fill=(0.0,)).views(x)
    assert torch.allclose(TTAveraged(net, TTA(fill=(0.0,)))(x), sum(net(v) for v in views) / 6)
