"""The DataLoader path: image folders too large for memory (or an input over 64 px) are read
from disk each epoch by worker processes.

Workers decode with Pillow, augment with torchvision.transforms.v2 and return uint8 tensors
(a quarter of float32's bytes through shared and pinned memory); normalization happens on the
device, with the same :class:`Normalizer` as everywhere else. Batches follow
:mod:`.sampling` exactly as the in-memory loader does. Each sample's augmentation is drawn under
a seed derived from (seed, epoch, index) inside ``torch.random.fork_rng``, so the batches of an
epoch are the same whatever the number of workers, and the global RNG is left alone.

Files are probed before training (header only: empty, not an image, over the
decompression-bomb limit); one that still fails to decode later (a truncated JPEG) is replaced
by the next file of the list with a warning naming it, or raises with ``--strict``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from .._io import write_json_atomic
from ..errors import UserError
from ._util import warn
from .decode import cache_dir, default_workers
from .folders import FolderSplit
from .policy import POLICIES, policy_transform
from .presets import Preset
from .sampling import Sampler, epoch_order, eval_batches, seeded_generator, train_batches
from .transforms import (Geometry, ImageReadError, Normalizer, interpolation_mode, load_image,
                         to_mode)


def probe_file(path: Path) -> str | None:
    """Why a file cannot be an image (reading its header only), or None."""
    import warnings

    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path):
                pass
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return f"refused, over the decompression-bomb limit ({e})"
    except Exception as e:  # noqa: BLE001 - any failure to open means unusable
        return f"not an image Pillow can read ({type(e).__name__})"
    return None


def train_transform(preset: Preset, img_size: int, resize: int | None, interpolation: str,
                    augment: str, mean: Sequence[float]) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image (already L/RGB) -> augmented uint8 tensor (C, img_size, img_size)."""
    mode = interpolation_mode(interpolation)
    if augment == "none":
        geometry = Geometry(img_size, resize, interpolation)
        return v2.Compose([v2.PILToTensor(), geometry])
    if preset.rrc_scale is not None:
        ops: list = [v2.RandomResizedCrop(img_size, scale=preset.rrc_scale, interpolation=mode,
                                          antialias=True)]
    else:
        ops = [v2.Resize((img_size, img_size), interpolation=mode, antialias=True)]
        if preset.pad:
            ops.append(v2.RandomCrop(img_size, padding=preset.pad_at(img_size),
                                     padding_mode="reflect" if preset.pad_mode == "reflect" else "constant"))
    if preset.flip:
        ops.append(v2.RandomHorizontalFlip())
    if augment == "strong" and preset.photo:
        ops.append(v2.TrivialAugmentWide(interpolation=mode))  # Mueller & Hutter 2021
    if augment in POLICIES:
        ops.append(policy_transform(augment, mode))
    ops.append(v2.PILToTensor())
    if augment == "strong":
        ops.append(v2.RandomErasing(p=0.5, scale=(0.02, 0.25), value=[round(255 * m) for m in mean]))
    return v2.Compose(ops)


class FolderDataset(Dataset):
    def __init__(self, paths: Sequence[Path], labels: Sequence[int], transform: Callable,
                 in_chans: int, strict: bool) -> None:
        self.paths, self.labels = list(paths), list(labels)
        self.transform, self.in_chans, self.strict = transform, in_chans, strict
        self.epoch_seed = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        for k in range(len(self.paths)):
            j = (i + k) % len(self.paths)
            try:
                img = to_mode(load_image(self.paths[j]), self.in_chans)
            except ImageReadError as e:
                if self.strict:
                    raise
                warn(f"unreadable image {e.path} ({e.reason}); using {self.paths[(j + 1) % len(self.paths)]} "
                     f"in its place this time", once=True)
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seeded_generator(self.epoch_seed, i).initial_seed())
                return self.transform(img), self.labels[i]
        raise UserError("no readable image left in the folder")


class FolderLoader:
    """Streams (x float32 normalized NCHW, y int64) batches on ``device`` from a FolderDataset."""

    in_memory = False

    def __init__(self, dataset: FolderDataset, *, batch_size: int, train: bool, seed: int,
                 device: torch.device, normalizer: Normalizer, workers: int | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        self.dataset, self.batch_size, self.train = dataset, batch_size, train
        self.seed, self.device, self.normalizer = seed, device, normalizer
        self.workers = default_workers(len(dataset), workers)
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.sampler: Sampler | None = None  # the epoch's order; None: a permutation
        n = len(dataset)
        self.dataset_size = n
        self._batches = (train_batches if train else eval_batches)(n, batch_size, world_size, rank)
        self.num_samples = sum(b - a for a, b in self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def targets(self) -> torch.Tensor:
        """Every training label of the split (all ranks)."""
        return torch.tensor(self.dataset.labels, dtype=torch.long)

    def batch_indices(self) -> list[list[int]]:
        if not self.train:
            return [list(range(a, b)) for a, b in self._batches]
        perm = epoch_order(self.dataset_size, seeded_generator(self.seed, self.epoch, "train"), self.sampler)
        return [perm[a:b].tolist() for a, b in self._batches]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.dataset.epoch_seed = seeded_generator(self.seed, self.epoch, "augment").initial_seed()
        cuda = self.device.type == "cuda"
        loader = DataLoader(self.dataset, batch_sampler=self.batch_indices(), num_workers=self.workers,
                            pin_memory=cuda)
        try:
            for x, y in loader:
                x = x.to(self.device, non_blocking=cuda)
                yield self.normalizer(x), y.to(self.device, non_blocking=cuda)
        except ImageReadError as e:
            # From a worker the message carries the worker's traceback; its last line is ours.
            last = str(e).strip().splitlines()[-1].removeprefix("ImageReadError: ")
            raise UserError(f"unreadable image {last} (--strict makes this an error)") from None


def probe_split(split: FolderSplit, workers: int | None = None) -> list[str]:
    """'file: reason' for every file of the split whose header cannot be read; cached per listing."""
    from concurrent.futures import ThreadPoolExecutor

    h = hashlib.sha256(b"probe-v1")
    for f, (size, mtime) in zip(split.files, split.stats):
        h.update(f"{f}\0{size}\0{mtime}\n".encode())
    path = cache_dir() / f"probe-{split.root.name}-{h.hexdigest()[:24]}.json"
    if path.is_file():
        try:
            return list(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            pass
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        reasons = list(pool.map(probe_file, [split.path(i) for i in range(len(split))], chunksize=64))
    bad = [f"{split.files[i]}: {r}" for i, r in enumerate(reasons) if r is not None]
    with contextlib.suppress(OSError):
        write_json_atomic(path, bad)
    return bad
