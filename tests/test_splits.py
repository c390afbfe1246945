"""The validation split chooses, the test split is read once at the end (resnetkit.data.splits)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import resnetkit
from resnetkit.cli import main
from resnetkit.config import RunConfig
from resnetkit.data import build_eval_loader, build_loaders
from resnetkit.data.datasets import load_digits_split
from resnetkit.data.folders import index_imagefolder
from resnetkit.data.splits import folder_splits, holdout, val_count
from resnetkit.errors import UserError
from resnetkit import checkpoint as ckpt
from resnetkit.training import setup as run_setup
from resnetkit.training import trainer as trainer_mod
from resnetkit.training import train
from resnetkit.steps import evaluate_batches

CPU = torch.device("cpu")
TINY = dict(model="resnet8", subset=200, batch_size=64, verbose=False)


# ------------------------------------------------------------------ sizes and indices
@pytest.mark.parametrize("n, changes, expected", [
    (60_000, {}, 5000), (50_000, {}, 5000), (1437, {}, 144), (200, {}, 20),  # 5,000, else a tenth
    (60_000, {"val_size": 1000}, 1000), (60_000, {"val_fraction": 0.25}, 15_000), (200, {"val_size": 0}, 0)])
def test_val_count(n: int, changes: dict, expected: int) -> None:
    assert val_count(n, RunConfig(**changes)) == expected


@pytest.mark.parametrize("changes, message", [
    ({"val_size": 10, "val_fraction": 0.1}, "not both"), ({"val_size": -1}, ">= 0"),
    ({"val_fraction": 1.0}, "between 0 and 1"), ({"val_size": 199}, "leaves 1 of 200")])
def test_bad_val_options_are_one_clear_line(changes: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        val_count(200, RunConfig(**changes))


def test_val_and_train_share_no_sample_and_val_is_stratified_and_seeded() -> None:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate((500, 300, 150, 50))])
    train_idx, val_idx = holdout(labels, 100, seed=3)
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(1000))
    counts = torch.bincount(labels[val_idx], minlength=4).tolist()
    assert all(abs(c - n / 10) <= 1 for c, n in zip(counts, (500, 300, 150, 50))), counts
    assert torch.equal(holdout(labels, 100, seed=3)[1], val_idx)  # reproducible
    assert not torch.equal(holdout(labels, 100, seed=4)[1], val_idx)  # and seeded


def test_digits_loaders_split_one_device_tensor_into_disjoint_train_and_val() -> None:
    cfg = RunConfig(seed=5)
    loaders = build_loaders(cfg, CPU)
    assert (loaders.train.dataset_size, loaders.val.dataset_size, loaders.test.dataset_size) == (1293, 144, 360)
    pool = load_digits_split("train")
    train_idx, val_idx = holdout(pool.labels, 144, seed=5)
    raw = pool.images.float()
    # the loaders hold exactly those rows: no sample is in both
    assert torch.equal(loaders.val.images.float(), raw[val_idx])
    assert torch.equal(loaders.train.images.float(), raw[train_idx])
    assert torch.bincount(loaders.val.labels, minlength=10).min() >= 14  # ~10% of each class (>= 142)
    # evaluate --split val rebuilds the same split from the config
    again = build_eval_loader(cfg, "val", CPU)
    assert torch.equal(again.images, loaders.val.images) and torch.equal(again.labels, loaders.val.labels)
    assert build_eval_loader(cfg, "train", CPU).dataset_size == 1293
    with pytest.raises(UserError, match="no val split"):
        build_eval_loader(cfg.replace(val_size=0), "val", CPU)


def test_imagefolder_splits(tiny_imagefolder: Path, tiny_split_imagefolder: Path, tmp_path: Path) -> None:
    cfg = RunConfig(dataset="imagefolder")
    one = index_imagefolder(tiny_imagefolder)  # one tree: val by --val-fraction, no test split
    fs = folder_splits(one, one.train, cfg, builtin=False)
    assert (len(fs.train), len(fs.val)) == (24, 6) and fs.test is fs.val and fs.test_is_val
    assert not set(fs.train.files) & set(fs.val.files)
    sized = folder_splits(one, one.train, cfg.replace(val_size=9), builtin=False)
    assert len(sized.val) == 9 and not set(sized.train.files) & set(sized.val.files)
    with pytest.raises(UserError, match="no held-out image"):
        folder_splits(one, one.train, cfg.replace(val_size=0), builtin=False)
    # train/ + val/ + test/: each folder is its split
    root = tmp_path / "three"
    shutil.copytree(tiny_split_imagefolder, root)
    shutil.copytree(root / "val", root / "test")
    three = index_imagefolder(root)
    fs = folder_splits(three, three.train, cfg, builtin=False)
    assert fs.val.root.name == "val" and fs.test.root.name == "test" and not fs.test_is_val
    assert len(fs.train) == 24
    # train/ + test/ only (the CIFAR image-folder form): val held out of train/
    shutil.rmtree(root / "val")
    two = index_imagefolder(root)
    fs = folder_splits(two, two.train, cfg.replace(dataset="cifar10"), builtin=True)
    assert (len(fs.train), len(fs.val)) == (22, 2) and fs.test.root.name == "test"


# ------------------------------------------------------------------ training reads val, then test once
def counting_evaluate(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record (split, epochs done) for every evaluation the trainer runs."""
    calls: list[tuple[str, int]] = []
    real = trainer_mod.Trainer.evaluate

    def evaluate(self, loader, tta=None, **kw):
        split = "test" if loader is self.loaders.test else "val" if loader is self.loaders.val else "?"
        calls.append((split, len(self.history)))
        return real(self, loader, tta, **kw)

    monkeypatch.setattr(trainer_mod.Trainer, "evaluate", evaluate)
    return calls


