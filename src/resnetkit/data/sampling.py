"""Which samples each rank sees, and when: seeded permutations, batches, shards, subsets.

Training: one permutation per epoch, drawn from a generator seeded by (seed, epoch), is cut into
global batches of ``per_rank * world_size`` samples; rank r takes the r-th slice of each global
batch. So with any world size the union of the ranks' batches is the single-process batch, and
the ranks' shards are disjoint. A last global batch that cannot give every rank at least two
samples is dropped (a batch of one breaks BatchNorm); otherwise a short last batch is kept,
split evenly (its few remainder samples wait for the next epoch's permutation).

Evaluation: rank r takes the contiguous range [r*n//w, (r+1)*n//w): an exact partition, so
summing counts over ranks counts every sample once (no padding duplicates, unlike
DistributedSampler).
"""
from __future__ import annotations

import hashlib
from typing import Callable

import torch

SUBSET_SEED = 0  # --subset picks the same samples whatever --seed is, so seeds compare like for like


def seeded_generator(*key: object) -> torch.Generator:
    """A CPU generator seeded from a tuple such as (seed, epoch, "train"), mixed by sha256."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


# An epoch's order of sample indices from the epoch's generator (e.g. a weighted sampler).
Sampler = Callable[[torch.Generator], torch.Tensor]


def epoch_order(n: int, generator: torch.Generator, sampler: Sampler | None = None) -> torch.Tensor:
    """The epoch's sequence of n sample indices: a permutation, or what ``sampler`` draws."""
    if sampler is None:
        return torch.randperm(n, generator=generator)
    order = sampler(generator)
    assert order.numel() == n, "a sampler draws one index per sample of the split"
    return order


def train_batches(n: int, per_rank: int, world_size: int, rank: int) -> list[tuple[int, int]]:
    """(start, stop) positions in the epoch permutation of this rank's batches."""
    glob = per_rank * world_size
    out = []
    for start in range(0, n, glob):
        size = min(glob, n - start)
        per = per_rank if size == glob else size // world_size
        if size < glob and per < 2:
            continue  # a short last batch of one sample per rank (or none): dropped for BatchNorm
        out.append((start + rank * per, start + (rank + 1) * per))
    return out


def eval_range(n: int, world_size: int, rank: int) -> tuple[int, int]:
    return rank * n // world_size, (rank + 1) * n // world_size


def eval_batches(n: int, batch_size: int, world_size: int, rank: int) -> list[tuple[int, int]]:
    lo, hi = eval_range(n, world_size, rank)
    return [(a, min(a + batch_size, hi)) for a in range(lo, hi, batch_size)]


def positions(batches: list[tuple[int, int]]) -> torch.Tensor:
    """Concatenated positions of a batch list, as one index tensor."""
    if not batches:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.arange(a, b) for a, b in batches])


def stratified_subset(labels: torch.Tensor, n: int, seed: int = SUBSET_SEED, key: str = "subset"
                      ) -> torch.Tensor:
    """Sorted indices of n samples, each class in proportion to its size, from a shuffle seeded
    by (seed, key): ``--subset`` and the validation split draw from different streams.

    Each sample gets the key (its rank in a shuffled order of its class + u) / class size with u
    uniform in [0, 1); taking the n smallest keys interleaves the classes proportionally.
    """
    labels = labels.long()
    if n >= labels.numel():
        return torch.arange(labels.numel())
    g = seeded_generator(seed, key)
    shuffled = torch.randperm(labels.numel(), generator=g)
    lab = labels[shuffled]
    order = torch.argsort(lab, stable=True)
    counts = torch.bincount(lab)
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.empty_like(order)
    rank_in_class[order] = torch.arange(order.numel()) - starts[lab[order]]
    order_key = (rank_in_class.double() + torch.rand(lab.numel(), generator=g, dtype=torch.float64)
                 ) / counts[lab]
    take = shuffled[torch.argsort(order_key, stable=True)[:n]]
    return torch.sort(take).values
