"""End-to-end training on a subset of the bundled digits: run folder, resume, crashes, NaN."""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import comparable, read_jsonl, weights
from safetensors import safe_open

import resnetkit
from resnetkit.cli import main
from resnetkit.config import field_names
from resnetkit import checkpoint as ckpt
from resnetkit.training import train

TINY = ["--model", "resnet8", "--subset", "200", "--batch-size", "64"]
METRIC_KEYS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_run_folder_is_complete_and_well_formed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(run), "--log-grad-norms"]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "epoch 2/2" in out and "test accuracy" in out
    assert "chosen on val" in out and " val loss " in out and "test loss" not in out

    config = json.loads((run / "config.json").read_text())
    assert set(config) == set(field_names())
    assert config["model"] == "resnet8" and config["epochs"] == 2 and config["optimizer"] == "sgd"
    assert json.loads((run / "classes.json").read_text()) == [str(i) for i in range(10)]

    history = read_jsonl(run / "metrics.jsonl")
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        assert METRIC_KEYS <= set(h) and not [k for k in h if k.startswith("test")]
        assert 0 <= h["train_acc"] <= 1 and 0 <= h["val_acc"] <= 1
        assert h["train_loss"] > 0 and h["val_loss"] > 0 and h["lr"] >= 0 and h["seconds"] > 0
        assert set(h["grad_norms"]) == {"layer1", "layer2", "layer3"}
        assert all(math.isfinite(v) and v > 0 for v in h["grad_norms"].values())

    for name in ("curves.png", "confusion.png"):
        data = (run / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000

    best = max(history, key=lambda h: (h["val_acc"], -h["val_loss"]))
    with safe_open(str(run / "best.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["format_version"] == "1"
    decoded = {k: json.loads(v) for k, v in meta.items()}
    assert decoded["arch"] == "resnet8"
    assert decoded["model_args"] == {"num_classes": 10, "in_chans": 1}
    assert decoded["classes"] == [str(i) for i in range(10)]
    assert decoded["spec"]["img_size"] == 8 and decoded["spec"]["in_chans"] == 1
    assert decoded["config"] == config
    assert decoded["metrics"]["epoch"] == best["epoch"]
    assert decoded["resnetkit_version"] == resnetkit.__version__

    report = json.loads((run / "report.json").read_text())
    assert report["selected_on"] == "val" and report["split"] == "test" and report["best_epoch"] == best["epoch"]
    assert report["val"] == {"top1": best["val_acc"], "loss": best["val_loss"]}
    assert report["data"]["train_size"] == 180 and report["data"]["val_size"] == 20  # --subset 200
    assert 0 <= report["top5"] <= 1 and report["top5"] >= report["top1"]
    assert [r["class"] for r in report["per_class"]] == [str(i) for i in range(10)]
    assert sum(r["support"] for r in report["per_class"]) == report["num_samples"] == 360
    ev = report["evidence"]
    assert ev["resnetkit_version"] == resnetkit.__version__ and ev["torch_version"] == torch.__version__
    assert ev["device"] == "cpu" and ev["seed"] == 0 and ev["wall_time_s"] > 0 and "git_commit" in ev

    state = torch.load(run / "state.pt", weights_only=True)
    assert state["epoch"] == 2 and len(state["history"]) == 2


@pytest.mark.parametrize("extra", [{}, {"max_steps": 7}], ids=["epochs", "max-steps"])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path: Path, extra: dict[str, int]) -> None:
    cfg = dict(model="resnet8", subset=200, batch_size=64, epochs=3, verbose=False, **extra)
    whole = train(out=str(tmp_path / "whole"), **cfg)
    if extra:  # 3 steps per epoch: the third epoch is cut after 1, the resumed run cuts it too
        assert whole.history[-1]["steps"] == 1 and whole.config.max_steps == 7

    def kill_after_epoch_2(trainer, record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(out=str(cut), callbacks=[kill_after_epoch_2], **cfg)
    assert len(read_jsonl(cut / "metrics.jsonl")) == 2
    assert main(["train", "--resume", str(cut)]) == 0

    assert comparable(read_jsonl(cut / "metrics.jsonl")) == comparable(whole.history)
    for name in ("last.safetensors", "best.safetensors"):
        a, b = weights(whole.run_dir / name), weights(cut / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert json.loads((cut / "report.json").read_text())["top1"] == whole.report["top1"]
    configs = [ckpt.load_checkpoint(d).config for d in (whole.run_dir, cut)]
    assert configs[0] == {**configs[1], "out": str(whole.run_dir)}  # resuming left no trace in it


def test_resume_of_a_run_killed_in_its_first_epoch_starts_over(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from resnetkit.training.trainer import Trainer

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(Trainer, "save", killed)
        with pytest.raises(KeyboardInterrupt):
            train(model="resnet8", subset=200, epochs=1, out=str(run), verbose=False)
    assert (run / "config.json").is_file() and not (run / "state.pt").exists()
    result = train(resume=str(run), verbose=False)
    assert [h["epoch"] for h in result.history] == [1] and (run / "best.safetensors").is_file()
    assert json.loads((run / "config.json").read_text())["resume"] is None


def test_resume_drops_metrics_of_an_epoch_whose_state_was_not_saved(tmp_path: Path) -> None:
    run = tmp_path / "run"

    def keep_state_of_epoch_1(trainer, record):
        if record["epoch"] == 1:
            shutil.copy(run / "state.pt", tmp_path / "state-1.pt")

    train(model="resnet8", subset=200, epochs=2, out=str(run), verbose=False, callbacks=[keep_state_of_epoch_1])
    # as if killed after epoch 2 wrote its metrics line but before it wrote state.pt
    os.replace(tmp_path / "state-1.pt", run / "state.pt")
    assert len(read_jsonl(run / "metrics.jsonl")) == 2
    train(resume=str(run), verbose=False)
    assert [h["epoch"] for h in read_jsonl(run / "metrics.jsonl")] == [1, 2]


def test_resume_refuses_to_change_the_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    train(model="resnet8", subset=200, epochs=1, out=str(run), verbose=False)
    assert main(["train", "--resume", str(run), "--lr", "0.5"]) == 2
    assert "--lr cannot change" in capsys.readouterr().err
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["save_file", "os.replace", "torch.save"])
def test_crash_during_a_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           target: str) -> None:
    import resnetkit._io as io

    def torn_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 17)
        raise OSError("No space left on device")

    def torn_torch_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 torn")
        raise OSError("No space left on device")

    def failing_replace(src, dst):
        raise OSError("killed during rename")

    def after_first_epoch(trainer, record):  # from now on that write dies half way
        if target == "save_file":
            monkeypatch.setattr(ckpt, "save_file", torn_save_file)
        elif target == "torch.save":
            monkeypatch.setattr(ckpt.torch, "save", torn_torch_save)
        else:
            monkeypatch.setattr(io.os, "replace", failing_replace)

    run = tmp_path / "run"
    with pytest.raises(OSError):
        train(model="resnet8", subset=200, epochs=3, out=str(run), verbose=False, callbacks=[after_first_epoch])
    monkeypatch.undo()
    # the state is written last: checkpoints of epoch 2 may be complete, never torn
    last_epoch = 2 if target == "torch.save" else 1
    assert ckpt.load_checkpoint(run / "last.safetensors").metrics["epoch"] == last_epoch
    assert ckpt.load_checkpoint(run / "best.safetensors").metrics["epoch"] <= last_epoch
    assert torch.load(run / "state.pt", weights_only=True)["epoch"] == 1
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]  # no temporary left behind
    assert main(["train", "--resume", str(run)]) == 0  # and the run goes on from there
    assert [h["epoch"] for h in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from resnetkit.training import trainer as trainer_mod

    real_step, real_epoch = trainer_mod.train_step, trainer_mod.Trainer.train_epoch
    poison = {"on": False}

    def train_epoch(self, epoch):
        poison["on"] = epoch >= 2
        return real_epoch(self, epoch)

    def poisoned_step(model, x, y, **kw):
        return real_step(model, x * float("nan") if poison["on"] else x, y, **kw)

    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", train_epoch)
    monkeypatch.setattr(trainer_mod, "train_step", poisoned_step)
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "3", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnetkit: error: the training loss became nan at epoch 2")
    assert len(err.strip().splitlines()) == 1 and "last.safetensors (epoch 1)" in err
    loaded = ckpt.load_checkpoint(run)
    assert loaded.metrics["epoch"] == 1
    assert all(torch.isfinite(p).all() for p in loaded.model.state_dict().values())
    assert [h["epoch"] for h in read_jsonl(run / "metrics.jsonl")] == [1]


def test_exploding_lr_in_the_first_epoch_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["train", *TINY, "--epochs", "1", "--lr", "1e30", "--schedule", "constant",
               "--out", str(tmp_path / "run")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "the training loss became" in err and "no checkpoint was written yet" in err
    assert "lower --lr" in err


def test_python_api_and_early_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from resnetkit.steps import EvalOutput

    # a val accuracy that never improves after the first evaluation
    monkeypatch.setattr(EvalOutput, "summary", lambda self: {"loss": 1.0, "acc": 0.5})
    threads = torch.get_num_threads()
    result = resnetkit.train({"model": "resnet8", "subset": 200, "epochs": 5}, early_stop=2,
                             lr=0.05, out=str(tmp_path / "run"), verbose=False)
    assert result.stopped_early and [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.best_metrics["epoch"] == 1 and result.checkpoint.is_file()
    assert result.config.epochs == 5 and result.config.lr == 0.05 and result.config.recipe == "default"
    assert result.config.threads == 1 and torch.get_num_threads() == threads  # the recipe's, then restored


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_each_epoch_records_the_lr_of_its_last_update(tmp_path: Path, schedule: str) -> None:
    """Not the one the schedule moves to next: after the last update that one lies past the
    schedule's end (one-cycle's cosine rises again there)."""
    from resnetkit.training.optim import build_optimizer, build_scheduler

    result = resnetkit.train({"model": "resnet8", "subset": 200, "epochs": 3, "batch_size": 32},
                             schedule=schedule, out=str(tmp_path / "run"), verbose=False)
    cfg, history = result.config, result.history
    steps = math.ceil(result.report["data"]["train_size"] / cfg.batch_size)
    optimizer = build_optimizer([torch.zeros(1, requires_grad=True)], cfg)
    scheduler = build_scheduler(optimizer, cfg, steps)
    used = []
    for _ in range(cfg.epochs * steps):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert [h["lr"] for h in history] == pytest.approx([used[e * steps - 1] for e in (1, 2, 3)])
    assert history[-1]["lr"] == pytest.approx(min(used))


@pytest.mark.slow
def test_default_train_reaches_97_percent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    report = json.loads((run / "report.json").read_text())
    assert report["top1"] >= 0.97
    assert "chosen on val" in capsys.readouterr().out


@pytest.mark.parametrize("text, says", [
    ('{"model": ', "is not valid JSON (line 1, column 11"),
    ("[1, 2]", "holds a JSON list, not an object"),
    ('{"model": "resnet8", "epochs": "three"}', "wrong type(s): epochs='three'"),
    ('{"model": "resnet8", "epoch": 3}', "unknown key(s) epoch"),
], ids=["truncated", "not-an-object", "wrong-type", "unknown-key"])
def test_resume_refuses_a_damaged_config_json(tmp_path: Path, capsys: pytest.CaptureFixture,
                                              text: str, says: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(text)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"resnetkit: error: --resume: {run / 'config.json'}") and says in err
    assert len(err.strip().splitlines()) == 1 and "another --out" in err
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]  # nothing written


def test_resume_of_a_missing_folder_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--resume", str(tmp_path / "nothere")]) == 2
    assert "nothere: folder not found" in capsys.readouterr().err


def test_a_resumed_run_says_its_speed_settings_come_from_its_config(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    train(model="resnet8", subset=200, epochs=1, out=str(run), verbose=False)
    # a finished run keeps its state.pt: resuming it writes the same report again; its precision
    # and memory format come from config.json, not from flags the user gave
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "(from the resumed run's config)" in out and "forced by flags" not in out
    flip = "--no-channels-last" if json.loads((run / "config.json").read_text())["channels_last"] else "--channels-last"
    assert main(["train", "--resume", str(run), flip]) == 0
    assert "(precision from the resumed run's config, channels_last forced by a flag)" in capsys.readouterr().out


def test_resume_of_a_trained_run_without_state_is_refused_and_overwrites_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    train(model="resnet8", subset=200, epochs=1, out=str(run), verbose=False)
    (run / "state.pt").unlink()
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "state.pt is missing" in err and "another --out" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_resume_of_a_run_killed_while_saving_its_first_epoch_starts_over(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """state.pt is written last: a kill after epoch 1's checkpoints and metrics line but before its
    state leaves nothing to continue, and starting over rewrites only what epoch 1 wrote."""
    run, killed = tmp_path / "run", tmp_path / "killed"

    def copy_epoch_1_without_state(trainer, record):
        if record["epoch"] == 1:
            shutil.copytree(run, killed, ignore=shutil.ignore_patterns("state.pt"))

    train(model="resnet8", subset=200, epochs=2, out=str(run), verbose=False,
          callbacks=[copy_epoch_1_without_state])
    assert (killed / "last.safetensors").is_file() and len(read_jsonl(killed / "metrics.jsonl")) == 1
    capsys.readouterr()
    assert main(["train", "--resume", str(killed)]) == 0
    assert "no epoch of it was saved (no state.pt); starting over from epoch 1" in capsys.readouterr().out
    assert [h["epoch"] for h in read_jsonl(killed / "metrics.jsonl")] == [1, 2]


def test_resume_refuses_a_state_of_another_network(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "resnet8", "epochs": 1, "subset": 200}))
    ckpt.save_state(run / "state.pt", {"epoch": 1, "model": {"w": torch.ones(3)}, "optimizer": {},
                                       "scheduler": {}, "rng": {}, "best": {}, "bad_evals": 0, "history": []})
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "its weights do not fit resnet8" in err and len(err.strip().splitlines()) == 1


def test_the_star_marks_a_strictly_better_val_accuracy_not_a_tie(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from types import SimpleNamespace

    from resnetkit.training.trainer import Trainer

    vals = iter([(0.5, 1.0), (0.5, 0.9), (0.6, 0.8), (0.6, 0.8)])  # (val acc, val loss) per epoch

    def fake_eval(self: Trainer, loader: object) -> SimpleNamespace:
        acc, loss = next(vals)
        return SimpleNamespace(summary=lambda: {"acc": acc, "loss": loss})
    monkeypatch.setattr(Trainer, "timed_evaluate", fake_eval)
    res = train(model="resnet8", subset=100, epochs=4, out=str(tmp_path / "run"))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch ")]
    assert [ln.endswith("*") for ln in lines] == [True, False, True, False]
    assert res.best_metrics["epoch"] == 3


class _Bar:
    """A stand-in for the tqdm bar: where it was moved to."""

    def __init__(self) -> None:
        self.n, self.moves = 0, []

    def update(self, k: int) -> None:
        self.n += k
        self.moves.append(self.n)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize("refresh_s, shown", [(0.0, True), (float("inf"), True), (0.0, False)])
def test_the_progress_bar_moves_on_time_not_every_25_batches(refresh_s: float, shown: bool, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import resnetkit.training.trainer as trainer
    from resnetkit.training import console

    bars: list[_Bar] = []
    reads: list[int] = []  # the batches after which the running sums were read from the device
    check = trainer.Trainer.check_progress

    def counted(self, bar, loss_sum, correct, seen, start, epoch, step):  # type: ignore[no-untyped-def]
        reads.append(step)
        return check(self, bar, loss_sum, correct, seen, start, epoch, step)
    monkeypatch.setattr(trainer, "REFRESH_S", refresh_s)  # 0: every step is "a second later"
    monkeypatch.setattr(console, "progress_bar", lambda verbose, epoch, epochs, total:
                        bars.append(_Bar()) or bars[-1] if shown else None)
    monkeypatch.setattr(trainer.Trainer, "check_progress", counted)
    train(model="resnet8", subset=400, batch_size=32, epochs=1, out=str(tmp_path / "run"), verbose=False)
    steps = 360 // 32 + (360 % 32 > 0)  # 400 images less a 10% val split
    if shown and refresh_s == 0.0:  # a slow step: the bar moves after each one
        assert bars[0].moves == list(range(1, steps + 1)) and reads == bars[0].moves
    else:  # a fast loop, or nobody watching: the reads stay the 25-batch (here: quarter-epoch) ones
        every = max(1, min(trainer.SYNC_EVERY, steps // 4))
        assert reads == sorted({s for s in range(1, steps + 1) if s % every == 0} | {steps})
