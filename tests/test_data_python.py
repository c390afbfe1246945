"""resnetkit.train(data=...): arrays and tensors in memory, and a torch Dataset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

import resnetkit
from resnetkit.config import RunConfig
from resnetkit.data import as_source, build_loaders, check_dataset
from resnetkit.errors import UserError

FAST = dict(model="resnet8", batch_size=16, lr=0.05, verbose=False)


def bright_dark(n: int, size: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    lo = np.where(y == 1, 165, 0)[:, None, None, None]
    return (lo + rng.integers(0, 91, (n, size, size, 3))).astype(np.uint8), y


class Pixels(Dataset):
    """(CHW float image, int label) from NHWC uint8 arrays; ``normalize``: ToTensor + Normalize."""

    def __init__(self, x: np.ndarray, y: np.ndarray, normalize: tuple | None = None) -> None:
        self.x = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255  # what ToTensor gives
        self.y, self.normalize = y, normalize

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.x[i]
        if self.normalize:
            mean, std = (torch.tensor(v).view(-1, 1, 1) for v in self.normalize)
            x = (x - mean) / std
        return x, int(self.y[i])


def test_train_on_arrays_in_memory_then_predict(tmp_path: Path) -> None:
    x, y = bright_dark(48)
    xt, yt = bright_dark(16, seed=4)
    result = resnetkit.train(data=(x, y), test_data=(torch.from_numpy(xt).permute(0, 3, 1, 2), torch.from_numpy(yt)),
                             classes=["dark", "bright"], epochs=3, out=str(tmp_path / "run"), **FAST)
    assert result.report["top1"] >= 0.9 and result.report["data"]["in_memory"]
    assert result.report["data"]["test_size"] == 16 and result.config.dataset == "arrays"
    assert result.config.data_dir is None  # nothing on disk to find again
    clf = resnetkit.load(result.run_dir, device="cpu")
    assert clf.classes == ["dark", "bright"]
    bright = torch.full((3, 12, 12), 220, dtype=torch.uint8)
    assert clf.predict(bright)[0]["label"] == "bright"


def test_arrays_without_held_out_data_are_split_and_mean_std_can_be_given() -> None:
    x, y = bright_dark(40)
    src = as_source((x, y), mean=[0.5] * 3, std=[0.25] * 3, val_fraction=0.25, seed=1)
    loaders = build_loaders(RunConfig(dataset="arrays", batch_size=8), "cpu", source=src)
    # the held-out quarter is the test split; val is held out of the rest (a tenth)
    assert (loaders.train.dataset_size, loaders.val.dataset_size, loaders.test.dataset_size) == (27, 3, 10)
    assert loaders.spec.mean == (0.5,) * 3 and loaders.spec.std == (0.25,) * 3
    report = check_dataset("arrays", source=src)
    assert report["splits"]["test"]["classes"] == {"0": 5, "1": 5}


def test_a_torch_dataset_of_pixels_gets_computed_statistics(tmp_path: Path) -> None:
    x, y = bright_dark(48)
    ds = Pixels(x, y)
    held = Pixels(*bright_dark(16, seed=4))
    src = as_source(ds, held)
    assert src.in_chans == 3 and src.img_size == 12 and src.classes == ("0", "1")
    assert src.mean == pytest.approx(tuple((x / 255).reshape(-1, 3).mean(0)), abs=1e-4)
    loaders = build_loaders(RunConfig(dataset="arrays", batch_size=8), "cpu", source=src)
    xb, yb = next(iter(loaders.test))
    expected = (held.x - torch.tensor(src.mean).view(-1, 1, 1)) / torch.tensor(src.std).view(-1, 1, 1)
    assert torch.allclose(xb, expected, atol=1e-4) and yb.tolist() == held.y.tolist()
    result = resnetkit.train(data=ds, val_data=held, epochs=3,
                             out=str(tmp_path / "run"), **FAST)
    assert result.report["top1"] >= 0.9 and not result.report["data"]["in_memory"]
    assert check_dataset("arrays", source=src)["splits"]["train"]["images"] == 48
    assert loaders.train.targets().tolist() == y.tolist()  # what --sampler balanced reads


def test_a_normalizing_dataset_records_its_mean_and_std(tmp_path: Path) -> None:
    stats = ((0.4, 0.4, 0.4), (0.3, 0.3, 0.3))
    x, y = bright_dark(48)
    ds = Pixels(x, y, normalize=stats)
    with pytest.raises(UserError, match="look normalized already; pass mean= and std="):
        as_source(ds)
    result = resnetkit.train(data=ds, mean=stats[0], std=stats[1], epochs=1, out=str(tmp_path / "run"), **FAST)
    clf = resnetkit.load(result.run_dir, device="cpu")
    assert clf.spec.mean == stats[0] and clf.spec.std == stats[1]
    raw = torch.from_numpy(x[:4]).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        direct = clf.model(torch.stack([ds[i][0] for i in range(4)])).softmax(1)
    probs = [r["top"][0]["prob"] for r in clf.predict(raw)]
    assert probs == pytest.approx(direct.max(1).values.tolist(), abs=1e-5)  # predict repeats the Dataset


def test_data_keywords_without_data_and_conflicts_are_errors() -> None:
    with pytest.raises(UserError, match="go.*with data="):
        resnetkit.train(classes=["a", "b"], epochs=1, verbose=False)
    with pytest.raises(UserError, match="replaces dataset='mnist'"):
        resnetkit.train(data=bright_dark(8), dataset="mnist", verbose=False)
    with pytest.raises(UserError, match=r"\(images, labels\) pair"):
        resnetkit.train(data=(1, 2, 3), verbose=False)
