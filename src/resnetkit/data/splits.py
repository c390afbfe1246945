"""Train, val and test: the validation split chooses, the test split reports.

Every choice a run makes (best checkpoint, early stopping, the ``*`` of an epoch line) reads the
validation split; the test split is evaluated once, at the end, on the chosen weights (a number
chosen as the maximum over evaluations of the split it reports is biased upwards).

Where each split comes from:

- built-in datasets (digits, MNIST, Fashion-MNIST, CIFAR, also in their image-folder form):
  val is held out of the training split (after ``--subset``), stratified by class and seeded
  by ``--seed``; by default 5,000 images when at least 50,000 are used, else a tenth of them
  (the size of the validation splits of the ResNet paper's CIFAR study, He et al. 2015,
  arXiv:1512.03385, section 4.2, "45k/5k train/val split"). The test split is the dataset's own.
- image folders: ``val/`` when present, else held out of ``train/`` (or the one tree) by
  ``--val-fraction`` (default 0.2) or ``--val-size``; ``test/`` is the test split. With no
  ``test/`` the val split is also the reported one, and the report says so.
- ``--val-size 0``: no validation split; the whole training split trains, nothing is selected,
  the last epoch is the result.

The split is a pure function of the data, ``--subset``, ``--val-size``/``--val-fraction`` and
``--seed``, so ``evaluate --split val`` rebuilds it from a checkpoint's config.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import RunConfig
from ..errors import UserError
from ._util import warn
from .folders import FolderIndex, FolderSplit, split_by_fraction
from .sampling import stratified_subset

SPLITS = ("train", "val", "test")
DEFAULT_VAL_SIZE = 5000  # images, for training splits of at least LARGE_TRAIN images
LARGE_TRAIN = 50_000
SMALL_VAL_FRACTION = 0.1  # below LARGE_TRAIN images
FOLDER_VAL_FRACTION = 0.2  # image folders without val/


def check_val_options(cfg: RunConfig) -> None:
    """One of --val-size / --val-fraction, each in its range."""
    if cfg.val_size is not None and cfg.val_fraction is not None:
        raise UserError(f"give --val-size or --val-fraction, not both (got {cfg.val_size} and "
                        f"{cfg.val_fraction})")
    if cfg.val_size is not None and (isinstance(cfg.val_size, bool) or not isinstance(cfg.val_size, int)
                                     or cfg.val_size < 0):
        raise UserError(f"--val-size must be a whole number of images >= 0, got {cfg.val_size!r}")
    fraction = cfg.val_fraction
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                 or not 0.0 < fraction < 1.0):
        raise UserError(f"--val-fraction must be a number between 0 and 1 (exclusive), got {fraction!r}")


def val_count(n: int, cfg: RunConfig) -> int:
    """Validation images to hold out of ``n`` training images (built-in datasets)."""
    check_val_options(cfg)
    if cfg.val_size is not None:
        size = cfg.val_size
    elif cfg.val_fraction is not None:
        size = max(1, round(n * cfg.val_fraction))
    else:
        size = DEFAULT_VAL_SIZE if n >= LARGE_TRAIN else max(1, round(n * SMALL_VAL_FRACTION))
    if size and size > n - 2:  # BatchNorm needs a batch of two to train on
        raise UserError(f"--val-size {size} leaves {n - size} of {n} training images; "
                        f"choose a smaller --val-size or --val-fraction")
    return size


def holdout(labels: torch.Tensor, n_val: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices) into ``labels``: sorted, disjoint, together all of them; val
    takes each class in proportion (within one image) by a shuffle seeded by ``seed``."""
    n = int(labels.numel())
    if n_val <= 0:
        return torch.arange(n), torch.zeros(0, dtype=torch.long)
    val = stratified_subset(labels, n_val, seed=seed, key="val")
    keep = torch.ones(n, dtype=torch.bool)
    keep[val] = False
    return keep.nonzero().squeeze(1), val


@dataclass
class FolderSplits:
    """The files of each split of an image folder."""

    train: FolderSplit
    val: FolderSplit | None  # None: --val-size 0
    test: FolderSplit
    test_is_val: bool  # no test/: the reported split is the one that chose
    val_source: str  # a phrase for reports
    pool: FolderSplit | None = None  # what train and val were cut from, when val was held out


def folder_splits(index: FolderIndex, pool: FolderSplit, cfg: RunConfig, builtin: bool) -> FolderSplits:
    """Assign an image folder's files: ``pool`` is the training tree after --subset; ``builtin``
    (CIFAR's image-folder form) takes the built-in datasets' default size."""
    check_val_options(cfg)
    train, val, source = pool, index.val, f"{index.val.root.name}/ folder" if index.val else ""
    if val is not None and (cfg.val_size or cfg.val_fraction):
        warn(f"{index.val.root} is the validation split; --val-size and --val-fraction apply only "
             f"to folders without val/", once=True)
    if cfg.val_size == 0:
        val, source = None, "none (--val-size 0)"
    elif val is None and (cfg.val_fraction is not None or not builtin) and cfg.val_size is None:
        fraction = cfg.val_fraction or FOLDER_VAL_FRACTION
        train, val = split_by_fraction(pool, index.classes, fraction, cfg.seed)
        source = f"{fraction:g} of {pool.root.name}/ per class, seed {cfg.seed}"
    elif val is None:
        n_val = val_count(len(pool), cfg)
        train_idx, val_idx = holdout(torch.tensor(pool.labels), n_val, cfg.seed)
        train, val = pool.select(train_idx.tolist()), pool.select(val_idx.tolist())
        val.ignored = []  # the tree's non-image files are reported once, with train
        source = f"held out of {pool.root.name}/, stratified, seed {cfg.seed}"
    test, test_is_val = index.test, False
    if test is None:
        if val is None and index.val is None:
            raise UserError(f"--val-size 0 leaves no held-out image in {index.root} (it has no test/ "
                            f"or val/ folder); drop --val-size 0 or add a test/ folder")
        test, test_is_val = (val, True) if val is not None else (index.val, False)
    carved = val is not None and index.val is None
    return FolderSplits(train, val, test, test_is_val, source, pool if carved else None)


def array_val_source(n_val: int, cfg: RunConfig) -> str:
    if n_val == 0:
        return "none (--val-size 0)"
    return f"held out of the training split, stratified, seed {cfg.seed}"
