"""resnetkit.data: datasets, presets, loaders (in-memory and streaming), sharding, image reading."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetkit.config import RunConfig
from resnetkit.data import DataWarning, DatasetSpec, build_eval_loader, build_loaders, dataset_spec
from resnetkit.data.augment import BatchAugment, crop_flip
from resnetkit.data.datasets import load_digits_split
from resnetkit.data.memory import MemoryLoader
from resnetkit.data.sampling import stratified_subset
from resnetkit.data.transforms import (ImageReadError, Normalizer, eval_transform, load_image,
                                       rgb_to_gray_uint8, to_mode)
from resnetkit.errors import UserError

CPU = torch.device("cpu")


def tree_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def all_batches(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys)


def denormalize(x: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    mean = torch.tensor(spec.mean).view(-1, 1, 1)
    std = torch.tensor(spec.std).view(-1, 1, 1)
    return ((x * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)


# ------------------------------------------------------------------ digits, the default
def test_digits_default_split_and_range():
    train, test = load_digits_split("train"), load_digits_split("test")
    assert len(train.labels) + len(test.labels) == 1797
    assert (len(train.labels), len(test.labels)) == (1437, 360)
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (1, 8, 8)
    assert int(train.images.min()) == 0 and int(train.images.max()) == 255
    # values are round(v * 255 / 16) for v in 0..16: exactly 17 levels
    assert len(torch.unique(torch.cat([train.images, test.images]))) == 17
    tr, te = torch.bincount(train.labels, minlength=10), torch.bincount(test.labels, minlength=10)
    assert (te - 0.2 * (tr + te)).abs().max() <= 1  # stratified
    spec = dataset_spec(RunConfig())
    assert spec.name == "digits" and spec.classes == tuple("0123456789")
    assert (spec.in_chans, spec.img_size, spec.resize_size) == (1, 8, None)


@pytest.mark.parametrize("img_size", [8, 16])
def test_digits_png_through_eval_transform_equals_test_loader(tmp_path, img_size):
    cfg = RunConfig(img_size=img_size)
    loader = build_eval_loader(cfg, "test", CPU)
    x, _ = all_batches(loader)
    assert x.shape == (360, 1, img_size, img_size)
    raw = load_digits_split("test").images
    spec = dataset_spec(cfg)
    tf = eval_transform(spec)
    for i in (0, 17, 359):
        path = tmp_path / f"d{i}.png"
        Image.fromarray(raw[i, 0].numpy(), "L").save(path)
        assert torch.equal(tf(load_image(path)), x[i])
        assert torch.equal(tf(path), x[i])


def test_digits_loaders_shapes_and_augmentation_is_light():
    loaders = build_loaders(RunConfig(batch_size=50, val_size=0), CPU)
    assert loaders.train.in_memory and loaders.test.in_memory and loaders.val is None
    assert loaders.train.dataset_size == 1437 and loaders.test.num_samples == 360
    assert len(loaders.train) == 29  # 1437 = 28 * 50 + 37: a short last batch is kept
    x, y = next(iter(loaders.train))
    assert x.shape == (50, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    # basic augmentation of digits: shifts of at most one pixel, never a flip
    aug = loaders.train.augment
    assert aug.pad == 1 and aug.flip_p == 0.0


# ------------------------------------------------------------------ MNIST, Fashion-MNIST
@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_datasets_read_without_writing(tiny_mnist_root, name, folder):
    before = tree_snapshot(tiny_mnist_root)
    cfg = RunConfig(dataset=name, data_dir=str(tiny_mnist_root), batch_size=16)
    loaders = build_loaders(cfg, CPU)
    assert (loaders.train.dataset_size, loaders.val.dataset_size, loaders.test.dataset_size) == (54, 6, 25)
    assert loaders.spec.in_chans == 1 and loaders.spec.img_size == 28 and loaders.spec.num_classes == 10
    if name == "fashion-mnist":
        assert loaders.spec.classes[0] == "T-shirt/top" and loaders.spec.mean == (0.2860,)
    x, y = all_batches(loaders.test)
    raw = (tiny_mnist_root / folder / "raw" / "t10k-images-idx3-ubyte").read_bytes()[16:]
    expect = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(25, 1, 28, 28)
    assert torch.equal(denormalize(x, loaders.spec), expect)
    labels = (tiny_mnist_root / folder / "raw" / "t10k-labels-idx1-ubyte").read_bytes()[8:]
    assert y.tolist() == list(labels)
    assert tree_snapshot(tiny_mnist_root) == before


def test_missing_idx_files_name_them(tmp_path):
    with pytest.raises(UserError) as e:
        build_loaders(RunConfig(dataset="mnist", data_dir=str(tmp_path)), CPU)
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert str(tmp_path / "MNIST" / "raw") in msg and "--download" in msg and "\n" not in msg


# ------------------------------------------------------------------ CIFAR
def test_cifar10_and_cifar100_pickles(tiny_cifar_root):
    import pickle

    loaders = build_loaders(RunConfig(dataset="cifar10", data_dir=str(tiny_cifar_root)), CPU)
    assert (loaders.train.dataset_size, loaders.val.dataset_size, loaders.test.dataset_size) == (54, 6, 20)
    assert loaders.spec.classes[0] == "airplane" and loaders.spec.in_chans == 3
    x, y = all_batches(loaders.test)
    with open(tiny_cifar_root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    assert torch.equal(denormalize(x, loaders.spec),
                       torch.from_numpy(batch["data"]).view(20, 3, 32, 32))
    assert y.tolist() == batch["labels"]
    aug = loaders.train.augment
    assert (aug.pad, aug.pad_mode, aug.flip_p) == (4, "reflect", 0.5)
    spec100 = dataset_spec(RunConfig(dataset="cifar100", data_dir=str(tiny_cifar_root)))
    assert spec100.num_classes == 100 and spec100.mean[0] == 0.5071
    assert build_eval_loader(RunConfig(dataset="cifar100", data_dir=str(tiny_cifar_root)),
                             "train", CPU).dataset_size == 45  # 50 less a tenth for val


def test_cifar_missing_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cifar-10-batches-py.*cifar10-images.*--download"):
        dataset_spec(RunConfig(dataset="cifar10", data_dir=str(tmp_path)))


def test_cifar10_image_folders_take_the_cached_fast_path(tiny_cifar_images_root, monkeypatch):
    cfg = RunConfig(dataset="cifar10", data_dir=str(tiny_cifar_images_root), batch_size=8)
    before = tree_snapshot(tiny_cifar_images_root)
    loaders = build_loaders(cfg, CPU)
    assert loaders.train.in_memory and (loaders.train.dataset_size, loaders.test.dataset_size) == (27, 20)
    assert loaders.spec.classes == tuple(sorted(loaders.spec.classes))[:10] and loaders.spec.img_size == 32
    x, y = all_batches(loaders.test)
    tf = eval_transform(loaders.spec)
    first = tiny_cifar_images_root / "cifar10-images" / "test" / "airplane" / "0000.jpg"
    assert torch.equal(tf(first), x[0]) and y[0] == 0
    cached = list(Path(__import__("os").environ["RESNETKIT_CACHE"]).glob("cifar10-*.pt"))
    assert len(cached) == 2
    assert tree_snapshot(tiny_cifar_images_root) == before

    import resnetkit.data.decode as decode

    monkeypatch.setattr(decode, "decode_paths", lambda *a, **k: pytest.fail("decoded again"))
    again = build_loaders(cfg, CPU)
    assert torch.equal(all_batches(again.test)[0], x)


# ------------------------------------------------------------------ image folders
def test_imagefolder_one_tree_stratified_seeded_split(tiny_imagefolder):
    cfg = RunConfig(dataset="imagefolder", data_dir=str(tiny_imagefolder), batch_size=8)
    loaders = build_loaders(cfg, CPU)
    spec = loaders.spec
    assert spec.classes == ("cat", "dog", "fox") and spec.in_chans == 3
    # --img-size unset: the median image's shorter side (the images are 20..27 px), resized by 256/224
    assert (spec.img_size, spec.resize_size) == (22, 25) and spec.mean == (0.485, 0.456, 0.406)
    assert (loaders.train.dataset_size, loaders.test.dataset_size) == (24, 6)
    _, y = all_batches(loaders.test)
    assert torch.bincount(y).tolist() == [2, 2, 2]
    x, _ = next(iter(loaders.train))
    assert x.shape == (8, 3, 22, 22)

    assert loaders.test is loaders.val and loaders.test_is_val  # one tree: no test split of its own

    from resnetkit.data.folders import index_imagefolder
    from resnetkit.data.splits import folder_splits

    index = index_imagefolder(tiny_imagefolder)
    a, b, c = (folder_splits(index, index.train, cfg.replace(seed=s), builtin=False) for s in (0, 0, 1))
    assert a.val.files == b.val.files and a.val.files != c.val.files
    assert not set(a.val.files) & set(a.train.files)


def test_imagefolder_test_loader_equals_eval_transform(tiny_split_imagefolder):
    for img_size in (24, 72):  # in memory (decoded, cached) and streaming (> 64 px)
        cfg = RunConfig(dataset="imagefolder", data_dir=str(tiny_split_imagefolder), img_size=img_size,
                        batch_size=4, workers=0)
        loader = build_eval_loader(cfg, "test", CPU)
        assert loader.in_memory == (img_size <= 64)
        x, y = all_batches(loader)
        assert x.shape == (12, 3, img_size, img_size) and y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
        tf = eval_transform(dataset_spec(cfg))
        for i, f in ((0, "cat/0000.png"), (11, "fox/0003.png")):
            assert torch.equal(tf(tiny_split_imagefolder / "val" / f), x[i])


def test_streaming_path_same_seed_same_batches(tiny_split_imagefolder):
    cfg = RunConfig(dataset="imagefolder", data_dir=str(tiny_split_imagefolder), img_size=72,
                    batch_size=8, workers=0)
    a, b = build_loaders(cfg, CPU), build_loaders(cfg, CPU)
    assert not a.train.in_memory and len(a.train) == 3
    for loader in (a.train, b.train):
        loader.set_epoch(2)
    xa, ya = all_batches(a.train)
    xb, yb = all_batches(b.train)
    assert xa.shape == (24, 3, 72, 72) and torch.equal(xa, xb) and torch.equal(ya, yb)
    a.train.set_epoch(3)
    assert not torch.equal(all_batches(a.train)[0], xa)


def test_class_missing_from_a_split_is_an_error(tiny_split_imagefolder):
    shutil.rmtree(tiny_split_imagefolder / "val" / "fox")
    with pytest.raises(UserError, match="fox.*train/.*but not in .*val"):
        dataset_spec(RunConfig(dataset="imagefolder", data_dir=str(tiny_split_imagefolder)))


def test_folder_structure_errors(tmp_path, tiny_imagefolder):
    with pytest.raises(UserError, match="--data-dir"):
        dataset_spec(RunConfig(dataset="imagefolder"))
    with pytest.raises(UserError, match="not found"):
        dataset_spec(RunConfig(dataset="imagefolder", data_dir=str(tmp_path / "nope")))
    (tiny_imagefolder / "empty").mkdir()
    with pytest.raises(UserError, match="empty holds no image files"):
        dataset_spec(RunConfig(dataset="imagefolder", data_dir=str(tiny_imagefolder)))
    one = tmp_path / "one"
    shutil.copytree(tiny_imagefolder / "cat", one / "cat")
    with pytest.raises(UserError, match="at least two classes"):
        dataset_spec(RunConfig(dataset="imagefolder", data_dir=str(one)))


def test_numeric_folder_names_sort_numerically_and_say_so(tmp_path):
    from conftest import write_class_folders

    root = write_class_folders(tmp_path / "nums", {"1": 3, "2": 3, "10": 3})
    with pytest.warns(DataWarning, match="numerically"):
        spec = dataset_spec(RunConfig(dataset="imagefolder", data_dir=str(root)))
    assert spec.classes == ("1", "2", "10")
    mixed = write_class_folders(tmp_path / "mixed", {"b10": 2, "a2": 2, "b9": 2})
    assert dataset_spec(RunConfig(dataset="imagefolder", data_dir=str(mixed))).classes == ("a2", "b10", "b9")


def test_odd_files_are_skipped_with_a_warning_or_refused_when_strict(odd_imagefolder):
    cfg = RunConfig(dataset="imagefolder", data_dir=str(odd_imagefolder), img_size=16, batch_size=4)
    with pytest.warns(DataWarning) as record:
        loaders = build_loaders(cfg, CPU)
    text = " ".join(str(w.message) for w in record)
    for name in ("empty.jpg", "truncated.jpg", "fake.png", "notes.txt"):
        assert name in text
    import re

    assert sum(int(n) for n in re.findall(r"skipped (\d+) unreadable", text)) == 3
    assert loaders.train.dataset_size + loaders.test.dataset_size == 17
    with pytest.raises(UserError, match="--strict"):
        build_loaders(cfg.replace(strict=True), CPU)


def test_odd_modes_convert_and_16_bit_is_scaled(odd_imagefolder):
    b = odd_imagefolder / "b"
    for name in ("palette.png", "rgba.png", "cmyk.jpg", "gray16.png", "onebit.png"):
        img = load_image(b / name)
        assert to_mode(img, 3).mode == "RGB" and to_mode(img, 1).mode == "L"
    raw16 = np.asarray(Image.open(b / "gray16.png")).astype(np.int64)
    gray = np.asarray(to_mode(load_image(b / "gray16.png"), 1))
    assert np.array_equal(gray, raw16 >> 8)
    for name, reason in (("empty.jpg", "empty"), ("truncated.jpg", "truncated"), ("fake.png", "not an image")):
        with pytest.raises(ImageReadError, match=reason) as e:
            load_image(odd_imagefolder / "a" / name)
        assert e.value.path.endswith(name)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # 10,000 px is over 2x: error
    with pytest.raises(ImageReadError, match="decompression-bomb"):
        load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # between 1x and 2x: Pillow only warns
    with pytest.raises(ImageReadError, match="decompression-bomb"):
        load_image(path)


def test_eval_loader_follows_a_checkpoint_spec(tiny_split_imagefolder):
    cfg = RunConfig(dataset="imagefolder", data_dir=str(tiny_split_imagefolder), img_size=16)
    spec = dataset_spec(cfg)
    flipped = DatasetSpec.from_dict({**spec.to_dict(), "classes": ["fox", "dog", "cat", "owl"]})
    x, y = all_batches(build_eval_loader(cfg, "test", CPU, spec=flipped))
    assert y.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # listed in the spec's class order
    assert torch.equal(x[0], eval_transform(flipped)(tiny_split_imagefolder / "val" / "fox" / "0000.png"))
    alien = DatasetSpec.from_dict({**spec.to_dict(), "classes": ["cat", "dog"]})
    with pytest.raises(UserError, match="fox"):
        build_eval_loader(cfg, "test", CPU, spec=alien)
    with pytest.raises(UserError, match="split"):
        build_eval_loader(cfg, "holdout", CPU)
    # no test/ folder: the val/ folder is the test split too, and the loader says so
    assert build_eval_loader(cfg, "test", CPU).source == "val split (no test split)"


def test_gray_conversion_matches_pillow():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    ours = rgb_to_gray_uint8(torch.from_numpy(a).permute(2, 0, 1))[0]
    assert np.array_equal(ours.numpy(), np.asarray(Image.fromarray(a).convert("L")))


def test_unknown_dataset_and_augment():
    with pytest.raises(UserError, match="did you mean cifar10"):
        dataset_spec(RunConfig(dataset="cifar"))
    with pytest.raises(UserError, match="augment"):
        build_loaders(RunConfig(augment="heavy"), CPU)


# ------------------------------------------------------------------ the in-memory loader
def index_loader(n: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 train: bool = True, augment: BatchAugment | None = None) -> MemoryLoader:
    """Labels are sample indices, so batches say which samples they hold."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    return MemoryLoader(images, torch.arange(n), batch_size=batch_size, normalizer=Normalizer([0.0], [1.0]),
                        train=train, seed=seed, augment=augment, rank=rank, world_size=world_size)


