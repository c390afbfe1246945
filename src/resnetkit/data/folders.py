"""Image folders: one sub-folder per class, either in train/ and val/ (or test/) trees or in one
tree that is split here.

Layout. ``DIR/train`` with ``DIR/val`` and/or ``DIR/test`` is a split layout: val/ chooses the
checkpoint, test/ is read once at the end. Otherwise ``DIR`` (or ``DIR/train`` alone) is one
tree. Where val/ is missing, :mod:`.splits` holds the validation split out of the training tree,
per class by ``--val-fraction`` (:func:`split_by_fraction`, a generator seeded by ``--seed`` and
the class name: stratified, reproducible, and adding a class does not reshuffle the others).

Class order. Class names and their indices are saved with every run (``spec.classes``), so the
order only has to be stable. If every class folder name is an integer (``1, 2, 10``), classes
sort numerically (1, 2, 10); otherwise lexicographically, as torchvision's ImageFolder does.
When numeric order differs from torchvision's (it does from 10 classes up: ``1, 10, 2``), a
:class:`DataWarning` says so once, so nothing is reordered silently. Hidden folders and files
(names starting with ".") are ignored; files directly in ``DIR`` are not samples.

Bad input. A class folder with no image files, a tree with fewer than two classes, or a class
present in one split only is a UserError. Files with other extensions inside class folders are
skipped and named in a warning (an error with ``--strict``); unreadable images are handled where
they are decoded (:mod:`.decode`, :mod:`.streaming`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from ..errors import UserError
from ._util import summarize_names, warn
from .sampling import seeded_generator
from .transforms import IMG_EXTENSIONS, is_image_file

HELD_OUT_NAMES = ("val", "test")


@dataclass
class FolderSplit:
    """The image files of one split: paths relative to ``root``, labels, (size, mtime_ns)."""

    root: Path
    files: list[str]
    labels: list[int]
    stats: list[tuple[int, int]]
    ignored: list[str] = field(default_factory=list)  # non-image files in class folders
    skipped_links: list[str] = field(default_factory=list)  # links to a folder or file already listed

    def __len__(self) -> int:
        return len(self.files)

    def path(self, i: int) -> Path:
        return self.root / self.files[i]

    def select(self, indices: Sequence[int]) -> "FolderSplit":
        return replace(self, files=[self.files[i] for i in indices],
                       labels=[self.labels[i] for i in indices], stats=[self.stats[i] for i in indices])

    def counts(self, num_classes: int) -> list[int]:
        out = [0] * num_classes
        for label in self.labels:
            out[label] += 1
        return out


@dataclass
class FolderIndex:
    """The trees of an image folder as found: val/ and test/ are None when absent."""

    root: Path
    classes: tuple[str, ...]
    train: FolderSplit
    val: FolderSplit | None
    test: FolderSplit | None
    layout: str  # a sentence for reports
    problems: list[str] = field(default_factory=list)  # structural problems (tolerant mode)

    def held_out(self) -> list[tuple[str, FolderSplit]]:
        """(name, files) of the val/ and test/ trees that exist."""
        return [(n, s) for n, s in (("val", self.val), ("test", self.test)) if s is not None]


def natural_order(names: Sequence[str]) -> list[str]:
    """All-integer names sort numerically, anything else lexicographically (torchvision)."""
    if names and all(n.isdecimal() for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def class_dirs(tree: Path) -> list[str]:
    with os.scandir(tree) as it:
        return [e.name for e in it if e.is_dir() and not e.name.startswith(".")]


def detect_layout(root: Path) -> tuple[Path, dict[str, Path]]:
    """(train tree, {"val": tree, "test": tree} of the held-out trees present)."""
    train = root / "train"
    if train.is_dir():
        return train, {n: root / n for n in HELD_OUT_NAMES if (root / n).is_dir()}
    return root, {}


def _walk_class(folder: Path, label: int, out: FolderSplit, seen: set[str]) -> int:
    """Append the image files under one class folder (recursively, sorted); return how many.

    Links are followed (a class folder may gather photos from elsewhere), but a folder or file
    whose real path was already visited is skipped: a link back into the tree would otherwise
    repeat it forever (os.walk stops only at the OS's path-length limit), count its images many
    times and put copies of held-out images into training. ``seen`` holds real paths across the
    whole scan."""
    found = 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real_dir = os.path.realpath(dirpath)
        if real_dir in seen:
            dirnames[:] = []
            out.skipped_links.append(os.path.relpath(dirpath, out.root).replace(os.sep, "/"))
            continue
        seen.add(real_dir)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, out.root).replace(os.sep, "/")
            if not is_image_file(name):
                out.ignored.append(rel)
                continue
            real = os.path.realpath(full)
            if real in seen:
                out.skipped_links.append(rel)
                continue
            seen.add(real)
            st = os.stat(full)
            out.files.append(rel)
            out.labels.append(label)
            out.stats.append((st.st_size, st.st_mtime_ns))
            found += 1
    return found


def scan_tree(tree: Path, classes: Sequence[str], problems: list[str] | None = None,
              seen: set[str] | None = None) -> FolderSplit:
    """List the images of ``classes`` under ``tree``; a class folder with no image is an error
    (or, with a ``problems`` list, recorded there). ``seen`` (real paths) is shared between the
    trees of one dataset, so a file reached from two splits is listed once, in the first."""
    split = FolderSplit(tree, [], [], [])
    seen = set() if seen is None else seen
    for label, name in enumerate(classes):
        folder = tree / name
        if not folder.is_dir():
            continue  # a class absent from this tree; callers check presence
        if _walk_class(folder, label, split, seen) == 0:
            msg = f"class folder {folder} holds no image files ({' '.join(IMG_EXTENSIONS)})"
            if problems is None:
                raise UserError(f"{msg}; remove it or add images")
            problems.append(msg)
    if split.skipped_links:
        warn(f"{tree}: skipped {len(split.skipped_links)} link(s) to a folder or image already "
             f"listed (first: {split.skipped_links[0]}); each file is counted once")
    return split


def _resolve_classes(trees: list[Path], classes: Sequence[str] | None,
                     problems: list[str] | None) -> tuple[str, ...]:
    found = [set(class_dirs(t)) for t in trees]
    if classes is not None:  # order fixed by a checkpoint's spec
        extra = sorted(set().union(*found) - set(classes))
        if extra:
            raise UserError(f"folder classes {summarize_names(extra)} are not among the model's "
                            f"{len(classes)} classes ({summarize_names(list(classes))})")
        return tuple(classes)
    union = set().union(*found)
    for tree, names in zip(trees, found):
        missing = natural_order(sorted(union - names))
        if missing and len(trees) > 1:
            others = " and ".join(f"{t.name}/" for t in trees if t != tree)
            msg = (f"class {summarize_names(missing)} has a folder in {others} but not in {tree}; "
                   f"every class needs images in every split")
            if problems is None:
                raise UserError(msg)
            problems.append(msg)
    order = natural_order(sorted(union))
    if len(order) < 2:
        msg = (f"{trees[0]} holds {len(order)} class folder(s) ({', '.join(order) or 'none'}); "
               f"an image folder needs one sub-folder per class and at least two classes")
        if problems is None:
            raise UserError(msg)
        problems.append(msg)
    if order != sorted(order):
        warn(f"class folders in {trees[0].parent if len(trees) > 1 else trees[0]} are numbers and "
             f"sort numerically ({', '.join(order[:4])}, ...), not as torchvision's ImageFolder "
             f"does ({', '.join(sorted(order)[:4])}, ...); the order is saved with the run", once=True)
    return tuple(order)


def split_by_fraction(split: FolderSplit, classes: Sequence[str], val_fraction: float,
                      seed: int) -> tuple[FolderSplit, FolderSplit]:
    """Stratified train/held-out split: per class round(n * val_fraction) files, at least one
    each side when the class has two or more."""
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    import torch

    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(split.labels):
        by_class.setdefault(label, []).append(i)
    train_idx: list[int] = []
    held_idx: list[int] = []
    for label, idx in sorted(by_class.items()):
        n = len(idx)
        n_val = min(max(round(n * val_fraction), 1), n - 1) if n >= 2 else 0
        perm = torch.randperm(n, generator=seeded_generator(seed, "val-split", classes[label])).tolist()
        held = set(perm[:n_val])
        held_idx += [idx[j] for j in range(n) if j in held]
        train_idx += [idx[j] for j in range(n) if j not in held]
    return split.select(sorted(train_idx)), split.select(sorted(held_idx))


def index_imagefolder(root: str | os.PathLike[str], *, classes: Sequence[str] | None = None,
                      tolerant: bool = False) -> FolderIndex:
    """Scan an image folder (file listing and stat only, no decoding) into its train tree and its
    val/ and test/ trees where present. ``classes`` fixes the class order (a checkpoint's);
    ``tolerant`` records structural problems in ``.problems`` instead of raising (for ``data
    check``). The validation split of a folder without val/ is made by :mod:`.splits`."""
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "not found"
        raise UserError(f"image folder {root} {what}; point --data-dir (finetune: DATA_DIR) at a folder "
                        f"with one sub-folder of images per class (or train/ and val/ trees of them)")
    problems: list[str] | None = [] if tolerant else None
    train_tree, held_trees = detect_layout(root)
    names = _resolve_classes([train_tree, *held_trees.values()], classes, problems)
    seen: set[str] = set()
    train = scan_tree(train_tree, names, problems, seen)
    held = {n: scan_tree(tree, names, problems, seen) for n, tree in held_trees.items()}
    if held:
        layout = f"split folders {', '.join(t.name + '/' for t in (train_tree, *held_trees.values()))}"
    else:
        tree = "" if train_tree == root else f" ({train_tree.name}/ only)"
        layout = f"one tree{tree}"
    if not train.files or any(not h.files for h in held.values()):
        raise UserError(f"no image files found in the class folders of {root}")
    return FolderIndex(root, names, train, held.get("val"), held.get("test"), layout, problems or [])


# --img-size left unset for photos: the median image's shorter side, at most this (the preset's
# 64 px keeps an ImageNet-stem resnet18 laptop-sized), and never below the smallest size.
AUTO_SIZE_CAP = 64
AUTO_SIZE_MIN = 16
AUTO_SIZE_SAMPLE = 200  # image headers read (Pillow reads only the header for .size)


def median_image_size(split: FolderSplit, sample: int = AUTO_SIZE_SAMPLE) -> tuple[int, int] | None:
    """(width, height) of the median image among up to ``sample`` files spread evenly over the
    split (sorted by shorter side); None when none of them opens."""
    from PIL import Image

    step = max(1, len(split.files) // sample)
    sizes = []
    for rel in split.files[::step][:sample]:
        try:
            with Image.open(split.root / rel) as im:
                sizes.append(im.size)
        except Exception:  # noqa: BLE001 - an unreadable file is skipped where it is decoded
            continue
    if not sizes:
        return None
    sizes.sort(key=lambda wh: (min(wh), max(wh)))
    return sizes[len(sizes) // 2]


def auto_img_size(split: FolderSplit, cap: int = AUTO_SIZE_CAP) -> tuple[int, str]:
    """The input size a folder of photos trains at when --img-size is unset, and why."""
    median = median_image_size(split)
    if median is None:
        return cap, f"{cap} px: no image header could be read (--img-size sets another)"
    size = max(AUTO_SIZE_MIN, min(cap, min(median)))
    return size, (f"{size} px: the median image is {median[0]}x{median[1]}"
                  f"{f', at most {cap} px' if size < min(median) else ''} (--img-size sets another)")
