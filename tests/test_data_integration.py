"""The real datasets of $RESNETKIT_DATA (read-only): counts, labels, and nothing written there."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from resnetkit.config import RunConfig
from resnetkit.data import build_eval_loader, build_loaders, dataset_spec
from resnetkit.data.folders import index_imagefolder
from resnetkit.data.splits import folder_splits

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("RESNETKIT_DATA"), reason="RESNETKIT_DATA is not set"),
]
CPU = torch.device("cpu")


@pytest.fixture
def data_root() -> Path:
    return Path(os.environ["RESNETKIT_DATA"])


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.parametrize("name,folder,first_labels", [
    ("fashion-mnist", "FashionMNIST", [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]),
    ("mnist", "MNIST", [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]),
])
def test_idx_datasets(data_root, name, folder, first_labels):
    before = listing(data_root / folder)
    loaders = build_loaders(RunConfig(dataset=name), CPU)  # data_dir from $RESNETKIT_DATA
    sizes = (loaders.train.dataset_size, loaders.val.dataset_size, loaders.test.dataset_size)
    assert sizes == (55_000, 5_000, 10_000)
    assert loaders.train.in_memory and loaders.spec.num_classes == 10
    _, y = next(iter(build_eval_loader(RunConfig(dataset=name, val_size=0), "train", CPU)))
    assert y[:10].tolist() == first_labels
    assert listing(data_root / folder) == before


def test_sign_language_digits_split_by_val_fraction(data_root):
    folder = data_root / "sign-language-digits"
    before = listing(folder)
    index = index_imagefolder(folder)
    assert index.classes == tuple(str(i) for i in range(10))
    assert len(index.train) == 2062 and index.val is None and index.test is None
    cfg = RunConfig(dataset="imagefolder", data_dir=str(folder), img_size=32, batch_size=64)
    fs = folder_splits(index, index.train, cfg, builtin=False)
    assert abs(len(fs.val) - 0.2 * 2062) <= 10 and fs.test_is_val
    loaders = build_loaders(cfg, CPU)  # decodes 2,062 photos (3 of them 3024x3024) once
    assert loaders.train.in_memory and loaders.spec.in_chans == 3
    assert loaders.train.dataset_size + loaders.val.dataset_size == 2062 and loaders.test is loaders.val
    x, _ = next(iter(loaders.train))
    assert x.shape == (64, 3, 32, 32)
    assert listing(folder) == before


def test_cifar10_image_folders_by_listing(data_root):
    # counted from the file listing: decoding 60,000 JPEGs is too slow for a test
    index = index_imagefolder(data_root / "cifar10-images")
    assert (len(index.train), len(index.test)) == (50_000, 10_000)
    assert index.classes == ("airplane", "automobile", "bird", "cat", "deer",
                             "dog", "frog", "horse", "ship", "truck")
    assert index.train.counts(10) == [5000] * 10 and index.test.counts(10) == [1000] * 10
    assert dataset_spec(RunConfig(dataset="cifar10")).classes == index.classes
