"""Readers of the built-in datasets into uint8 tensors: digits, MNIST, Fashion-MNIST, CIFAR.

Nothing here writes into the data folder unless ``download`` asks torchvision to fetch files:

- MNIST / Fashion-MNIST: the uncompressed IDX files of ``<root>/MNIST/raw`` (or
  ``FashionMNIST/raw``), torchvision's layout, read with torchvision's IDX reader;
- CIFAR-10/100: torchvision's ``CIFAR10`` / ``CIFAR100`` over ``cifar-10-batches-py`` /
  ``cifar-100-python`` (file presence is checked, not md5, so a re-packed copy still loads);
  the JPEG image-folder form (``cifar10-images/{train,test}``) is handled by :mod:`.folders`;
- digits: scikit-learn's bundled 8x8 digits, pixel values 0..16 mapped to round(v * 255 / 16),
  with a fixed stratified 80/20 split (``random_state=0``, independent of ``--seed``).
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


@dataclass
class ArraySplit:
    """One split in memory: uint8 images (N, C, H, W), int64 labels (N,), on the CPU."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    source: str  # where it came from, for reports
    ids: list[str] | None = None  # per-sample names (file paths) when known
    bad: list[str] = field(default_factory=list)  # "path: reason" of skipped files
    ignored: list[str] = field(default_factory=list)  # non-image files in class folders


def default_data_dir() -> Path:
    env = os.environ.get("RESNETKIT_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "resnetkit" / "data"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    return Path(data_dir).expanduser() if data_dir else default_data_dir()


# ---------------------------------------------------------------- digits
def load_digits_split(split: str) -> ArraySplit:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    pixels = np.floor(d.images * (255.0 / 16.0) + 0.5).astype(np.uint8)  # 0..16 -> 0..255, half up
    idx = np.arange(len(pixels))
    train_idx, test_idx = train_test_split(idx, test_size=DIGITS_TEST_FRACTION, stratify=d.target,
                                           random_state=DIGITS_SPLIT_SEED)
    take = np.sort(train_idx if split == "train" else test_idx)
    return ArraySplit(torch.from_numpy(pixels[take]).unsqueeze(1).contiguous(),
                      torch.from_numpy(d.target[take].astype(np.int64)),
                      tuple(str(i) for i in range(10)), "sklearn.datasets.load_digits",
                      ids=[f"digits[{i}]" for i in take])


# ---------------------------------------------------------------- MNIST, Fashion-MNIST
IDX_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def idx_files(split: str) -> tuple[str, str]:
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _idx_dir(root: Path, name: str) -> Path:
    primary = root / IDX_FOLDERS[name] / "raw"
    if not primary.is_dir() and all((root / f).is_file() for f in idx_files("train")):
        return root  # --data-dir pointing straight at the folder of IDX files
    return primary


def load_idx_split(root: Path, name: str, split: str, classes: tuple[str, ...],
                   download: bool = False) -> ArraySplit:
    from torchvision.datasets.mnist import read_image_file, read_label_file

    folder = _idx_dir(root, name)
    files = [folder / f for f in idx_files(split)]
    if download and not all(f.is_file() for f in files):
        _download(name, root)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        expected = ", ".join(f for s in ("train", "test") for f in idx_files(s))
        raise UserError(
            f"{name}: missing {', '.join(missing)} in {folder}; expected the uncompressed IDX files "
            f"{expected} there: set --data-dir (or RESNETKIT_DATA) to the folder holding "
            f"{IDX_FOLDERS[name]}/raw, or pass --download")
    try:
        images = read_image_file(str(files[0]))
        labels = read_label_file(str(files[1]))
    except Exception as e:  # noqa: BLE001 - a malformed file is the user's data
        raise UserError(f"{name}: cannot read the IDX files in {folder}: {e}") from None
    if images.shape[0] != labels.shape[0]:
        raise UserError(f"{name}: {files[0].name} holds {images.shape[0]} images but "
                        f"{files[1].name} {labels.shape[0]} labels")
    return ArraySplit(images.unsqueeze(1).contiguous(), labels.long(), classes, str(folder))


def _download(name: str, root: Path) -> None:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST,
           "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
    try:
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
    except Exception as e:  # noqa: BLE001 - network or disk trouble, explained in one line
        raise UserError(f"{name}: download into {root} failed: {str(e).splitlines()[0]}") from None


# ---------------------------------------------------------------- CIFAR pickles
CIFAR_PICKLE_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CIFAR_IMAGE_FOLDERS = {"cifar10": "cifar10-images", "cifar100": "cifar100-images"}


def _cifar_class(name: str) -> type:
    import torchvision.datasets as tvd

    base = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100

    class Cifar(base):  # type: ignore[misc, valid-type]
        # torchvision checks md5 sums; presence is enough here (tests write tiny pickles)
        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / f).is_file() for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return Cifar


def cifar_pickle_files(name: str) -> list[str]:
    if name == "cifar10":
        return [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    return ["train", "test", "meta"]


def has_cifar_pickles(root: Path, name: str) -> bool:
    return all((root / CIFAR_PICKLE_FOLDERS[name] / f).is_file() for f in cifar_pickle_files(name))


def cifar_missing_error(root: Path, name: str) -> UserError:
    folder = root / CIFAR_PICKLE_FOLDERS[name]
    return UserError(
        f"{name}: found neither {folder} (python pickles {', '.join(cifar_pickle_files(name))}) nor "
        f"{root / CIFAR_IMAGE_FOLDERS[name]}/{{train,test}} (JPEG class folders); set --data-dir "
        f"(or RESNETKIT_DATA) to the folder holding one of them, or pass --download")


def load_cifar_pickle_split(root: Path, name: str, split: str) -> ArraySplit:
    try:
        ds = _cifar_class(name)(str(root), train=split == "train", download=False)
    except Exception as e:  # noqa: BLE001 - corrupt pickles are the user's data
        raise UserError(f"{name}: cannot read {root / CIFAR_PICKLE_FOLDERS[name]}: {e}") from None
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return ArraySplit(images, torch.as_tensor(ds.targets, dtype=torch.long), tuple(ds.classes),
                      str(root / CIFAR_PICKLE_FOLDERS[name]))


def cifar_pickle_classes(root: Path, name: str) -> tuple[str, ...]:
    meta = cifar_pickle_files(name)[-1]
    key = "label_names" if name == "cifar10" else "fine_label_names"
    with open(root / CIFAR_PICKLE_FOLDERS[name] / meta, "rb") as f:
        return tuple(pickle.load(f, encoding="latin1")[key])


def download_cifar(root: Path, name: str) -> None:
    _download(name, root)
