"""No flag is accepted that does nothing: every flag of train, finetune, evaluate and predict
changes what the command hands its job (or what it prints), and finetune holds no flag that an
image folder never reads."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import pytest

import resnetkit.training
from resnetkit.cli import build_parser, main
from resnetkit.config import RunConfig


def subparser(command: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def options(command: str) -> list[argparse.Action]:
    """The optional flags of ``resnetkit COMMAND --help``, help itself left out."""
    return [a for a in subparser(command)._actions
            if a.option_strings and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


def argv_for(action: argparse.Action, tmp_path: Path) -> list[str]:
    """The flag with a value other than its default."""
    flag = action.option_strings[0]
    if isinstance(action, argparse.BooleanOptionalAction):
        return [flag if action.default in (None, False, argparse.SUPPRESS) else f"--no-{flag[2:]}"]
    if action.nargs == 0:
        return [flag]
    if action.dest == "config":
        path = tmp_path / "given.json"
        path.write_text(json.dumps({"seed": 7}))
        return [flag, str(path)]
    if action.choices:
        return [flag, next(str(c) for c in action.choices if c != action.default)]
    if action.type is int:
        return [flag, "4" if action.default == 3 else "3"]
    if action.type is float:
        return [flag, "0.37"]
    if action.dest == "model_arg":
        return [flag, "small_input=true"]
    return [flag, str(tmp_path / "given")]


def observe(run: Callable[[list[str]], Any], argv: list[str], calls: list[Any],
            capsys: pytest.CaptureFixture[str]) -> tuple[Any, ...]:
    """What a command did: the calls its job got, its exit status and what it printed."""
    calls.clear()
    status = run(argv)
    out = capsys.readouterr()
    return repr(calls), status, out.out, out.err


def check_every_flag(command: str, base: list[str], calls: list[Any], tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> list[str]:
    seen = observe(main, [command, *base], calls, capsys)
    walked = []
    for action in options(command):
        flag = argv_for(action, tmp_path)
        changed = observe(main, [command, *base, *flag], calls, capsys)
        assert changed != seen, f"{command} {' '.join(flag)} changes nothing the command does"
        walked.append(action.option_strings[0])
    return walked


@pytest.fixture
def jobs(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The jobs behind the commands, replaced by recorders of what they are given."""
    import resnetkit.checkpoint as checkpoint
    import resnetkit.cli.launch as launch
    import resnetkit.evaluation as evaluate
    import resnetkit.predict as predict

    calls: list[Any] = []
    monkeypatch.setattr(launch, "train_or_launch", lambda values, argv: calls.append(("train", values, argv)) or 0)
    monkeypatch.setattr(launch, "dry_run", lambda values, as_json: calls.append(("dry-run", values, as_json)) or 0)
    monkeypatch.setattr(resnetkit.training, "train", lambda values: calls.append(("finetune", values)))
    monkeypatch.setattr(resnetkit.training.finetune, "plan_lines", lambda values: [])
    monkeypatch.setattr(checkpoint, "resolve_checkpoint_path", lambda p: Path(p) / "best.safetensors")

    def fake_evaluate(path: Any, **kw: Any) -> dict[str, Any]:
        calls.append(("evaluate", str(path), kw))
        return {"checkpoint": str(path), "model": "m", "dataset": "d", "split": kw["split"], "tta": bool(kw["tta"]),
                "top1": 1.0, "num_samples": 1, "per_class": [], "loss": 0.0, "temperature": 1.0, "source": "s"}
    monkeypatch.setattr(evaluate, "evaluate", fake_evaluate)

    class FakeClassifier:
        def predict(self, paths: list[str], **kw: Any) -> list[dict[str, Any]]:
            calls.append(("predict", list(paths), kw))
            top = [{"class": "a", "index": 0, "prob": 0.6}]
            return [{"path": p, "top": top, "label": "a"} for p in paths]
    monkeypatch.setattr(predict, "load", lambda path, **kw: calls.append(("load", path, kw)) or FakeClassifier())
    monkeypatch.setattr(predict, "annotate_file", lambda r, dest: calls.append(("annotate", str(dest))))
    return calls


def test_every_train_flag_reaches_the_run_config(jobs: list[Any], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    walked = check_every_flag("train", [], jobs, tmp_path, capsys)
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert {"--model", "--epochs", "--keys", "--columns", "--freeze"} <= set(walked)
    for action in options("train"):  # and lands in the RunConfig field of its name
        if action.dest not in ("config", "dry_run", "json"):
            assert action.dest.replace("model_arg", "model_args") in fields, action.dest


def test_every_finetune_flag_reaches_the_run_and_is_read_for_an_image_folder(
        jobs: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    walked = check_every_flag("finetune", [str(tmp_path)], jobs, tmp_path, capsys)
    assert "--freeze-epochs" in walked and "--pretrained" in walked
    assert not {"--keys", "--classes", "--columns", "--nproc", "--resume"} & set(walked)
    meta = {f.name: f.metadata for f in dataclasses.fields(RunConfig)}
    for action in options("finetune"):
        datasets = meta.get(action.dest.replace("model_arg", "model_args"), {}).get("datasets")
        assert datasets is None or "imagefolder" in datasets, action.dest
    with pytest.raises(SystemExit):  # refused, not ignored
        main(["finetune", str(tmp_path), "--keys", "X,Y"])
    assert "unrecognized arguments: --keys" in capsys.readouterr().err


def test_every_evaluate_and_predict_flag_reaches_the_job(jobs: list[Any], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    walked = check_every_flag("evaluate", [str(tmp_path)], jobs, tmp_path, capsys)
    assert {"--dataset", "--data-dir", "--split", "--tta", "--json", "--out", "--device", "--batch-size"} == set(walked)
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    walked = check_every_flag("predict", [str(tmp_path), str(image)], jobs, tmp_path, capsys)
    assert {"--topk", "--json", "--csv", "--min-confidence", "--annotate", "--batch-size", "--device",
            "--backend"} == set(walked)
