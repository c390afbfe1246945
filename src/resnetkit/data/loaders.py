"""From a RunConfig to loaders: resolve the preset and the files, pick the path, shard.

Two paths behind one interface (``len``, ``num_samples``, ``dataset_size``, ``batch_size``,
``set_epoch``, ``in_memory``; iterating yields ``(x, y)`` on the device, x float32 normalized
NCHW at ``spec.img_size``, y int64):

- in memory (:class:`~resnetkit.data.memory.MemoryLoader`): digits, MNIST, Fashion-MNIST,
  CIFAR pickles, and image folders that fit (:func:`~resnetkit.data.decode.fits_in_memory`),
  decoded once and cached;
- streaming (:class:`~resnetkit.data.streaming.FolderLoader`): other image folders.

Batch size: ``cfg.batch_size`` (else the preset's) is the global batch; each of ``world_size``
ranks gets ``batch_size // world_size``. Evaluation batches are twice the per-rank training
batch (no activations are kept for backward). ``--subset N`` keeps N training samples, chosen
per class in proportion by a fixed seeded shuffle (:func:`~resnetkit.data.sampling.stratified_subset`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch

from ..config import RunConfig
from ..errors import UserError
from ._util import summarize_names, warn
from .augment import BatchAugment, resize_batch
from .datasets import (CIFAR_IMAGE_FOLDERS, IDX_FOLDERS, ArraySplit, cifar_missing_error,
                       cifar_pickle_classes, download_cifar, has_cifar_pickles, load_cifar_pickle_split,
                       load_digits_split, load_idx_split, resolve_data_dir)
from .decode import MEMORY_BUDGET, decode_split_cached, fits_in_memory
from .folders import FolderIndex, FolderSplit, index_imagefolder
from .memory import MemoryLoader, to_device
from .policy import POLICIES, BatchPolicy
from .presets import Preset, check_augment, default_classes, get_preset
from .sampling import stratified_subset
from ..specs import DatasetSpec, Preprocessing
from .streaming import FolderDataset, FolderLoader, probe_split, train_transform
from .transforms import Geometry, Normalizer, eval_geometry, match_channels

Loader = Union[MemoryLoader, FolderLoader]
PRESET_CLASSES = {n: default_classes(n) or () for n in ("digits", "mnist", "fashion-mnist")}
SPLITS = ("train", "test")
LAYOUTS = {"digits": "bundled with scikit-learn, fixed stratified 80/20 split, random_state 0",
           "idx": "uncompressed IDX files", "cifar-pickle": "python pickles"}


@dataclass
class Loaders:
    spec: DatasetSpec
    train: Loader
    test: Loader
    info: dict[str, Any] = field(default_factory=dict)  # source, sizes, path taken: for reports


@dataclass
class _Plan:
    preset: Preset
    spec: DatasetSpec
    augment: str
    batch_size: int  # global
    root: Path
    kind: str  # digits | idx | cifar-pickle | folder
    index: FolderIndex | None = None


def dataset_spec(cfg: RunConfig, preprocessing: Preprocessing | None = None) -> DatasetSpec:
    """The resolved spec (classes, channels, size, statistics) without decoding any image."""
    return _plan(cfg, preprocessing=preprocessing).spec


def build_loaders(cfg: RunConfig, device: torch.device | str, *, rank: int = 0, world_size: int = 1,
                  preprocessing: Preprocessing | None = None) -> Loaders:
    """Train and test loaders; ``preprocessing``: pretrained weights' (size, mean, std), which
    replaces the dataset's."""
    plan = _plan(cfg, world_size=world_size, preprocessing=preprocessing)
    device = torch.device(device)
    train = _split_loader(plan, cfg, "train", True, device, rank, world_size)
    test = _split_loader(plan, cfg, "test", False, device, rank, world_size)
    info = {"dataset": cfg.dataset, "source": _source(plan), "layout": layout(plan.kind, plan.index),
            "train_size": train.dataset_size, "test_size": test.dataset_size,
            "in_memory": train.in_memory and test.in_memory, "augment": plan.augment,
            "batch_size": plan.batch_size, "img_size": plan.spec.img_size}
    return Loaders(plan.spec, train, test, info)


