"""The ResNet-18 of the d2l textbook (Zhang et al., "Dive into Deep Learning", section 8.6,
d2l.ai), block for block: biased convolutions, ``Residual(use_1x1conv)`` whose shortcut is a 1x1
convolution without BatchNorm, ``relu(Y + X)``; for 1-channel 96 px images (Fashion-MNIST
resized), 10 classes.

Names follow torchvision's where the parts match (``conv1, bn1, relu, maxpool, layer1..4,
avgpool, fc`` for the book's ``b1..b5`` and ``last``) and the book's inside a block (``conv1,
conv2, conv3, bn1, bn2``, registered in its order), so the book's trained parameters load by
position.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_model
from .heads import HeadOptions, Unpack
from .resnet import _Net


class D2LResidual(nn.Module):
    """d2l's ``Residual``: Y = bn2(conv2(relu(bn1(conv1(X))))); X through conv3 (1x1, stride)
    when ``use_1x1conv``; relu(Y + X). Every convolution has a bias, as ``nn.LazyConv2d``'s default."""

    def __init__(self, *, inplanes: int, num_channels: int, use_1x1conv: bool = False, strides: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(inplanes, num_channels, kernel_size=1, stride=strides) if use_1x1conv else None
        self.bn1 = nn.BatchNorm2d(num_channels)
        self.bn2 = nn.BatchNorm2d(num_channels)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.conv3 is not None:
            x = self.conv3(x)
        return F.relu(y + x)


class D2LResNet(_Net):
    """d2l's ``ResNet``: b1 (7x7/2 conv with bias, BN, ReLU, 3x3/2 max-pool), then one stage per
    ``(num_residuals, num_channels)`` of ``arch``; every stage but the first opens with a strided
    ``Residual(use_1x1conv=True)``; global average pool, linear."""

    def __init__(self, arch: tuple[tuple[int, int], ...], *, num_classes: int = 10, in_chans: int = 1,
                 **head: Unpack[HeadOptions]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels, reduction = 64, 4
        for i, (num_residuals, num_channels) in enumerate(arch):
            blocks = []
            for j in range(num_residuals):
                down = j == 0 and i > 0  # the book's "not first_block"
                blocks.append(D2LResidual(inplanes=channels, num_channels=num_channels, use_1x1conv=down,
                                          strides=2 if down else 1))
                channels = num_channels
            reduction *= 2 if i > 0 else 1
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.add_feature(f"layer{i + 1}", channels, reduction)
        self.init_head(channels, num_classes, **head)
        for m in self.modules():  # the book's d2l.init_cnn: Xavier-uniform weights, default biases
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)


@register_model(input_size=(1, 96, 96))
def d2l_resnet18(*, num_classes: int = 10, in_chans: int = 1, **kwargs: Unpack[HeadOptions]) -> D2LResNet:
    """d2l's ResNet-18: biased convs, Residual(use_1x1conv), 1x96x96 input (Zhang et al., d2l.ai, sec. 8.6; arXiv:2106.11342)."""
    return D2LResNet(((2, 64), (2, 128), (2, 256), (2, 512)), num_classes=num_classes, in_chans=in_chans, **kwargs)
