"""The in-memory fast path: a whole split as one uint8 tensor on the training device.

Per batch the loader does a gather (``images[idx]``), the batched augmentation of
:mod:`resnetkit.data.augment` and the normalization, all as tensor ops on the device. The random
numbers of an epoch (permutation, crop offsets, flips) come from a CPU generator seeded by
(seed, epoch) and reach the device in one non-blocking copy per epoch, so the same seed and
epoch give the same batches on any device, and iterating never waits for the device.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

from .augment import BatchAugment, resize_float
from .policy import BatchPolicy
from .sampling import Sampler, epoch_order, eval_batches, positions, seeded_generator, train_batches
from .transforms import Normalizer

Batch = tuple[torch.Tensor, torch.Tensor]


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy without blocking the host: pinned memory for CUDA, a plain copy elsewhere."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class MemoryLoader:
    """Batches (x float32 normalized NCHW, y int64) from device-resident uint8 images.

    ``train=True``: a new seeded permutation and augmentation each epoch, this rank's shard of
    every global batch. ``train=False``: this rank's exact contiguous partition, in order.
    ``prepare`` maps a stored uint8 batch to out_size when the stored size differs (resize or
    center crop); ``augment`` replaces it for training. ``train_size`` (progressive resizing, set
    per epoch by the trainer): training batches are resized to it last, as normalized floats.
    """

    in_memory = True

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
                 normalizer: Normalizer, train: bool, seed: int = 0,
                 augment: BatchAugment | None = None,
                 prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 policy: BatchPolicy | None = None, rank: int = 0, world_size: int = 1) -> None:
        self.images, self.labels = images, labels
        self.device = images.device
        self.batch_size = batch_size
        self.normalizer = normalizer
        self.train = train
        self.seed = seed
        self.augment = augment if augment is not None and augment.active else None
        self.prepare = prepare
        self.policy = policy  # --augment randaugment | trivialaugment, after the crop and flip
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.train_size: int | None = None
        self.sampler: Sampler | None = None  # the epoch's order; None: a permutation
        n = int(labels.shape[0])
        self.dataset_size = n  # samples in the split, all ranks together
        if train:
            self._batches = train_batches(n, batch_size, world_size, rank)
        else:
            self._batches = eval_batches(n, batch_size, world_size, rank)
        self.num_samples = sum(b - a for a, b in self._batches)  # this rank, per epoch

    def __len__(self) -> int:
        return len(self._batches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def targets(self) -> torch.Tensor:
        """Every training label of the split (all ranks), on the CPU."""
        return self.labels.cpu()

    def epoch_plan(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """This rank's sample indices for the epoch, in order, and their augmentation parameters
        (CPU tensors; a pure function of seed, epoch, rank and world size)."""
        g = seeded_generator(self.seed, self.epoch, "train")
        perm = epoch_order(self.dataset_size, g, self.sampler)
        params = self.augment.sample(self.dataset_size, g) if self.augment else {}
        pos = positions(self._batches)
        return perm[pos], {k: v[pos] for k, v in params.items()}

    def __iter__(self) -> Iterator[Batch]:
        return self._iter_train() if self.train else self._iter_eval()

    def _iter_train(self) -> Iterator[Batch]:
        order, params = self.epoch_plan()
        order = to_device(order, self.device)
        params = {k: to_device(v, self.device) for k, v in params.items()}
        offset = 0
        for i, (a, b) in enumerate(self._batches):
            sl = slice(offset, offset + b - a)
            offset += b - a
            idx = order[sl]
            x = self.images[idx]
            p = {k: v[sl] for k, v in params.items()}
            if self.augment is not None:
                x = self.augment.geometry(x, p)
            if self.policy is not None:
                x = self.policy(x, self.seed, self.epoch, self.rank, i)
            x = self._finish(x)
            if self.augment is not None:
                x = self.augment.erase(x, p)
            if self.train_size is not None and x.shape[-1] != self.train_size:
                x = resize_float(x, self.train_size)
            yield x, self.labels[idx]

    def _iter_eval(self) -> Iterator[Batch]:
        for a, b in self._batches:
            yield self._finish(self.images[a:b]), self.labels[a:b]

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        if self.prepare is not None and x.dtype == torch.uint8:
            x = self.prepare(x)
        return self.normalizer(x)