def build_eval_loader(cfg: RunConfig, split: str, device: torch.device | str, *,
                      spec: DatasetSpec | None = None, rank: int = 0, world_size: int = 1) -> Loader:
    """Loader over one split without augmentation or shuffling. With ``spec`` (a checkpoint's),
    its preprocessing and class order are used."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose train or test (the held-out split)")
    plan = _plan(cfg, spec=spec, world_size=world_size)
    return _split_loader(plan, cfg, split, False, torch.device(device), rank, world_size)


# ------------------------------------------------------------------ resolving a config
def _plan(cfg: RunConfig, spec: DatasetSpec | None = None, world_size: int = 1,
          preprocessing: Preprocessing | None = None) -> _Plan:
    preset = get_preset(cfg.dataset)
    augment = check_augment(cfg.augment)
    batch_size = cfg.batch_size or preset.batch_size
    if batch_size < 1 or (cfg.subset is not None and cfg.subset < 0):
        raise UserError(f"--batch-size must be positive and --subset not negative "
                        f"(got {batch_size} and {cfg.subset})")
    if batch_size < world_size:
        raise UserError(f"--batch-size {batch_size} is smaller than the {world_size} processes; "
                        f"it is the global batch, split across processes")
    img_size = spec.img_size if spec else (cfg.img_size or preset.img_size)
    if img_size < 4:
        raise UserError(f"--img-size must be at least 4 pixels, got {img_size}")
    kind, root, index, classes = _locate(cfg, preset, spec)
    if spec is None:
        spec = DatasetSpec(cfg.dataset, classes, preset.in_chans, img_size, preset.mean, preset.std,
                           preset.resize_size(img_size))
        if preprocessing is not None:
            spec = spec.with_preprocessing(preprocessing, cfg.img_size)
    elif kind != "folder" and tuple(spec.classes) != tuple(classes):
        raise UserError(f"the model's classes ({summarize_names(list(spec.classes))}) are not "
                        f"{cfg.dataset}'s ({summarize_names(list(classes))})")
    return _Plan(preset, spec, augment, batch_size, root, kind, index)


def _locate(cfg: RunConfig, preset: Preset, spec: DatasetSpec | None, tolerant: bool = False
            ) -> tuple[str, Path, FolderIndex | None, tuple[str, ...]]:
    name = preset.name
    fixed = tuple(spec.classes) if spec else None
    if name == "digits":
        return "digits", Path("."), None, PRESET_CLASSES[name]
    if name in IDX_FOLDERS:
        return "idx", resolve_data_dir(cfg.data_dir), None, PRESET_CLASSES[name]
    if name == "imagefolder":
        if not cfg.data_dir:
            raise UserError("imagefolder needs --data-dir DIR: a folder with one sub-folder of images "
                            "per class (or train/ and val/ trees of them)")
        index = index_imagefolder(cfg.data_dir, val_fraction=cfg.val_fraction, seed=cfg.seed,
                                  classes=fixed, tolerant=tolerant)
        return "folder", index.root, index, index.classes
    root = resolve_data_dir(cfg.data_dir)  # cifar10 / cifar100
    if has_cifar_pickles(root, name):
        return "cifar-pickle", root, None, cifar_pickle_classes(root, name)
    for folder in (root / CIFAR_IMAGE_FOLDERS[name], root):
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            index = index_imagefolder(folder, seed=cfg.seed, classes=fixed, tolerant=tolerant)
            return "folder", folder, index, index.classes
    if cfg.download:
        download_cifar(root, name)
        return "cifar-pickle", root, None, cifar_pickle_classes(root, name)
    raise cifar_missing_error(root, name)


def layout(kind: str, index: FolderIndex | None) -> str:
    return index.layout if index is not None else LAYOUTS[kind]


def _source(plan: _Plan) -> str:
    return "sklearn.datasets.load_digits" if plan.kind == "digits" else str(plan.root)


# ------------------------------------------------------------------ one split
def _split_loader(plan: _Plan, cfg: RunConfig, split: str, train: bool, device: torch.device,
                  rank: int, world_size: int) -> Loader:
    per_rank = plan.batch_size // world_size
    bs = per_rank if train else 2 * per_rank
    kw = dict(rank=rank, world_size=world_size)
    if plan.kind == "folder":
        fsplit = _subset_folder(getattr(plan.index, split), cfg, split)
        geometry = _folder_geometry(plan, train)
        if fits_in_memory(len(fsplit), plan.spec.in_chans, geometry.out, plan.spec.img_size):
            data = _decode_folder(plan, cfg, fsplit, geometry)
        else:
            return _stream_loader(plan, cfg, fsplit, train, device, bs, **kw)
    else:
        data = _subset_array(_load_array(plan, cfg, split), cfg, split)
    return _memory_loader(plan, cfg, data, train, device, bs, **kw)


def _load_array(plan: _Plan, cfg: RunConfig, split: str) -> ArraySplit:
    if plan.kind == "digits":
        return load_digits_split(split)
    if plan.kind == "idx":
        return load_idx_split(plan.root, plan.preset.name, split, plan.spec.classes, cfg.download)
    return load_cifar_pickle_split(plan.root, plan.preset.name, split)


def _subset_array(data: ArraySplit, cfg: RunConfig, split: str) -> ArraySplit:
    if split != "train" or not cfg.subset:
        return data
    idx = stratified_subset(data.labels, cfg.subset)
    data.images, data.labels = data.images[idx], data.labels[idx]
    return data


def _subset_folder(fsplit: FolderSplit, cfg: RunConfig, split: str) -> FolderSplit:
    if split != "train" or not cfg.subset:
        return fsplit
    return fsplit.select(stratified_subset(torch.tensor(fsplit.labels), cfg.subset).tolist())


def _folder_geometry(plan: _Plan, train: bool) -> Geometry:
    spec = plan.spec
    if train and plan.augment != "none" and plan.preset.rrc_scale and spec.resize_size:
        # the source of random resized crops: shorter side to resize_size, square center crop
        return Geometry(spec.resize_size, spec.resize_size, spec.interpolation)
    return eval_geometry(spec)


def _decode_folder(plan: _Plan, cfg: RunConfig, fsplit: FolderSplit, geometry: Geometry) -> ArraySplit:
    images, labels, bad, path = decode_split_cached(
        fsplit, plan.spec.classes, name=cfg.dataset, in_chans=plan.spec.in_chans, geometry=geometry,
        workers=cfg.workers)
    report_skipped(bad, fsplit.ignored, fsplit.root, cfg.strict)
    _check_classes_left(labels.tolist(), plan.spec.classes, fsplit)
    return ArraySplit(images, labels, plan.spec.classes, str(fsplit.root), bad=bad, ignored=fsplit.ignored)


def report_skipped(bad: list[str], ignored: list[str], where: Path, strict: bool) -> None:
    """Warn (or, with --strict, raise) about unreadable images and non-image files."""
    if strict and (bad or ignored):
        raise UserError(f"{len(bad) + len(ignored)} unusable file(s) in {where}: "
                        f"{summarize_names(bad + ignored, 3)}; fix or remove them, or drop --strict")
    if bad:
        warn(f"skipped {len(bad)} unreadable image file(s) in {where}: {summarize_names(bad)}; "
             f"--strict makes this an error")
    if ignored:
        warn(f"skipped {len(ignored)} file(s) without an image extension in the class folders of "
             f"{where}: {summarize_names(ignored)}")


def _check_classes_left(labels: list[int], classes: tuple[str, ...], fsplit: FolderSplit) -> None:
    present = set(labels)
    listed = set(fsplit.labels)
    empty = [classes[c] for c in sorted(listed - present)]
    if empty:
        raise UserError(f"class {summarize_names(empty)} has no readable image in {fsplit.root}")


def _memory_loader(plan: _Plan, cfg: RunConfig, data: ArraySplit, train: bool, device: torch.device,
                   bs: int, **kw: int) -> MemoryLoader:
    spec = plan.spec
    images = match_channels(data.images, spec.in_chans)
    source = train and plan.kind == "folder" and images.shape[-1] != spec.img_size and bool(spec.resize_size)
    prepare = None
    if not source and tuple(images.shape[-2:]) != (spec.img_size, spec.img_size):
        if images.shape[0] * spec.in_chans * spec.img_size**2 <= MEMORY_BUDGET:
            images = _geometry_chunked(images, eval_geometry(spec))
        else:  # too big at the model size: keep the native size and resize each batch on the device
            prepare = lambda x: resize_batch(x, spec.img_size)  # noqa: E731
    augment = _batch_augment(plan, images.shape[-1], source) if train else None
    policy = BatchPolicy(plan.augment) if train and plan.augment in POLICIES else None
    return MemoryLoader(to_device(images, device), to_device(data.labels, device), batch_size=bs,
                        normalizer=Normalizer(spec.mean, spec.std, device), train=train,
                        seed=cfg.seed, augment=augment, prepare=prepare, policy=policy, **kw)


def _geometry_chunked(images: torch.Tensor, geometry: Geometry, chunk: int = 4096) -> torch.Tensor:
    return torch.cat([geometry(images[i:i + chunk]) for i in range(0, images.shape[0], chunk)])


def _batch_augment(plan: _Plan, stored: int, source: bool) -> BatchAugment | None:
    preset, size = plan.preset, plan.spec.img_size
    if plan.augment == "none":
        return None
    cut = round(preset.cutout * size) if plan.augment == "strong" else 0
    flip_p = 0.5 if preset.flip else 0.0
    if source:
        return BatchAugment(size, flip_p=flip_p, rrc_scale=preset.rrc_scale, cutout=cut)
    pad = preset.pad_at(stored) if preset.pad else (max(1, round(size / 8)) if preset.photo else 0)
    return BatchAugment(size, pad=pad, pad_mode="reflect" if preset.photo else preset.pad_mode,
                        flip_p=flip_p, cutout=cut)


def _stream_loader(plan: _Plan, cfg: RunConfig, fsplit: FolderSplit, train: bool, device: torch.device,
                   bs: int, **kw: int) -> FolderLoader:
    spec = plan.spec
    bad = probe_split(fsplit, cfg.workers)
    report_skipped(bad, fsplit.ignored, fsplit.root, cfg.strict)
    bad_files = {b.split(": ", 1)[0] for b in bad}
    kept = fsplit.select([i for i, f in enumerate(fsplit.files) if f not in bad_files])
    _check_classes_left(kept.labels, spec.classes, fsplit)
    fsplit = kept
    transform = train_transform(plan.preset, spec.img_size, spec.resize_size, spec.interpolation,
                                plan.augment if train else "none", spec.mean)
    ds = FolderDataset([fsplit.path(i) for i in range(len(fsplit))], fsplit.labels, transform,
                       spec.in_chans, cfg.strict)
    return FolderLoader(ds, batch_size=bs, train=train, seed=cfg.seed, device=device,
                        normalizer=Normalizer(spec.mean, spec.std, device), workers=cfg.workers, **kw)
