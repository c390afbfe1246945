"""--dataset arrays: .npz, .npy and .h5 files (Keras and SIGNS keys), layouts, labels, classes,
and a whole run from a tiny .npz through train, data check, evaluate and predict."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnetkit
from resnetkit.cli import main
from resnetkit.config import RunConfig
from resnetkit.data import build_loaders, check_dataset
from resnetkit.data.arrays import as_images, as_labels, load_file, parse_keys
from resnetkit.errors import UserError
from resnetkit.export import export_checkpoint


def bright_dark(n: int, size: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """NHWC uint8 RGB images: label 0 dark (0..90), label 1 bright (165..255), alternating."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    lo = np.where(y == 1, 165, 0)[:, None, None, None]
    return (lo + rng.integers(0, 91, (n, size, size, 3))).astype(np.uint8), y


def write_signs(folder: Path, n_train: int = 24, n_test: int = 12) -> Path:
    """train_signs.h5 / test_signs.h5 as the Keras hand-signs tutorial ships them (tiny)."""
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(1)
    for name, n, prefix in (("train_signs.h5", n_train, "train"), ("test_signs.h5", n_test, "test")):
        with h5py.File(folder / name, "w") as f:
            f["list_classes"] = np.arange(6)
            f[f"{prefix}_set_x"] = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
            f[f"{prefix}_set_y"] = np.arange(n) % 6
    return folder / "train_signs.h5"


def test_npz_with_keras_keys_nchw_float_and_one_hot(tmp_path: Path) -> None:
    x, y = bright_dark(20)
    x_test = np.random.default_rng(2).random((6, 3, 12, 12)).astype(np.float32)  # NCHW, 0..1
    y_test = np.eye(2)[np.arange(6) % 2]  # one-hot
    path = tmp_path / "data.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    src = load_file(path, classes="dark,bright")
    assert src.classes == ("dark", "bright") and src.in_chans == 3 and src.img_size == 12
    train, test = src.split("train"), src.split("test")
    assert torch.equal(train.images, torch.from_numpy(x).permute(0, 3, 1, 2))
    assert test.images.dtype == torch.uint8
    assert torch.equal(test.images, torch.from_numpy(np.rint(x_test * 255).astype(np.uint8)))
    assert test.labels.tolist() == [0, 1, 0, 1, 0, 1]
    spec = build_loaders(RunConfig(dataset="arrays", data_dir=str(path)), "cpu").spec
    pixels = x.reshape(-1, 3) / 255.0
    assert spec.mean == pytest.approx(pixels.mean(0), abs=1e-4)
    assert spec.std == pytest.approx(pixels.std(0), abs=1e-4)
    assert (spec.in_chans, spec.img_size, spec.classes) == (3, 12, ("0", "1"))


def test_signs_h5_finds_its_test_file_and_list_classes(tmp_path: Path) -> None:
    path = write_signs(tmp_path)
    src = load_file(path)
    assert src.classes == tuple(str(i) for i in range(6))
    assert src.split("train").images.shape == (24, 3, 8, 8)
    assert src.split("test").images.shape == (12, 3, 8, 8)
    assert "test_signs.h5" in src.layout
    report = check_dataset("arrays", str(path))
    assert report["splits"]["train"]["images"] == 24 and report["splits"]["test"]["images"] == 12
    assert list(report["splits"]["test"]["classes"].values()) == [2] * 6


