"""Evaluating a checkpoint reproduces what training reported, and draws its confusion matrix."""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

import resnetkit
from resnetkit.cli import main
from resnetkit.training import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    return train(model="resnet8", subset=300, epochs=3, out=str(tmp_path_factory.mktemp("eval") / "run"),
                 verbose=False)


def test_evaluate_reproduces_the_reported_accuracy_exactly(run) -> None:
    result = resnetkit.evaluate(run.run_dir)
    assert result["top1"] == run.test_metrics["top1"] == run.report["top1"]
    assert result["loss"] == run.test_metrics["loss"] == run.report["loss"]
    assert result["num_samples"] == 360 and result["split"] == "test" and result["dataset"] == "digits"
    assert result["confusion_matrix"] == run.report["confusion_matrix"]
    # the val split is rebuilt from the checkpoint's config and seed: the numbers that chose it
    val = resnetkit.evaluate(run.run_dir, split="val")
    assert val["num_samples"] == 30 and val["source"].startswith("val split")
    assert (val["top1"], val["loss"]) == (run.best_metrics["val_acc"], run.best_metrics["val_loss"])
    last = resnetkit.evaluate(run.run_dir / "last.safetensors", split="val")
    assert last["top1"] == run.last_metrics["val_acc"]


def test_the_public_api_is_functions_whatever_was_imported(run) -> None:
    import resnetkit.evaluation  # noqa: F401 - the modules behind the public names
    import resnetkit.training  # noqa: F401

    assert inspect.isfunction(resnetkit.evaluate) and inspect.isfunction(resnetkit.train)
    assert resnetkit.evaluate(run.run_dir, split="train")["num_samples"] == 270  # subset 300 less val


def test_cli_text_json_confusion_image_and_tta(run, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", str(run.run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"top-1 {100 * run.report['top1']:.2f}%" in out and "precision" in out and "test split" in out
    png = run.run_dir / "confusion-test.png"
    assert png.read_bytes().startswith(PNG_MAGIC)

    target = tmp_path / "cm.png"
    assert main(["evaluate", str(run.checkpoint), "--json", "--tta", "--out", str(target)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tta"] is True and result["num_samples"] == 360 and 0 <= result["top5"] <= 1
    assert len(result["per_class"]) == 10 and sum(map(sum, result["confusion_matrix"])) == 360
    assert target.read_bytes().startswith(PNG_MAGIC)


def test_cli_errors(run, capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", str(run.run_dir), "--dataset", "cifar10", "--data-dir", "/nonexistent"]) == 2
    assert main(["evaluate", str(run.run_dir / "nothing.safetensors")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_a_run_finds_its_data_again_without_the_environment(tiny_mnist_root: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNETKIT_DATA", str(tiny_mnist_root))
    res = train(dataset="mnist", model="resnet8", epochs=1, batch_size=32, out=str(tmp_path / "m"),
                verbose=False)
    saved = json.loads((res.run_dir / "config.json").read_text())
    assert saved["data_dir"] == str(tiny_mnist_root.resolve())
    monkeypatch.delenv("RESNETKIT_DATA")
    assert resnetkit.evaluate(res.run_dir)["top1"] == res.report["top1"]
    # moved to a machine where that folder does not exist: the usual default applies, clearly
    cfg = json.loads((res.run_dir / "config.json").read_text())
    from resnetkit.evaluation import run_config

    assert run_config({**cfg, "data_dir": str(tmp_path / "gone")}).data_dir is None


def test_another_dataset_keeps_the_runs_own_confusion_matrix(run, capsys: pytest.CaptureFixture) -> None:
    own = run.run_dir / "confusion-test.png"
    main(["evaluate", str(run.run_dir)])
    before = own.read_bytes()
    assert main(["evaluate", str(run.run_dir), "--dataset", "digits", "--tta"]) == 0
    assert "confusion-digits-test.png" in capsys.readouterr().out
    assert own.read_bytes() == before  # the tta matrix went to its own file
    assert (run.run_dir / "confusion-digits-test.png").read_bytes().startswith(PNG_MAGIC)


def test_a_run_without_a_test_split_is_evaluated_as_val(tiny_split_imagefolder: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    res = train(dataset="imagefolder", data_dir=str(tiny_split_imagefolder), model="resnet8", img_size=16,
                epochs=1, batch_size=8, out=str(tmp_path / "run"), verbose=False)
    assert main(["evaluate", str(res.run_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_is_val"] is True and result["source"] == "val split (no test split)"
    assert main(["evaluate", str(res.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "imagefolder val (no test split)" in out and "imagefolder test" not in out
    assert main(["report", str(res.run_dir), "--top-losses", "2"]) == 0
    assert "(val top-1 " in capsys.readouterr().out


def test_another_folder_without_split_folders_is_scored_whole(tiny_split_imagefolder: Path, tiny_imagefolder: Path,
                                                              tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    res = train(dataset="imagefolder", data_dir=str(tiny_split_imagefolder), model="resnet8", img_size=16,
                epochs=1, batch_size=8, out=str(tmp_path / "run"), verbose=False)
    # trained on train/ + val/ (no test/): its report says val, with the bias, everywhere
    rep = json.loads((res.run_dir / "report.json").read_text())
    assert rep["split"] == "val" and "biased upwards" in rep["selection_note"]
    html = (res.run_dir / "report.html").read_text()
    assert "val top-1" in html and "test top-1" not in html and "test images" not in html
    assert "biased upwards" in html
    # another folder of the same classes, one tree of 30 images: every one is test
    assert main(["evaluate", str(res.run_dir), "--dataset", "imagefolder", "--data-dir",
                 str(tiny_imagefolder), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_samples"] == 30 and result["test_is_val"] is False
    assert result["source"].startswith("all 30 images of") and "selection_note" not in result
    # its own folder keeps its own splits: the val split, labelled so, with the warning
    assert main(["evaluate", str(res.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "(12 images, imagefolder val (no test split))" in out and "biased upwards" in out
