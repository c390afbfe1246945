"""Predicting from image files with a trained checkpoint: right classes, formats, bad files."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnetkit
from resnetkit.cli import main
from resnetkit.data.datasets import load_digits_split
from resnetkit.training import train

N_IMAGES = 40


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet8 on the full digits training split, 6 epochs (~98% test accuracy)."""
    run = tmp_path_factory.mktemp("predict") / "run"
    train(model="resnet8", epochs=6, out=str(run), verbose=False)
    return run


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[str]]:
    """The first test-split digits as 8-bit grayscale PNGs in nested folders, and their labels."""
    root = tmp_path_factory.mktemp("pngs")
    split = load_digits_split("test")
    paths, labels = [], []
    for i in range(N_IMAGES):
        label = str(int(split.labels[i]))
        path = root / f"group{i % 2}" / f"{i:03d}-{label}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(split.images[i, 0].numpy(), "L").save(path)
        paths.append(path)
        labels.append(label)
    return paths, labels


def test_predict_gives_the_right_classes_and_matches_the_test_loader(
        trained: Path, digit_pngs: tuple[list[Path], list[str]]) -> None:
    from resnetkit.data import build_eval_loader
    from resnetkit.evaluation import run_config

    paths, labels = digit_pngs
    clf = resnetkit.load(trained, device="cpu")
    results = clf.predict(paths, topk=3, batch_size=16)
    assert [r["path"] for r in results] == [str(p) for p in paths]
    predicted = [r["top"][0]["class"] for r in results]
    assert np.mean([p == t for p, t in zip(predicted, labels)]) >= 0.9
    # the preprocessing from the checkpoint equals the test loader's, so the answers are the model's own
    loader = build_eval_loader(run_config(clf_config(trained)), "test", "cpu", spec=clf.spec)
    x = torch.cat([xb for xb, _ in loader])[:N_IMAGES]
    with torch.no_grad():
        expected = clf.model(x).softmax(1)
    assert predicted == [clf.classes[i] for i in expected.argmax(1).tolist()]
    assert results[0]["top"][0]["prob"] == pytest.approx(float(expected[0].max()), abs=1e-6)
    for r in results:
        probs = [t["prob"] for t in r["top"]]
        assert len(r["top"]) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert r["top"][0]["class"] == clf.classes[r["top"][0]["index"]] == r["label"]


def clf_config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def test_python_api_takes_paths_pil_images_and_tensors(trained: Path,
                                                       digit_pngs: tuple[list[Path], list[str]]) -> None:
    from resnetkit.data.transforms import eval_transform

    paths, _ = digit_pngs
    clf = resnetkit.load(trained, device="cpu")
    pil = Image.open(paths[0])
    normalized = eval_transform(clf.spec)(pil)
    raw = torch.from_numpy(np.array(pil)).unsqueeze(0)
    results = clf.predict([paths[0], pil, normalized, raw], topk=2)
    assert [r["path"] for r in results] == [str(paths[0]), "<image 1>", "<tensor 2>", "<tensor 3>"]
    assert len({json.dumps(r["top"]) for r in results}) == 1  # four spellings, one answer
    assert len(clf.predict(torch.stack([normalized, normalized]))) == 2  # an NCHW batch


def same(top: list[dict], other: list[dict]) -> bool:
    """The same classes in the same order, the same probabilities to float rounding."""
    return ([t["index"] for t in top] == [t["index"] for t in other]
            and [t["prob"] for t in top] == pytest.approx([t["prob"] for t in other], abs=1e-6))


def test_python_api_takes_numpy_arrays_as_keras_predict_does(trained: Path,
                                                             digit_pngs: tuple[list[Path], list[str]]) -> None:
    from resnetkit.errors import UserError

    paths, _ = digit_pngs
    clf = resnetkit.load(trained, device="cpu")
    gray = [np.array(Image.open(p)) for p in paths[:5]]  # (8, 8) uint8
    want = [r["top"] for r in clf.predict(paths[:5], topk=2)]
    a = gray[0]
    rgb = np.repeat(a[..., None], 3, axis=2)
    spellings = [a, a[..., None], a[None], a / 255.0, (a / 255.0).astype(np.float32), rgb,
                 np.moveaxis(rgb, -1, 0), torch.from_numpy(a)[None]]
    for x in spellings:  # HW, HWC, CHW; uint8 or float 0..1; gray or RGB: one answer
        (r,) = clf.predict(x, topk=2)
        assert same(r["top"], want[0]), (x.shape, x.dtype)
    batch = np.stack(gray)  # (5, 8, 8): five gray images, as MNIST's x_test (3 would read as one CHW image)
    for x in (batch, batch[..., None], np.moveaxis(batch[..., None], -1, 1), list(batch)):  # NHW, NHWC, NCHW
        got = clf.predict(x, topk=2)
        assert len(got) == 5 and all(same(r["top"], w) for r, w in zip(got, want))
    assert [r["path"] for r in clf.predict(list(batch[:2]))] == ["<array 0>", "<array 1>"]
    with pytest.raises(UserError, match="divide by 255"):
        clf.predict(a.astype(np.float32))
    with pytest.raises(UserError, match="cannot classify a dict"):
        clf.predict([{"x": 1}])


