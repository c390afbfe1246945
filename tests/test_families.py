"""Pre-activation ResNets against the paper's parameter counts and torchvision's convolutions;
dynamic convolution: per-input kernel mixing, temperature annealing, ONNX export."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from conftest import n_params, randomize_bn
from resnetkit.cli import main
from resnetkit.models import DynamicConv2d, create_model
from resnetkit.models.dynamic import temperature_at
from resnetkit.models.preact import PreActBasicBlock
from resnetkit import checkpoint as ckpt

# ------------------------------------------------------------------ pre-activation
@pytest.mark.parametrize("name, paper", [
    ("preact_resnet20", 0.27e6), ("preact_resnet32", 0.46e6), ("preact_resnet44", 0.66e6),
    ("preact_resnet56", 0.85e6), ("preact_resnet110", 1.7e6),  # arXiv:1603.05027 Table 2 (110)
    ("preact_resnet164", 1.7e6),  # Table 3: ResNet-164, 1.7M
])
def test_preact_cifar_parameter_counts_match_the_paper(name: str, paper: float) -> None:
    with torch.device("meta"):
        count = n_params(create_model(name, num_classes=10))
    assert abs(count - paper) / paper < 0.02, (name, count)


@pytest.mark.parametrize("name", ["preact_resnet18", "preact_resnet34"])
def test_preact_imagenet_nets_have_torchvisions_convolutions_and_fc(name: str) -> None:
    with torch.device("meta"):
        ours = create_model(name)
        ref = getattr(torchvision.models, name.replace("preact_", ""))()
    shapes = lambda m: sorted(tuple(p.shape) for p in m.parameters() if p.ndim > 1)  # noqa: E731
    assert shapes(ours) == shapes(ref)
    # BatchNorms: none in the stem or on the projections, one before pooling
    bn = lambda m: [mod.num_features for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]  # noqa: E731
    assert len(bn(ours)) == len(bn(ref)) - 1 - 3 + 1


def test_preact_block_is_an_unactivated_sum_with_a_bn_relu_first() -> None:
    torch.manual_seed(0)
    block = randomize_bn(PreActBasicBlock(inplanes=8, planes=8)).eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        y = block(x)
        branch = block.conv2(block.relu(block.bn2(block.conv1(torch.relu(block.bn1(x))))))
    torch.testing.assert_close(y, x + branch)
    assert (y < 0).any()  # no ReLU after the addition
    model = create_model("preact_resnet20", num_classes=3).eval()
    with torch.no_grad():
        assert (model.forward_features(torch.randn(2, 3, 16, 16)) >= 0).all()  # the final BN-ReLU


# ------------------------------------------------------------------ dynamic convolution
def test_one_input_mixes_the_kernels_differently_from_another() -> None:
    torch.manual_seed(0)
    conv = DynamicConv2d(16, 5, 3, padding=1, stride=2, bias=True, num_kernels=4)
    conv.temperature.fill_(1.0)
    with torch.no_grad():
        conv.attention.fc2.weight.mul_(20)  # a decided attention, as after training
    x = torch.randn(2, 16, 9, 9)
    x[1] = -3 * x[1] + 1
    with torch.no_grad():
        pi = conv.attention_weights(x)
        out = conv(x)
    torch.testing.assert_close(pi.sum(1), torch.ones(2))
    assert (pi[0] - pi[1]).abs().max() > 0.05
    for i in range(2):  # each sample: a static convolution with its own mixture of the K kernels
        w = torch.einsum("k,koihw->oihw", pi[i], conv.weight.detach())
        b = pi[i] @ conv.bias.detach()
        torch.testing.assert_close(out[i:i + 1], F.conv2d(x[i:i + 1], w, b, stride=2, padding=1),
                                   rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # the export path (mix the outputs) gives the same values
        torch.testing.assert_close(conv._mix_outputs(x, pi), out, rtol=1e-4, atol=1e-5)


def test_temperature_anneals_from_30_to_1_over_the_first_epochs() -> None:
    assert [temperature_at(e) for e in (1, 6, 11, 50)] == [30.0, 15.5, 1.0, 1.0]
    model = create_model("dy_resnet20", num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, DynamicConv2d)]
    assert len(convs) == 18 and all(float(c.temperature) == 30.0 for c in convs)
    x = torch.randn(2, 16, 16, 16)  # the input of layer1's first convolution
    with torch.no_grad():
        convs[0].attention.fc2.weight.mul_(10)
        hot = convs[0].attention_weights(x)
        model.set_epoch(11)
        cold = convs[0].attention_weights(x)
    assert all(float(c.temperature) == 1.0 for c in convs)
    assert hot.max() - hot.min() < cold.max() - cold.min()  # near uniform at 30
    assert "conv1.temperature" in model.layer1[0].state_dict()  # a checkpoint keeps it


def test_trainer_anneals_dynamic_models_per_epoch(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", "--model", "dy_resnet20", "--subset", "60", "--epochs", "2", "--model-arg",
                 "anneal_epochs=1", "--model-arg", "num_kernels=2", "--out", str(run)]) == 0
    model = ckpt.load_checkpoint(run / ckpt.LAST).model
    temps = {float(m.temperature) for m in model.modules() if isinstance(m, DynamicConv2d)}
    assert temps == {1.0} and model.layer1[0].conv1.weight.shape[0] == 2


def test_dynamic_net_exports_to_onnx_with_a_dynamic_batch(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from resnetkit import export as E
    from resnetkit.backends import random_inputs
    from resnetkit.specs import DatasetSpec

    from resnetkit.models.dynamic import DyBasicBlock, DyCifarResNet

    torch.manual_seed(0)  # dy_resnet20's blocks, n=1: six dynamic convolutions keep the export short
    model = randomize_bn(DyCifarResNet(8, num_classes=4, in_chans=1, block=DyBasicBlock)).eval()
    model.set_epoch(5)
    spec = DatasetSpec("toy", tuple("abcd"), 1, 12, (0.5,), (0.25,), resize_size=None, interpolation="bilinear")
    path = E.export_onnx(model, spec, tmp_path / "dy.onnx", arch="dy_resnet20",
                         model_args={"num_classes": 4, "in_chans": 1})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        x = random_inputs(spec, n, seed=n)
        with torch.no_grad():
            ref = model(x).numpy()
        np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], ref, atol=1e-4, rtol=0)


# ------------------------------------------------------------------ the tutorial nets
class BookResidual(nn.Module):
    """d2l.ai section 8.6's Residual, verbatim but for the lazy modules."""

    def __init__(self, inplanes: int, num_channels: int, use_1x1conv: bool = False, strides: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(inplanes, num_channels, kernel_size=1, stride=strides) if use_1x1conv else None
        self.bn1 = nn.BatchNorm2d(num_channels)
        self.bn2 = nn.BatchNorm2d(num_channels)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        Y += X
        return F.relu(Y)


def book_resnet18(num_classes: int = 10) -> nn.Sequential:
    """d2l's ResNet18: b1, then ((2, 64), (2, 128), (2, 256), (2, 512)), then pool, flatten, linear."""
    net = nn.Sequential(nn.Sequential(nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3), nn.BatchNorm2d(64),
                                      nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2, padding=1)))
    inplanes = 64
    for i, (num_residuals, num_channels) in enumerate(((2, 64), (2, 128), (2, 256), (2, 512))):
        blk = []
        for j in range(num_residuals):
            first = j == 0 and i != 0
            blk.append(BookResidual(inplanes, num_channels, use_1x1conv=first, strides=2 if first else 1))
            inplanes = num_channels
        net.add_module(f"b{i + 2}", nn.Sequential(*blk))
    net.add_module("last", nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(512, num_classes)))
    return net


def test_d2l_resnet18_is_the_books_net() -> None:
    torch.manual_seed(0)
    book = randomize_bn(book_resnet18()).eval()
    ours = create_model("d2l_resnet18").eval()
    assert ours.conv1.in_channels == 1 and ours.conv1.bias is not None and ours.layer2[0].conv3.bias is not None
    assert n_params(ours) == n_params(book) == 11_178_378
    book_sd, our_sd = book.state_dict(), ours.state_dict()
    assert [v.shape for v in book_sd.values()] == [v.shape for v in our_sd.values()]
    ours.load_state_dict(dict(zip(our_sd, book_sd.values())))
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), book(x))


def test_simple_resnet_post_act_false_is_x_plus_relu_of_the_branch_with_a_hidden_width() -> None:
    torch.manual_seed(0)
    model = randomize_bn(create_model("simple_resnet", width=8, depth=2, hidden=12, post_act=False)).eval()
    block = model.layer1[0]
    assert block.conv1.weight.shape == (12, 8, 3, 3) and block.conv2.weight.shape == (8, 12, 3, 3)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        y = block(x)
        branch = torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))))
    torch.testing.assert_close(y, x + branch)
    assert (y < 0).any()  # nothing after the sum
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)