def test_memory_loader_every_sample_once_and_reproducible():
    aug = BatchAugment(4, pad=1, flip_p=0.5, cutout=2)
    a = index_loader(100, 10, seed=7, augment=aug)
    b = index_loader(100, 10, seed=7, augment=aug)
    a.set_epoch(4)
    b.set_epoch(4)
    xa, ya = all_batches(a)
    xb, yb = all_batches(b)
    assert sorted(ya.tolist()) == list(range(100)) and len(a) == 10
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    a.set_epoch(5)
    assert all_batches(a)[1].tolist() != ya.tolist()
    c = index_loader(100, 10, seed=8, augment=aug)
    c.set_epoch(4)
    assert all_batches(c)[1].tolist() != ya.tolist()


def test_memory_loader_drops_only_a_last_batch_of_one():
    assert len(index_loader(65, 64)) == 1 and index_loader(65, 64).num_samples == 64
    assert len(index_loader(66, 64)) == 2
    ev = index_loader(65, 64, train=False)
    assert len(ev) == 2 and all_batches(ev)[1].tolist() == list(range(65))


def test_train_loader_flips_when_flip_is_forced():
    images = torch.randint(0, 256, (12, 1, 5, 5), dtype=torch.uint8)
    norm = Normalizer([0.5], [0.25])
    for p, expect in ((1.0, lambda t: t.flip(-1)), (0.0, lambda t: t)):
        loader = MemoryLoader(images, torch.arange(12), batch_size=4, normalizer=norm, train=True,
                              augment=BatchAugment(5, flip_p=p))
        for x, y in loader:
            assert torch.equal(x, norm(expect(images[y])))


