"""From a RunConfig to loaders: resolve the preset and the files, pick the path, shard.

Two paths behind one interface (``len``, ``num_samples``, ``dataset_size``, ``batch_size``,
``set_epoch``, ``in_memory``; iterating yields ``(x, y)`` on the device, x float32 normalized
NCHW at ``spec.img_size``, y int64):

- in memory (:class:`~resnetkit.data.memory.MemoryLoader`): digits, MNIST, Fashion-MNIST,
  CIFAR pickles, and image folders that fit (:func:`~resnetkit.data.decode.fits_in_memory`),
  decoded once and cached;
- streaming (:class:`~resnetkit.data.streaming.FolderLoader`): other image folders.

Splits (:mod:`.splits`): ``train`` trains, ``val`` chooses the checkpoint, ``test`` is read once
at the end. For the arrays of the built-in datasets the training split is decoded and copied to
the device once; train and val are two index selections of that tensor.

Batch size: ``cfg.batch_size`` (else the preset's) is the global batch; each of ``world_size``
ranks gets ``batch_size // world_size``. Evaluation batches are twice the per-rank training
batch (no activations are kept for backward). ``--subset N`` keeps N training samples, chosen
per class in proportion by a fixed seeded shuffle (:func:`~resnetkit.data.sampling.stratified_subset`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Union

import torch

from ..config import RunConfig, check_data_sizes
from ..errors import UserError
from . import arrays, csvfile
from ._util import summarize_names, warn
from .augment import BatchAugment, resize_batch
from .datasets import (CIFAR_IMAGE_FOLDERS, IDX_FOLDERS, ArraySplit, cifar_missing_error,
                       cifar_pickle_classes, download_cifar, has_cifar_pickles, load_cifar_pickle_split,
                       load_digits_split, load_idx_split, resolve_data_dir)
from .decode import MEMORY_BUDGET, decode_split_cached, fits_in_memory
from .folders import FolderIndex, FolderSplit, auto_img_size, index_imagefolder
from .memory import MemoryLoader, to_device
from .policy import POLICIES, BatchPolicy
from .presets import Preset, check_augment, default_classes, get_preset
from .sampling import stratified_subset
from ..specs import DatasetSpec, Preprocessing
from .splits import SPLITS, FolderSplits, array_val_source, folder_splits, holdout, val_count
from .streaming import FolderDataset, FolderLoader, probe_split, train_transform
from .transforms import Geometry, Normalizer, eval_geometry, match_channels

Loader = Union[MemoryLoader, FolderLoader]
PRESET_CLASSES = {n: default_classes(n) or () for n in ("digits", "mnist", "fashion-mnist")}
LAYOUTS = {"digits": "bundled with scikit-learn, fixed stratified 80/20 split, random_state 0",
           "idx": "uncompressed IDX files", "cifar-pickle": "python pickles"}


@dataclass
class Loaders:
    """What a run reads. ``train``: augmented, shuffled. ``val``: chooses the checkpoint (None
    with --val-size 0: nothing is chosen). ``test``: read once, at the end; when the data has no
    test split of its own (an image folder without test/) it is the val loader itself and
    ``test_is_val`` is True. Every loader has a ``source``: where its samples come from."""

    spec: DatasetSpec
    train: Loader
    val: Loader | None
    test: Loader
    info: dict[str, Any] = field(default_factory=dict)  # source, sizes, path taken: for reports
    test_is_val: bool = False


@dataclass
class _Plan:
    preset: Preset
    spec: DatasetSpec
    augment: str
    batch_size: int  # global
    root: Path
    kind: str  # digits | idx | cifar-pickle | folder | arrays | dataset
    index: FolderIndex | None = None
    source: Any = None  # arrays.ArraySource or python.DatasetSource: data given, not looked up
    # (tree, unreadable "file: reason", non-image files) of each folder split read: reported once
    # all splits are read (report_plan_skips), so --strict names every file in one error
    skipped: list[tuple[Path, list[str], list[str]]] = field(default_factory=list)
    size_note: str | None = None  # how the input size was chosen when --img-size was unset


def dataset_spec(cfg: RunConfig, preprocessing: Preprocessing | None = None,
                 source: Any = None) -> DatasetSpec:
    """The resolved spec (classes, channels, size, statistics) without decoding any image."""
    return _plan(cfg, preprocessing=preprocessing, source=source).spec


def build_loaders(cfg: RunConfig, device: torch.device | str, *, rank: int = 0, world_size: int = 1,
                  preprocessing: Preprocessing | None = None, source: Any = None) -> Loaders:
    """Train, val and test loaders (:class:`Loaders`); ``preprocessing``: pretrained weights'
    (size, mean, std), which replaces the dataset's; ``source``: data handed over in Python
    (:func:`resnetkit.data.python.as_source`)."""
    plan = _plan(cfg, world_size=world_size, preprocessing=preprocessing, source=source)
    kw = dict(device=torch.device(device), rank=rank, world_size=world_size)
    test_of = None  # --test-subset: the whole test split's size
    if plan.kind == "dataset":  # a torch Dataset handed over in Python: streamed as it is
        train, val, test = (_dataset_loader(plan, cfg, s, s == "train", **kw) for s in SPLITS)
        test_is_val, val_source = plan.source.test_is_val, plan.source.val_source
    elif plan.kind == "folder":
        fs = _folder_splits(plan, cfg)
        train, val = _pool_loaders(plan, cfg, fs, **kw) or (
            _folder_loader(plan, cfg, fs.train, True, **kw),
            _folder_loader(plan, cfg, fs.val, False, **kw) if fs.val is not None else None)
        if fs.test_is_val and val is not None:
            test = val
        else:
            test_files, test_of = _test_subset(fs.test, cfg)
            test = _folder_loader(plan, cfg, test_files, False, **kw)
        test_is_val, val_source = fs.test_is_val, fs.val_source
        report_plan_skips(plan, cfg.strict)
    else:
        pool = _device_pool(plan, cfg, kw["device"])  # once, for train and val
        train = _array_loader(plan, cfg, *pool.part("train"), True, **kw)
        val = _array_loader(plan, cfg, *pool.part("val"), False, **kw) if pool.n_val else None
        test_data, test_of = _test_subset(_load_array(plan, cfg, "test"), cfg)
        test = _memory_loader(plan, cfg, test_data, False, **kw)
        test_is_val, val_source = False, array_val_source(pool.n_val, cfg)
    if val is not None:
        val.source = f"val split: {val_source}"
    train.source, test.source = "training split", "val split (no test split)" if test_is_val else "test split"
    info = {"dataset": cfg.dataset, "source": _source(plan),
            "layout": layout(plan.kind, plan.index, plan.source),
            "train_size": train.dataset_size, "val_size": val.dataset_size if val is not None else 0,
            "test_size": test.dataset_size, "val_source": val_source, "test_is_val": test_is_val,
            "in_memory": all(x.in_memory for x in (train, val, test) if x is not None),
            "augment": plan.augment, "batch_size": plan.batch_size, "img_size": plan.spec.img_size,
            **({"img_size_note": plan.size_note} if plan.size_note else {})}
    if test_of:  # --test-subset: the report is on part of the test split
        info.update(test_subset=test.dataset_size, test_of=test_of)
    return Loaders(plan.spec, train, val, test, info, test_is_val)


def build_eval_loader(cfg: RunConfig, split: str, device: torch.device | str, *,
                      spec: DatasetSpec | None = None, rank: int = 0, world_size: int = 1,
                      source: Any = None, whole: bool = False) -> Loader:
    """Loader over one split (train, val or test) without augmentation or shuffling: the same
    samples the run with this config had in that split. With ``spec`` (a checkpoint's), its
    preprocessing and class order are used. ``.source`` says where the samples come from.
    ``whole``: an image folder without train/, val/ or test/ is all test (another folder a
    model is scored on, not one it was trained on): every image of it."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    plan = _plan(cfg, spec=spec, world_size=world_size, source=source)
    kw = dict(device=torch.device(device), rank=rank, world_size=world_size)
    index = plan.index
    if (whole and split == "test" and plan.kind == "folder" and plan.preset.name == "imagefolder"
            and index is not None and not index.held_out() and index.train.root == index.root):
        loader = _folder_loader(plan, cfg, index.train, False, **kw)
        report_plan_skips(plan, cfg.strict)
        loader.source = f"all {len(index.train)} images of {index.root} (no split folders: all test)"
        loader.test_is_val = False
        return loader
    if plan.kind == "dataset":
        loader = _dataset_loader(plan, cfg, split, False, **kw)
        loader.source = f"{split} split"
        return loader
    if plan.kind == "folder":
        fs = _folder_splits(plan, cfg)
        files = {"train": fs.train, "val": fs.val, "test": fs.test}[split]
        _check_present(files is not None, split)
        pair = _pool_loaders(plan, cfg, fs, False, **kw) if split != "test" else None
        loader = pair[split == "val"] if pair else _folder_loader(plan, cfg, files, False, **kw)
        report_plan_skips(plan, cfg.strict)
        held = fs.val_source if split == "val" else ""
        test_is_val = fs.test_is_val
    elif split == "test":
        loader = _memory_loader(plan, cfg, _load_array(plan, cfg, "test"), False, **kw)
        held, test_is_val = "", False
    else:
        pool = _device_pool(plan, cfg, kw["device"])
        _check_present(split == "train" or pool.n_val > 0, split)
        loader = _array_loader(plan, cfg, *pool.part(split), False, **kw)
        held, test_is_val = array_val_source(pool.n_val, cfg), False
    loader.source = {"train": "training split", "val": f"val split: {held}",
                     "test": "val split (no test split)" if test_is_val else "test split"}[split]
    loader.test_is_val = split == "test" and test_is_val  # a run without a test split was tested on val
    return loader


def _dataset_loader(plan: _Plan, cfg: RunConfig, split: str, train: bool, *, device: torch.device,
                    rank: int, world_size: int) -> Loader:
    return plan.source.loader(split, train=train, device=device, batch_size=_batch(plan, train, world_size),
                              seed=cfg.seed, workers=cfg.workers, rank=rank, world_size=world_size)


def _check_present(present: bool, split: str) -> None:
    if not present:
        raise UserError(f"this run has no {split} split (it trained with --val-size 0); "
                        f"choose --split test or --split train instead")


# ------------------------------------------------------------------ resolving a config
def _plan(cfg: RunConfig, spec: DatasetSpec | None = None, world_size: int = 1,
          preprocessing: Preprocessing | None = None, source: Any = None) -> _Plan:
    preset, source = given_data(cfg, source)
    augment = check_augment(cfg.augment)
    batch_size = preset.batch_size if cfg.batch_size is None else cfg.batch_size
    if batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {batch_size}")
    check_data_sizes(cfg)  # --img-size, --min-img-size, --subset: None is unset, 0 a mistake
    if batch_size < world_size:
        raise UserError(f"--batch-size {batch_size} is smaller than the {world_size} processes; "
                        f"it is the global batch, split across processes")
    img_size = spec.img_size if spec else (preset.img_size if cfg.img_size is None else cfg.img_size)
    if img_size < 4:
        raise UserError(f"--img-size must be at least 4 pixels, got {img_size}")
    kind, root, index, classes = _locate(cfg, preset, spec, source=source)
    size_note = None
    if spec is None and cfg.img_size is None and preprocessing is None and index is not None \
            and preset.native_size is None:  # photos of any size: the data decides
        img_size, size_note = auto_img_size(index.train)
    if spec is None:
        spec = DatasetSpec(cfg.dataset, classes, preset.in_chans, img_size, preset.mean, preset.std,
                           preset.resize_size(img_size))
        if preprocessing is not None:
            spec = spec.with_preprocessing(preprocessing, cfg.img_size)
    elif kind != "folder" and tuple(spec.classes) != tuple(classes):
        raise UserError(f"the model's classes ({summarize_names(list(spec.classes))}) are not "
                        f"{cfg.dataset}'s ({summarize_names(list(classes))})")
    return _Plan(preset, spec, augment, batch_size, root, kind, index, source, size_note=size_note)


def given_data(cfg: RunConfig, source: Any = None) -> tuple[Preset, Any]:
    """The preset and the data source of ``--dataset arrays`` (a file) or of data handed over in
    Python; for arrays the preset takes the data's channels, size and statistics."""
    preset = get_preset(cfg.dataset)
    if source is None and preset.name == "arrays":
        if not cfg.data_dir:
            raise UserError("--dataset arrays needs --data-dir FILE: a .npz, .npy or .h5 file of images "
                            "and labels")
        source = arrays.load_file(cfg.data_dir, keys=cfg.keys, classes=cfg.classes,
                                  val_fraction=cfg.val_fraction or 0.2, seed=cfg.seed)
    return (preset if source is None else source.preset(preset)), source


def _locate(cfg: RunConfig, preset: Preset, spec: DatasetSpec | None, tolerant: bool = False,
            source: Any = None) -> tuple[str, Path, FolderIndex | None, tuple[str, ...]]:
    name = preset.name
    fixed = tuple(spec.classes) if spec else None
    if source is not None:
        return source.kind, Path(source.source), None, source.classes
    if name == "csv":
        index = csvfile.index_csv(cfg, classes=fixed, tolerant=tolerant)
        return "folder", index.root, index, index.classes
    if name == "digits":
        return "digits", Path("."), None, PRESET_CLASSES[name]
    if name in IDX_FOLDERS:
        return "idx", resolve_data_dir(cfg.data_dir), None, PRESET_CLASSES[name]
    if name == "imagefolder":
        if not cfg.data_dir:
            raise UserError("imagefolder needs --data-dir DIR: a folder with one sub-folder of images "
                            "per class (or train/ and val/ trees of them)")
        index = index_imagefolder(cfg.data_dir, classes=fixed, tolerant=tolerant)
        return "folder", index.root, index, index.classes
    root = resolve_data_dir(cfg.data_dir)  # cifar10 / cifar100
    if has_cifar_pickles(root, name):
        return "cifar-pickle", root, None, cifar_pickle_classes(root, name)
    for folder in (root / CIFAR_IMAGE_FOLDERS[name], root):
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            index = index_imagefolder(folder, classes=fixed, tolerant=tolerant)
            return "folder", folder, index, index.classes
    if cfg.download:
        download_cifar(root, name)
        return "cifar-pickle", root, None, cifar_pickle_classes(root, name)
    raise cifar_missing_error(root, name)


def layout(kind: str, index: FolderIndex | None, source: Any = None) -> str:
    if source is not None:
        return source.layout
    return index.layout if index is not None else LAYOUTS[kind]


def _source(plan: _Plan) -> str:
    if plan.source is not None:
        return plan.source.source
    return "sklearn.datasets.load_digits" if plan.kind == "digits" else str(plan.root)


# ------------------------------------------------------------------ one split
def _folder_splits(plan: _Plan, cfg: RunConfig) -> FolderSplits:
    pool = plan.index.train
    if plan.index.val is None and cfg.val_size != 0:
        pool = _readable(plan, pool)
    if cfg.subset and _subset_fits(cfg.subset, len(pool)):
        pool = pool.select(stratified_subset(torch.tensor(pool.labels), cfg.subset).tolist())
    return folder_splits(plan.index, pool, cfg, builtin=plan.preset.name != "imagefolder")


def _readable(plan: _Plan, pool: FolderSplit) -> FolderSplit:
    """The tree val is held out of, less the files whose header cannot be read: skipped first,
    then split, so that they take no validation slot (4 bad files in a class of 15 left its val
    split 1 image instead of 3). Reported with the other skips."""
    bad = probe_split(pool)
    if not bad:
        return pool
    plan.skipped.append((pool.root, bad, []))
    gone = {b.split(": ", 1)[0] for b in bad}
    return pool.select([i for i, f in enumerate(pool.files) if f not in gone])


def _folder_loader(plan: _Plan, cfg: RunConfig, fsplit: FolderSplit, train: bool, *,
                   device: torch.device, rank: int, world_size: int) -> Loader:
    bs = _batch(plan, train, world_size)
    kw = dict(rank=rank, world_size=world_size)
    geometry = _folder_geometry(plan, train)
    if fits_in_memory(len(fsplit), plan.spec.in_chans, geometry.out, plan.spec.img_size):
        data = _decode_folder(plan, cfg, fsplit, geometry)
        return _memory_loader(plan, cfg, data, train, device=device, **kw)
    return _stream_loader(plan, cfg, fsplit, train, device, bs, **kw)


def _pool_loaders(plan: _Plan, cfg: RunConfig, fs: FolderSplits, training: bool = True, **kw: Any
                  ) -> tuple[MemoryLoader, MemoryLoader] | None:
    """Train and val as two selections of one decoded tensor of the training tree (one decode,
    one cache entry whatever --seed is), when both use the same geometry and it fits in memory.
    ``training``: the train loader augments and shuffles."""
    geometry = eval_geometry(plan.spec)
    pool = fs.pool
    if (pool is None or (training and _folder_geometry(plan, True) != geometry)
            or not fits_in_memory(len(pool), plan.spec.in_chans, geometry.out, plan.spec.img_size)):
        return None
    data = _decode_folder(plan, cfg, pool, geometry)
    bad = {b.split(": ", 1)[0] for b in data.bad}
    row = {f: r for r, f in enumerate(f for f in pool.files if f not in bad)}  # file -> decoded row
    images, labels, prepare = _device_arrays(plan, data, kw["device"])
    train, val = (torch.tensor([row[f] for f in part.files if f in row], dtype=torch.long)
                  for part in (fs.train, fs.val))
    return (_array_loader(plan, cfg, images, labels, train, prepare, training, **kw),
            _array_loader(plan, cfg, images, labels, val, prepare, False, **kw))


def _batch(plan: _Plan, train: bool, world_size: int) -> int:
    per_rank = plan.batch_size // world_size
    return per_rank if train else 2 * per_rank  # no activations kept for backward


def _load_array(plan: _Plan, cfg: RunConfig, split: str) -> ArraySplit:
    if plan.source is not None:
        return plan.source.split(split)
    if plan.kind == "digits":
        return load_digits_split(split)
    if plan.kind == "idx":
        return load_idx_split(plan.root, plan.preset.name, split, plan.spec.classes, cfg.download)
    return load_cifar_pickle_split(plan.root, plan.preset.name, split)


@dataclass
class _DevicePool:
    """The training split of a built-in dataset on the device, and its train/val indices."""

    images: torch.Tensor
    labels: torch.Tensor
    prepare: Callable[[torch.Tensor], torch.Tensor] | None
    train_idx: torch.Tensor
    val_idx: torch.Tensor

    @property
    def n_val(self) -> int:
        return int(self.val_idx.numel())

    def part(self, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                        Callable[[torch.Tensor], torch.Tensor] | None]:
        """(images, labels, indices, prepare): the arguments of :func:`_array_loader`."""
        idx = self.train_idx if split == "train" else self.val_idx
        return self.images, self.labels, idx, self.prepare


def _device_pool(plan: _Plan, cfg: RunConfig, device: torch.device) -> _DevicePool:
    pool = _array_pool(plan, cfg)
    train_idx, val_idx = holdout(pool.labels, val_count(len(pool.labels), cfg), cfg.seed)
    images, labels, prepare = _device_arrays(plan, pool, device)
    return _DevicePool(images, labels, prepare, train_idx, val_idx)


def _array_pool(plan: _Plan, cfg: RunConfig) -> ArraySplit:
    """The training split after --subset: what train and val are cut from."""
    data = _load_array(plan, cfg, "train")
    if cfg.subset and _subset_fits(cfg.subset, len(data.labels)):
        idx = stratified_subset(data.labels, cfg.subset)
        data.images, data.labels = data.images[idx], data.labels[idx]
    return data


def _test_subset(split: Any, cfg: RunConfig) -> tuple[Any, int | None]:
    """--test-subset N: (N samples of the test split, per class in proportion and seeded on a
    stream of its own; the whole split's size), or (the split, None) where N is unset or not
    smaller. ``split``: an ArraySplit or a folder's FolderSplit."""
    n = len(split.labels)
    if not cfg.test_subset or cfg.test_subset >= n:
        return split, None
    idx = stratified_subset(torch.as_tensor(split.labels), cfg.test_subset, key="test")
    if isinstance(split, FolderSplit):
        return split.select(idx.tolist()), n
    ids = [split.ids[i] for i in idx.tolist()] if split.ids else split.ids
    return replace(split, images=split.images[idx], labels=split.labels[idx], ids=ids), n


def _subset_fits(subset: int, n: int) -> bool:
    """Whether --subset selects from ``n`` training samples; one note when it asks for more."""
    if subset > n:
        warn(f"--subset {subset:,} exceeds the {n:,} samples of the training split; the whole split "
             f"is used", once=True)
    return subset < n


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
    plan.skipped.append((fsplit.root, bad, fsplit.ignored))
    if not (cfg.strict and bad):  # with --strict, the report of every unusable file comes first
        _check_classes_left(labels.tolist(), plan.spec.classes, fsplit)
    return ArraySplit(images, labels, plan.spec.classes, str(fsplit.root), bad=bad, ignored=fsplit.ignored)


def report_plan_skips(plan: _Plan, strict: bool) -> None:
    """Report the files the splits read so far skipped, each once (train and val cut from one
    tree share its non-image files); with ``strict``, one error naming all of them."""
    trees: dict[Path, tuple[dict[str, None], dict[str, None]]] = {}  # ordered sets
    for root, bad, ignored in plan.skipped:
        seen_bad, seen_ignored = trees.setdefault(root, ({}, {}))
        seen_bad.update(dict.fromkeys(bad))
        seen_ignored.update(dict.fromkeys(ignored))
    plan.skipped.clear()
    if strict:
        names = [_under(plan.root, root, name) for root, (bad, ignored) in trees.items()
                 for name in (*bad, *ignored)]
        if names:
            raise UserError(f"{len(names)} unusable file(s) in {plan.root}: {summarize_names(names, 10)}; "
                            f"fix or remove them, or drop --strict")
    for root, (bad, ignored) in trees.items():
        report_skipped(list(bad), list(ignored), root)


def _under(top: Path, tree: Path, name: str) -> str:
    """``name`` (relative to ``tree``) relative to ``top``: train/cat/x.jpg for a split layout."""
    rel = os.path.relpath(tree, top).replace(os.sep, "/")
    return name if rel == "." else f"{tree}/{name}" if rel.startswith("..") else f"{rel}/{name}"


def report_skipped(bad: list[str], ignored: list[str], where: Path) -> None:
    """Warn about the unreadable images and non-image files of the tree ``where``."""
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


def _device_arrays(plan: _Plan, data: ArraySplit, device: torch.device, source: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor] | None]:
    """(uint8 images, labels) on the device at the model's size, and the per-batch resize when
    they are kept at their native size. ``source``: keep the stored size for random resized crops."""
    spec = plan.spec
    images = match_channels(data.images, spec.in_chans)
    prepare = None
    if images.is_floating_point() and tuple(images.shape[-2:]) != (spec.img_size, spec.img_size):
        # resizing rounds and clamps to 0..255, made for pixels: it would cut these values off
        raise UserError(f"arrays of float values that are not pixels train at their own size "
                        f"{images.shape[-2]}x{images.shape[-1]}; leave --img-size out (or resize them "
                        f"yourself), or pass pixels (0..1 or 0..255)")
    if not source and tuple(images.shape[-2:]) != (spec.img_size, spec.img_size):
        if images.shape[0] * spec.in_chans * spec.img_size**2 <= MEMORY_BUDGET:
            images = _geometry_chunked(images, eval_geometry(spec))
        else:  # too big at the model size: keep the native size and resize each batch on the device
            prepare = lambda x: resize_batch(x, spec.img_size)  # noqa: E731
    return to_device(images, device), to_device(data.labels, device), prepare


