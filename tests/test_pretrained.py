"""Loading pretrained weights: sources, adaptation, preprocessing and the errors a user can cause.

Nothing is downloaded: torchvision's resnet18/resnet50 state_dicts (perturbed so that every
tensor is distinctive) are saved to files, and ``imagenet`` is tested with torch's hub folder
moved to tmp_path, holding such a file or none (the download then raises).
"""
from __future__ import annotations

import os
import pickle
import random
import urllib.error
from pathlib import Path

import pytest
from conftest import R18_FILE, distinctive_state_dict, write_class_folders
import torch
import torchvision
from safetensors.torch import save_file

from resnetkit import pretrained
from resnetkit.cli import main
from resnetkit.config import RunConfig
from resnetkit.specs import DatasetSpec
from resnetkit.errors import UserError
from resnetkit.models import create_model
from resnetkit import checkpoint as ckpt
from resnetkit.training import finetune

def r18() -> dict[str, torch.Tensor]:
    return distinctive_state_dict("resnet18")


def one_line_error(excinfo: pytest.ExceptionInfo[UserError]) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


# ------------------------------------------------------------------ loading and adapting
def test_torchvision_file_loads_exactly(weights_dir: Path) -> None:
    model = create_model("resnet18")
    notes = pretrained.load_pretrained(model, str(weights_dir / "r18.pth"), arch="resnet18").notes
    ref = torchvision.models.resnet18()
    ref.load_state_dict(torch.load(weights_dir / "r18.pth", weights_only=True))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), ref.eval()(x))
    assert notes[0].startswith("pretrained: ") and not any("head" in n for n in notes)


def test_new_head_keeps_the_backbone_and_lists_the_dropped_keys(weights_dir: Path) -> None:
    model = create_model("resnet18", num_classes=5)
    fresh_fc = model.fc.weight.detach().clone()
    notes = pretrained.load_pretrained(model, str(weights_dir / "r18.pth"), arch="resnet18").notes
    sd = r18()
    for key, value in model.state_dict().items():
        if not key.startswith("fc."):
            torch.testing.assert_close(value, sd[key].to(value.dtype), msg=key)
    assert torch.equal(model.fc.weight, fresh_fc) and model.fc.out_features == 5
    head = [n for n in notes if n.startswith("new head")]
    assert head and "fc.weight" in head[0] and "fc.bias" in head[0] and "1000 classes" in head[0]


def test_one_channel_sums_the_rgb_filters(weights_dir: Path) -> None:
    model = create_model("resnet18", num_classes=3, in_chans=1)
    notes = pretrained.load_pretrained(model, str(weights_dir / "r18.pth"), arch="resnet18").notes
    rgb = r18()["conv1.weight"]
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    torch.testing.assert_close(model.conv1.weight.detach(), rgb.sum(dim=1, keepdim=True))
    assert any("summed" in n for n in notes)


def test_more_channels_repeat_and_rescale_as_timm(weights_dir: Path) -> None:
    model = create_model("resnet18", num_classes=3, in_chans=5)
    pretrained.load_pretrained(model, str(weights_dir / "r18.pth"), arch="resnet18")
    rgb = r18()["conv1.weight"]
    w = model.conv1.weight.detach()
    expected = torch.cat([rgb, rgb[:, :2]], dim=1) * (3 / 5)
    torch.testing.assert_close(w, expected)


def test_small_input_stem_is_fresh_and_reported(weights_dir: Path) -> None:
    torch.manual_seed(3)
    model = create_model("resnet18", num_classes=3, small_input=True)
    conv1 = model.conv1.weight.detach().clone()
    loaded = pretrained.load_pretrained(model, str(weights_dir / "r18.pth"), arch="resnet18")
    notes = loaded.notes
    assert torch.equal(model.conv1.weight, conv1)  # left as initialised, and bn1 with it
    ones = torch.ones(64)
    assert torch.equal(model.bn1.running_var, ones) and torch.equal(model.bn1.weight, ones)
    torch.testing.assert_close(model.layer1[0].conv1.weight.detach(), r18()["layer1.0.conv1.weight"])
    assert any(n.startswith("stem: conv1 and bn1 freshly initialised") and "3x3" in n for n in notes)
    assert loaded.fresh_modules == ["bn1", "conv1"] and not hasattr(model, "fresh_modules")
    finetune.apply_freeze(model, "backbone", loaded.fresh_modules)  # a random stem must not be frozen
    assert model.conv1.weight.requires_grad and model.bn1.weight.requires_grad
    assert not model.layer1[0].conv1.weight.requires_grad


