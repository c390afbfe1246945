"""EMA of the weights (--ema), progressive resizing (--min-img-size) and the linear schedule."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from resnetkit.cli import main
from resnetkit.config import RunConfig
from resnetkit.data.progressive import epoch_img_sizes
from resnetkit.training import train
from resnetkit.training.ema import WeightEma, warmup_decay
from resnetkit.training.optim import build_scheduler

from conftest import comparable, read_jsonl, weights

TINY = dict(model="resnet8", subset=200, batch_size=64, verbose=False)


def test_warmup_decay_copies_first_then_rises_to_the_decay() -> None:
    assert warmup_decay(0.99, 1) == 0.0
    assert warmup_decay(0.99, 2) == pytest.approx(1 - 2 ** -0.75)
    values = [warmup_decay(0.99, k) for k in range(1, 2000)]
    assert values == sorted(values) and values[-1] == 0.99
    assert warmup_decay(0.5, 10) == 0.5  # the cap


def test_ema_update_math_on_parameters_and_batchnorm_buffers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = WeightEma(model, decay=0.9)
    model.train()
    model(torch.randn(8, 3))  # moves the running statistics
    ema.update(model)  # update 1: a copy
    assert torch.equal(ema.module[0].weight, model[0].weight)
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)
    expected = {k: v.clone() for k, v in ema.module.state_dict().items()}
    for _ in range(2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(8, 3))
        d = warmup_decay(0.9, ema.updates + 1)
        current = model.state_dict()
        expected = {k: (v * d + current[k] * (1 - d)) if v.is_floating_point() else current[k].clone()
                    for k, v in expected.items()}
        ema.update(model)
    got = ema.module.state_dict()
    for k, v in expected.items():
        assert torch.allclose(got[k], v, atol=1e-6), k
    assert got["1.num_batches_tracked"] == model[1].num_batches_tracked == 3
    assert not torch.equal(got["0.weight"], model[0].weight)  # an average, not the weights


def test_ema_run_saves_the_average_and_resumes_like_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = dict(TINY, epochs=3, ema=0.9)
    whole = train(out=str(tmp_path / "whole"), **cfg)

    def kill_after_epoch_2(trainer, record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(out=str(cut), callbacks=[kill_after_epoch_2], **cfg)
    assert main(["train", "--resume", str(cut)]) == 0
    assert comparable(read_jsonl(cut / "metrics.jsonl")) == comparable(whole.history)
    for name in ("last.safetensors", "best.safetensors"):
        a, b = weights(whole.run_dir / name), weights(cut / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert json.loads((cut / "report.json").read_text())["top1"] == whole.report["top1"]

    state = torch.load(cut / "state.pt", weights_only=True)
    last = weights(cut / "last.safetensors")
    average = {k[len("module."):]: v for k, v in state["ema"]["averaged"].items() if k.startswith("module.")}
    assert all(torch.equal(last[k], average[k]) for k in last)  # the checkpoint holds the average
    assert not torch.equal(state["model"]["fc.weight"], last["fc.weight"])  # state.pt: raw weights
    steps = math.ceil(whole.report["data"]["train_size"] / 64)  # the last batch may be partial
    assert state["ema"]["updates"] == 3 * steps  # one update per optimizer step


def test_ema_epoch_line_and_bad_decay(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["train", "--model", "resnet8", "--subset", "200", "--batch-size", "64", "--epochs", "1"]
    assert main([*argv, "--ema", "0.9", "--out", str(tmp_path / "a")]) == 0
    assert "ema val loss" in capsys.readouterr().out
    assert main([*argv, "--ema", "1.5", "--out", str(tmp_path / "b")]) == 2
    assert "--ema is a decay per step in (0, 1)" in capsys.readouterr().err


def test_progressive_sizes_rise_linearly_then_stay_full() -> None:
    assert epoch_img_sizes(8, 28, 16, 0.75) == [16, 20, 20, 24, 24, 28, 28, 28]
    assert epoch_img_sizes(3, 28, 20, 1.0) == [20, 24, 28]
    assert epoch_img_sizes(3, 8, 4, 1.0) == [4, 8, 8]  # 6 rounds to a multiple of 4
    assert epoch_img_sizes(4, 28, None, 0.75) == [28] * 4
    assert epoch_img_sizes(1, 28, 16, 0.75) == [28]


def test_progressive_run_trains_small_then_full_and_evaluates_full(tmp_path: Path) -> None:
    seen: list[tuple[int, ...]] = []

    def shapes(trainer, record):
        seen.append(tuple(next(iter(trainer.loaders.train))[0].shape[-2:]))
        assert next(iter(trainer.loaders.test))[0].shape[-2:] == (8, 8)  # evaluation at full size

    result = train(dataset="digits", out=str(tmp_path / "run"), epochs=3, min_img_size=4,
                   progressive_until=1.0, callbacks=[shapes], **TINY)
    assert [h["img_size"] for h in result.history] == [4, 8, 8]
    assert seen == [(4, 4), (8, 8), (8, 8)]
    assert 0 <= result.report["top1"] <= 1


def test_progressive_rejects_a_size_above_the_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--model", "resnet8", "--subset", "200", "--epochs", "1", "--min-img-size", "9",
                 "--out", str(tmp_path / "run")]) == 2
    assert "--min-img-size must be between 4 and the input size 8" in capsys.readouterr().err


def test_linear_schedule_warms_up_then_reaches_zero_at_the_last_step() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = RunConfig(epochs=2, lr=1.0, schedule="linear", warmup_epochs=0.5)
    sched = build_scheduler(opt, cfg, steps_per_epoch=10)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01) and max(lrs) == pytest.approx(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:]))  # straight down after the warmup
