"""Heads and features with timm's conventions across the families, and the torchvision families
(ResNeXt, Wide ResNet, DenseNet): parameter counts, weight names, DenseNet's old keys (their
outputs against torchvision's: test_models.py). Nothing is downloaded: torchvision's randomly
initialised models stand in for its weights."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from conftest import n_params, randomize_bn
from resnetkit import pretrained
from resnetkit.cli import main
from resnetkit.errors import UserError
from resnetkit.models import create_model
from resnetkit.models.densenet import remap_legacy_keys
from resnetkit import checkpoint as ckpt

# ------------------------------------------------------------------ torchvision's families
TV_FAST = ["resnext50_32x4d", "wide_resnet50_2", "densenet121"]
TV_BIG = ["resnext101_32x8d", "wide_resnet101_2"]


@pytest.mark.parametrize("name, params", [("resnext101_32x8d", 88_791_336), ("wide_resnet101_2", 126_886_696)])
def test_big_families_parameter_counts_match_torchvision(name: str, params: int) -> None:
    # torchvision's weights meta (num_params); counted on the meta device, no memory
    weights = torchvision.models.get_model_weights(name).DEFAULT
    assert weights.meta["num_params"] == params
    with torch.device("meta"):
        assert n_params(create_model(name)) == params


@pytest.mark.parametrize("name", [*TV_FAST, *TV_BIG])
def test_pretrained_imagenet_names_torchvision_weights(name: str) -> None:
    source = pretrained.resolve_source("imagenet", name)  # resolving downloads nothing
    assert source.kind == "torchvision"
    assert source.weights is torchvision.models.get_model_weights(name).DEFAULT


def test_densenet_old_style_keys_are_renamed_as_torchvision_does(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = randomize_bn(torchvision.models.densenet121()).eval()
    old = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in ref.state_dict().items()
           if not k.endswith("num_batches_tracked")}  # LuaTorch-era files have no such counters
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    assert "features.denseblock1.denselayer1.conv.2.weight" in old
    assert set(remap_legacy_keys(old)) == {k for k in ref.state_dict() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "densenet121-old.pth")
    ours = create_model("densenet121", num_classes=1000)
    notes = pretrained.load_pretrained(ours, str(tmp_path / "densenet121-old.pth"), arch="densenet121").notes
    assert "densenet121" in notes[0]
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref(x))


def test_pretrained_into_a_headless_densenet_and_a_new_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = randomize_bn(torchvision.models.densenet121()).eval()
    torch.save(ref.state_dict(), tmp_path / "d.pth")
    bare = create_model("densenet121", num_classes=0)
    notes = pretrained.load_pretrained(bare, str(tmp_path / "d.pth"), arch="densenet121").notes
    assert any("no head" in n and "classifier.weight" in n for n in notes)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        pooled = bare.eval()(x)
        torch.testing.assert_close(ref.classifier(pooled), ref(x))
    five = create_model("densenet121", num_classes=5, in_chans=1)
    notes = pretrained.load_pretrained(five, str(tmp_path / "d.pth"), arch="densenet121").notes
    assert any("new head" in n and "classifier for 5 classes" in n for n in notes)
    assert any(n.startswith("features.conv0: the RGB filters summed") for n in notes)
    torch.testing.assert_close(five.features.conv0.weight, ref.features.conv0.weight.sum(1, keepdim=True))


# ------------------------------------------------------------------ the head API
FAMILIES = [("resnet18", 64), ("resnet20", 32), ("simple_resnet", 16), ("densenet121", 64)]


@pytest.mark.parametrize("name, size", FAMILIES)
def test_num_classes_0_gives_pooled_features_and_the_head_api_agrees(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = randomize_bn(create_model(name, num_classes=4)).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        fmap = model.forward_features(x)
        pooled = model.forward_head(fmap, pre_logits=True)
        torch.testing.assert_close(pooled, fmap.mean((2, 3)))
        torch.testing.assert_close(model(x), model.get_classifier()(pooled))
        bare = create_model(name, num_classes=0)
        bare.load_state_dict({k: v for k, v in model.state_dict().items()
                              if not k.startswith(model.head_name + ".")})
        torch.testing.assert_close(bare.eval()(x), pooled)
        assert bare(x).shape == (2, model.num_features) and n_params(bare) < n_params(model)
        maxed = create_model(name, num_classes=0, global_pool="max")
        maxed.load_state_dict(bare.state_dict())
        torch.testing.assert_close(maxed.eval()(x), fmap.amax((2, 3)))
        unpooled = create_model(name, num_classes=0, global_pool="")
        unpooled.load_state_dict(bare.state_dict())
        torch.testing.assert_close(unpooled.eval()(x), fmap)


def test_reset_classifier_and_bad_head_options() -> None:
    model = create_model("resnet18", num_classes=10)
    model.reset_classifier(3)
    assert model.fc.out_features == 3 and model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    model.reset_classifier(0, global_pool="max")
    assert isinstance(model.fc, nn.Identity) and model(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    with pytest.raises(UserError, match="global_pool must be 'avg' or 'max' or ''"):
        create_model("resnet18", global_pool="mean")
    with pytest.raises(UserError, match="use it with num_classes=0"):
        create_model("resnet18", global_pool="")
    with pytest.raises(UserError, match=r"drop_rate must be a number in \[0, 1\)"):
        create_model("resnet20", drop_rate=1.5)
    with pytest.raises(UserError, match="num_classes must be 0"):
        create_model("resnet20", num_classes=-1)


def test_drop_rate_drops_pooled_features_in_training_only() -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=0, drop_rate=0.5)
    plain = create_model("resnet20", num_classes=0)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), plain.eval()(x))
        model.train(), plain.train()
        dropped, kept = model(x), plain(x)
    zeros = dropped == 0
    assert 0.2 < zeros.float().mean() < 0.8  # about half of the features dropped
    torch.testing.assert_close(dropped[~zeros], 2 * kept[~zeros])  # the rest scaled by 1/(1-p)


@pytest.mark.parametrize("name, size, shapes", [
    ("resnet50", 64, [(256, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2)]),
    ("resnet18", 32, [(64, 8, 8), (128, 4, 4), (256, 2, 2), (512, 1, 1)]),
    ("resnet20", 32, [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    ("densenet121", 64, [(256, 16, 16), (512, 8, 8), (1024, 4, 4), (1024, 2, 2)]),
    ("simple_resnet", 8, [(32, 8, 8)]),
])
def test_features_only_returns_stage_outputs_described_by_feature_info(name: str, size: int, shapes: list) -> None:
    model = create_model(name, features_only=True).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, size, size))
    assert [tuple(o.shape[1:]) for o in outs] == shapes
    assert model.feature_info.channels() == [s[0] for s in shapes]
    assert model.feature_info.reduction() == [size // s[1] for s in shapes]
    head = model.head_name + "."
    assert not any(k.startswith(head) for k in model.state_dict())
    full = {k for k in create_model(name).state_dict() if not k.startswith(head)}
    assert set(model.state_dict()) == full  # the same keys as the classifier, less the head
    small = create_model("resnet18", features_only=True, small_input=True)
    assert small.feature_info.reduction() == [1, 2, 4, 8]


def test_features_only_with_torchvision_weights_matches_its_layers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = randomize_bn(torchvision.models.resnet18()).eval()
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    model = create_model("resnet18", features_only=True)
    notes = pretrained.load_pretrained(model, str(tmp_path / "r18.pth"), arch="resnet18").notes
    assert any("no head" in n for n in notes)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs = model.eval()(x)
        y = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
        for out, layer in zip(outs, (ref.layer1, ref.layer2, ref.layer3, ref.layer4)):
            y = layer(y)
            torch.testing.assert_close(out, y)


# ------------------------------------------------------------------ training records the head
def test_drop_rate_flag_and_head_model_args_are_recorded_in_the_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet8", "--subset", "60", "--epochs", "1", "--drop-rate", "0.25",
                 "--model-arg", "global_pool=max", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["drop_rate"] == 0.25
    loaded = ckpt.load_checkpoint(run)
    assert loaded.model_args["drop_rate"] == 0.25 and loaded.model_args["global_pool"] == "max"
    assert loaded.model.drop_rate == 0.25 and isinstance(loaded.model.avgpool, nn.AdaptiveMaxPool2d)
    assert main(["train", "--model", "resnet8", "--epochs", "1", "--model-arg", "features_only=true",
                 "--out", str(tmp_path / "bad")]) == 2


def test_fine_tuning_parts_of_a_densenet() -> None:
    from resnetkit.training import finetune

    model = create_model("densenet121", num_classes=3)
    assert finetune.head_module(model) is model.classifier
    assert finetune.frozen_prefixes(model, "stages:2") == [
        "features.conv0", "features.norm0", "features.relu0", "features.pool0", "features.denseblock1",
        "features.transition1", "features.denseblock2"]
    finetune.apply_freeze(model, "backbone")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["classifier.weight", "classifier.bias"]
