"""Fine-tuning: freezing, BatchNorm, param groups, the schedule in the trainer, the CLI.

Weights are torchvision state_dicts saved to files (see test_pretrained); training runs on a tiny
image folder and a tiny MNIST (1 channel) made in tmp_path, at 32 px. The tests
marked slow fine-tune on the real Sign Language Digits photos under $RESNETKIT_DATA.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from conftest import R18_FILE, distinctive_state_dict, write_class_folders

import resnetkit
from resnetkit import pretrained
from resnetkit.cli import main
from resnetkit.config import RunConfig
from resnetkit.data.transforms import eval_transform
from resnetkit.errors import UserError
from resnetkit.models import create_model
from resnetkit.training import finetune
from resnetkit.checkpoint import load_checkpoint
from resnetkit.training.optim import build_optimizer, param_groups
from resnetkit.training.recipes import resolve_config
from resnetkit.steps import train_step

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def backbone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every backbone parameter and BatchNorm buffer, copied."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> list[str]:
    now = model.state_dict()
    return [k for k, v in before.items() if not torch.equal(v, now[k])]


# ------------------------------------------------------------------ the plan
def test_freeze_plan_parsing() -> None:
    plan = finetune.freeze_plan(RunConfig(freeze_epochs=2))
    assert (plan.what, plan.epochs) == ("backbone", 2)  # --freeze-epochs alone: the head trains first
    assert [plan.frozen_at(e) for e in (1, 2, 3)] == ["backbone", "backbone", "none"]
    probe = finetune.freeze_plan(RunConfig(freeze="stages:2"))
    assert probe.epochs is None and probe.frozen_at(50) == "stages:2"  # no K: frozen for the whole run
    for bad in ({"freeze": "layers"}, {"freeze": "stages:x"}, {"freeze_epochs": -1},
                {"backbone_lr_mult": -0.5}):
        with pytest.raises(UserError):
            finetune.freeze_plan(RunConfig(**bad))
    assert not finetune.is_finetune(RunConfig()) and finetune.is_finetune(RunConfig(pretrained="x.pth"))


def test_what_each_freeze_covers() -> None:
    m = create_model("resnet18", num_classes=3)
    assert "fc" not in finetune.frozen_prefixes(m, "backbone")
    stem = {"conv1", "bn1", "relu", "maxpool"}
    assert set(finetune.frozen_prefixes(m, "stages:2")) == stem | {"layer1", "layer2"}
    assert set(finetune.frozen_prefixes(m, "stages:0")) == stem
    cifar = create_model("resnet20")
    assert set(finetune.frozen_prefixes(cifar, "stages:1")) == {"conv1", "bn1", "relu", "layer1"}
    with pytest.raises(UserError, match="only 3 stages"):
        finetune.frozen_prefixes(cifar, "stages:4")
    finetune.apply_freeze(m, "stages:1")
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert "layer1.0.conv1.weight" in frozen and "bn1.weight" in frozen
    assert "layer2.0.conv1.weight" not in frozen and "fc.weight" not in frozen


def test_param_groups_head_and_backbone() -> None:
    m = create_model("resnet18", num_classes=3)
    cfg = RunConfig(pretrained="x.pth", lr=0.01, weight_decay=1e-4, backbone_lr_mult=0.1)
    groups = param_groups(m, cfg)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"head", "head.no_decay", "backbone", "backbone.no_decay"}
    assert by_name["head"]["lr"] == 0.01 and by_name["backbone"]["lr"] == pytest.approx(0.001)
    assert by_name["backbone.no_decay"]["weight_decay"] == 0.0 and by_name["backbone"]["weight_decay"] == 1e-4
    assert by_name["head"]["params"] == [m.fc.weight] and by_name["head.no_decay"]["params"] == [m.fc.bias]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in m.parameters())  # each parameter once, frozen ones too
    assert "name" not in param_groups(m, RunConfig(lr=0.01, weight_decay=0.0))[0]  # plain run


# ------------------------------------------------------------------ frozen means frozen
def test_frozen_batchnorm_stays_in_eval_mode() -> None:
    m = create_model("resnet18", num_classes=3)
    finetune.apply_freeze(m, "stages:1")
    m.train()
    assert not m.bn1.training and not m.layer1[0].bn1.training
    assert m.layer2[0].bn1.training and m.training
    m.eval().train()
    assert not m.layer1[1].bn2.training
    finetune.apply_freeze(m, "none")
    m.train()
    assert m.bn1.training and m.layer1[0].bn1.training
    assert not any("train" in vars(module) for module in m.modules())  # the class's train(), not a patch


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_frozen_parameters_and_statistics_do_not_move(optimizer: str) -> None:
    """Weight decay and momentum included; then, unfrozen, the backbone moves at lr x mult."""
    torch.manual_seed(0)
    m = create_model("resnet18", num_classes=3)
    m.load_state_dict({**distinctive_state_dict("resnet18"), "fc.weight": m.fc.weight, "fc.bias": m.fc.bias})
    cfg = RunConfig(pretrained="x.pth", freeze_epochs=1, lr=0.05, weight_decay=0.05,
                    optimizer=optimizer, backbone_lr_mult=0.1)
    finetune.set_epoch(m, cfg, 1)
    opt = build_optimizer(param_groups(m, cfg), cfg)
    before, head = backbone_state(m), m.fc.weight.detach().clone()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])

    def steps(n: int) -> None:
        m.train()
        for _ in range(n):
            train_step(m, x, y, loss_fn=torch.nn.CrossEntropyLoss(), optimizer=opt,
                       autocast=torch.autocast("cpu", enabled=False))

    steps(3)
    assert changed(before, m) == [] and not torch.equal(m.fc.weight, head)
    lines = finetune.set_epoch(m, cfg, 2)
    assert lines and "unfreezing" in lines[0]
    steps(1)
    moved = changed(before, m)
    assert "layer1.0.conv1.weight" in moved and "bn1.running_mean" in moved
    assert "layer4.1.bn2.num_batches_tracked" in moved
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["backbone"] == pytest.approx(0.1 * lrs["head"])


def test_resnet50_file_fine_tunes_a_step(weights_dir: Path) -> None:
    m = create_model("resnet50", num_classes=3)
    pretrained.load_pretrained(m, str(weights_dir / "r50.pth"), arch="resnet50")
    cfg = RunConfig(pretrained="x", freeze="backbone", lr=0.01, weight_decay=0.01, optimizer="sgd")
    finetune.set_epoch(m, cfg, 1)
    opt = build_optimizer(param_groups(m, cfg), cfg)
    before = backbone_state(m)
    m.train()
    train_step(m, torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 1]), loss_fn=torch.nn.CrossEntropyLoss(),
               optimizer=opt, autocast=torch.autocast("cpu", enabled=False))
    assert changed(before, m) == []
    loaded = distinctive_state_dict("resnet50")["layer3.5.bn3.running_var"]
    torch.testing.assert_close(m.layer3[5].bn3.running_var, loaded)


# ------------------------------------------------------------------ through the trainer
@pytest.fixture
def photos(tmp_path: Path) -> Path:
    return write_class_folders(tmp_path / "photos", {"cat": 7, "dog": 7, "fox": 7}, sizes=(36, 44))


def test_train_freezes_then_unfreezes(tmp_path: Path, photos: Path, weights_dir: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Epoch 1 trains the head alone (backbone and BN statistics exactly as loaded); epoch 2, after
    an interruption and --resume, trains all, the backbone at lr x 0.1; the run records what was
    loaded."""
    seen: dict[int, dict[str, Any]] = {}

    def snapshot(trainer: Any, record: dict[str, Any]) -> None:
        opt = trainer.optimizer
        groups = {g["name"]: g["initial_lr"] for g in opt.param_groups}
        updated = {g["name"]: any(p in opt.state for p in g["params"]) for g in opt.param_groups}
        seen[record["epoch"]] = {"backbone": backbone_state(trainer.model), "groups": groups,
                                 "updated": updated}
        if record["epoch"] == 1:
            raise KeyboardInterrupt  # the user stops the run; the freeze must survive --resume

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        resnetkit.train(dataset="imagefolder", data_dir=str(photos), recipe="finetune",
                        pretrained=str(weights_dir / "r18.pth"), img_size=32, batch_size=4, epochs=2,
                        freeze_epochs=1, out=str(run), device="cpu", callbacks=[snapshot], verbose=False)
    result = resnetkit.train(resume=str(run), callbacks=[snapshot])
    assert "epoch 2: unfreezing the backbone" in capsys.readouterr().out
    loaded = {k: v for k, v in distinctive_state_dict("resnet18").items() if not k.startswith("fc.")}
    for key, value in loaded.items():
        assert torch.equal(seen[1]["backbone"][key], value), key
    assert seen[1]["updated"] == {"head": True, "head.no_decay": True, "backbone": False,
                                  "backbone.no_decay": False}
    assert all(seen[2]["updated"].values())
    assert not torch.equal(seen[2]["backbone"]["layer2.0.conv1.weight"], loaded["layer2.0.conv1.weight"])
    assert not torch.equal(seen[2]["backbone"]["bn1.running_var"], loaded["bn1.running_var"])
    groups = seen[2]["groups"]
    assert groups["head"] == pytest.approx(1e-3) and groups["backbone"] == pytest.approx(1e-4)
    notes = result.report["transfer"]
    assert any("new head" in n and "fc.weight" in n for n in notes)
    assert any(n.startswith("epochs 1-1: the backbone frozen") for n in notes)
    spec = load_checkpoint(result.run_dir).spec  # a file without preprocessing: ImageNet statistics
    assert spec.mean == (0.485, 0.456, 0.406) and (spec.img_size, spec.resize_size) == (32, 37)


