"""`resnetkit train` flags, config files, recipes and schedules."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from resnetkit.cli import build_parser, main
from resnetkit.cli.train import config_values, parse_model_args
from resnetkit.config import RunConfig, field_names
from resnetkit.errors import UserError
from resnetkit.training.optim import build_optimizer, build_scheduler, param_groups
from resnetkit.training.recipes import RECIPES, recipe_values, resolve_config
from resnetkit.runtime import resolve_device, resolve_precision


def parse(argv: list[str]):
    return build_parser().parse_args(["train", *argv])


def test_every_config_field_has_a_flag_and_only_given_flags_are_set() -> None:
    parser = build_parser()
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    dests = {a.dest for a in train_parser._actions}
    assert set(field_names()) - {"model_args"} <= dests and "model_arg" in dests
    assert config_values(parse([])) == {}
    assert config_values(parse(["--epochs", "3", "--no-channels-last"])) == {"epochs": 3, "channels_last": False}


def test_config_file_sets_defaults_that_flags_override(tmp_path: Path) -> None:
    yml = tmp_path / "run.yaml"
    yml.write_text("epochs: 1\nbatch-size: 32\nmodel_args: {small_input: true, width: 8}\nlr: 0.3\n")
    values = config_values(parse(["--config", str(yml), "--epochs", "2", "--model-arg", "width=4"]))
    assert values == {"epochs": 2, "batch_size": 32, "lr": 0.3, "model_args": {"small_input": True, "width": 4}}
    js = tmp_path / "run.json"
    js.write_text(json.dumps({"optimizer": "adamw"}))
    assert config_values(parse(["--config", str(js)])) == {"optimizer": "adamw"}


def test_a_config_file_drives_a_real_run(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: resnet8\nsubset: 150\nepochs: 3\nschedule: cosine\nwarmup_epochs: 0.5\n"
                   "optimizer: adamw\nlr: 0.003\n")
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--epochs", "1", "--eval-every", "1", "--out", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert (saved["epochs"], saved["schedule"], saved["optimizer"], saved["lr"]) == (1, "cosine", "adamw", 0.003)
    assert saved["batch_size"] == RECIPES["default"]["digits"]["batch_size"]  # the recipe filled the rest


def test_model_arg_values_are_json_when_they_parse() -> None:
    assert parse_model_args(["small_input=true", "shortcut_type=B", "width=16", "x=[1, 2]"]) == {
        "small_input": True, "shortcut_type": "B", "width": 16, "x": [1, 2]}
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_model_args(["small_input"])


def test_recipes_fill_only_what_the_user_left_open(monkeypatch: pytest.MonkeyPatch) -> None:
    default = resolve_config(RunConfig())
    assert default.model == RECIPES["default"]["digits"]["model"] and default.recipe == "default"
    assert default.optimizer == "sgd" and default.schedule == "onecycle" and default.label_smoothing == 0.1
    mine = resolve_config(RunConfig(lr=0.01, epochs=2), explicit={"lr", "epochs"})
    assert (mine.lr, mine.epochs, mine.batch_size) == (0.01, 2, default.batch_size)
    # a recipe's model arguments go with its model, not with the one the user picked
    monkeypatch.setitem(RECIPES["default"], "digits", {"model": "resnet18", "model_args": {"small_input": True}})
    assert resolve_config(RunConfig()).model_args == {"small_input": True}
    mine = resolve_config(RunConfig(model_args={"zero_init_residual": True}), explicit={"model_args"})
    assert mine.model_args == {"small_input": True, "zero_init_residual": True}
    other = resolve_config(RunConfig(model="resnet8"), explicit={"model"})
    assert other.model == "resnet8" and other.model_args == {}
    # every recipe name resolves for every preset dataset
    for name in RECIPES:
        for dataset in RECIPES["default"]:
            assert recipe_values(name, dataset)["model"]
    with pytest.raises(UserError, match="unknown --recipe"):
        resolve_config(RunConfig(recipe="slow"))


@pytest.mark.parametrize("bad, message", [
    ({"epochs": 0}, "--epochs must be a positive integer"),
    ({"lr": -1.0}, "--lr must be positive"),
    ({"warmup_epochs": 5.0, "epochs": 2}, "--warmup-epochs"),
    ({"schedule": "triangle"}, "unknown --schedule"),
    ({"device": "tpu"}, "unknown --device"),
])
def test_bad_values_are_user_errors(bad: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        resolve_config(RunConfig(**bad), explicit=set(bad))


def test_device_and_precision() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_precision("auto", torch.device("cpu")).name == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")).dtype == torch.bfloat16
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        resolve_precision("fp16", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            resolve_device("cuda")


def lrs(schedule: str, warmup: float | None, epochs: int = 4, steps: int = 10) -> list[float]:
    model = torch.nn.Linear(2, 2)
    cfg = RunConfig(lr=0.1, optimizer="sgd", weight_decay=0.0, schedule=schedule, warmup_epochs=warmup,
                    epochs=epochs)
    opt = build_optimizer(param_groups(model, 0.0), cfg)
    sched = build_scheduler(opt, cfg, steps)
    out = []
    for _ in range(epochs * steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedules_per_batch() -> None:
    one = lrs("onecycle", None)
    assert max(one) == pytest.approx(0.1) and one.index(max(one)) == 9  # peak after a quarter of 40 steps
    assert one[0] == pytest.approx(0.1 / 25) and one[-1] < 1e-4
    cos = lrs("cosine", 1.0)
    assert cos[0] == pytest.approx(0.001) and cos[10] == pytest.approx(0.1) and cos[-1] < 0.001
    assert all(a >= b for a, b in zip(cos[10:], cos[11:]))
    step = lrs("step", None)
    assert step[19] == pytest.approx(0.1) and step[20] == pytest.approx(0.01) and step[30] == pytest.approx(0.001)
    assert set(lrs("constant", None)) == {0.1}
    assert lrs("constant", 2.0)[20:] == [0.1] * 20
    assert len(lrs("onecycle", None, epochs=1, steps=2)) == 2  # too short for two phases: still runs


def test_weight_decay_skips_biases_and_batchnorm() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 5e-4)
    assert [p.ndim for p in decay["params"]] == [4, 2] and decay["weight_decay"] == 5e-4
    assert all(p.ndim == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0


def test_nproc_checks_the_global_batch_before_launching(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--nproc", "2", "--batch-size", "63", "--out", str(tmp_path / "r")]) == 2
    assert "--batch-size 63" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_a_recipe_warmup_longer_than_a_short_run_is_shortened_not_an_error() -> None:
    cfg = resolve_config(RunConfig(dataset="imagefolder", epochs=1), explicit={"epochs"})
    assert recipe_values("default", "imagefolder")["warmup_epochs"] == 1
    assert cfg.warmup_epochs == 0.5
    with pytest.raises(UserError, match="--warmup-epochs"):  # the user's own value stays checked
        resolve_config(RunConfig(dataset="imagefolder", epochs=1, warmup_epochs=1.0),
                       explicit={"epochs", "warmup_epochs"})


# ------------------------------------------------------------------ one flag per error, checked before training
@pytest.mark.parametrize("argv, message, not_named", [
    (["--model-arg", "widths=abc"], "widths must be a JSON list of positive integers, got 'abc'", None),
    (["--model-arg", 'widths=[16,32,"a"]'], "got [16, 32, 'a']", None),
    (["--model-arg", "widths=16,32"], "got '16,32' (e.g. --model-arg 'widths=[16,32,64]')", None),
    (["--label-smoothing", "2"], "--label-smoothing must be in [0, 1), e.g. 0.1, got 2.0", "--weight-decay"),
    (["--weight-decay", "-1"], "--weight-decay must be >= 0, got -1.0", "--label-smoothing"),
    (["--mixup", "-1"], "--mixup is a Beta(alpha, alpha) parameter", "--cutmix"),
    (["--mix-switch-prob", "2"], "--mix-switch-prob is a probability in [0, 1], got 2.0", "--mix-prob "),
    (["--subset", "-3"], "--subset must be a whole number of training samples, at least 1, got -3", "--batch-size"),
    (["--subset", "0"], "--subset must be a whole number of training samples, at least 1, got 0", None),
    (["--img-size", "0"], "--img-size must be a whole number of pixels, at least 4, got 0", None),
    (["--min-img-size", "0"], "--min-img-size must be a whole number of pixels, at least 4, got 0", None),
])
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_bad_value_is_one_line_naming_its_flag(argv: list[str], message: str, not_named: str | None,
                                                 dry_run: bool, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet8", *argv, "--out", str(out), *(["--dry-run"] if dry_run else [])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnetkit: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message in err and (not_named is None or not_named not in err)
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--device", "cpu", "--precision", "fp16"], "--precision fp16 needs a GPU"),
    (["--early-stop", "2", "--val-size", "0"], "--early-stop needs a validation split"),
    (["--schedule", "plateau", "--val-size", "0"], "--schedule plateau needs a validation split"),
    (["--min-img-size", "100"], "--min-img-size must be between 4 and the input size 8"),
    (["--freeze", "bogus"], "unknown --freeze 'bogus'"),
    (["--nproc", "3", "--batch-size", "64"], "--batch-size 64 (the global batch) does not split evenly"),
])
def test_dry_run_refuses_what_the_run_refuses(argv: list[str], message: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """--dry-run passes only what a real run accepts: the same message, before any training."""
    common = ["train", "--subset", "100", "--epochs", "1", "--out", str(tmp_path / "run"), *argv]
    assert main([*common, "--dry-run"]) == 2
    dry = capsys.readouterr().err
    assert main(common) == 2
    real = capsys.readouterr().err
    assert message in dry and dry.strip().splitlines()[-1] == real.strip().splitlines()[-1]


def test_recorded_zeros_of_older_versions_read_as_unset() -> None:
    from resnetkit.config import recorded_config

    cfg = recorded_config({"img_size": 0, "min_img_size": 0, "subset": 0, "epochs": 2})
    assert (cfg.img_size, cfg.min_img_size, cfg.subset, cfg.epochs) == (None, None, None, 2)