def test_the_test_split_is_read_once_after_the_last_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting_evaluate(monkeypatch)
    iterated: list[int] = []
    real = run_setup.build_loaders

    def build(*args, **kwargs):
        loaders = real(*args, **kwargs)
        test_iter = type(loaders.test).__iter__

        class Counted(type(loaders.test)):  # type: ignore[misc, valid-type]
            def __iter__(self):
                iterated.append(1)
                return test_iter(self)

        loaders.test.__class__ = Counted
        return loaders

    monkeypatch.setattr(run_setup, "build_loaders", build)
    result = train(epochs=3, out=str(tmp_path / "run"), **TINY)
    assert calls == [("val", 0), ("val", 1), ("val", 2), ("test", 3)]
    assert len(iterated) == 1
    assert result.test_metrics["top1"] == result.report["top1"] and result.test_metrics["num_samples"] == 360
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        assert not [k for k in json.loads(line) if k.startswith("test")]


def test_selection_follows_val_even_where_test_would_choose_another_epoch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Val (made up here) prefers epoch 1; the test split, measured aside after every epoch,
    prefers a trained later epoch. The run must keep epoch 1 and report its test accuracy."""
    made_up_val = {1: 0.9, 2: 0.5, 3: 0.6}
    test_by_epoch: dict[int, float] = {}
    real = trainer_mod.Trainer.evaluate

    def evaluate(self, loader, tta=None, **kw):
        out = real(self, loader, tta, **kw)
        if loader is self.loaders.val:
            acc = made_up_val[len(self.history) + 1]
            out.summary = lambda: {"loss": 1.0 - acc, "acc": acc}
        return out

    def measure_test_aside(trainer, record):
        loader = build_eval_loader(trainer.cfg, "test", CPU)
        out = evaluate_batches(trainer.model, loader, autocast=trainer.precision.autocast(),
                               label_smoothing=trainer.cfg.label_smoothing)
        test_by_epoch[record["epoch"]] = out.summary()["acc"]

    monkeypatch.setattr(trainer_mod.Trainer, "evaluate", evaluate)
    result = train(epochs=3, out=str(tmp_path / "run"), callbacks=[measure_test_aside], **TINY)
    assert test_by_epoch[1] < max(test_by_epoch.values())  # test would have chosen a later epoch
    assert result.best_metrics["epoch"] == 1 and result.best_metrics["val_acc"] == 0.9
    assert ckpt.load_checkpoint(result.checkpoint).metrics["epoch"] == 1
    report = result.report
    assert report["best_epoch"] == 1 and report["selected_on"] == "val"
    assert report["val"] == {"top1": 0.9, "loss": pytest.approx(0.1)}
    assert report["top1"] == pytest.approx(test_by_epoch[1], abs=1e-12)  # epoch 1's weights, once


def test_val_size_0_trains_on_everything_and_selects_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    calls = counting_evaluate(monkeypatch)
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet8", "--subset", "200", "--epochs", "2", "--val-size", "0",
                 "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "no validation split (--val-size 0): 200 images train" in out and "nothing selected" in out
    assert "  *" not in out and calls == [("test", 2)]
    report = json.loads((run / "report.json").read_text())
    assert report["selected_on"] == "none" and report["val"] is None and report["best_epoch"] == 2
    assert report["data"]["train_size"] == 200 and report["data"]["val_size"] == 0
    assert ckpt.load_checkpoint(run / "best.safetensors").metrics["epoch"] == 2  # the last epoch
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(h["val_acc"] is None for h in history)
    assert main(["train", "--model", "resnet8", "--subset", "200", "--val-size", "0", "--early-stop", "2",
                 "--out", str(tmp_path / "other")]) == 2
    assert "--early-stop needs a validation split" in capsys.readouterr().err


def test_an_image_folder_without_test_says_selection_and_report_share_a_split(
        tiny_split_imagefolder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(tiny_split_imagefolder),
                 "--model", "resnet8", "--img-size", "16", "--epochs", "1", "--batch-size", "8",
                 "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "selection and report share one split" in out
    report = json.loads((run / "report.json").read_text())
    assert report["split"] == "val" and report["data"]["test_is_val"]
    assert "biased upwards" in report["selection_note"] and report["num_samples"] == 12
    assert resnetkit.evaluate(run, split="test")["source"] == "val split (no test split)"