def test_gray_data_from_imagenet_weights(tmp_path: Path, hub: Path,
                                         tiny_mnist_root: Path) -> None:
    """1-channel MNIST (a tiny IDX copy) from ImageNet weights (from the hub cache), backbone
    frozen for the whole run: conv1 stays the sum of the RGB filters, and the checkpoint predicts
    with the weights' preprocessing (resize, center crop, ImageNet statistics averaged over RGB)."""
    (hub / "checkpoints").mkdir(parents=True)
    rgb = distinctive_state_dict("resnet18")
    torch.save(rgb, hub / "checkpoints" / R18_FILE)
    result = resnetkit.train(dataset="mnist", data_dir=str(tiny_mnist_root), model="resnet18",
                             pretrained="imagenet", freeze="backbone", img_size=32, batch_size=8,
                             epochs=1, recipe="finetune", out=str(tmp_path / "run"), device="cpu",
                             verbose=False)
    clf = resnetkit.load(result.run_dir)
    summed = rgb["conv1.weight"].sum(1, keepdim=True)
    torch.testing.assert_close(clf.model.conv1.weight.detach().cpu(), summed)
    torch.testing.assert_close(clf.model.layer3[0].bn2.running_mean.cpu(), rgb["layer3.0.bn2.running_mean"])
    spec = clf.spec
    assert (spec.in_chans, spec.img_size, spec.resize_size, spec.interpolation) == (1, 32, 37, "bilinear")
    assert spec.mean == pytest.approx((0.449,)) and spec.std == pytest.approx((0.226,))
    white = Image.new("L", (28, 28), 255)
    x = eval_transform(spec)(white)  # what predict does to an image file
    assert x.shape == (1, 32, 32)
    torch.testing.assert_close(x, torch.full_like(x, (1 - 0.449) / 0.226), rtol=0, atol=1e-4)
    assert len(clf.predict([white], topk=3)[0]["top"]) == 3


