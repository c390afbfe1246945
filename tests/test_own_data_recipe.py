"""The default recipe for your own photos: residual branches start at zero for every family that
has them, and the input size comes from the data when --img-size is unset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import resnetkit
from resnetkit.config import RunConfig
from resnetkit.data import build_loaders
from resnetkit.training.recipes import resolve_config
from resnetkit.training.console import split_line


@pytest.mark.parametrize("model,zero_init", [("resnet50", True), ("resnext50_32x4d", True),
                                             ("resnet18", True), ("densenet121", False),
                                             ("preact_resnet18", False)])
def test_own_data_recipe_zero_inits_the_residual_branches_of_any_model_that_has_them(
        model: str, zero_init: bool) -> None:
    cfg = resolve_config(RunConfig(dataset="imagefolder", model=model), explicit={"dataset", "model"})
    assert cfg.model_args.get("zero_init_residual", False) is zero_init
    net = resnetkit.create_model(model, num_classes=10, **cfg.model_args)
    last_bns = [b.bn3 if hasattr(b, "bn3") else b.bn2 for b in net.modules() if hasattr(b, "zero_init_last")]
    if zero_init:
        assert last_bns and all(float(bn.weight.detach().abs().sum()) == 0 for bn in last_bns)


@pytest.mark.parametrize("dataset", ["arrays", "csv"])
def test_every_own_data_recipe_gives_the_option(dataset: str) -> None:
    cfg = resolve_config(RunConfig(dataset=dataset, model="resnet50"), explicit={"dataset", "model"})
    assert cfg.model_args == {"zero_init_residual": True}


def test_the_users_model_arg_wins_over_the_recipes_option() -> None:
    cfg = resolve_config(RunConfig(dataset="imagefolder", model="resnet50",
                                   model_args={"zero_init_residual": False}),
                         explicit={"dataset", "model", "model_args"})
    assert cfg.model_args == {"zero_init_residual": False}


def test_built_in_datasets_keep_their_recipes_model_args() -> None:
    assert "zero_init_residual" not in resolve_config(RunConfig(dataset="digits")).model_args


def write_class_folders(root: Path, counts: dict[str, int], size: tuple[int, int]) -> Path:
    rng = np.random.default_rng(0)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


@pytest.mark.parametrize("size,expected", [((100, 100), 64), ((40, 30), 30), ((8, 8), 16)])
def test_photo_size_comes_from_the_median_image_when_unset(tmp_path: Path, size: tuple[int, int],
                                                          expected: int) -> None:
    root = write_class_folders(tmp_path / "photos", {"a": 6, "b": 6}, size=size)
    cfg = resolve_config(RunConfig(dataset="imagefolder", data_dir=str(root), workers=0),
                         explicit={"dataset", "data_dir", "workers"})
    loaders = build_loaders(cfg, "cpu")
    assert loaders.spec.img_size == expected
    assert f"the median image is {size[0]}x{size[1]}" in split_line(loaders)
    x, _ = next(iter(loaders.train))
    assert tuple(x.shape[-2:]) == (expected, expected)


def test_an_img_size_given_is_kept(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "photos", {"a": 6, "b": 6}, size=(40, 30))
    cfg = resolve_config(RunConfig(dataset="imagefolder", data_dir=str(root), img_size=48, workers=0),
                         explicit={"dataset", "data_dir", "img_size", "workers"})
    loaders = build_loaders(cfg, "cpu")
    assert loaders.spec.img_size == 48 and "median image" not in split_line(loaders)


# ------------------------------------------------------------------ benchmarks/own_data.py
@pytest.fixture
def own_data(monkeypatch: pytest.MonkeyPatch) -> object:
    import importlib

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    return importlib.import_module("own_data")


def test_the_benchmark_split_is_stratified_80_10_10_and_fixed(own_data: object, tmp_path: Path) -> None:
    src = write_class_folders(tmp_path / "photos", {"a": 20, "b": 10}, size=(8, 8))
    split = own_data.make_split(src, tmp_path / "split")  # type: ignore[attr-defined]
    counts = {p: {c: len(list((split / p / c).iterdir())) for c in "ab"} for p in ("train", "val", "test")}
    assert counts == {"train": {"a": 16, "b": 8}, "val": {"a": 2, "b": 1}, "test": {"a": 2, "b": 1}}
    again = own_data.make_split(src, tmp_path / "again")  # type: ignore[attr-defined]
    assert sorted(p.name for p in (split / "test" / "a").iterdir()) == sorted(p.name for p in (again / "test" / "a").iterdir())
    seen = [f.name for p in ("train", "val", "test") for f in (split / p / "a").iterdir()]
    assert len(seen) == len(set(seen)) == 20  # no image in two splits


def test_the_benchmark_flags_a_run_whose_loss_ran_away(own_data: object, tmp_path: Path) -> None:
    import json

    run = tmp_path / "run"
    run.mkdir()
    epochs = [{"epoch": 1, "train_loss": 2.3, "val_loss": 3.0e6}, {"epoch": 2, "train_loss": 8.4, "val_loss": 600.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    (run / "report.json").write_text(json.dumps({"top1": 0.3, "split": "test", "best_epoch": 2,
                                                "data": {"img_size": 64}}))
    row = own_data.run_one(tmp_path, "resnet50", 0, run, ())  # type: ignore[attr-defined]
    assert row["rise"] == pytest.approx(8.4 / 2.3) and row["val_over_train"] == pytest.approx(600 / 8.4)
    assert row["test"] == 0.3 and row["wall_s"] is None  # a run read, not timed here
