"""Pre-activation ResNets (He et al. 2016, "Identity Mappings in Deep Residual Networks",
arXiv:1603.05027): BN and ReLU move before each convolution, so the shortcut path is a clean
identity from block to block; the net ends with one BN-ReLU before pooling (Fig. 1b, 4e).

- :class:`PreActResNet`: the ImageNet layout of resnet18/34 (7x7 stem and max-pool, stages of
  64..512) with pre-activation basic blocks: the same convolutions and fc as torchvision's
  resnet18/34, other BatchNorms (none in the stem, one at the end).
- :class:`PreActCifarResNet`: the CIFAR nets of section 4: 6n+2 layers with basic blocks
  (preact_resnet20..110) or 9n+2 with bottlenecks (preact_resnet164: 1.7M parameters, Table 3).

Where the shape changes, the shortcut is a 1x1 convolution without BN on the pre-activated input,
as in the authors' code (github.com/KaimingHe/resnet-1k-layers); ``shortcut_type="A"`` gives the
parameter-free option A of the CIFAR nets of 2015 instead. Plain twins: a pre-activation net
without shortcuts is a stack of BN-ReLU-conv, the plain nets (plain18, plain20, ...) in another
order, so none is registered.
"""
from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from ..errors import UserError
from ._registry import CIFAR_INPUT, register_model
from .blocks import conv1x1, conv3x3
from .heads import HeadOptions, Unpack
from .resnet import _Net


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus the identity (Fig. 4e of the paper)."""

    expansion: int = 1

    def __init__(self, *, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        # a projection sees the pre-activated input, as the authors' code; the identity sees x
        identity = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + identity


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3 (with the stride), BN-ReLU-conv1x1 to 4x, plus the identity."""

    expansion: int = 4

    def __init__(self, *, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv1x1(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        identity = x if self.downsample is None else self.downsample(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + identity


Block = type[PreActBasicBlock] | type[PreActBottleneck]


class _PreActNet(_Net):
    """Stages of pre-activation blocks and the final BN-ReLU; the stem is the family's."""

    def make_downsample(self, inplanes: int, planes: int, stride: int) -> nn.Module | None:
        if self.shortcut_type == "A" or (stride == 1 and inplanes == planes):
            return super().make_downsample(inplanes, planes, stride)  # option A, or none
        return conv1x1(inplanes, planes, stride)  # no BN: its input is already pre-activated

    def forward_final(self, x: Tensor) -> Tensor:
        # the last block's sum is not yet activated: BN-ReLU before pooling (Fig. 1b)
        return self.relu(self.bn_final(x))


class PreActResNet(_PreActNet):
    """ImageNet pre-activation ResNet: conv1 7x7 stride 2 and max-pool, four stages, BN-ReLU, fc."""

    def __init__(self, block: Block, layers: tuple[int, int, int, int], *, num_classes: int = 1000,
                 in_chans: int = 3, small_input: bool = False, **head: Unpack[HeadOptions]) -> None:
        super().__init__()
        self.inplanes, self.block_args = 64, {}
        if small_input:
            self.conv1 = conv3x3(in_chans, 64)
        else:
            self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.bn_final = nn.BatchNorm2d(512 * block.expansion)
        self.relu = nn.ReLU(inplace=True)
        stride = 1 if small_input else 4
        for i, planes in enumerate((64, 128, 256, 512)):
            self.add_feature(f"layer{i + 1}", planes * block.expansion, stride * 2 ** i)
        self.init_head(512 * block.expansion, num_classes, **head)
        self.init_weights()

    def forward_stem(self, x: Tensor) -> Tensor:
        # no BN-ReLU here: the first block pre-activates its input
        return self.maxpool(self.conv1(x))

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.forward_stem(x)  # conv1, maxpool
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return self.forward_final(x)  # bn_final, relu


class PreActCifarResNet(_PreActNet):
    """CIFAR pre-activation ResNet: conv1 3x3 to 16 channels, three stages at 16/32/64 (x4 for
    bottlenecks) on 32/16/8 px maps, BN-ReLU, fc. ``depth`` is 6n+2 (basic) or 9n+2 (bottleneck)."""

    def __init__(self, depth: int, *, bottleneck: bool = False, num_classes: int = 10, in_chans: int = 3,
                 shortcut_type: Literal["A", "B"] = "B", **head: Unpack[HeadOptions]) -> None:
        super().__init__()
        per_block = 3 if bottleneck else 2
        if (depth - 2) % (3 * per_block) or depth < 2 + 3 * per_block:
            raise ValueError(f"a CIFAR pre-activation ResNet has {3 * per_block}n+2 layers, not {depth}")
        if shortcut_type not in ("A", "B"):
            raise UserError(f"shortcut_type must be 'A' or 'B', got {shortcut_type!r}")
        if shortcut_type == "A" and bottleneck:
            raise UserError("shortcut_type 'A' is for the basic-block nets; the bottlenecks need projections")
        block: Block = PreActBottleneck if bottleneck else PreActBasicBlock
        n = (depth - 2) // (3 * per_block)
        self.shortcut_type, self.inplanes, self.block_args = shortcut_type, 16, {}
        self.conv1 = conv3x3(in_chans, 16)
        self.layer1 = self._make_layer(block, 16, n)
        self.layer2 = self._make_layer(block, 32, n, stride=2)
        self.layer3 = self._make_layer(block, 64, n, stride=2)
        self.bn_final = nn.BatchNorm2d(64 * block.expansion)
        self.relu = nn.ReLU(inplace=True)
        for i, planes in enumerate((16, 32, 64)):
            self.add_feature(f"layer{i + 1}", planes * block.expansion, 2 ** i)
        self.init_head(64 * block.expansion, num_classes, **head)
        self.init_weights()

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.conv1(x)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.forward_stem(x)  # conv1
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.forward_final(x)  # bn_final, relu


class PreActImageNetOptions(HeadOptions, total=False):
    small_input: bool  # 3x3 stride-1 conv1 and no max-pool, for images of about 32 px


class PreActCifarOptions(HeadOptions, total=False):
    shortcut_type: Literal["A", "B"]  # B (default): 1x1 projections; A: zero-padding


@register_model
def preact_resnet18(*, num_classes: int = 1000, in_chans: int = 3,
                    **kwargs: Unpack[PreActImageNetOptions]) -> PreActResNet:
    """Pre-activation ResNet-18 (He et al. 2016, arXiv:1603.05027, Fig. 4e blocks)."""
    return PreActResNet(PreActBasicBlock, (2, 2, 2, 2), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def preact_resnet34(*, num_classes: int = 1000, in_chans: int = 3,
                    **kwargs: Unpack[PreActImageNetOptions]) -> PreActResNet:
    """Pre-activation ResNet-34 (He et al. 2016, arXiv:1603.05027, Fig. 4e blocks)."""
    return PreActResNet(PreActBasicBlock, (3, 4, 6, 3), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(input_size=CIFAR_INPUT)
def preact_resnet20(*, num_classes: int = 10, in_chans: int = 3,
                    **kwargs: Unpack[PreActCifarOptions]) -> PreActCifarResNet:
    """Pre-activation ResNet-20 for CIFAR-10, 0.27M params (He et al. 2016, arXiv:1603.05027)."""
    return PreActCifarResNet(20, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(input_size=CIFAR_INPUT)
def preact_resnet32(*, num_classes: int = 10, in_chans: int = 3,
                    **kwargs: Unpack[PreActCifarOptions]) -> PreActCifarResNet:
    """Pre-activation ResNet-32 for CIFAR-10, 0.46M params (He et al. 2016, arXiv:1603.05027)."""
    return PreActCifarResNet(32, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(input_size=CIFAR_INPUT)
def preact_resnet44(*, num_classes: int = 10, in_chans: int = 3,
                    **kwargs: Unpack[PreActCifarOptions]) -> PreActCifarResNet:
    """Pre-activation ResNet-44 for CIFAR-10, 0.66M params (He et al. 2016, arXiv:1603.05027)."""
    return PreActCifarResNet(44, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(input_size=CIFAR_INPUT)
def preact_resnet56(*, num_classes: int = 10, in_chans: int = 3,
                    **kwargs: Unpack[PreActCifarOptions]) -> PreActCifarResNet:
    """Pre-activation ResNet-56 for CIFAR-10, 0.85M params (He et al. 2016, arXiv:1603.05027)."""
    return PreActCifarResNet(56, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(input_size=CIFAR_INPUT)
def preact_resnet110(*, num_classes: int = 10, in_chans: int = 3,
                     **kwargs: Unpack[PreActCifarOptions]) -> PreActCifarResNet:
    """Pre-activation ResNet-110 for CIFAR-10, 1.7M params (He et al. 2016, arXiv:1603.05027, Table 2)."""
    return PreActCifarResNet(110, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(input_size=CIFAR_INPUT)
def preact_resnet164(*, num_classes: int = 10, in_chans: int = 3,
                     **kwargs: Unpack[HeadOptions]) -> PreActCifarResNet:
    """Pre-activation ResNet-164, bottlenecks, 1.7M params on CIFAR-10 (He et al. 2016, arXiv:1603.05027, Table 3)."""
    return PreActCifarResNet(164, bottleneck=True, num_classes=num_classes, in_chans=in_chans, **kwargs)
