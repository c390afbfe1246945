"""The training toolbox end to end: plateau schedule, flags recorded and resumed exactly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from resnetkit.cli import main
from resnetkit.config import RunConfig
from resnetkit.errors import UserError
from resnetkit.training import train
from resnetkit.training.optim import Plateau, build_scheduler, step_on_metric
from resnetkit.training.recipes import resolve_config

TOOLBOX = dict(accum_steps=2, clip_grad=1.0, class_weights="balanced", sampler="balanced", schedule="plateau",
               mixup=0.2, cutmix=1.0, mix_prob=0.8, mix_switch_prob=0.5, augment="trivialaugment",
               tensorboard=True)


def comparable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in ("seconds", "images_per_s")} for h in history]


def test_plateau_divides_the_lr_after_the_patience_and_resumes() -> None:
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    cfg = resolve_config(RunConfig(schedule="plateau", epochs=10, warmup_epochs=1), {"schedule", "warmup_epochs"})
    sched = build_scheduler(opt, cfg, steps_per_epoch=4)
    assert isinstance(sched, Plateau) and opt.param_groups[0]["lr"] == pytest.approx(0.01)
    for _ in range(6):
        opt.step()
        sched.step()  # warmup: 4 steps up to the peak, then per-step nothing
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)
    for loss in (1.0, 0.9, 0.95, 0.95):
        step_on_metric(sched, {"val_loss": loss})
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)  # a patience of 2 evaluations...
    step_on_metric(sched, {"val_loss": 0.95})
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # ...and on the third, x0.1
    saved = sched.state_dict()
    fresh = Plateau(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0), warmup=4)
    fresh.load_state_dict(saved)
    assert fresh.plateau.best == pytest.approx(0.9) and fresh.steps == 6
    step_on_metric(sched, {"val_loss": 0.5, "test_loss": 9.0})  # the validation loss decides
    assert sched.plateau.best == pytest.approx(0.5)
    step_on_metric(sched, {"val_loss": None, "test_loss": 0.1})  # the test split never does
    assert sched.plateau.best == pytest.approx(0.5)


@pytest.mark.parametrize("bad, message", [
    ({"accum_steps": 0}, "--accum-steps"), ({"clip_grad": -1.0}, "--clip-grad"),
    ({"sampler": "weighted"}, "--sampler"), ({"class_weights": "auto"}, "--class-weights"),
    ({"mixup": float("nan")}, "--mixup must be a finite"), ({"mix_prob": 1.5}, "--mix-prob"),
])
def test_bad_toolbox_values_are_user_errors(bad: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        resolve_config(RunConfig(**bad))


def test_resume_with_the_toolbox_flags_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = dict(model="resnet8", subset=200, batch_size=32, epochs=3, verbose=False, **TOOLBOX)
    whole = train(out=str(tmp_path / "whole"), **cfg)

    def kill_after_epoch_2(trainer, record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(out=str(cut), callbacks=[kill_after_epoch_2], **cfg)
    saved = json.loads((cut / "config.json").read_text())
    assert {k: saved[k] for k in TOOLBOX} == TOOLBOX
    assert main(["train", "--resume", str(cut)]) == 0
    history = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert comparable(history) == comparable(whole.history)
    a, b = load_file(str(whole.run_dir / "last.safetensors")), load_file(str(cut / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert list((cut / "tb").glob("events.out.tfevents.*"))


def test_a_closed_pipe_on_stdout_ends_the_command_quietly(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A real pipe whose reader has gone (`resnetkit models | head -1` once head has exited).

    Once the write has failed, flushing again succeeds (the bytes were dropped), so only the pipe
    itself can tell that stdout's reader is gone."""
    import io
    import os
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    stdout = io.TextIOWrapper(io.FileIO(write_end, "w"), write_through=True)  # each print is a write
    monkeypatch.setattr(sys, "stdout", stdout)
    try:
        assert main(["models"]) == 141
    finally:
        monkeypatch.undo()
        stdout.close()
    assert capsys.readouterr().err == ""
