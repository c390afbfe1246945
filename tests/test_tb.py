"""--tensorboard: event files with the epoch's scalars, a first batch and the graph."""
from __future__ import annotations

import builtins
from pathlib import Path

import pytest

from resnetkit.cli import main
from resnetkit.training.tb import scalars


def test_scalars_follow_the_metrics_line() -> None:
    record = {"epoch": 3, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 2.0, "val_acc": 0.4,
              "test_loss": None, "lr": 0.1, "grad_norms": {"layer1": 1.0}}
    assert scalars(record) == {"loss/train": 1.0, "accuracy/train": 0.5, "loss/val": 2.0,
                               "accuracy/val": 0.4, "train/lr": 0.1}


def test_event_files_hold_scalars_images_and_graph(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert main(["train", "--model", "resnet8", "--subset", "100", "--epochs", "2", "--tensorboard",
                 "--out", str(run)]) == 0
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = acc.Tags()
    assert {"loss/train", "accuracy/train", "train/lr"} <= set(tags["scalars"])
    held_out = "val" if "loss/val" in tags["scalars"] else "test"  # the per-epoch evaluation split
    assert {f"loss/{held_out}", f"accuracy/{held_out}"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("loss/train")] == [1, 2]
    assert tags["images"] == ["train/first_batch"] and tags["graph"]


def test_missing_tensorboard_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise ModuleNotFoundError("No module named 'tensorboard'", name="tensorboard")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    assert main(["train", "--model", "resnet8", "--subset", "100", "--epochs", "1", "--tensorboard",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--tensorboard needs the tensorboard package" in err and "pip install" in err
