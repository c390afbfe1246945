"""ResNeXt (Xie et al. 2017, arXiv:1611.05431) and Wide ResNet (Zagoruyko & Komodakis 2016,
arXiv:1605.07146) as torchvision builds them: the ImageNet :class:`ResNet` with grouped or
wider bottlenecks, torchvision's state_dict schema, so that its ImageNet weights load as they are.
"""
from __future__ import annotations

from ._registry import register_model
from .blocks import Bottleneck
from .heads import Unpack
from .resnet import ImageNetOptions, ResNet


@register_model
def resnext50_32x4d(*, num_classes: int = 1000, in_chans: int = 3,
                    **kwargs: Unpack[ImageNetOptions]) -> ResNet:
    """ResNeXt-50 32x4d: 32 groups of width 4 (Xie et al. 2017, arXiv:1611.05431, Table 1)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, in_chans=in_chans, groups=32,
                  width_per_group=4, **kwargs)


@register_model
def resnext101_32x8d(*, num_classes: int = 1000, in_chans: int = 3,
                     **kwargs: Unpack[ImageNetOptions]) -> ResNet:
    """ResNeXt-101 32x8d: 32 groups of width 8 (Xie et al. 2017, arXiv:1611.05431)."""
    return ResNet(Bottleneck, (3, 4, 23, 3), num_classes=num_classes, in_chans=in_chans, groups=32,
                  width_per_group=8, **kwargs)


@register_model
def wide_resnet50_2(*, num_classes: int = 1000, in_chans: int = 3,
                    **kwargs: Unpack[ImageNetOptions]) -> ResNet:
    """Wide ResNet-50-2: bottlenecks twice as wide (Zagoruyko & Komodakis 2016, arXiv:1605.07146)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, in_chans=in_chans,
                  width_per_group=128, **kwargs)


@register_model
def wide_resnet101_2(*, num_classes: int = 1000, in_chans: int = 3,
                     **kwargs: Unpack[ImageNetOptions]) -> ResNet:
    """Wide ResNet-101-2: bottlenecks twice as wide (Zagoruyko & Komodakis 2016, arXiv:1605.07146)."""
    return ResNet(Bottleneck, (3, 4, 23, 3), num_classes=num_classes, in_chans=in_chans,
                  width_per_group=128, **kwargs)
