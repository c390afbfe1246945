"""Decoding image folders into uint8 tensors once, cached on disk, for the in-memory fast path.

A folder split fits when its images at the stored size take at most :data:`MEMORY_BUDGET`
bytes and the model input is at most :data:`MAX_CACHED_SIZE` pixels (CIFAR-10 as JPEGs:
50,000 x 3 x 32 x 32 = 154 MB). It is decoded with Pillow (the same :func:`load_image` and
:class:`Geometry` that predict uses, so the tensors equal ``eval_transform``'s to the bit) by
DataLoader worker processes, then saved in the cache folder ($RESNETKIT_CACHE, else
~/.cache/resnetkit/cache) under a key hashing every file's relative path, size, mtime and
label, the channels, the geometry and the Pillow version: any change to the folder makes a new
entry. The file is written atomically and read back with ``torch.load(weights_only=True)``.
Unreadable files are recorded in the entry, so the warning that names them repeats on every run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import PIL
import torch
from torch.utils.data import DataLoader, Dataset

from .._io import write_atomic
from ._util import warn
from .folders import FolderSplit
from .transforms import Geometry, ImageReadError, load_image, pil_to_uint8

MEMORY_BUDGET = 2 * 1024**3  # bytes of uint8 pixels one split may hold in memory
MAX_CACHED_SIZE = 64  # larger inputs stream from disk: full-resolution crops matter there
CACHE_VERSION = 1


def cache_dir() -> Path:
    env = os.environ.get("RESNETKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "resnetkit" / "cache"


def fits_in_memory(n: int, in_chans: int, stored_size: int, img_size: int) -> bool:
    return img_size <= MAX_CACHED_SIZE and n * in_chans * stored_size**2 <= MEMORY_BUDGET


def default_workers(n: int, workers: int | None) -> int:
    if workers is not None:
        return max(0, workers)
    # Starting processes costs more than decoding a few hundred small images.
    return 0 if n < 512 else min(os.cpu_count() or 1, 8)


class _DecodeSet(Dataset):
    def __init__(self, paths: Sequence[Path], in_chans: int, geometry: Geometry) -> None:
        self.paths, self.in_chans, self.geometry = list(paths), in_chans, geometry

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return i, self.geometry(pil_to_uint8(load_image(self.paths[i]), self.in_chans)), None
        except ImageReadError as e:
            return i, None, e.reason


def _collate(items: list[tuple[int, torch.Tensor | None, str | None]]) -> Any:
    # Stacked in the worker so that one shared-memory tensor per batch crosses the process boundary.
    shape = next((t.shape for _, t, _ in items if t is not None), None)
    idx = torch.tensor([i for i, _, _ in items])
    imgs = None if shape is None else torch.stack(
        [t if t is not None else torch.zeros(shape, dtype=torch.uint8) for _, t, _ in items])
    errors = [(i, e) for i, t, e in items if t is None]
    return idx, imgs, errors


def decode_paths(paths: Sequence[Path], in_chans: int, geometry: Geometry, *,
                 workers: int | None = None, desc: str = "") -> tuple[torch.Tensor, dict[int, str]]:
    """Decode files to uint8 (N, C, out, out); failed ones stay zero and are returned by index."""
    from tqdm.auto import tqdm

    n = len(paths)
    out = torch.zeros((n, in_chans, geometry.out, geometry.out), dtype=torch.uint8)
    errors: dict[int, str] = {}
    loader = DataLoader(_DecodeSet(paths, in_chans, geometry), batch_size=128,
                        num_workers=default_workers(n, workers), collate_fn=_collate)
    with tqdm(total=n, desc=f"decoding {desc}".strip(), unit="img", disable=None, leave=False) as bar:
        for idx, imgs, errs in loader:
            if imgs is not None:
                out[idx] = imgs
            errors.update(errs)
            bar.update(len(idx))
    return out, errors


def _cache_key(split: FolderSplit, in_chans: int, geometry: Geometry, classes: Sequence[str]) -> str:
    h = hashlib.sha256()
    head = {"v": CACHE_VERSION, "in_chans": in_chans, "geometry": dataclasses.asdict(geometry),
            "pillow": PIL.__version__, "classes": list(classes)}
    h.update(json.dumps(head, sort_keys=True).encode())
    for f, (size, mtime), label in zip(split.files, split.stats, split.labels):
        h.update(f"{f}\0{size}\0{mtime}\0{label}\n".encode())
    return h.hexdigest()


def cache_file(split: FolderSplit, in_chans: int, geometry: Geometry, classes: Sequence[str],
               name: str) -> Path:
    key = _cache_key(split, in_chans, geometry, classes)
    return cache_dir() / f"{name}-{split.root.name}-{geometry.out}px-{key[:24]}.pt"


def decode_split_cached(split: FolderSplit, classes: Sequence[str], *, name: str, in_chans: int,
                        geometry: Geometry, workers: int | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, list[str], Path]:
    """(images uint8, labels int64, unreadable "file: reason" list, cache file) for a split;
    unreadable files are left out of images and labels."""
    path = cache_file(split, in_chans, geometry, classes, name)
    if path.is_file():
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
            return d["images"], d["labels"], list(d["bad"]), path
        except Exception as e:  # noqa: BLE001 - a damaged cache entry is rebuilt, not fatal
            warn(f"ignoring unreadable cache file {path} ({type(e).__name__}); decoding again")
    paths = [split.path(i) for i in range(len(split))]
    images, errors = decode_paths(paths, in_chans, geometry, workers=workers,
                                  desc=f"{name} {split.root.name} (once; cached)")
    keep = torch.tensor([i not in errors for i in range(len(split))], dtype=torch.bool)
    images = images[keep].contiguous()
    labels = torch.tensor(split.labels, dtype=torch.long)[keep]
    bad = [f"{split.files[i]}: {errors[i]}" for i in sorted(errors)]
    try:
        write_atomic(path, lambda p: torch.save({"images": images, "labels": labels, "bad": bad}, p))
    except OSError as e:  # a read-only home must not stop training
        warn(f"cannot write the decode cache {path} ({e.strerror}); set RESNETKIT_CACHE to a "
             f"writable folder to avoid decoding again next time", once=True)
    return images, labels, bad, path
