"""Residual blocks of He et al. 2015 (arXiv:1512.03385) and their plain twins.

A block computes ``y = relu(F(x) + identity)`` where ``identity`` is ``x`` itself or, where the
shapes change, ``downsample(x)``: a 1x1 convolution with BatchNorm (the paper's option B, and
torchvision's layout) or :class:`ShortcutA` (option A: subsample and zero-pad, no parameters).
``shortcut=False`` gives the block's plain twin: the same layers, ``y = relu(F(x))``, as the
paper's plain nets of section 4.1.

Layer names follow torchvision (``conv1, bn1, conv2, bn2[, conv3, bn3], downsample.0/.1``) so
that its weights load as they are.
"""
from __future__ import annotations

from torch import Tensor, nn

from ._ops import SubsamplePadFn, needs_grad, subsample_pad


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    # No bias: the BatchNorm that follows every convolution has its own.
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def projection(inplanes: int, planes: int, stride: int = 1) -> nn.Sequential:
    """Option B shortcut: 1x1 convolution + BatchNorm, as torchvision's ``downsample``."""
    return nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))


class ShortcutA(nn.Module):
    """Option A shortcut (He et al. 2015, section 4.2): identity with stride-``stride``
    subsampling and the extra ``planes - inplanes`` channels filled with zeros; no parameters."""

    def __init__(self, *, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        if planes < inplanes:
            raise ValueError(f"option A can only add channels, not go from {inplanes} to {planes}")
        self.stride = stride
        self.extra = planes - inplanes

    def forward(self, x: Tensor) -> Tensor:
        # Takes the pixels a stride-2, padding-1 3x3 convolution centres on: ceil(H / 2) of them.
        if needs_grad(x):  # its gradient keeps the input's memory format (models/_ops.py)
            return SubsamplePadFn.apply(x, self.stride, self.extra)
        return subsample_pad(x, self.stride, self.extra)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, zero_channels={self.extra}"


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (Fig. 2 left of the paper); the first one carries the stride."""

    expansion: int = 1

    def __init__(self, *, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, shortcut: bool = True) -> None:
        super().__init__()
        if downsample is not None and not shortcut:
            raise ValueError("a plain block (shortcut=False) has no downsample shortcut")
        self.shortcut = shortcut
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut:
            identity = x if self.downsample is None else self.downsample(x)
            out = out + identity
        return self.relu(out)

    def zero_init_last(self) -> None:
        """Start as the identity: zero the last BN's scale (Goyal et al. 2017, arXiv:1706.02677)."""
        nn.init.zeros_(self.bn2.weight)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand by ``expansion`` (Fig. 5 right of the paper).

    The stride sits on the 3x3 convolution, as in torchvision ("ResNet V1.5"), not on the
    first 1x1 as in the paper: about 0.5% better top-1 on ImageNet, and torchvision's weights
    expect it.
    """

    expansion: int = 4

    def __init__(self, *, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, shortcut: bool = True, groups: int = 1,
                 base_width: int = 64) -> None:
        super().__init__()
        if downsample is not None and not shortcut:
            raise ValueError("a plain block (shortcut=False) has no downsample shortcut")
        self.shortcut = shortcut
        # ResNeXt's cardinality (groups) x bottleneck width per group (Xie et al. 2017,
        # arXiv:1611.05431, Table 1); Wide ResNet doubles base_width (Zagoruyko & Komodakis 2016,
        # arXiv:1605.07146). 64 and 1 give the plain bottleneck: width == planes.
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut:
            identity = x if self.downsample is None else self.downsample(x)
            out = out + identity
        return self.relu(out)

    def zero_init_last(self) -> None:
        """Start as the identity: zero the last BN's scale (Goyal et al. 2017, arXiv:1706.02677)."""
        nn.init.zeros_(self.bn3.weight)


class SimpleBlock(BasicBlock):
    """The tutorial block: ``y = relu(x + F(x))``, F = conv3x3-BN-ReLU-conv3x3-BN at one width.

    A :class:`BasicBlock` whose input and output shapes are equal, so the shortcut is always
    the identity. ``post_act=False`` gives the other tutorial's block,
    ``y = x + relu(bn2(conv2(relu(bn1(conv1(x))))))``: the ReLU inside the branch, none after
    the sum. ``hidden`` is the width between the two convolutions (default ``planes``).
    """

    def __init__(self, *, planes: int, shortcut: bool = True, hidden: int | None = None,
                 post_act: bool = True) -> None:
        super().__init__(inplanes=planes, planes=planes, shortcut=shortcut)
        self.post_act = post_act
        if hidden is not None and hidden != planes:  # replaced in place: the names keep their order
            self.conv1 = conv3x3(planes, hidden)
            self.bn1 = nn.BatchNorm2d(hidden)
            self.conv2 = conv3x3(hidden, planes)

    def forward(self, x: Tensor) -> Tensor:
        if self.post_act:
            return super().forward(x)
        out = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
        return x + out if self.shortcut else out


def make_shortcut(*, inplanes: int, planes: int, stride: int, kind: str) -> nn.Module | None:
    """The ``downsample`` a residual block needs: None where shapes match, else option A or B."""
    if stride == 1 and inplanes == planes:
        return None
    if kind == "A":
        return ShortcutA(inplanes=inplanes, planes=planes, stride=stride)
    return projection(inplanes, planes, stride)


def residual_blocks(module: nn.Module) -> list[nn.Module]:
    """Every block of ``module`` that has a last BatchNorm to zero."""
    return [m for m in module.modules() if isinstance(m, (BasicBlock, Bottleneck))]


__all__ = ["BasicBlock", "Bottleneck", "SimpleBlock", "ShortcutA", "conv1x1", "conv3x3",
           "make_shortcut", "projection", "residual_blocks"]