def test_batched_flip_and_crop():
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    flip = torch.ones(6, dtype=torch.bool)
    assert torch.equal(crop_flip(x, None, 0, "constant", flip), x.flip(-1))
    assert torch.equal(crop_flip(x, None, 0, "constant", ~flip), x)
    aug = BatchAugment(8, flip_p=1.0)
    p = aug.sample(6, torch.Generator().manual_seed(0))
    assert torch.equal(aug.geometry(x, p), x.flip(-1))
    centre = torch.full((6, 2), 2)
    assert torch.equal(crop_flip(x, centre, 2, "constant", ~flip), x)
    corner = torch.zeros(6, 2, dtype=torch.long)  # crop at the padded image's top-left
    out = crop_flip(x, corner, 2, "constant", ~flip)
    assert torch.equal(out[..., 2:, 2:], x[..., :6, :6]) and out[..., :2, :].eq(0).all()
    ref = torch.nn.functional.pad(x.float(), (2, 2, 2, 2), mode="reflect")
    for dy, dx in ((0, 4), (3, 1)):
        shift = torch.tensor([[dy, dx]]).expand(6, 2)
        got = crop_flip(x, shift, 2, "reflect", ~flip)
        assert torch.equal(got.float(), ref[..., dy:dy + 8, dx:dx + 8])


