"""Residual networks of He et al. 2015, "Deep Residual Learning for Image Recognition"
(arXiv:1512.03385), and the plain nets they are compared with.

- :class:`ResNet`: the ImageNet nets of Table 1 (resnet18..152), with torchvision's
  state_dict schema so that its weights load as they are.
- :class:`CifarResNet`: the 6n+2-layer CIFAR-10 nets of section 4.2 (resnet20..110), widths
  16/32/64, option A (zero-padding) shortcuts by default.
- :class:`SimpleResNet`: a stem and a few equal-width residual blocks; the tutorial net.

Every net has the attributes ``conv1, bn1, relu, layer1.., avgpool, fc`` and a ``stages``
property, and takes any input of 8 px and more (the pooling before ``fc`` is adaptive).
"""
from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

from torch import Tensor, nn

from ..errors import UserError
from ._registry import CIFAR_INPUT, register_model
from .blocks import BasicBlock, Bottleneck, SimpleBlock, conv3x3, make_shortcut, residual_blocks
from .heads import Backbone, HeadOptions, Unpack


HEAD = "fc"  # torchvision's name of the classifier; a family may name its own (``Backbone.head_name``)


class _Net(Backbone):
    """What every net here shares: the head and feature API, frozen BatchNorm staying in eval
    mode (both from :class:`Backbone`), the stem, the stages and the weight initialization."""

    shortcut: bool = True  # False: the plain twin, no shortcuts and no downsample
    shortcut_type: str = "B"  # where the shape changes: "A" zero-pads, "B" projects
    inplanes: int  # the channels the next block receives, as _make_layer builds the stages
    block_args: dict[str, Any]  # what every block of _make_layer takes besides its shape

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        """A stage: ``blocks`` blocks of ``planes * block.expansion`` output channels; the first
        one carries the stride and, where the shape changes, the ``downsample`` shortcut."""
        layers = []
        for i in range(blocks):
            s, out = (stride if i == 0 else 1), planes * block.expansion
            downsample = self.make_downsample(self.inplanes, out, s) if self.shortcut else None
            layers.append(block(inplanes=self.inplanes, planes=planes, stride=s, downsample=downsample,
                                **self.block_args))
            self.inplanes = out
        return nn.Sequential(*layers)

    def make_downsample(self, inplanes: int, planes: int, stride: int) -> nn.Module | None:
        return make_shortcut(inplanes=inplanes, planes=planes, stride=stride, kind=self.shortcut_type)

    def forward_stem(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        # The CIFAR nets have no max-pool at all (an Identity would add a row to their summary).
        return self.maxpool(x) if "maxpool" in self._modules else x

    def init_weights(self, zero_init_residual: bool = False) -> None:
        # He et al. 2015 (arXiv:1502.01852) initialization, as torchvision.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each block starts as the identity: +0.2~0.3% top-1 (Goyal et al. 2017, arXiv:1706.02677).
            # Only for residual blocks: a plain block whose last BN is zero outputs zeros.
            for block in residual_blocks(self):
                if block.shortcut:
                    block.zero_init_last()


class ResNet(_Net):
    """ImageNet ResNet (Table 1 of the paper), state_dict-compatible with torchvision's.

    ``small_input`` swaps the 7x7 stride-2 stem and its max-pool for a 3x3 stride-1 conv and
    ``nn.Identity()`` (for 32 px images, as timm's and most CIFAR recipes do); the names stay, so
    every other weight of a torchvision checkpoint still loads. ``shortcut=False`` builds the
    plain net of the same depth (no shortcuts, so no projection convolutions either).
    ``groups`` and ``width_per_group`` give ResNeXt and Wide ResNet bottlenecks, as torchvision's.
    ``head`` takes :class:`~resnetkit.models.heads.HeadOptions` (global_pool, drop_rate,
    features_only).
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, int, int, int], *,
                 num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                 zero_init_residual: bool = False, shortcut: bool = True, groups: int = 1,
                 width_per_group: int = 64, block_args: Mapping[str, Any] | None = None,
                 **head: Unpack[HeadOptions]) -> None:
        super().__init__()
        if not issubclass(block, Bottleneck) and (groups, width_per_group) != (1, 64):
            raise ValueError("BasicBlock only supports groups=1 and width_per_group=64")
        self.shortcut, self.inplanes = shortcut, 64
        self.block_args = {**(block_args or {}), "shortcut": shortcut}  # e.g. a dynamic block's num_kernels
        if issubclass(block, Bottleneck):
            self.block_args.update(groups=groups, base_width=width_per_group)
        stride = 1 if small_input else 4
        if small_input:
            self.conv1 = conv3x3(in_chans, 64)
        else:
            self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        # With small_input the name 'maxpool' remains, for weight compatibility.
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        for i, planes in enumerate((64, 128, 256, 512)):
            self.add_feature(f"layer{i + 1}", planes * block.expansion, stride * 2 ** i)
        self.init_head(512 * block.expansion, num_classes, **head)
        self.init_weights(zero_init_residual)

    def forward_features(self, x: Tensor) -> Tensor:
        """torchvision's ``_forward_impl`` up to the pooling; ``forward`` then applies
        :meth:`forward_head` (avgpool, flatten, dropout, fc)."""
        x = self.forward_stem(x)  # conv1, bn1, relu, maxpool
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return x


class CifarResNet(_Net):
    """The CIFAR-10 nets of section 4.2: a 3x3 conv, three stages of n BasicBlocks each at
    widths 16/32/64 on 32/16/8 px maps, global average pool, fc: 6n+2 weighted layers.

    ``shortcut_type`` "A" (the paper's choice for these nets) zero-pads the new channels and
    subsamples, with no parameters; "B" uses 1x1 projections where the shape changes.
    ``widths`` and ``stem_stride`` leave the paper's shape for speed: wider stages on a
    stride-2 stem cost fewer FLOPs per parameter, which pays on CPUs (the ``fast`` recipe).
    """

    def __init__(self, depth: int, *, num_classes: int = 10, in_chans: int = 3,
                 shortcut_type: Literal["A", "B"] = "A", zero_init_residual: bool = False,
                 shortcut: bool = True, widths: Sequence[int] = (16, 32, 64),
                 stem_stride: int = 1, block: type[BasicBlock] = BasicBlock,
                 block_args: Mapping[str, Any] | None = None, **head: Unpack[HeadOptions]) -> None:
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"a CIFAR ResNet has 6n+2 layers (8, 20, 32, ...), not {depth}")
        if shortcut_type not in ("A", "B"):
            raise UserError(f"shortcut_type must be 'A' or 'B', got {shortcut_type!r}")
        if (not isinstance(widths, (list, tuple)) or len(widths) != 3
                or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths)):
            raise UserError(f"widths must be three positive channel counts, got {widths!r} "
                            f"(e.g. --model-arg 'widths=[16,32,64]')")
        if stem_stride not in (1, 2) or isinstance(stem_stride, bool):
            raise UserError(f"stem_stride must be 1 or 2, got {stem_stride!r} (e.g. --model-arg stem_stride=2)")
        if shortcut and shortcut_type == "A" and list(widths) != sorted(widths):
            raise UserError(f"shortcut_type 'A' zero-pads new channels, so widths must not decrease, got "
                            f"{list(widths)}; reorder them or use --model-arg shortcut_type=B")
        n = (depth - 2) // 6
        w1, w2, w3 = (int(w) for w in widths)
        self.shortcut, self.shortcut_type, self.inplanes = shortcut, shortcut_type, w1
        self.block_args = {**(block_args or {}), "shortcut": shortcut}
        self.conv1 = conv3x3(in_chans, w1, stride=stem_stride)
        self.bn1 = nn.BatchNorm2d(w1)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, w1, n)
        self.layer2 = self._make_layer(block, w2, n, stride=2)
        self.layer3 = self._make_layer(block, w3, n, stride=2)
        for i, w in enumerate((w1, w2, w3)):
            self.add_feature(f"layer{i + 1}", w, stem_stride * 2 ** i)
        self.init_head(w3, num_classes, **head)
        self.init_weights(zero_init_residual)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.forward_stem(x)  # conv1, bn1, relu
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return x


class SimpleResNet(_Net):
    """Stem conv3x3 -> ``width`` channels, ``depth`` equal-width residual blocks
    ``y = relu(x + F(x))``, global average pool, fc. Full resolution throughout: for small
    images such as 8x8 digits or 28x28 MNIST. ``post_act=False`` and ``hidden`` choose the
    block ``y = x + relu(F(x))`` with ``hidden`` channels inside (:class:`SimpleBlock`)."""

    def __init__(self, *, num_classes: int = 10, in_chans: int = 3, width: int = 32, depth: int = 4,
                 shortcut: bool = True, hidden: int | None = None, post_act: bool = True,
                 **head: Unpack[HeadOptions]) -> None:
        super().__init__()
        if hidden is not None and (not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1):
            raise UserError(f"hidden must be a positive integer (channels inside a block), got {hidden!r}")
        self.conv1 = conv3x3(in_chans, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(*(SimpleBlock(planes=width, shortcut=shortcut, hidden=hidden, post_act=post_act)
                                      for _ in range(depth)))
        self.add_feature("layer1", width, 1)
        self.init_head(width, num_classes, **head)
        self.init_weights()

    def forward_features(self, x: Tensor) -> Tensor:
        return self.layer1(self.forward_stem(x))


# ---------------------------------------------------------------- options (checked by create_model)
class ImageNetOptions(HeadOptions, total=False):
    small_input: bool  # 3x3 stride-1 conv1 and no max-pool, for images of about 32 px
    zero_init_residual: bool


class PlainImageNetOptions(HeadOptions, total=False):
    small_input: bool


class CifarOptions(HeadOptions, total=False):
    shortcut_type: Literal["A", "B"]
    zero_init_residual: bool
    widths: Sequence[int]
    stem_stride: int


# ---------------------------------------------------------------- ImageNet nets (Table 1)
@register_model
def resnet18(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Unpack[ImageNetOptions]) -> ResNet:
    """ResNet-18 (He et al. 2015, arXiv:1512.03385, Table 1)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def resnet34(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Unpack[ImageNetOptions]) -> ResNet:
    """ResNet-34 (He et al. 2015, arXiv:1512.03385, Table 1)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def resnet50(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Unpack[ImageNetOptions]) -> ResNet:
    """ResNet-50, bottleneck blocks (He et al. 2015, arXiv:1512.03385, Table 1)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def resnet101(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Unpack[ImageNetOptions]) -> ResNet:
    """ResNet-101, bottleneck blocks (He et al. 2015, arXiv:1512.03385, Table 1)."""
    return ResNet(Bottleneck, (3, 4, 23, 3), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def resnet152(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Unpack[ImageNetOptions]) -> ResNet:
    """ResNet-152, bottleneck blocks (He et al. 2015, arXiv:1512.03385, Table 1)."""
    return ResNet(Bottleneck, (3, 8, 36, 3), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def plain18(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Unpack[PlainImageNetOptions]) -> ResNet:
    """Plain 18-layer net: ResNet-18 without shortcuts (He et al. 2015, arXiv:1512.03385, Fig. 4)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, in_chans=in_chans, shortcut=False,
                  **kwargs)


@register_model
def plain34(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Unpack[PlainImageNetOptions]) -> ResNet:
    """Plain 34-layer net: ResNet-34 without shortcuts (He et al. 2015, arXiv:1512.03385, Fig. 3)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes=num_classes, in_chans=in_chans, shortcut=False,
                  **kwargs)


# ---------------------------------------------------------------- CIFAR-10 nets (section 4.2, Table 6)
@register_model(input_size=CIFAR_INPUT)
def resnet8(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Unpack[CifarOptions]) -> CifarResNet:
    """ResNet-8, n=1: the smallest 6n+2 CIFAR net (He et al. 2015, arXiv:1512.03385, sec. 4.2)."""
    return CifarResNet(8, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(input_size=CIFAR_INPUT)
def resnet20(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Unpack[CifarOptions]) -> CifarResNet:
    """ResNet-20 for CIFAR-10, 0.27M params (He et al. 2015, arXiv:1512.03385, Table 6)."""
    return CifarResNet(20, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(input_size=CIFAR_INPUT)
def resnet32(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Unpack[CifarOptions]) -> CifarResNet:
    """ResNet-32 for CIFAR-10, 0.46M params (He et al. 2015, arXiv:1512.03385, Table 6)."""
    return CifarResNet(32, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(input_size=CIFAR_INPUT)
def resnet44(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Unpack[CifarOptions]) -> CifarResNet:
    """ResNet-44 for CIFAR-10, 0.66M params (He et al. 2015, arXiv:1512.03385, Table 6)."""
    return CifarResNet(44, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(input_size=CIFAR_INPUT)
def resnet56(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Unpack[CifarOptions]) -> CifarResNet:
    """ResNet-56 for CIFAR-10, 0.85M params (He et al. 2015, arXiv:1512.03385, Table 6)."""
    return CifarResNet(56, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(input_size=CIFAR_INPUT)
def resnet110(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Unpack[CifarOptions]) -> CifarResNet:
    """ResNet-110 for CIFAR-10, 1.7M params (He et al. 2015, arXiv:1512.03385, Table 6)."""
    return CifarResNet(110, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(input_size=CIFAR_INPUT)
def plain8(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Unpack[HeadOptions]) -> CifarResNet:
    """Plain 8-layer CIFAR net: resnet8 without shortcuts (He et al. 2015, arXiv:1512.03385, sec. 4.2)."""
    return CifarResNet(8, num_classes=num_classes, in_chans=in_chans, shortcut=False, **kwargs)


@register_model(input_size=CIFAR_INPUT)
def plain20(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Unpack[HeadOptions]) -> CifarResNet:
    """Plain 20-layer CIFAR net (He et al. 2015, arXiv:1512.03385, sec. 4.2, Fig. 6 left)."""
    return CifarResNet(20, num_classes=num_classes, in_chans=in_chans, shortcut=False, **kwargs)


@register_model(input_size=CIFAR_INPUT)
def plain32(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Unpack[HeadOptions]) -> CifarResNet:
    """Plain 32-layer CIFAR net (He et al. 2015, arXiv:1512.03385, sec. 4.2, Fig. 6 left)."""
    return CifarResNet(32, num_classes=num_classes, in_chans=in_chans, shortcut=False, **kwargs)


@register_model(input_size=CIFAR_INPUT)
def plain44(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Unpack[HeadOptions]) -> CifarResNet:
    """Plain 44-layer CIFAR net (He et al. 2015, arXiv:1512.03385, sec. 4.2, Fig. 6 left)."""
    return CifarResNet(44, num_classes=num_classes, in_chans=in_chans, shortcut=False, **kwargs)


@register_model(input_size=CIFAR_INPUT)
def plain56(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Unpack[HeadOptions]) -> CifarResNet:
    """Plain 56-layer CIFAR net: trains worse than plain20 (He et al. 2015, arXiv:1512.03385, Fig. 6)."""
    return CifarResNet(56, num_classes=num_classes, in_chans=in_chans, shortcut=False, **kwargs)


@register_model(input_size=CIFAR_INPUT)
def plain110(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Unpack[HeadOptions]) -> CifarResNet:
    """Plain 110-layer CIFAR net (He et al. 2015, arXiv:1512.03385, sec. 4.2)."""
    return CifarResNet(110, num_classes=num_classes, in_chans=in_chans, shortcut=False, **kwargs)


# ---------------------------------------------------------------- the tutorial nets
@register_model(input_size=CIFAR_INPUT)
def simple_resnet(*, num_classes: int = 10, in_chans: int = 3, width: int = 32, depth: int = 4,
                  hidden: int | None = None, post_act: bool = True,
                  **kwargs: Unpack[HeadOptions]) -> SimpleResNet:
    """Stem + `depth` blocks y = relu(x + F(x)) at one width; post_act=false, hidden=H: y = x + relu(F(x)) (arXiv:1512.03385, Fig. 2)."""
    return SimpleResNet(num_classes=num_classes, in_chans=in_chans, width=width, depth=depth, hidden=hidden,
                        post_act=post_act, **kwargs)


@register_model(input_size=CIFAR_INPUT)
def simple_plain(*, num_classes: int = 10, in_chans: int = 3, width: int = 32,
                 depth: int = 4, **kwargs: Unpack[HeadOptions]) -> SimpleResNet:
    """simple_resnet without shortcuts, y = relu(F(x)): its plain twin (He et al. 2015, arXiv:1512.03385)."""
    return SimpleResNet(num_classes=num_classes, in_chans=in_chans, width=width, depth=depth,
                        shortcut=False, **kwargs)
