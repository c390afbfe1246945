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
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pytest
from PIL import Image

if TYPE_CHECKING:
    import torch
    from torch import nn

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
    from resnetkit.training import train

    out = tmp_path_factory.mktemp("digits-run") / "run"
    train(model="resnet8", epochs=2, out=str(out), verbose=False)
    return out


# ------------------------------------------------------------------ helpers shared by several test files
# torch is imported inside each one, as digits_run does, so that collecting the tests stays light.
def read_jsonl(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def comparable(history: list[dict]) -> list[dict]:
    """Metrics lines without the wall-clock fields."""
    return [{k: v for k, v in h.items() if k not in ("seconds", "images_per_s")} for h in history]


def weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file, by name."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine terms, so that eval mode is a real test."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


# ------------------------------------------------------------------ pretrained weights, offline
R18_FILE = "resnet18-f37072fd.pth"  # the basename of torchvision's ResNet18_Weights.IMAGENET1K_V1 url


def distinctive_state_dict(arch: str = "resnet18", seed: int = 0) -> dict[str, torch.Tensor]:
    """torchvision's model with every parameter and BatchNorm statistic moved off its init."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            else:
                t.add_(0.05 * torch.randn(t.shape, generator=g))
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """distinctive resnet18/resnet50 weights as torchvision, timm, torch.compile and safetensors
    files write them: r18.pth, r50.pth, timm.pth.tar, compiled.pt, r18.safetensors."""
    import torch
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("weights")
    r18 = distinctive_state_dict("resnet18")
    torch.save(r18, d / "r18.pth")
    torch.save(distinctive_state_dict("resnet50"), d / "r50.pth")
    timm_style = {"state_dict": {f"module.{k}": v for k, v in r18.items()}, "epoch": 5, "arch": "resnet18"}
    torch.save(timm_style, d / "timm.pth.tar")
    torch.save({"model_state_dict": {f"_orig_mod.{k}": v for k, v in r18.items()}}, d / "compiled.pt")
    save_file({k: v.contiguous() for k, v in r18.items()}, str(d / "r18.safetensors"))
    return d


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """torch.hub's folder moved to tmp_path; any download fails as offline."""
    import urllib.error

    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url: str, dst: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "hub"
