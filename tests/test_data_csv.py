"""--dataset csv: a CSV of image paths and labels, with a split column and bad rows."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnetkit.config import RunConfig
from resnetkit.data import DataWarning, build_loaders, check_dataset
from resnetkit.data.csvfile import index_csv
from resnetkit.errors import UserError


def write_csv(root: Path, rows: list[str], header: str = "path,label,split") -> Path:
    """Images red/green in img/, a CSV one folder up from them."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(12):
        color = (200, 30, 30) if i % 2 == 0 else (30, 200, 30)
        Image.fromarray(np.full((10, 14, 3), color, dtype=np.uint8)).save(root / "img" / f"{i}.png")
    path = root / "labels.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def good_rows() -> list[str]:
    return [f"img/{i}.png,{'red' if i % 2 == 0 else 'green'},{'val' if i >= 8 else 'train'}" for i in range(12)]


def test_split_column_relative_paths_and_bad_rows_with_line_numbers(tmp_path: Path) -> None:
    rows = good_rows() + ["img/missing.png,red,train", "img/3.png,,train"]  # lines 14 and 15
    path = write_csv(tmp_path, rows)
    cfg = RunConfig(dataset="csv", data_dir=str(path))
    with pytest.warns(DataWarning, match=r"skipped 2 bad row\(s\).*line 14: img/missing.png: file not "
                                         r"found, line 15: img/3.png: empty label"):
        index = index_csv(cfg)
    assert index.classes == ("green", "red")
    assert len(index.train) == 8 and len(index.val) == 4 and index.test is None
    assert index.train.path(0) == tmp_path / "img" / "0.png"
    with pytest.raises(UserError, match="2 bad row"):
        index_csv(cfg.replace(strict=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        loaders = build_loaders(cfg.replace(img_size=8), "cpu")
    assert loaders.spec.classes == ("green", "red") and loaders.train.dataset_size == 8
    assert loaders.test_is_val and loaders.val.dataset_size == 4
    x, y = next(iter(loaders.test))
    assert x.shape[1:] == (3, 8, 8)
    red = (x[:, 0].mean((1, 2)) > x[:, 1].mean((1, 2))).long()
    assert (red == y).all()  # red images carry label 1 ("red")


def test_columns_classes_and_split_by_fraction(tmp_path: Path) -> None:
    rows = [f"img/{i}.png,{'red' if i % 2 == 0 else 'green'}" for i in range(12)]
    path = write_csv(tmp_path, rows, header="file,colour")
    with pytest.raises(UserError, match="no column path or label.*--columns"):
        index_csv(RunConfig(dataset="csv", data_dir=str(path)))
    cfg = RunConfig(dataset="csv", data_dir=str(path), columns="file,colour", classes="red,green",
                    val_fraction=0.5)
    index = index_csv(cfg)
    assert index.classes == ("red", "green") and index.val is None and index.test is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        loaders = build_loaders(cfg.replace(img_size=8, batch_size=4), "cpu")
    assert (loaders.train.dataset_size, loaders.val.dataset_size) == (6, 6)  # --val-fraction 0.5


def test_data_check_lists_bad_rows(tmp_path: Path) -> None:
    path = write_csv(tmp_path, good_rows() + ["img/gone.png,red,train"])
    report = check_dataset("csv", str(path))
    assert any("line 14: img/gone.png: file not found" in p["message"] for p in report["problems"])
    assert report["splits"]["train"]["images"] == 8 and report["splits"]["val"]["images"] == 4
    assert report["splits"]["train"]["sizes"] == {"14x10": 8}
