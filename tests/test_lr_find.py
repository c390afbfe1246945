"""lr-find: the range test restores the model and optimizer, and suggests the steepest descent."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from resnetkit.cli import main
from resnetkit.config import RunConfig
from resnetkit.training.lr_find import range_test, steepest
from resnetkit.training.trainer import Trainer

TINY = dict(dataset="digits", model="resnet8", subset=128, batch_size=32, epochs=1)


def test_range_test_restores_weights_buffers_and_optimizer() -> None:
    trainer = Trainer(RunConfig(**TINY), explicit=set(TINY), verbose=False)
    trainer.setup()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    lrs_before = [g["lr"] for g in trainer.optimizer.param_groups]
    result = range_test(trainer, start_lr=1e-4, end_lr=100.0, num_iter=20)
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics
    assert [g["lr"] for g in trainer.optimizer.param_groups] == lrs_before
    assert not trainer.optimizer.state  # no momentum left over from the test
    assert len(result.lrs) >= 2 and result.lrs[0] == pytest.approx(1e-4)
    assert all(b > a for a, b in zip(result.lrs, result.lrs[1:]))  # exponential ramp


def test_steepest_descent_finds_the_fastest_fall() -> None:
    lrs = [10 ** (-5 + i * 0.1) for i in range(50)]
    # a loss that falls fastest at lr 1e-2 (index 30) and rises after
    losses = [2.0 - math.tanh((math.log10(lr) + 2) * 2) for lr in lrs]
    assert steepest(lrs, losses) == pytest.approx(lrs[30])
    assert steepest(lrs[:10], losses[:10]) is None  # too short to judge
    # a one-point dip at tiny lrs (steeper from point to point) is not the descent over a decade
    wobbly = [v - (0.5 if i == 13 else 0.0) for i, v in enumerate(losses)]
    assert steepest(lrs, wobbly) == pytest.approx(lrs[30])
    assert steepest(lrs, losses[:40] + [float("nan")]) == pytest.approx(lrs[30])  # up to the blow-up


def test_cli_prints_the_suggestion_and_writes_the_plot(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "lrf"
    argv = ["lr-find", "--model", "resnet8", "--subset", "128", "--batch-size", "32", "--num-iter", "30",
            "--start-lr", "1e-4", "--end-lr", "100", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("suggested lr: ") and "(steepest descent)" in printed
    data = json.loads((out / "lr_find.json").read_text())
    assert f"{data['suggested_lr']:.3g}" in printed and data["recipe_lr"] == 0.2
    assert (out / "lr_find.png").read_bytes().startswith(b"\x89PNG")
    assert not (out / "state.pt").exists()  # nothing of a run is written


def test_bad_range_is_a_user_error(capsys: pytest.CaptureFixture) -> None:
    assert main(["lr-find", "--start-lr", "1", "--end-lr", "0.1"]) == 2
    assert "--start-lr and --end-lr" in capsys.readouterr().err