def _memory_loader(plan: _Plan, cfg: RunConfig, data: ArraySplit, train: bool, *, device: torch.device,
                   rank: int, world_size: int) -> MemoryLoader:
    spec = plan.spec
    source = (train and plan.kind == "folder" and data.images.shape[-1] != spec.img_size
              and bool(spec.resize_size))
    images, labels, prepare = _device_arrays(plan, data, device, source)
    return _array_loader(plan, cfg, images, labels, None, prepare, train, device=device, rank=rank,
                         world_size=world_size, source=source)


def _array_loader(plan: _Plan, cfg: RunConfig, images: torch.Tensor, labels: torch.Tensor,
                  idx: torch.Tensor | None, prepare: Callable[[torch.Tensor], torch.Tensor] | None,
                  train: bool, *, device: torch.device, rank: int, world_size: int,
                  source: bool = False) -> MemoryLoader:
    """A loader over ``images[idx]`` (all of them when ``idx`` is None or covers them): one gather
    on the device, made once."""
    if idx is not None and idx.numel() != labels.shape[0]:
        idx = to_device(idx, device)
        images, labels = images[idx], labels[idx]
    spec = plan.spec
    augment = _batch_augment(plan, images.shape[-1], source) if train else None
    policy = BatchPolicy(plan.augment) if train and plan.augment in POLICIES else None
    if policy is not None and images.is_floating_point():
        raise UserError(f"--augment {plan.augment} edits pixels (contrast, posterize, solarize) and the "
                        f"arrays hold float values that are not pixels; use --augment basic or none")
    return MemoryLoader(images, labels, batch_size=_batch(plan, train, world_size),
                        normalizer=Normalizer(spec.mean, spec.std, device), train=train,
                        seed=cfg.seed, augment=augment, prepare=prepare, policy=policy, rank=rank,
                        world_size=world_size)


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
    plan.skipped.append((fsplit.root, bad, fsplit.ignored))
    bad_files = {b.split(": ", 1)[0] for b in bad}
    kept = fsplit.select([i for i, f in enumerate(fsplit.files) if f not in bad_files])
    if not (cfg.strict and bad):
        _check_classes_left(kept.labels, spec.classes, fsplit)
    fsplit = kept
    transform = train_transform(plan.preset, spec.img_size, spec.resize_size, spec.interpolation,
                                plan.augment if train else "none", spec.mean)
    ds = FolderDataset([fsplit.path(i) for i in range(len(fsplit))], fsplit.labels, transform,
                       spec.in_chans, cfg.strict)
    return FolderLoader(ds, batch_size=bs, train=train, seed=cfg.seed, device=device,
                        normalizer=Normalizer(spec.mean, spec.std, device), workers=cfg.workers, **kw)