@pytest.mark.parametrize("name", ["timm.pth.tar", "compiled.pt", "r18.safetensors"])
def test_wrapped_and_safetensors_files_load(weights_dir: Path, name: str) -> None:
    model = create_model("resnet18", num_classes=4)
    notes = pretrained.load_pretrained(model, str(weights_dir / name), arch="resnet18").notes
    torch.testing.assert_close(model.layer4[1].bn2.running_mean, r18()["layer4.1.bn2.running_mean"])
    if name.startswith("timm"):
        assert any("['state_dict']" in n and "epoch 5" in n for n in notes)


def test_resnetkit_checkpoint_as_source(tmp_path: Path, weights_dir: Path) -> None:
    src = create_model("resnet18", num_classes=3, in_chans=1)
    pretrained.load_pretrained(src, str(weights_dir / "r18.pth"), arch="resnet18")
    spec = DatasetSpec("imagefolder", ("a", "b", "c"), 1, 48, (0.5,), (0.25,), 55, "bicubic")
    path = tmp_path / "best.safetensors"
    ckpt.save_checkpoint(path, src, arch="resnet18", model_args={"num_classes": 3, "in_chans": 1},
                         spec=spec, config={}, metrics={})
    same = create_model("resnet18", num_classes=3, in_chans=1)
    notes = pretrained.load_pretrained(same, str(tmp_path), arch="resnet18", classes=["a", "b", "c"]).notes
    assert torch.equal(same.fc.weight, src.fc.weight) and not any("new head" in n for n in notes)
    other = create_model("resnet18", num_classes=3, in_chans=1)
    notes = pretrained.load_pretrained(other, str(path), arch="resnet18", classes=["x", "y", "z"]).notes
    assert not torch.equal(other.fc.weight, src.fc.weight) and any("other classes" in n for n in notes)
    with pytest.raises(UserError, match="does not fit resnet34.*look like resnet18 weights"):
        pretrained.load_pretrained(create_model("resnet34", num_classes=3, in_chans=1), str(path),
                                   arch="resnet34")
    cifar = tmp_path / "cifar.safetensors"
    ckpt.save_checkpoint(cifar, create_model("resnet20"), arch="resnet20", model_args={}, spec=spec,
                         config={}, metrics={})
    with pytest.raises(UserError, match="look like resnet20 weights: pass --model resnet20"):
        pretrained.load_pretrained(create_model("resnet18"), str(cifar), arch="resnet18")
    # its preprocessing becomes the new run's; RGB data repeats the gray statistics
    data = DatasetSpec("imagefolder", ("p", "q"), 3, 64, (0.1, 0.1, 0.1), (0.2, 0.2, 0.2), 73)
    got = with_weights(data, RunConfig(pretrained=str(path), model="resnet18"))
    assert (got.img_size, got.resize_size, got.interpolation) == (48, 55, "bicubic")
    assert got.mean == (0.5, 0.5, 0.5) and got.std == (0.25, 0.25, 0.25)


# ------------------------------------------------------------------ what cannot be loaded
def test_resnet50_weights_into_resnet18_name_the_keys(weights_dir: Path) -> None:
    with pytest.raises(UserError) as e:
        pretrained.load_pretrained(create_model("resnet18", num_classes=5), str(weights_dir / "r50.pth"),
                                   arch="resnet18")
    msg = one_line_error(e)
    assert "does not fit resnet18" in msg
    assert "layer1.0.conv1.weight 64x64x1x1 in the file vs 64x64x3x3" in msg
    assert "not in the model (layer1.0.conv3.weight" in msg and "look like resnet50" in msg


@pytest.mark.parametrize(("ninth_byte", "expected"), [
    (b"x", "not a readable weights file"),        # read as a pickle by torch.load
    (b"{", "not a readable safetensors file"),    # looks like a safetensors header
])
def test_garbage_file_is_a_clear_error(tmp_path: Path, ninth_byte: bytes, expected: str) -> None:
    garbage = bytearray(random.Random(0).randbytes(300))
    garbage[8:9] = ninth_byte  # which reader gets the file depends on this byte only
    bad = tmp_path / "weights.pth"
    bad.write_bytes(bytes(garbage))
    with pytest.raises(UserError) as e:
        pretrained.load_pretrained(create_model("resnet18"), str(bad), arch="resnet18")
    assert expected in one_line_error(e)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (str(self.marker),))


def test_pickle_with_code_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": _Exploit(marker)}, f, protocol=2)
    with pytest.raises(UserError) as e:
        pretrained.load_pretrained(create_model("resnet18"), str(evil), arch="resnet18")
    assert "would run code" in one_line_error(e) and "mkdir" in str(e.value)
    assert not marker.exists()
    whole = tmp_path / "whole-model.pth"
    torch.save(torchvision.models.resnet18(), whole)  # a pickled nn.Module, not a state_dict
    with pytest.raises(UserError, match="would run code .*ResNet"):
        pretrained.load_pretrained(create_model("resnet18"), str(whole), arch="resnet18")


