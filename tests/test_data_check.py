"""`resnetkit data check`: counts, statistics and the problems it must find."""
from __future__ import annotations

import json
import shutil

import pytest

from resnetkit.cli import main
from resnetkit.data import check_dataset
from resnetkit.errors import UserError


def kinds(report: dict) -> dict[str, dict]:
    return {p["kind"]: p for p in report["problems"]}


def test_check_finds_planted_duplicates_and_broken_files(tiny_split_imagefolder):
    root = tiny_split_imagefolder
    shutil.copy(root / "train" / "cat" / "0000.png", root / "train" / "cat" / "copy.png")
    shutil.copy(root / "train" / "dog" / "0001.png", root / "val" / "dog" / "leak.png")
    (root / "val" / "fox" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    report = check_dataset("imagefolder", str(root), batch_size=4)
    found = kinds(report)
    assert found["duplicates"]["split"] == "train" and found["duplicates"]["count"] == 1
    assert sorted(found["duplicates"]["examples"][0]) == ["cat/0000.png", "cat/copy.png"]
    assert found["cross_split_duplicates"]["examples"] == [["dog/0001.png", "dog/leak.png"]]
    assert found["unreadable"]["split"] == "val" and "fox/broken.jpg" in found["unreadable"]["examples"][0]
    train = report["splits"]["train"]
    assert train["images"] == 25 and train["classes"] == {"cat": 9, "dog": 8, "fox": 8}
    assert report["splits"]["val"]["unreadable"] == 1 and not report["ok"]
    assert all(0 < m < 1 for m in train["mean"]) and len(train["std"]) == 3
    assert "pixels" in report["duplicate_hash"]


def test_check_flags_imbalance_and_a_last_batch_of_one(tiny_imagefolder):
    for i in range(10, 22):
        shutil.copy(tiny_imagefolder / "cat" / "0000.png", tiny_imagefolder / "cat" / f"x{i}.png")
    report = check_dataset("imagefolder", str(tiny_imagefolder), batch_size=5)
    found = kinds(report)
    assert "imbalance" in found and "cat" in found["imbalance"]["message"]
    n_train = report["splits"]["train"]["images"]
    assert (n_train % 5 == 1) == ("bn_last_batch" in found)
    report = check_dataset("imagefolder", str(tiny_imagefolder), batch_size=n_train - 1)
    assert "bn_last_batch" in kinds(report)


def test_check_clean_digits_and_sizes():
    report = check_dataset("digits")
    assert report["splits"]["train"]["images"] == 1437 and report["splits"]["test"]["images"] == 360
    assert report["splits"]["train"]["sizes"] == {"8x8": 1437}
    assert abs(report["splits"]["train"]["mean"][0] - 0.3054) < 1e-3


def test_check_reports_structure_instead_of_raising(tiny_split_imagefolder):
    shutil.rmtree(tiny_split_imagefolder / "val" / "fox")
    found = kinds(check_dataset("imagefolder", str(tiny_split_imagefolder)))
    assert "fox" in found["structure"]["message"] and "empty_class" in found


def test_cli_data_check_json_text_and_missing(tiny_mnist_root, tmp_path, capsys):
    assert main(["data", "check", "mnist", "--data-dir", str(tiny_mnist_root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"]["train"]["images"] == 60 and report["splits"]["test"]["images"] == 25
    assert main(["data", "check", "fashion-mnist", "--data-dir", str(tiny_mnist_root), "--batch-size", "59"]) == 0
    out = capsys.readouterr().out
    assert "train: 60 images" in out and "% batch size 59 == 1" in out
    assert main(["data", "check", "mnist", "--data-dir", str(tmp_path / "none")]) == 2
    assert "train-images-idx3-ubyte" in capsys.readouterr().err
    with pytest.raises(UserError):
        check_dataset("imagefolder")