def test_random_resized_crop_with_full_scale_is_identity():
    from resnetkit.data.augment import resized_crop

    x = torch.randint(0, 256, (3, 3, 10, 10), dtype=torch.uint8)
    one = torch.ones(3)
    out = resized_crop(x, one, one, torch.zeros(3, 2), torch.zeros(3, dtype=torch.bool), 10)
    assert torch.allclose(out, x.float(), atol=1e-3)
    flipped = resized_crop(x, one, one, torch.zeros(3, 2), torch.ones(3, dtype=torch.bool), 10)
    assert torch.allclose(flipped, x.float().flip(-1), atol=1e-3)


# ------------------------------------------------------------------ sharding for DDP
@pytest.mark.parametrize("n", [100, 101, 37])
def test_ddp_train_shards_are_disjoint_and_match_single_process(n):
    single = index_loader(n, 10, seed=3)
    ranks = [index_loader(n, 5, seed=3, rank=r, world_size=2) for r in range(2)]  # per-rank batch
    assert len(ranks[0]) == len(ranks[1])  # every rank steps the same number of times
    per_rank = [list(r) for r in ranks]
    seen = [y for r in per_rank for _, y in r]
    flat = torch.cat(seen).tolist()
    assert len(flat) == len(set(flat))  # disjoint
    assert all(2 <= len(y) <= 5 for y in seen)
    if n % 10 == 0:
        assert sorted(flat) == list(range(n))
        for (_, y0), (_, y1), (_, ys) in zip(per_rank[0], per_rank[1], single):
            assert torch.cat([y0, y1]).tolist() == ys.tolist()