def test_no_state_dict_inside(tmp_path: Path) -> None:
    path = tmp_path / "opt.pth"
    torch.save({"optimizer": {"lr": 0.1}, "epoch": 3}, path)
    with pytest.raises(UserError, match="holds no state_dict"):
        pretrained.load_pretrained(create_model("resnet18"), str(path), arch="resnet18")


def test_sources_that_do_not_resolve() -> None:
    with pytest.raises(UserError, match="IMAGENET1K_V1, IMAGENET1K_V2"):
        pretrained.resolve_source("IMAGENET1K_V7", "resnet50")
    with pytest.raises(UserError, match="not resnet20"):
        pretrained.resolve_source("imagenet", "resnet20")
    with pytest.raises(UserError, match="no such file"):
        pretrained.resolve_source("missing/weights.pth", "resnet18")
    assert pretrained.resolve_source("IMAGENET1K_V2", "resnet50").weights.name == "IMAGENET1K_V2"
    assert pretrained.resolve_source("imagenet", "resnet50").weights.name == "IMAGENET1K_V2"


# ------------------------------------------------------------------ imagenet and the hub cache
def test_imagenet_offline_names_the_file_and_folder(hub: Path) -> None:
    with pytest.raises(UserError) as e:
        pretrained.load_pretrained(create_model("resnet18", num_classes=2), "imagenet", arch="resnet18")
    msg = one_line_error(e)
    assert f"put {R18_FILE} in {hub / 'checkpoints'}" in msg and "name resolution" in msg


def test_imagenet_from_the_hub_cache(hub: Path) -> None:
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(r18(), hub / "checkpoints" / R18_FILE)
    model = create_model("resnet18", num_classes=2)
    notes = pretrained.load_pretrained(model, "imagenet", arch="resnet18").notes
    torch.testing.assert_close(model.conv1.weight.detach(), r18()["conv1.weight"])
    assert "ResNet18_Weights.IMAGENET1K_V1" in notes[0]


def test_cli_errors_are_one_line(hub: Path, tmp_path: Path, weights_dir: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_class_folders(tmp_path / "photos", {"a": 1, "b": 1})  # a folder that is fine
    assert main(["finetune", str(folder)]) == 2  # imagenet, offline: fails before any image is read
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and R18_FILE in err and "Traceback" not in err
    assert main(["train", "--pretrained", str(weights_dir / "nope.pth")]) == 2
    assert "no such file" in capsys.readouterr().err


# ------------------------------------------------------------------ preprocessing
def with_weights(spec: DatasetSpec, cfg: RunConfig) -> DatasetSpec:
    """The spec a fine-tuning run's loaders build: the data's, with the weights' preprocessing."""
    return spec.with_preprocessing(pretrained.weights_preprocessing(cfg), cfg.img_size)


def spec_of(in_chans: int = 3, img_size: int = 64) -> DatasetSpec:
    return DatasetSpec("imagefolder", ("a", "b"), in_chans, img_size, (0.5,) * in_chans, (0.5,) * in_chans,
                       round(img_size * 256 / 224))


def test_weights_preprocessing_is_the_default() -> None:
    got = with_weights(spec_of(), RunConfig(pretrained="imagenet", model="resnet50"))
    assert (got.img_size, got.resize_size, got.interpolation) == (224, 232, "bilinear")  # IMAGENET1K_V2
    assert got.mean == (0.485, 0.456, 0.406) and got.std == (0.229, 0.224, 0.225)
    v1 = with_weights(spec_of(), RunConfig(pretrained="IMAGENET1K_V1", model="resnet50"))
    assert (v1.img_size, v1.resize_size) == (224, 256)


def test_user_img_size_wins_and_gray_averages() -> None:
    cfg = RunConfig(pretrained="imagenet", model="resnet18", img_size=64)
    got = with_weights(spec_of(1, 64), cfg)
    assert (got.img_size, got.resize_size) == (64, 73)
    assert got.mean == pytest.approx((0.449,)) and got.std == pytest.approx((0.226,))


def test_file_without_preprocessing_keeps_the_data_size(weights_dir: Path) -> None:
    cfg = RunConfig(pretrained=str(weights_dir / "r18.pth"), model="resnet18")
    got = with_weights(spec_of(3, 40), cfg)
    assert (got.img_size, got.resize_size) == (40, 46)
    assert got.mean == (0.485, 0.456, 0.406)