def test_cli_json_lines_walks_folders_and_reports_bad_files(
        trained: Path, digit_pngs: tuple[list[Path], list[str]], tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    paths, labels = digit_pngs
    folder = paths[0].parent.parent
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    rc = main(["predict", str(trained), str(folder), str(broken), str(tmp_path / "missing.png"),
               "--json", "--topk", "5", "--batch-size", "7"])
    assert rc == 1  # some inputs could not be read
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == N_IMAGES + 2
    good, bad = lines[:N_IMAGES], lines[N_IMAGES:]
    assert [r["path"] for r in good] == sorted(str(p) for p in paths)  # recursive, sorted
    assert all(len(r["top"]) == 5 and set(r["top"][0]) == {"class", "index", "prob"} for r in good)
    by_path = {str(p): t for p, t in zip(paths, labels)}
    assert np.mean([r["top"][0]["class"] == by_path[r["path"]] for r in good]) >= 0.9
    assert [r["path"] for r in bad] == [str(broken), str(tmp_path / "missing.png")]
    assert all(set(r) == {"path", "error"} and r["error"] for r in bad)


def test_cli_csv_glob_and_min_confidence(trained: Path, digit_pngs: tuple[list[Path], list[str]],
                                         capsys: pytest.CaptureFixture) -> None:
    paths, _ = digit_pngs
    pattern = str(paths[0].parent / "*.png")
    assert main(["predict", str(trained), pattern, "--csv", "--min-confidence", "0.999999"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["path", "class", "prob"]
    assert len(rows) - 1 == len(list(paths[0].parent.glob("*.png")))
    for path, cls, prob in rows[1:]:
        assert (cls == "unknown") == (float(prob) < 0.999999)
    assert main(["predict", str(trained), str(paths[1])]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"{paths[1]}  -> ") and "%" in text


def test_cli_usage_errors(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(trained), str(tmp_path / "empty")]) == 2
    assert "no image files found" in capsys.readouterr().err
    assert main(["predict", str(trained), "x.png", "--min-confidence", "2"]) == 2
    assert main(["predict", str(trained), "x.png", "--backend", "nope"]) == 2
    assert "unknown --backend" in capsys.readouterr().err


def test_annotate_draws_the_answer_on_each_image(digits_run: Path, digit_pngs: tuple[list[Path], list[str]],
                                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths, _ = digit_pngs
    out = tmp_path / "annotated"
    assert main(["predict", str(digits_run), *map(str, paths[:4]), "--annotate", str(out), "--json"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths[:4])
    for answer, path in zip(answers, paths):
        picture = np.asarray(Image.open(out / path.name).convert("RGB")).astype(int)
        assert picture.shape == (160, 160, 3)  # 8 px digits enlarged x20
        band = picture[:12, :60]
        assert (band.max(2) < 40).mean() > 0.3 and (band.min(2) > 200).any()  # white text on black
        # below the band the digit itself, enlarged with whole pixels
        original = np.asarray(Image.open(path).convert("RGB")).astype(int)
        assert (picture[-20::20, ::20] == original[-1:, :]).all()


def test_a_reader_that_goes_away_ends_predict_quietly(trained: Path, digit_pngs: tuple[list[Path], list[str]],
                                                      tmp_path: Path) -> None:
    """`resnetkit predict ... --json | head -1`: exit 141 with nothing on stderr, as Unix tools do.

    ~140 KB of answers, more than a pipe holds (64 KiB on Linux), so writes go on after head has
    read its line and exited, whatever the timing."""
    import subprocess
    import sys

    paths, _ = digit_pngs
    cmd = [sys.executable, "-m", "resnetkit", "predict", str(trained), *map(str, paths * 10), "--json"]
    producer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-1"], stdin=producer.stdout, stdout=subprocess.PIPE)
    assert producer.stdout is not None and producer.stderr is not None
    producer.stdout.close()  # head alone reads the pipe: when it exits, nobody does
    first, _ = head.communicate(timeout=300)
    err = producer.stderr.read().decode()
    assert producer.wait(timeout=300) == 141, err
    assert err == "" and json.loads(first)["path"] == str(paths[0])


def test_inputs_that_match_nothing_say_why(trained: Path, digit_pngs: tuple[list[Path], list[str]],
                                           tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    paths, _ = digit_pngs
    group = paths[0].parent
    (tmp_path / "notes.txt").write_text("not a picture")
    inputs = [str(group / "*" / "*.xyz"), str(tmp_path / "*.txt"), str(group.parent / "*"),
              str(paths[0] / "x.png"), str(tmp_path / "missing.png")]
    assert main(["predict", str(trained), *inputs, "--json"]) == 1
    errors = [json.loads(line)["error"] for line in capsys.readouterr().out.splitlines()]
    assert errors == ["the pattern matched no file", "the pattern matched no image file",
                      "the pattern matched only folders; name a folder itself to classify the images under it",
                      f"{paths[0]} is a file, not a folder", "file not found"]


def test_annotate_into_a_file_is_a_user_error(trained: Path, digit_pngs: tuple[list[Path], list[str]],
                                              capsys: pytest.CaptureFixture) -> None:
    paths, _ = digit_pngs
    for annotate, says in ((paths[1], f"a file named {paths[1]} exists"),
                           (paths[1] / "sub", f"{paths[1]} in {paths[1] / 'sub'} is a file")):
        assert main(["predict", str(trained), str(paths[0]), "--annotate", str(annotate)]) == 2
        out, err = capsys.readouterr()
        assert out == ""  # refused before any image is classified
        assert err.startswith("resnetkit: error: --annotate must be a folder") and says in err