def test_npy_pair_with_text_labels_is_split_by_val_fraction(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    np.save(tmp_path / "x.npy", rng.integers(0, 256, (30, 10, 10), dtype=np.uint8))  # grayscale N,H,W
    np.save(tmp_path / "y.npy", np.array(["cat", "dog", "fox"] * 10))
    src = load_file(tmp_path / "x.npy", val_fraction=0.2, seed=5)
    assert src.classes == ("cat", "dog", "fox") and src.in_chans == 1
    train, held = src.split("train"), src.split("test")
    assert len(train.labels) == 24 and torch.bincount(held.labels).tolist() == [2, 2, 2]
    assert not set(train.ids) & set(held.ids)  # disjoint
    again = load_file(tmp_path / "x.npy", val_fraction=0.2, seed=6).split("test")
    assert again.ids != held.ids  # the seed picks the held-out samples


def test_keys_name_arrays_that_follow_no_convention(tmp_path: Path) -> None:
    x, y = bright_dark(10)
    path = tmp_path / "odd.npz"
    np.savez(path, imgs=x, targets=y.reshape(-1, 1), t_imgs=x[:4], t_targets=y[:4])
    with pytest.raises(UserError, match="--keys"):
        load_file(path)
    src = load_file(path, keys="imgs,targets,t_imgs,t_targets")
    assert len(src.split("test").labels) == 4
    named = load_file(path, keys="x_train=imgs,y_train=targets,x_val=t_imgs,y_val=t_targets")
    assert len(named.split("test").labels) == 4  # val is the held-out split when given
    with pytest.raises(UserError, match="no array 'nope'"):
        load_file(path, keys="nope,targets")
    assert parse_keys("a,b") == {"x_train": "a", "y_train": "b"}
    with pytest.raises(UserError, match="role"):
        parse_keys("pixels=a,y_train=b")


def test_bad_arrays_are_one_clear_error() -> None:
    with pytest.warns(UserWarning, match="not pixels"):  # already normalized: kept as values, not pixels
        assert as_images(np.full((2, 4, 4), -0.5, dtype=np.float32), "x").dtype == torch.float32
    with pytest.raises(UserError, match="NaN or infinite"):
        as_images(np.full((2, 4, 4), np.inf, dtype=np.float32), "x")
    with pytest.raises(UserError, match="channel axis"):
        as_images(np.zeros((2, 5, 5, 5), dtype=np.uint8), "x")
    with pytest.raises(UserError, match="3 images but 2 labels"):
        as_labels(np.array([0, 1]), 3, "x")
    with pytest.warns(UserWarning, match="scaled by 255/1000"):  # by the largest value, not >> 8
        assert as_images(np.full((1, 2, 2), 1000, dtype=np.uint16), "x").max() == 255


def test_labels_beyond_the_class_list_are_refused(tmp_path: Path) -> None:
    x, y = bright_dark(8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y + 1)
    with pytest.raises(UserError, match="labels range over 1..2 but there are 2 classes"):
        load_file(tmp_path / "d.npz", classes="a,b")


def test_missing_h5py_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "train.h5").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(UserError, match=r"needs h5py: pip install 'resnetkit\[h5\]'"):
        load_file(tmp_path / "train.h5")


def test_cli_trains_on_npz_then_evaluates_checks_and_predicts(tmp_path: Path, capsys) -> None:
    x, y = bright_dark(64)
    xt, yt = bright_dark(16, seed=9)
    data = tmp_path / "bd.npz"
    np.savez(data, x_train=x, y_train=y, x_test=xt, y_test=yt)
    run = tmp_path / "run"
    argv = ["train", "--dataset", "arrays", "--data-dir", str(data), "--classes", "dark,bright",
            "--model", "resnet8", "--epochs", "3", "--batch-size", "16", "--lr", "0.05", "--out", str(run)]
    assert main(argv) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["top1"] >= 0.9 and report["data"]["in_memory"]
    assert json.loads((run / "classes.json").read_text()) == ["dark", "bright"]
    assert json.loads((run / "config.json").read_text())["data_dir"] == str(data.resolve())
    assert resnetkit.evaluate(run, device="cpu")["top1"] == report["top1"]
    capsys.readouterr()
    assert main(["data", "check", "arrays", "--data-dir", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"]["train"]["classes"] == {"0": 32, "1": 32}
    photo = tmp_path / "bright.png"
    Image.fromarray(np.full((30, 30, 3), 230, dtype=np.uint8)).save(photo)  # another size: resized
    assert main(["predict", str(run), str(photo), "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["top"][0]["class"] == "bright"
    exported = export_checkpoint(run, fmt="torchscript", out=tmp_path / "m.ts", check=8)
    assert "test images" in exported.parity.source and exported.parity.top1_agreement == 1.0
