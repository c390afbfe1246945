"""The model zoo against its references: torchvision's weights and outputs, the paper's parameter
counts, plain twins that differ from residual blocks by exactly the shortcut term; and the
registry driving a forward and backward pass of every model."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from conftest import n_params, randomize_bn
from resnetkit.cli import main
from resnetkit.errors import UserError
from resnetkit.models import (BasicBlock, Bottleneck, ShortcutA, SimpleBlock, create_model, list_models,
                              model_info, register_model)
from resnetkit.models.blocks import projection

IMAGENET = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "plain18", "plain34"]
CIFAR = ["resnet8", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
         "plain8", "plain20", "plain32", "plain44", "plain56", "plain110"]


def last_bn(block: nn.Module) -> nn.BatchNorm2d:
    return block.bn3 if isinstance(block, Bottleneck) else block.bn2


# ------------------------------------------------------------------ references
# Every net torchvision also builds; the big two (89M and 127M parameters, two copies each) are slow.
TORCHVISION = ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "densenet121",
               *(pytest.param(n, marks=pytest.mark.slow) for n in ("resnext101_32x8d", "wide_resnet101_2"))]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_weights_load_as_they_are_and_give_identical_outputs(name: str) -> None:
    torch.manual_seed(0)
    ref = randomize_bn(getattr(torchvision.models, name)()).eval()
    ours = create_model(name, num_classes=1000, in_chans=3).eval()
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd)
    assert all(our_sd[k].shape == ref_sd[k].shape for k in ref_sd)
    assert n_params(ours) == n_params(ref)
    ours.load_state_dict(ref_sd, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("name, paper", [("resnet20", 0.27e6), ("resnet32", 0.46e6), ("resnet44", 0.66e6),
                                         ("resnet56", 0.85e6), ("resnet110", 1.7e6)])
def test_cifar_parameter_counts_match_the_paper(name: str, paper: float) -> None:
    count = n_params(create_model(name, num_classes=10))
    assert abs(count - paper) / paper < 0.02, (name, count)
    # The plain twin of an option-A net has exactly the same layers.
    assert n_params(create_model(name.replace("resnet", "plain"), num_classes=10)) == count


def test_shortcut_type_b_adds_projections_and_parameters() -> None:
    a = create_model("resnet20", num_classes=10)
    b = create_model("resnet20", num_classes=10, shortcut_type="B")
    extra = {k for k in b.state_dict() if k not in a.state_dict()}
    assert extra and all(".downsample." in k for k in extra)
    # two 1x1 projections (16->32, 32->64) with their BatchNorms
    assert n_params(b) - n_params(a) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert isinstance(a.layer2[0].downsample, ShortcutA)


def test_small_input_stem_keeps_the_names_and_the_resolution() -> None:
    model = create_model("resnet18", num_classes=10, small_input=True)
    assert model.conv1.weight.shape == (64, 3, 3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert list(model.state_dict()) == list(torchvision.models.resnet18().state_dict())
    with torch.no_grad():
        stem = model.maxpool(model.relu(model.bn1(model.conv1(torch.randn(1, 3, 32, 32)))))
    assert stem.shape == (1, 64, 32, 32)  # the ImageNet stem would give 8x8


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet20"])
def test_zero_init_residual_zeroes_last_bn_and_blocks_start_as_identity(name: str) -> None:
    model = create_model(name, zero_init_residual=True).eval()
    blocks = [b for _, stage in model.stages for b in stage]
    for block in blocks:
        assert torch.count_nonzero(last_bn(block).weight) == 0
        assert torch.all(block.bn1.weight == 1)
    # A stride-1 block with an identity shortcut now passes its (non-negative) input through.
    x = torch.relu(torch.randn(1, blocks[1].conv1.in_channels, 8, 8))
    with torch.no_grad():
        torch.testing.assert_close(blocks[1](x.clone()), x)
    default = create_model(name)
    assert all(torch.all(last_bn(b).weight == 1) for _, s in default.stages for b in s)


# ------------------------------------------------------------------ plain twins
# (block, inplanes, planes, shortcut) per (kind, stride); planes is before the block's expansion.
PAIRS = {
    ("basic", 1): (BasicBlock, 8, 8, "identity"),
    ("basic", 2): (BasicBlock, 8, 16, "projection"),
    ("bottleneck", 1): (Bottleneck, 32, 8, "identity"),
    ("bottleneck", 2): (Bottleneck, 32, 16, "projection"),
    ("option_a", 1): (BasicBlock, 8, 16, "A"),  # only new channels to pad
    ("option_a", 2): (BasicBlock, 8, 16, "A"),
}


def block_pair(kind: str, stride: int) -> tuple[nn.Module, nn.Module, str]:
    """A residual block, its plain twin, and what the shortcut is: identity, projection or A."""
    if kind == "simple":
        return SimpleBlock(planes=8), SimpleBlock(planes=8, shortcut=False), "identity"
    block, inplanes, planes, what = PAIRS[kind, stride]
    out = planes * block.expansion
    downsample = None
    if what == "projection":
        downsample = projection(inplanes, out, stride)
    elif what == "A":
        downsample = ShortcutA(inplanes=inplanes, planes=out, stride=stride)
    res = block(inplanes=inplanes, planes=planes, stride=stride, downsample=downsample)
    plain = block(inplanes=inplanes, planes=planes, stride=stride, shortcut=False)
    return res, plain, what


def option_a_by_hand(x: torch.Tensor, planes: int, stride: int) -> torch.Tensor:
    sub = x[:, :, ::stride, ::stride]
    zeros = sub.new_zeros(sub.shape[0], planes - sub.shape[1], *sub.shape[2:])
    return torch.cat([sub, zeros], dim=1)


@pytest.mark.parametrize("kind, stride", [*PAIRS, ("simple", 1)])
def test_plain_twin_differs_from_residual_block_by_exactly_the_shortcut(kind: str, stride: int) -> None:
    torch.manual_seed(0)
    res, plain, what = block_pair(kind, stride)
    missing, unexpected = plain.load_state_dict(randomize_bn(res).state_dict(), strict=False)
    assert not missing and all(k.startswith("downsample.") for k in unexpected)
    assert bool(unexpected) == (what == "projection")
    if what != "projection":
        assert n_params(plain) == n_params(res)
    res.eval(), plain.eval()
    pre = {}
    for name, block in (("res", res), ("plain", plain)):  # the last BN's output: F(x), pre-activation
        last_bn(block).register_forward_hook(lambda m, i, out, name=name: pre.__setitem__(name, out.clone()))
    x = torch.randn(2, res.conv1.in_channels, 9, 9)  # odd: the subsampled shortcut must match
    with torch.no_grad():
        res_out, plain_out = res(x.clone()), plain(x.clone())
        if what == "identity":
            shortcut = x
        elif what == "projection":
            shortcut = res.downsample(x)
        else:
            shortcut = option_a_by_hand(x, res_out.shape[1], stride)
    torch.testing.assert_close(pre["res"], pre["plain"])
    torch.testing.assert_close(res_out, torch.relu(pre["res"] + shortcut))
    torch.testing.assert_close(plain_out, torch.relu(pre["plain"]))
    assert not torch.allclose(res_out, plain_out)


def test_plain_nets_have_no_shortcut_anywhere() -> None:
    for name in ("plain18", "plain20", "simple_plain"):
        model = create_model(name)
        blocks = [b for _, s in model.stages for b in s]
        assert blocks and all(not b.shortcut and b.downsample is None for b in blocks)
    resnet, plain = create_model("resnet18").state_dict(), create_model("plain18").state_dict()
    assert set(resnet) - set(plain) == {k for k in resnet if ".downsample." in k}


# ------------------------------------------------------------------ every registered model
# Over 50M parameters: a forward and backward pass allocates gigabytes and takes seconds on 2 cores.
HEAVY = {"resnet152", "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2"}


def every_model() -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in list_models()]


@pytest.mark.parametrize("name", every_model())
def test_every_model_backward_and_forward_at_its_smallest_input(name: str) -> None:
    torch.manual_seed(0)
    size = model_info(name).min_size
    model = create_model(name, num_classes=7, in_chans=3)
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head.out_features == 7
    assert len(model.stages) == len(model.feature_info) >= 1
    # backward in train mode: every parameter gets a finite gradient. At 32 px the ImageNet nets'
    # layer3 sees 2x2 maps: with 4 images, training-mode BatchNorm has 16 values per channel.
    px = max(size, 32)
    loss = F.cross_entropy(model(torch.randn(4, 3, px, px)), torch.tensor([0, 6, 3, 1]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.inference_mode():  # the smallest input, in eval mode, with 3 channels and with 1
        for in_chans, net in ((3, model), (1, create_model(name, num_classes=7, in_chans=1))):
            out = net.eval()(torch.randn(1, in_chans, size, size))
            assert out.shape == (1, 7) and torch.isfinite(out).all(), in_chans
        # the family's straight-line forward_features and the stage by stage path of features_only agree
        x = torch.randn(1, 3, size, size)
        torch.testing.assert_close(model.forward_features(x), model.forward_stages(x)[-1])


def test_default_classes_and_stages() -> None:
    assert create_model("resnet18").fc.out_features == 1000
    assert create_model("resnet20").fc.out_features == 10
    assert [n for n, _ in create_model("resnet50").stages] == ["layer1", "layer2", "layer3", "layer4"]
    assert [n for n, _ in create_model("resnet8").stages] == ["layer1", "layer2", "layer3"]
    simple = create_model("simple_resnet", width=8, depth=3, in_chans=1)
    assert len(simple.layer1) == 3 and simple.conv1.weight.shape == (8, 1, 3, 3)


# ------------------------------------------------------------------ registry
def test_list_models_and_patterns() -> None:
    names = list_models()
    assert set(IMAGENET + CIFAR + ["simple_resnet", "simple_plain", "resnet9"]) <= set(names)
    assert list_models("plain*") == [n for n in names if n.startswith("plain")]
    assert list_models("resnet1??") == ["resnet101", "resnet152", "resnet110"]
    assert list_models("nothing*") == []
    for name in names:  # every description cites its source
        cited = "Myrtle.ai 2018" if name == "resnet9" else "arXiv:"
        assert cited in model_info(name).description, name


def test_unknown_model_names_the_closest_ones() -> None:
    with pytest.raises(UserError, match=r"unknown model 'resnet19'.*resnet18.*resnetkit models"):
        create_model("resnet19")


def test_unknown_or_bad_options_are_user_errors() -> None:
    with pytest.raises(UserError, match=r"resnet18 does not take small_inputs; it takes small_input"):
        create_model("resnet18", small_inputs=True)
    with pytest.raises(UserError, match="plain20 does not take zero_init_residual"):
        create_model("plain20", zero_init_residual=True)
    with pytest.raises(UserError, match=r"shortcut_type must be 'A' or 'B'"):
        create_model("resnet20", shortcut_type="C")
    with pytest.raises(UserError, match="small_input must be true or false"):
        create_model("resnet18", small_input="yes")
    with pytest.raises(UserError, match="num_classes must be 0 .* or a positive integer"):
        create_model("resnet8", num_classes=-3)
    with pytest.raises(UserError, match="depth must be a positive integer"):
        create_model("simple_resnet", depth=1.5)


def test_duplicate_registration_is_refused() -> None:
    def resnet18(*, num_classes: int = 1000, in_chans: int = 3) -> nn.Module:
        """A second resnet18."""
        return nn.Linear(in_chans, num_classes)

    with pytest.raises(ValueError, match="already registered"):
        register_model(resnet18)


# ------------------------------------------------------------------ `resnetkit models`
def test_models_command_lists_names_params_and_descriptions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert list(by_name) == list_models()
    assert by_name["resnet18"]["params"] == 11_689_512 and by_name["resnet18"]["num_classes"] == 1000
    assert by_name["resnet20"]["params"] == n_params(create_model("resnet20", num_classes=10))
    assert by_name["resnet20"]["options"] == ["shortcut_type", "zero_init_residual", "widths",
                                              "stem_stride"]
    assert main(["models", "resnet5*"]) == 0
    out = capsys.readouterr().out
    assert "resnet50" in out and "25.56M" in out and "resnet56" in out and "resnet18" not in out
    assert "1000 classes for the ImageNet nets, 10 for the CIFAR" in out


def test_models_command_with_no_match_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "vgg*"]) == 2
    assert "no model matches 'vgg*'" in capsys.readouterr().err


def test_cifar_net_widths_and_stride2_stem_give_the_fast_shape():
    from resnetkit.errors import UserError
    model = create_model("resnet8", num_classes=10, in_chans=1, widths=[32, 64, 128], stem_stride=2)
    feats = {}
    for name in ("layer1", "layer3"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: feats.update({name: o.shape}))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert feats == {"layer1": (2, 32, 14, 14), "layer3": (2, 128, 4, 4)}
    assert sum(p.numel() for p in model.parameters()) == 297_450
    with pytest.raises(UserError, match=r"widths must be three .* got \[16, 32\]"):  # widths is wrong, not stem_stride
        create_model("resnet8", widths=[16, 32], stem_stride=2)


@pytest.mark.parametrize("name, size, kwargs", [
    ("resnet20", 16, {}), ("resnet18", 32, {}), ("plain20", 16, {}),
    ("resnet8", 28, {"widths": [8, 16, 32], "stem_stride": 2}),  # odd sizes: 14 -> 7 -> 4
])
def test_channels_last_gives_the_same_gradients_in_channels_last_format(name: str, size: int,
                                                                        kwargs: dict) -> None:
    torch.manual_seed(0)
    ref = create_model(name, num_classes=5, **kwargs)
    cl = create_model(name, num_classes=5, **kwargs)
    cl.load_state_dict(ref.state_dict())
    cl = cl.to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, size, size)
    y = torch.tensor([0, 1, 2, 3])
    formats = []

    def record(module, inputs, out):  # the gradient each ReLU's backward receives
        if out.requires_grad:
            out.register_hook(lambda g: formats.append(g.is_contiguous(memory_format=torch.channels_last)))

    for m in cl.modules():
        if isinstance(m, nn.ReLU):
            m.register_forward_hook(record)
    for model, inp in ((ref, x), (cl, x.contiguous(memory_format=torch.channels_last))):
        F.cross_entropy(model(inp), y).backward()
    assert formats and all(formats)  # no NCHW gradient meets an NHWC activation
    for (n, p), q in zip(ref.named_parameters(), cl.parameters()):
        # NHWC and NCHW kernels sum in different orders: 1.5e-4 of the largest entry here
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-3 * float(p.grad.abs().max()), msg=n)
    x.requires_grad_(True)  # a gradient for the input too, through the option-A shortcut
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    ref.eval(), cl.eval()
    ref(x).sum().backward()
    cl(xc).sum().backward()
    torch.testing.assert_close(xc.grad, x.grad, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # inference takes the plain operations: the same values
        torch.testing.assert_close(cl(xc), ref(x), rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace.*is deprecated:FutureWarning")
def test_compile_and_tracing_take_the_plain_operations(monkeypatch: pytest.MonkeyPatch) -> None:
    from resnetkit.models import _ops

    def refuse(*args, **kwargs):
        raise AssertionError("the eager-only autograd function ran")

    model = create_model("resnet8", num_classes=3).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(_ops.SubsamplePadFn, "apply", refuse)
    monkeypatch.setattr(_ops.GlobalAvgPoolFn, "apply", refuse)
    torch.compile(model, backend="eager")(x).sum().backward()
    torch.jit.trace(model.eval(), x)
    with pytest.raises(AssertionError, match="eager-only"):  # and eager training does use them
        model.train()(x).sum().backward()


# ------------------------------------------------------------------ --model-arg values of the wrong type
@pytest.mark.parametrize("name, kwargs, message", [
    # a --model-arg VALUE that is not JSON arrives as text: "abc", "16,32"
    ("resnet8", {"widths": "abc"}, r"resnet8: widths must be a JSON list of positive integers, got 'abc'"),
    ("resnet8", {"widths": "16,32"}, r"widths must be a JSON list .* got '16,32' \(e\.g\. --model-arg 'widths=\[16,32,64\]'\)"),
    ("resnet20", {"widths": [16, 32, "a"]}, r"widths must be a JSON list .* got \[16, 32, 'a'\]"),
    ("resnet20", {"widths": [16, 32, True]}, r"widths must be a JSON list .* got \[16, 32, True\]"),
    ("resnet20", {"widths": [16, 32, 64.5]}, r"widths must be a JSON list .* got \[16, 32, 64\.5\]"),
    ("dy_resnet20", {"widths": None}, r"dy_resnet20 does not take widths"),
    ("resnet8", {"widths": None}, r"widths must be a JSON list .* got None"),
    ("resnet8", {"widths": [16, 32, 64, 128]}, r"widths must be three positive channel counts, got \[16, 32, 64, 128\]"),
    ("resnet8", {"widths": [64, 32, 16]}, r"shortcut_type 'A' .* widths must not decrease, got \[64, 32, 16\]"),
    ("resnet8", {"stem_stride": 3}, r"stem_stride must be 1 or 2, got 3 \(e\.g\. --model-arg stem_stride=2\)"),
    ("resnet8", {"stem_stride": "abc"}, r"resnet8: stem_stride must be a positive integer, got 'abc' \(e\.g\."),
    ("simple_resnet", {"hidden": "abc"}, r"simple_resnet: hidden must be a positive integer, got 'abc' \(e\.g\."),
    ("simple_resnet", {"width": "wide"}, r"width must be a positive integer, got 'wide' \(e\.g\. --model-arg 'width=32'\)"),
    ("resnet9", {"width": [64]}, r"resnet9: width must be a positive integer, got \[64\]"),
    ("dy_resnet18", {"num_kernels": "4x"}, r"dy_resnet18: num_kernels must be a positive integer, got '4x'"),
    ("dy_resnet20", {"anneal_epochs": [10]}, r"anneal_epochs must be a positive integer, got \[10\]"),
    ("preact_resnet20", {"shortcut_type": 1}, r"shortcut_type must be 'A' or 'B', got 1 \(e\.g\."),
    ("resnext50_32x4d", {"small_input": "yes"}, r"small_input must be true or false, got 'yes' \(e\.g\."),
    ("densenet121", {"global_pool": 0}, r"global_pool must be .*, got 0 \(e\.g\."),
])
def test_model_args_of_the_wrong_type_are_one_line_errors(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        create_model(name, num_classes=3, in_chans=1, **kwargs)
    assert "\n" not in str(err.value)


def test_model_args_that_fit_still_build() -> None:
    assert create_model("simple_resnet", num_classes=3, hidden=None).num_classes == 3  # int | None: None is fine
    assert create_model("resnet8", num_classes=3, widths=(8, 8, 16)).fc.in_features == 16  # a tuple is a list
    assert create_model("resnet8", num_classes=3, widths=[32, 16, 8], shortcut_type="B").fc.in_features == 8
