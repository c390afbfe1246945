"""Calibration: ECE as Guo et al. define it, and temperature scaling that repairs over-confidence."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import resnetkit
from resnetkit.calibrate import (TemperatureScaled, calibration_summary, expected_calibration_error,
                                 fit_temperature, reliability_bins, write_calibration)
from resnetkit.cli import main
from resnetkit.checkpoint import read_metadata


def calibrated_logits(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from the softmax of those logits: calibrated by construction."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g) * 2
    targets = torch.multinomial(logits.softmax(1), 1, generator=g)[:, 0]
    return logits, targets


def test_ece_by_hand() -> None:
    # two samples at confidence 0.9 (one right), two at 0.6 (both right)
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    targets = torch.tensor([0, 1, 0, 1])
    bins = reliability_bins(probs, targets, n_bins=15)
    full = [b for b in bins if b.count]
    assert [(b.count, round(b.confidence, 6), b.accuracy) for b in full] == [(2, 0.6, 1.0), (2, 0.9, 0.5)]
    assert expected_calibration_error(probs, targets) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert sum(b.count for b in bins) == 4 and len(bins) == 15


def test_temperature_scaling_lowers_the_ece_of_an_over_confident_model() -> None:
    logits, targets = calibrated_logits(4000, 10, seed=0)
    sharp = logits * 3  # the same ranking, three times too sure
    fit_logits, fit_targets = sharp[:2000], targets[:2000]
    held_logits, held_targets = sharp[2000:], targets[2000:]
    t = fit_temperature(fit_logits, fit_targets)
    assert t == pytest.approx(3.0, rel=0.15)
    s = calibration_summary(held_logits, held_targets, t)
    assert s["ece_before"] > 0.15 and s["ece_after"] < s["ece_before"] / 3
    assert s["nll_after"] < s["nll_before"]
    # the argmax, so the accuracy, is untouched
    assert torch.equal((held_logits / t).argmax(1), held_logits.argmax(1))


def test_a_calibrated_model_keeps_a_temperature_near_one() -> None:
    logits, targets = calibrated_logits(3000, 5, seed=1)
    assert fit_temperature(logits, targets) == pytest.approx(1.0, abs=0.1)
    assert expected_calibration_error(logits.softmax(1), targets) < 0.03


def test_temperature_scaled_module_divides_the_logits() -> None:
    net = torch.nn.Linear(3, 4)
    x = torch.randn(5, 3)
    assert torch.allclose(TemperatureScaled(net, 2.5)(x), net(x) / 2.5)


# ------------------------------------------------------------------ a run's checkpoint
def test_calibrate_command_stores_the_temperature_where_predict_evaluate_and_export_use_it(
        digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    _, before = read_metadata(run / "best.safetensors")
    assert main(["calibrate", str(run), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    t = record["temperature"]
    assert t != pytest.approx(1.0, abs=0.05) and record["bins"] == 15
    assert record["ece_after"] < record["ece_before"] and record["nll_after"] < record["nll_before"]
    meta, after = read_metadata(run / "best.safetensors")
    assert meta["calibration"] == record
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    report = json.loads((run / "report.json").read_text())
    assert report["ece"] == pytest.approx(record.get("test_ece_after", record["ece_after"]))
    assert report["ece_uncalibrated"] > report["ece"]
    assert "Temperature scaling" in (run / "report.html").read_text()
    # predict divides by T
    clf = resnetkit.load(run, device="cpu")
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        expected = (clf.model(x) / t).softmax(1).max(1).values
    got = [r["top"][0]["prob"] for r in clf.predict(x, topk=1)]
    assert got == pytest.approx(expected.tolist(), abs=1e-6) and clf.temperature == t
    # evaluate reports it and the accuracy does not move
    result = resnetkit.evaluate(run, device="cpu")
    assert result["temperature"] == t and result["top1"] == report["top1"]


def test_an_exported_model_carries_the_temperature(digits_run: Path, tmp_path: Path) -> None:
    from resnetkit.export import export_checkpoint

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    record = {"temperature": 2.0, "fit_on": "val"}
    write_calibration(run / "best.safetensors", record)
    export_checkpoint(run, fmt="torchscript", check=0)
    exported = resnetkit.load(run / "model.ts", device="cpu")
    torch_clf = resnetkit.load(run, device="cpu")
    assert exported.temperature == torch_clf.temperature == 2.0
    x = torch.randn(2, 1, 8, 8)
    a = [r["top"][0]["prob"] for r in exported.predict(x)]
    b = [r["top"][0]["prob"] for r in torch_clf.predict(x)]
    assert a == pytest.approx(b, abs=1e-4)


@pytest.mark.parametrize("bad", [0, -1.5, "2", None, float("nan"), True])
def test_a_bad_temperature_in_the_metadata_is_refused_in_one_line(bad: object) -> None:
    from resnetkit.calibrate import temperature_of
    from resnetkit.errors import UserError

    assert temperature_of({}) == 1.0 and temperature_of({"calibration": {"temperature": 2}}) == 2.0
    with pytest.raises(UserError, match="not a positive number"):
        temperature_of({"calibration": {"temperature": bad}})


def test_a_split_too_accurate_or_too_small_keeps_t_at_one_and_says_why(
        digits_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import resnetkit.calibrate as calibrate

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    real = calibrate.split_logits

    def perfect(model: torch.nn.Module, batches: object) -> tuple[torch.Tensor, torch.Tensor]:
        logits, targets = real(model, batches)
        logits[torch.arange(len(targets)), targets] += 100  # every prediction right, as a 100% val split
        return logits, targets
    monkeypatch.setattr(calibrate, "split_logits", perfect)
    assert main(["calibrate", str(run)]) == 0
    captured = capsys.readouterr()
    assert "temperature 1.0000" in captured.out
    assert "wrong on 0 of the 144 val images" in captured.err and "stays 1" in captured.err
    assert read_metadata(run / "best.safetensors")[0]["calibration"]["temperature"] == 1.0

    monkeypatch.setattr(calibrate, "split_logits", lambda m, b: tuple(t[:40] for t in real(m, b)))
    with pytest.warns(UserWarning, match="has 40 images, too few"):
        record = calibrate.calibrate_checkpoint(run, device="cpu")
    assert record["temperature"] == 1.0 and "too few" in record["warning"]


def test_a_run_without_val_is_told_to_calibrate_on_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from resnetkit.training import train

    run = train(model="resnet8", subset=100, val_size=0, epochs=1, out=str(tmp_path / "run"), verbose=False)
    assert main(["calibrate", str(run.run_dir)]) == 2
    err = capsys.readouterr().err
    assert "calibrate RUN --split test" in err and "evaluate" not in err
    assert main(["calibrate", str(run.run_dir), "--split", "test"]) == 0


def test_a_run_without_a_test_split_is_not_measured_twice_on_val(tiny_split_imagefolder: Path, tmp_path: Path) -> None:
    from resnetkit.calibrate import calibrate_checkpoint
    from resnetkit.training import train

    run = train(dataset="imagefolder", data_dir=str(tiny_split_imagefolder), model="resnet8", img_size=16,
                epochs=1, batch_size=8, out=str(tmp_path / "run"), verbose=False)
    with pytest.warns(UserWarning, match="too few"):  # 12 val images
        record = calibrate_checkpoint(run.run_dir, device="cpu")
    assert "test_ece_after" not in record and "no test split" in record["note"]