@pytest.mark.parametrize("n,world", [(101, 2), (10, 3), (2, 4)])
def test_ddp_test_partition_is_exact(n, world):
    labels = [y for r in range(world) for _, y in index_loader(n, 8, rank=r, world_size=world, train=False)]
    assert sorted(torch.cat(labels).tolist()) == list(range(n))
    assert sum(index_loader(n, 8, rank=r, world_size=world, train=False).num_samples for r in range(world)) == n


def test_build_loaders_shards_the_global_batch():
    ranks = [build_loaders(RunConfig(batch_size=64), CPU, rank=r, world_size=2) for r in range(2)]
    assert ranks[0].train.batch_size == 32
    assert ranks[0].test.num_samples + ranks[1].test.num_samples == 360


def test_subset_is_stratified_and_independent_of_seed():
    labels = torch.arange(1000) % 4
    idx = stratified_subset(labels, 100)
    assert len(idx) == 100 and torch.bincount(labels[idx]).tolist() == [25, 25, 25, 25]
    a = build_loaders(RunConfig(subset=200, seed=1, val_size=0), CPU)
    b = build_loaders(RunConfig(subset=200, seed=2, val_size=0), CPU)
    assert a.train.dataset_size == 200 and a.test.dataset_size == 360
    assert torch.equal(a.train.labels.sort().values, b.train.labels.sort().values)


