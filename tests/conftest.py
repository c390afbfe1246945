"""Shared fixtures: tiny datasets written into tmp_path in each dataset's real on-disk format.

- ``tiny_mnist_root``: torchvision's layout, ``MNIST/raw`` and ``FashionMNIST/raw`` with
  uncompressed IDX files (60 train / 25 test images of 28x28, 10 classes, 6 train per class).
- ``tiny_cifar_root``: ``cifar-10-batches-py`` (5 x 12 train, 20 test) and ``cifar-100-python``
  (50 train, 20 test; 100 class names, labels 0..9 used) python pickles.
- ``tiny_cifar_images_root``: ``cifar10-images/{train,test}/<class>/NNNN.jpg``, 32x32 JPEGs,
  3 train and 2 test per class, as the shared CIFAR-10 copy is laid out.
- ``tiny_imagefolder``: one tree, classes cat/dog/fox, 10 RGB PNGs each, sizes 20..27 px.
- ``tiny_split_imagefolder``: ``train/`` (8 per class) and ``val/`` (4 per class), cat/dog/fox.
- ``odd_imagefolder``: classes ``a`` and ``b``, 6 good RGB PNGs each, plus in ``a``: ``empty.jpg``
  (0 bytes), ``truncated.jpg``, ``notes.txt``, ``fake.png`` (text); in ``b``: ``palette.png``
  (P with transparency), ``rgba.png``, ``cmyk.jpg``, ``gray16.png`` (I;16), ``onebit.png`` (mode 1).
  Readable images: 6 in a, 11 in b.

Every test gets its own empty decode cache ($RESNETKIT_CACHE), so nothing is written to ~/.cache.
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True, scope="session")
def _session_resnetkit_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """An empty cache for the session-, module- and class-scoped fixtures too: they are built
    before the per-test one below, and a speed probe cached in ~/.cache by an earlier run must
    not choose their precision."""
    patch = pytest.MonkeyPatch()
    patch.setenv("RESNETKIT_CACHE", str(tmp_path_factory.mktemp("resnetkit-session-cache")))
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _isolated_resnetkit_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNETKIT_CACHE", str(tmp_path_factory.mktemp("resnetkit-cache")))


# ------------------------------------------------------------------ writers (usable from tests)
def write_idx_images(path: Path, images: np.ndarray) -> None:
    """IDX3: magic 0x00000803, counts and dims big-endian, then uint8 pixels."""
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 0x803, n, h, w) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes())


def labels_for(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % num_classes)


def write_idx_dataset(root: Path, folder: str, n_train: int = 60, n_test: int = 25, seed: int = 0) -> Path:
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels_for(n, 10, rng))
    return raw


def write_cifar_pickles(root: Path, *, hundred: bool = False, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    if hundred:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        for name, n in (("train", 50), ("test", 20)):
            data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
            _pickle(folder / name, {"data": data, "fine_labels": labels_for(n, 10, rng).tolist()})
        _pickle(folder / "meta", {"fine_label_names": [f"class{i:02d}" for i in range(100)]})
        return folder
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        data = rng.integers(0, 256, (12, 3 * 32 * 32), dtype=np.uint8)
        _pickle(folder / f"data_batch_{i}", {"data": data, "labels": labels_for(12, 10, rng).tolist()})
    _pickle(folder / "test_batch", {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                                    "labels": labels_for(20, 10, rng).tolist()})
    _pickle(folder / "batches.meta", {"label_names": CIFAR10_NAMES})
    return folder


def _pickle(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def noise_image(rng: np.random.Generator, w: int, h: int, mode: str = "RGB") -> Image.Image:
    chans = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    a = rng.integers(0, 256, (h, w, chans), dtype=np.uint8)
    return Image.fromarray(a[..., 0] if chans == 1 else a, mode)


def write_class_folders(root: Path, counts: dict[str, int], *, seed: int = 0, ext: str = ".png",
                        sizes: tuple[int, int] = (20, 28)) -> Path:
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            w, h = (int(v) for v in rng.integers(sizes[0], sizes[1], 2))
            noise_image(rng, w, h).save(d / f"{i:04d}{ext}", **({"quality": 95} if ext == ".jpg" else {}))
    return root


# ------------------------------------------------------------------ fixtures
@pytest.fixture
def tiny_mnist_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_idx_dataset(root, "MNIST", seed=1)
    write_idx_dataset(root, "FashionMNIST", seed=2)
    return root


@pytest.fixture
def tiny_cifar_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_cifar_pickles(root)
    write_cifar_pickles(root, hundred=True, seed=1)
    return root


@pytest.fixture
def tiny_cifar_images_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for split, n, seed in (("train", 3, 0), ("test", 2, 1)):
        write_class_folders(root / "cifar10-images" / split, {c: n for c in CIFAR10_NAMES},
                            seed=seed, ext=".jpg", sizes=(32, 33))
    return root


@pytest.fixture
def tiny_imagefolder(tmp_path: Path) -> Path:
    return write_class_folders(tmp_path / "pets", {"cat": 10, "dog": 10, "fox": 10})


@pytest.fixture
def tiny_split_imagefolder(tmp_path: Path) -> Path:
    root = tmp_path / "pets-split"
    write_class_folders(root / "train", {"cat": 8, "dog": 8, "fox": 8}, seed=3)
    write_class_folders(root / "val", {"cat": 4, "dog": 4, "fox": 4}, seed=4)
    return root


@pytest.fixture
def odd_imagefolder(tmp_path: Path) -> Path:
    root = write_class_folders(tmp_path / "odd", {"a": 6, "b": 6}, seed=5)
    rng = np.random.default_rng(6)
    a, b = root / "a", root / "b"
    (a / "empty.jpg").write_bytes(b"")
    good = noise_image(rng, 40, 30)
    good.save(a / "whole.jpg", quality=90)
    data = (a / "whole.jpg").read_bytes()
    (a / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (a / "whole.jpg").unlink()
    (a / "notes.txt").write_text("not an image\n")
    (a / "fake.png").write_text("not a png either\n")
    pal = noise_image(rng, 24, 24).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(b / "palette.png", transparency=0)
    noise_image(rng, 24, 24, "RGBA").save(b / "rgba.png")
    noise_image(rng, 24, 24).convert("CMYK").save(b / "cmyk.jpg", quality=90)
    g16 = (rng.integers(0, 65536, (24, 24))).astype(np.uint16)
    Image.fromarray(g16).save(b / "gray16.png")
    noise_image(rng, 24, 24, "L").convert("1").save(b / "onebit.png")
    return root


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet8 on the bundled digits, 2 epochs (about 94% test accuracy: a dozen mistakes to
    look at). Shared by the report, calibration and explanation tests: copy it before changing it."""
    from resnetkit.train import train

    out = tmp_path_factory.mktemp("digits-run") / "run"
    train(model="resnet8", epochs=2, out=str(out), verbose=False)
    return out
