"""report.html: written by every run, self-contained, right about its numbers, shown by a browser."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetkit.calibrate import expected_calibration_error
from resnetkit.cli import main
from resnetkit.data import build_eval_loader
from resnetkit.evaluation import run_config
from resnetkit.interpret import per_sample_loss
from resnetkit.models import create_model
from resnetkit.training import train
from resnetkit.checkpoint import load_checkpoint
from resnetkit.training.finetune import freeze_timeline

IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture
def run(digits_run: Path) -> Path:
    return digits_run


def page(run: Path) -> str:
    return (run / "report.html").read_text(encoding="utf-8")


def test_every_run_writes_report_html_and_class_indices(run: Path) -> None:
    classes = json.loads((run / "classes.json").read_text())
    assert json.loads((run / "class_indices.json").read_text()) == {str(i): c for i, c in enumerate(classes)}
    html = page(run)
    assert "<title>resnet8 on digits: resnetkit report</title>" in html
    for section in ("summary", "curves", "confusion", "classes", "top-losses", "calibration", "settings"):
        assert f'<section id="{section}">' in html
    assert 'id="finetune"' not in html  # not a fine-tuning run
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert "Most confused pairs" in html and "torch_version" in html
    per_class_rows = re.findall(r"<tr><td>(\d)</td>", html.split('id="classes"')[1].split("</section>")[0])
    assert per_class_rows == classes


def test_html_is_self_contained(run: Path) -> None:
    html = page(run)
    assert not re.search(r"https?:", html, re.IGNORECASE)
    assert not re.search(r"<script|<link|<iframe|@import|url\(", html, re.IGNORECASE)
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    pictures = [Image.open(io.BytesIO(base64.b64decode(b))) for b in IMG.findall(html)]
    assert len(pictures) == 3 + 12  # curves, confusion, reliability; the top-losses gallery
    assert all(p.format == "PNG" and min(p.size) > 50 for p in pictures)


def test_top_losses_and_ece_match_an_independent_evaluation(run: Path) -> None:
    loaded = load_checkpoint(run / "best.safetensors")
    loader = build_eval_loader(run_config(loaded.config), "test", "cpu", spec=loaded.spec)
    with torch.no_grad():
        pairs = [(loaded.model(x), y) for x, y in loader]
    logits, targets = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    losses = per_sample_loss(logits, targets)
    shown = [int(i) for i in re.findall(r"test image #(\d+)</figcaption>", page(run))]
    assert len(shown) == 12
    assert set(shown) == set(torch.topk(losses, 12).indices.tolist())
    assert losses[shown].tolist() == sorted(losses[shown].tolist(), reverse=True)  # worst first
    report = json.loads((run / "report.json").read_text())
    assert report["ece_bins"] == 15
    assert report["ece"] == pytest.approx(expected_calibration_error(logits.softmax(1), targets), abs=1e-6)


def test_report_command_rebuilds_and_refuses_a_non_run(run: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "report.html").unlink()
    (copy / "class_indices.json").unlink()
    (copy / "curves.png").unlink()  # drawn again when missing
    assert main(["report", str(copy), "--top-losses", "4", "--method", "gradcam++"]) == 0
    assert "report.html" in capsys.readouterr().out
    assert len(IMG.findall(page(copy))) == 3 + 4
    assert (copy / "class_indices.json").is_file() and (copy / "curves.png").is_file()
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_fine_tuning_runs_show_what_was_frozen_when(tmp_path: Path) -> None:
    out = tmp_path / "ft"
    train(model="resnet8", epochs=2, freeze_epochs=1, out=str(out), verbose=False)
    section = page(out).split('id="finetune"')[1].split("</section>")[0]
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>", section)
    assert rows[0][:2] == ("1", "backbone") and "layer1" in rows[0][2] and "fc" not in rows[0][2]
    assert rows[1] == ("2", "none", "nothing")


def test_freeze_timeline_spans() -> None:
    from resnetkit.config import RunConfig

    model = create_model("resnet8", num_classes=3, in_chans=1)
    cfg = RunConfig(model="resnet8", epochs=5, freeze="stages:1", freeze_epochs=2, lr=0.1)
    spans = freeze_timeline(cfg, model)
    assert [(s["first"], s["last"], s["what"]) for s in spans] == [(1, 2, "stages:1"), (3, 5, "none")]
    assert spans[0]["frozen"] == ["conv1", "bn1", "relu", "layer1"] and spans[1]["frozen"] == []
    assert freeze_timeline(RunConfig(model="resnet8", epochs=5), model) == []


# ------------------------------------------------------------------ in a real browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args: str, timeout: int = 180) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}"]
        return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=timeout)


def screenshot(html: Path, out: Path, size: str) -> np.ndarray:
    chromium(f"--screenshot={out}", f"--window-size={size}", html.as_uri())
    assert out.is_file(), f"chromium wrote no screenshot of {html}"
    return np.asarray(Image.open(out).convert("RGB")).astype(int)


def colourful(pixels: np.ndarray) -> float:
    """Share of saturated pixels: figures and heat maps have them, text and table rules do not."""
    return float(((pixels.max(2) - pixels.min(2)) > 60).mean())


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_a_browser_shows_the_title_and_the_pictures_on_a_phone_sized_screen(run: Path, tmp_path: Path) -> None:
    dom = chromium("--dump-dom", run.joinpath("report.html").as_uri()).stdout
    assert "<title>resnet8 on digits: resnetkit report</title>" in dom and "<h1>resnet8 on digits</h1>" in dom
    # the same page without its pictures: what the pictures add to the screen is theirs
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r"<img [^>]*>", "", page(run)), encoding="utf-8")
    shot = screenshot(run / "report.html", tmp_path / "report.png", "412,1800")
    blank = screenshot(bare, tmp_path / "bare.png", "412,1800")
    assert shot.shape[:2] == (1800, 412)
    assert shot.std() > 20  # not a blank page
    title_band = shot[:60].mean(2)
    assert (title_band < 100).mean() > 0.01  # dark title text at the top
    print(f"colourful pixels: {colourful(shot):.4f} with the pictures, {colourful(blank):.4f} without")
    assert colourful(shot) > 0.005 and colourful(shot) > 3 * colourful(blank)
    # the pictures fit the phone's width: colour on both halves of the screen
    assert colourful(shot[:, :206]) > 0.002 and colourful(shot[:, 206:]) > 0.002


def test_a_run_builds_its_report_from_its_one_test_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import resnetkit.report_html as report_html

    def second_pass(*a: object, **k: object) -> None:
        raise AssertionError("report.html evaluated the test split a second time")
    monkeypatch.setattr(report_html, "_interpret", second_pass)
    run = train(dataset="digits", subset=200, epochs=1, batch_size=32, out=str(tmp_path / "run"), verbose=False)
    assert 0 < run.report["ece"] < 1
    shown = [int(i) for i in re.findall(r"test image #(\d+)</figcaption>", page(tmp_path / "run"))]
    assert len(shown) == 12 and len(IMG.findall(page(tmp_path / "run"))) == 3 + 12


def test_losses_read_in_three_digits_and_table_keys_keep_whole(run: Path) -> None:
    from resnetkit.report_html import CSS, _gallery_html

    card = {"index": 7, "true": "cat", "pred": "dog", "prob": 0.999, "prob_true": 1e-6, "loss": 4328536.0,
            "png": b"", "layer": "layer2"}
    html = _gallery_html([card, {**card, "loss": 0.0123456}], split="val")
    assert "loss 4.33e+06;" in html and "loss 0.0123;" in html and "val image #7" in html
    assert "<code>layer2</code>" in html
    # the setting names (first column) never break inside a word; values may, anywhere
    assert "td:first-child,th:first-child{overflow-wrap:normal;white-space:nowrap}" in CSS
    assert "<tr><td>freeze_epochs</td>" in page(run)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_a_browser_keeps_each_setting_name_on_one_line_on_a_phone(run: Path, tmp_path: Path) -> None:
    # the page has no script of its own; a copy with one measures the rendered key cells
    # (a range over a cell's text has one client rect per line it is laid out on)
    probe = ("<script>window.onload=function(){var h=[];document.querySelectorAll('#settings td:first-child')"
             ".forEach(function(td){var r=document.createRange();r.selectNodeContents(td);"
             "h.push(r.getClientRects().length)});"
             "document.body.setAttribute('data-lines',Math.max.apply(null,h))}</script></body>")
    copy = tmp_path / "probe.html"
    copy.write_text(page(run).replace("</body>", probe), encoding="utf-8")
    dom = chromium("--window-size=360,800", "--virtual-time-budget=5000", "--dump-dom", copy.as_uri()).stdout
    lines = re.search(r'data-lines="(\d+)"', dom)
    assert lines and int(lines.group(1)) == 1  # one line box per key: none wrapped mid-word