# ------------------------------------------------------------------ sizes given as 0, subsets too large
@pytest.mark.parametrize("bad, message", [
    ({"subset": 0}, r"^--subset must be a whole number of training samples, at least 1, got 0; leave --subset "
                    r"out for the whole training split$"),
    ({"subset": -3}, r"^--subset must be a whole number of training samples, at least 1, got -3;"),
    ({"img_size": 0}, r"^--img-size must be a whole number of pixels, at least 4, got 0;"),
    ({"min_img_size": 0}, r"^--min-img-size must be a whole number of pixels, at least 4, got 0;"),
    ({"batch_size": 0}, r"^--batch-size must be a positive integer, got 0$"),
])
def test_a_zero_size_is_refused_not_taken_for_unset(bad: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        dataset_spec(RunConfig(**bad))


def test_a_subset_larger_than_the_split_says_the_whole_split_is_used() -> None:
    with pytest.warns(DataWarning, match=r"--subset 5,000 exceeds the 1,437 samples of the training split; "
                                         r"the whole split is used"):
        loaders = build_loaders(RunConfig(subset=5000), CPU)
    whole = build_loaders(RunConfig(), CPU)
    assert loaders.info["train_size"] == whole.info["train_size"]


def test_strict_names_every_unusable_file_of_every_split_at_once(tmp_path):
    from conftest import write_class_folders

    root = tmp_path / "pets"
    for split in ("train", "val"):
        write_class_folders(root / split, {"cat": 4, "dog": 4}, seed=len(split))
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"garbage bytes, not a JPEG" * 8)
    (root / "val" / "dog" / "empty.png").write_bytes(b"")
    (root / "val" / "dog" / "notes.txt").write_text("not an image\n")
    cfg = RunConfig(dataset="imagefolder", data_dir=str(root), img_size=16, batch_size=4, strict=True)
    with pytest.raises(UserError, match=r"^3 unusable file\(s\)") as err:
        build_loaders(cfg, CPU)
    for name in ("train/cat/broken.jpg", "val/dog/empty.png", "val/dog/notes.txt"):
        assert name in str(err.value)


def test_strict_on_one_tree_names_the_files_of_train_and_val_together(odd_imagefolder):
    cfg = RunConfig(dataset="imagefolder", data_dir=str(odd_imagefolder), img_size=16, batch_size=4, strict=True)
    with pytest.raises(UserError, match=r"^4 unusable file\(s\)") as err:
        build_loaders(cfg, CPU)
    for name in ("a/empty.jpg", "a/truncated.jpg", "a/fake.png", "a/notes.txt"):
        assert str(err.value).count(name) == 1


def test_each_skipped_file_is_warned_about_once(odd_imagefolder):
    cfg = RunConfig(dataset="imagefolder", data_dir=str(odd_imagefolder), img_size=16, batch_size=4)
    with pytest.warns(DataWarning) as record:
        build_loaders(cfg, CPU)
    text = [str(w.message) for w in record]
    for name in ("empty.jpg", "truncated.jpg", "fake.png", "notes.txt"):
        assert sum(name in t for t in text) == 1, text


def test_a_data_dir_that_is_a_file_says_so(tmp_path: Path) -> None:
    from resnetkit.data.folders import index_imagefolder

    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"not a folder")
    with pytest.raises(UserError, match="a.jpg is a file, not a folder; point --data-dir"):
        index_imagefolder(photo)
    with pytest.raises(UserError, match="nothere not found"):
        index_imagefolder(tmp_path / "nothere")
