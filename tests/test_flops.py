"""resnetkit.flops and ``resnetkit train --dry-run``: counts checked against hand counts."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
import torch
from torch import nn

from resnetkit.cli import main
from resnetkit.errors import UserError
from resnetkit.flops import forward_flops, train_flops
from resnetkit.models import create_model


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_net() -> nn.Module:
    # conv 1->2 channels, 3x3: 2 FLOPs x 2 out x 9 taps per output pixel; pooled; linear 2->3
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))


def hand_forward(h: int, w: int) -> int:
    return 2 * 2 * 9 * h * w + 2 * 2 * 3  # conv at every output pixel + the linear layer


def test_forward_flops_matches_a_hand_count() -> None:
    net = tiny_net()
    assert forward_flops(net, (1, 4, 4)) == hand_forward(4, 4) == 588
    assert forward_flops(net, (5, 1, 4, 4)) == 5 * 588  # a batch
    assert forward_flops(net, (1, 2, 2)) == hand_forward(2, 2)


def test_train_flops_sums_epochs_at_each_input_size() -> None:
    net = tiny_net()
    plan = [(10, (1, 4, 4)), (10, (1, 4, 4)), (5, (1, 2, 2))]  # progressive: a smaller last epoch
    assert train_flops(net, plan) == 3 * (20 * hand_forward(4, 4) + 5 * hand_forward(2, 2))
    assert train_flops(net, []) == 0


def test_counting_leaves_the_model_alone() -> None:
    net = tiny_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    forward_flops(net, (1, 4, 4))
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_bad_shapes_are_user_errors() -> None:
    for shape in [(4, 4), (0, 4, 4), (1, 1, 2, 3, 4)]:
        with pytest.raises(UserError):
            forward_flops(tiny_net(), shape)


def test_dry_run_trains_nothing_and_reports_train_flops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import resnetkit.training.trainer as trainer

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(trainer.Trainer, "fit", lambda self: pytest.fail("--dry-run trained"))
    assert main(["train", "--dataset", "digits", "--epochs", "3", "--subset", "100", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert not (tmp_path / "runs").exists()
    images = plan["images_per_epoch"]  # the subset less its validation share
    assert plan["epochs"] == 3 and plan["config"]["epochs"] == 3 and 0 < images <= 100
    assert plan["dataset"]["train_size"] == images and plan["dataset"]["test_size"] > 0
    net = create_model(plan["config"]["model"], num_classes=10, in_chans=1)
    per_image = forward_flops(net, (1, 8, 8))
    assert plan["model"]["forward_flops_per_image"] == per_image
    assert plan["train_flops"] == 3 * per_image * images * 3
    assert main(["train", "--dataset", "digits", "--epochs", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "train_flops" in out and "nothing trained" in out and "2 epochs" in out


def test_json_without_dry_run_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--json"]) == 2
    assert "--json goes with --dry-run" in capsys.readouterr().err


def test_dry_run_counts_progressive_epochs_at_their_smaller_size(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 tmp_path: Path) -> None:
    from resnetkit.data.progressive import epoch_img_sizes

    monkeypatch.chdir(tmp_path)
    args = ["train", "--dataset", "digits", "--epochs", "4", "--subset", "100", "--dry-run", "--json"]
    assert main(args) == 0
    full = json.loads(capsys.readouterr().out)
    assert main([*args, "--min-img-size", "4", "--progressive-until", "0.75"]) == 0
    plan = json.loads(capsys.readouterr().out)
    sizes = epoch_img_sizes(4, 8, 4, 0.75)
    assert sizes[0] == 4 and sizes[-1] == 8  # the rule the trainer follows
    assert [p["input_shape"] for p in plan["plan"]] == [[1, s, s] for s in sizes]
    net = create_model(plan["config"]["model"], num_classes=10, in_chans=1)
    images = plan["images_per_epoch"]
    assert plan["train_flops"] == sum(3 * forward_flops(net, (1, s, s)) * images for s in sizes)
    assert plan["train_flops"] < full["train_flops"]


def test_dry_run_counts_only_the_steps_of_a_last_epoch_max_steps_ends(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["train", "--dataset", "digits", "--epochs", "5", "--subset", "100", "--val-size", "0",
            "--batch-size", "16", "--dry-run", "--json"]
    assert main([*args, "--max-steps", "16"]) == 0  # 100 images, batch 16: 7 steps per epoch
    plan = json.loads(capsys.readouterr().out)
    assert plan["steps_per_epoch"] == 7 and plan["steps"] == 16
    assert plan["epochs"] == 3 and plan["config"]["max_steps"] == 16  # 7 + 7 + 2 steps
    assert [p["images"] for p in plan["plan"]] == [100, 100, 32]
    net = create_model(plan["config"]["model"], num_classes=10, in_chans=1)
    assert plan["train_flops"] == 3 * forward_flops(net, (1, 8, 8)) * 232
    assert main([*args[:-1], "--max-steps", "16"]) == 0
    assert "2.29 epochs (16 steps)" in capsys.readouterr().out