def test_finetune_cli(tmp_path: Path, photos: Path, weights_dir: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    rc = main(["finetune", str(photos), "--pretrained", str(weights_dir / "r18.pth"), "--epochs", "1",
               "--freeze-epochs", "0", "--img-size", "32", "--batch-size", "4", "--device", "cpu",
               "--out", str(run)])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("fine-tune plan: resnet18 from ")
    assert "3 classes" in out and "all layers train from epoch 1" in out
    config = json.loads((run / "config.json").read_text())
    assert (config["recipe"], config["optimizer"], config["dataset"]) == ("finetune", "adamw", "imagefolder")
    assert any("new head" in n for n in json.loads((run / "report.json").read_text())["transfer"])
    assert main(["finetune", str(photos), "--pretrained", str(weights_dir / "r50.pth"), "--out",
                 str(tmp_path / "run50")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not fit resnet18" in err and "resnet50" in err


def test_train_recipe_finetune_values() -> None:
    cfg = resolve_config(RunConfig(recipe="finetune", dataset="imagefolder"), {"recipe", "dataset"})
    got = (cfg.model, cfg.pretrained, cfg.freeze_epochs, cfg.optimizer)
    assert got == ("resnet18", "imagenet", 2, "adamw")
    mine = resolve_config(RunConfig(recipe="finetune", pretrained="w.pth", freeze_epochs=0),
                          {"recipe", "pretrained", "freeze_epochs"})
    assert (mine.pretrained, mine.freeze_epochs) == ("w.pth", 0)


# ------------------------------------------------------------------ real photos
needs_data = pytest.mark.skipif(not os.environ.get("RESNETKIT_DATA"), reason="RESNETKIT_DATA is not set")


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_sign_language_digits(tmp_path: Path, weights_dir: Path, arch: str) -> None:
    signs = Path(os.environ["RESNETKIT_DATA"]) / "sign-language-digits"
    if not signs.is_dir():
        pytest.skip(f"no {signs}")
    short = arch[len("resnet"):]
    result = resnetkit.train(dataset="imagefolder", data_dir=str(signs), model=arch, recipe="finetune",
                             pretrained=str(weights_dir / f"r{short}.pth"), subset=40, img_size=64,
                             val_fraction=0.1, batch_size=16, epochs=2, freeze_epochs=1,
                             out=str(tmp_path / "run"), device="cpu", verbose=False)
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert all(0 <= r["val_acc"] <= 1 for r in result.history)
    assert result.report["transfer"][0].startswith("pretrained: ")
    assert load_checkpoint(result.run_dir).spec.num_classes == 10


def test_a_missing_data_folder_is_named_before_missing_weights(hub: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    """Offline and without the folder: the folder is the first thing to fix, so it is named first."""
    assert main(["finetune", str(tmp_path / "nothere"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "nothere not found" in err and "download" not in err.lower() and len(err.strip().splitlines()) == 1


def test_config_json_records_the_freeze_that_was_done(tmp_path: Path) -> None:
    from resnetkit.training import train as run_train

    # --freeze-epochs alone freezes the backbone: config.json must not say "freeze none"
    run = run_train(model="resnet8", subset=100, epochs=2, freeze_epochs=1, out=str(tmp_path / "run"), verbose=False)
    saved = json.loads((run.run_dir / "config.json").read_text())
    assert saved["freeze"] == "backbone" and saved["freeze_epochs"] == 1
    assert run.report["freeze_timeline"][0]["what"] == "backbone"
    assert [s["what"] for s in run.report["freeze_timeline"]] == ["backbone", "none"]
