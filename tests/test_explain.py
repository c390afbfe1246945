"""Grad-CAM: it finds the evidence, agrees with pytorch-grad-cam, and targets any registered net."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import resnetkit
from resnetkit.cli import main
from resnetkit.errors import UserError
from resnetkit.explain import candidate_layers, grad_cam, side_by_side, to_rgb
from resnetkit.models import create_model

SIZE, SQUARE = 16, 4


def square_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Dim noise; class 1 carries a bright SQUARE x SQUARE patch at a random place, class 0 none.
    Only the square decides the class, so an honest heat map of class 1 peaks on it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, SIZE, SIZE, generator=g) * 0.3
    y = torch.arange(n) % 2
    corners = []
    for i in range(n):
        r, c = (int(v) for v in torch.randint(0, SIZE - SQUARE + 1, (2,), generator=g))
        corners.append((r, c))
        if y[i]:
            x[i, 0, r:r + SQUARE, c:c + SQUARE] = 1.0
    return (x - 0.5) / 0.5, y, corners


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; a second thread only fights the rest of the machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def square_net(one_thread: None) -> nn.Module:
    """resnet8 (CIFAR-style, 3 stages: 16, 8, 4 px) trained for 40 steps on the square task, then
    its BatchNorm statistics re-estimated (40 steps are too few for the running averages)."""
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=2, in_chans=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(40):
        x, y, _ = square_images(16, seed=step)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches below
    with torch.no_grad():
        for seed in range(500, 504):
            model(square_images(64, seed=seed)[0])
    return model.eval()


def test_gradcam_peaks_on_the_square_that_decides_the_class(square_net: nn.Module) -> None:
    x, y, corners = square_images(40, seed=1000)
    positive = y == 1
    with torch.no_grad():
        assert (square_net(x).argmax(1) == y).float().mean() >= 0.95  # it learned the task
    for method in ("gradcam", "gradcam++"):
        cams = grad_cam(square_net, x[positive], target=1, method=method)
        assert cams.heatmaps.shape == (int(positive.sum()), SIZE, SIZE)
        assert cams.layer == "layer2"  # 16 px: layer2's 8x8 map, the last one at least 7x7
        peaks, shares = [], []
        for heat, (r, c) in zip(cams.heatmaps, [k for k, p in zip(corners, positive) if p]):
            peak_r, peak_c = np.unravel_index(int(heat.argmax()), heat.shape)
            peaks.append(r - 1 <= peak_r < r + SQUARE + 1 and c - 1 <= peak_c < c + SQUARE + 1)
            shares.append(float(heat[r:r + SQUARE, c:c + SQUARE].sum() / heat.sum()))
        assert np.mean(peaks) >= 0.85, (method, peaks)
        # the square (1/16 of the image) holds over twice its share of the map
        assert np.mean(shares) > 2 * SQUARE**2 / SIZE**2, (method, shares)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_maps_agree_with_pytorch_grad_cam(square_net: nn.Module, method: str) -> None:
    cam_lib = pytest.importorskip("pytorch_grad_cam", reason="the grad-cam package is not installed")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x, _, _ = square_images(6, seed=7)
    targets = [0, 1, 1, 0, 1, 1]
    cls = cam_lib.GradCAM if method == "gradcam" else cam_lib.GradCAMPlusPlus
    with cls(model=square_net, target_layers=[square_net.layer3]) as ref:
        expected = ref(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    ours = grad_cam(square_net, x, target=targets, method=method, layer="layer3").heatmaps.numpy()
    assert np.abs(ours - expected).max() < 2e-3


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "plain18", "resnet8", "plain8",
                                  "simple_resnet", "simple_plain"])
def test_any_registered_net_gets_a_map_from_its_last_wide_stage(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_chans=3).eval()
    x = torch.randn(2, 3, 32, 32)
    cams = grad_cam(model, x)
    assert cams.heatmaps.shape == (2, 32, 32)
    assert torch.isfinite(cams.heatmaps).all() and cams.heatmaps.min() >= 0 and cams.heatmaps.max() <= 1
    assert cams.targets.tolist() == cams.logits.argmax(1).tolist()
    names = [n for n, _ in candidate_layers(model)]
    # the last stage whose map is at least 7x7: ImageNet nets have 8x8 after layer1 at 32 px
    # (stride 4 stem), CIFAR nets 8x8 in their last stage
    assert cams.layer == (names[0] if name in ("resnet18", "resnet50", "plain18") else names[-1])
    assert model.training is False


def test_bad_method_and_class_are_user_errors(square_net: nn.Module) -> None:
    x, _, _ = square_images(2, seed=3)
    with pytest.raises(UserError, match="method"):
        grad_cam(square_net, x, method="lime")
    with pytest.raises(UserError, match="out of range"):
        grad_cam(square_net, x, target=5)


def test_side_by_side_picture_enlarges_small_inputs() -> None:
    x = torch.zeros(1, 8, 8)
    rgb = to_rgb(x, (0.5,), (0.5,))
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8 and int(rgb[0, 0, 0]) == 128
    heat = np.zeros((8, 8), np.float32)
    heat[2, 3] = 1
    pic = side_by_side(rgb, heat, caption="7 (93.0%)")
    assert pic.size == (2 * 160 + 4, 160 + 22)
    right = np.asarray(pic)[:160, 164:]
    # the overlay is reddest near the heat map's peak (row 2, column 3 of 8, so 20 px cells)
    red = right[..., 0].astype(int) - right[..., 2].astype(int)
    peak = np.unravel_index(int(red.argmax()), red.shape)
    assert 30 <= peak[0] < 70 and 50 <= peak[1] < 90


# ------------------------------------------------------------------ the API and the command
@pytest.fixture
def digit_files(tmp_path: Path) -> list[Path]:
    from resnetkit.data.datasets import load_digits_split

    split = load_digits_split("test")
    paths = []
    for i in range(3):
        path = tmp_path / ("a" if i < 2 else "b") / f"{int(split.labels[i])}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(split.images[i, 0].numpy(), "L").save(path)
        paths.append(path)
    (tmp_path / "b" / "broken.png").write_text("not a picture")
    return paths


def test_classifier_explain_gives_maps_of_the_prediction_or_of_a_chosen_class(
        digits_run: Path, digit_files: list[Path]) -> None:
    clf = resnetkit.load(digits_run, device="cpu")
    results = clf.explain(digit_files + [digit_files[0].parent.parent / "b" / "broken.png"])
    predicted = clf.predict(digit_files)
    assert "error" in results[-1]
    for r, p in zip(results, predicted):
        assert (r["class"], r["index"]) == (p["top"][0]["class"], p["top"][0]["index"]) and r["target"] == r["class"]
        assert r["prob"] == pytest.approx(p["top"][0]["prob"], abs=1e-5)
        assert r["heatmap"].shape == (8, 8) and r["heatmap"].max() == pytest.approx(1.0, abs=1e-4)
        assert r["image"].size == (2 * 160 + 4, 160 + 22)
    other = clf.explain(digit_files[:1], target="3", method="gradcam++")[0]
    assert other["target"] == "3" and other["class"] == results[0]["class"]
    with pytest.raises(UserError, match="unknown class 'cat'"):
        clf.explain(digit_files[:1], target="cat")


def test_explain_command_writes_one_picture_per_image(digits_run: Path, digit_files: list[Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "maps"
    folder = str(digit_files[0].parent.parent)
    assert main(["explain", str(digits_run), folder, "--out", str(out), "--method", "gradcam++"]) == 1
    text = capsys.readouterr().out
    assert "broken.png  error:" in text and text.count(" -> ") == 3
    names = sorted(p.name for p in out.iterdir())
    stems = [p.stem for p in digit_files]
    assert len(names) == 3 and all(Image.open(out / n).size == (324, 182) for n in names)
    assert f"{stems[0]}.png" in names  # a/X.png and b/X.png would be X.png and X-2.png
    assert main(["explain", str(digits_run), str(digit_files[0]), "--out", str(out), "--class", "cat"]) == 2
    assert "unknown class 'cat'" in capsys.readouterr().err


def test_explain_out_that_is_a_file_is_a_user_error(digits_run: Path, digit_files: list[Path],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    picture = digit_files[0]
    assert main(["explain", str(digits_run), str(picture), "--out", str(picture)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err == f"resnetkit: error: --out must be a folder, but a file named {picture} exists; choose a folder\n"


def test_a_named_layer_is_explained_and_an_unknown_one_is_a_user_error(square_net: nn.Module) -> None:
    x, _, _ = square_images(2, seed=3)
    cams = grad_cam(square_net, x, layer="layer3.0")
    assert cams.layer == "layer3.0" and cams.heatmaps.shape == (2, SIZE, SIZE)  # 4x4, upsampled
    with pytest.raises(UserError, match="no such module.*layer1, layer2, layer3"):
        grad_cam(square_net, x, layer="layer9")


def test_top_loss_maps_follow_the_object_from_image_to_image(square_net: nn.Module) -> None:
    """The report's gallery: a square in the top-left corner and one in the bottom-right give
    maps that peak on opposite sides, not one blob for every image."""
    from types import SimpleNamespace

    from resnetkit.interpret import collect
    from resnetkit.report_html import _gallery

    x = torch.full((2, 1, SIZE, SIZE), 0.15)
    x[0, 0, :SQUARE, :SQUARE] = 1.0
    x[1, 0, -SQUARE:, -SQUARE:] = 1.0
    x = (x - 0.5) / 0.5
    y = torch.tensor([0, 0])  # labelled "no square": both are top losses, explained as predicted
    with torch.no_grad():
        assert square_net(x).argmax(1).tolist() == [1, 1]
    interp = collect(square_net, [(x, y)], k=2)
    loaded = SimpleNamespace(model=square_net, classes=["none", "square"], spec=SimpleNamespace(mean=(0.5,), std=(0.5,)))
    cards = sorted(_gallery(loaded, interp, "gradcam"), key=lambda c: c["index"])
    half = SIZE / 2
    peaks = [np.unravel_index(int(c["heatmap"].argmax()), c["heatmap"].shape) for c in cards]
    assert peaks[0][0] < half and peaks[0][1] < half, peaks  # top-left
    assert peaks[1][0] >= half and peaks[1][1] >= half, peaks  # bottom-right
    assert cards[0]["layer"] == "layer2" and cards[0]["png"].startswith(b"\x89PNG")
