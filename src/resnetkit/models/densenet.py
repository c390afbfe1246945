"""DenseNet-BC (Huang et al. 2017, "Densely Connected Convolutional Networks", arXiv:1608.06993)
with torchvision's state_dict schema (``features.conv0 .. features.norm5``, ``classifier``), so
that its ImageNet weights load as they are.

Each layer of a dense block sees the concatenation of every earlier output of the block
(BN-ReLU-1x1 conv to ``bn_size * growth_rate`` channels, BN-ReLU-3x3 conv to ``growth_rate``);
transitions between blocks halve the channels (compression 0.5) and the resolution.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_model
from .heads import Backbone, HeadOptions, Unpack

# torchvision's checkpoints predate the ban on dots in module names and hold keys such as
# "features.denseblock1.denselayer1.norm.1.weight" for today's "...norm1.weight"; its loader
# renames them with this pattern (torchvision.models.densenet._load_state_dict).
LEGACY_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def remap_legacy_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``denselayerN.norm.1.weight`` -> ``denselayerN.norm1.weight``, as torchvision's loader."""
    out = {}
    for key, value in state_dict.items():
        m = LEGACY_KEY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


class DenseLayer(nn.Module):
    """BN-ReLU-Conv(1x1)-BN-ReLU-Conv(3x3): ``growth_rate`` new channels (the paper's H_l, "-B")."""

    def __init__(self, *, num_input_features: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers ``denselayer1..``; the output concatenates input and all new maps."""

    def __init__(self, *, num_layers: int, num_input_features: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        for i in range(num_layers):
            self[f"denselayer{i + 1}"] = DenseLayer(num_input_features=num_input_features + i * growth_rate,
                                                    growth_rate=growth_rate, bn_size=bn_size)

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN-ReLU-1x1 conv to ``num_output_features``, then 2x2 average pooling."""

    def __init__(self, *, num_input_features: int, num_output_features: int) -> None:
        super().__init__(OrderedDict(
            norm=nn.BatchNorm2d(num_input_features), relu=nn.ReLU(inplace=True),
            conv=nn.Conv2d(num_input_features, num_output_features, kernel_size=1, bias=False),
            pool=nn.AvgPool2d(kernel_size=2, stride=2)))


class DenseNet(Backbone):
    """DenseNet-BC for ImageNet; the stages are the dense blocks (the transitions run between them)."""

    head_name = "classifier"
    first_conv = "features.conv0"

    def __init__(self, *, growth_rate: int = 32, block_config: tuple[int, ...] = (6, 12, 24, 16),
                 num_init_features: int = 64, bn_size: int = 4, num_classes: int = 1000, in_chans: int = 3,
                 **head: Unpack[HeadOptions]) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict(
            conv0=nn.Conv2d(in_chans, num_init_features, kernel_size=7, stride=2, padding=3, bias=False),
            norm0=nn.BatchNorm2d(num_init_features), relu0=nn.ReLU(inplace=True),
            pool0=nn.MaxPool2d(kernel_size=3, stride=2, padding=1)))
        channels, reduction = num_init_features, 4
        for i, num_layers in enumerate(block_config, start=1):
            if i > 1:  # compression 0.5 (the paper's "-C")
                self.features.add_module(f"transition{i - 1}", Transition(
                    num_input_features=channels, num_output_features=channels // 2))
                channels, reduction = channels // 2, reduction * 2
            self.features.add_module(f"denseblock{i}", DenseBlock(
                num_layers=num_layers, num_input_features=channels, growth_rate=growth_rate, bn_size=bn_size))
            channels += num_layers * growth_rate
            self.add_feature(f"features.denseblock{i}", channels, reduction)
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.feature_info[-1]["module"] = "features.norm5"  # the last output is through norm5 and ReLU
        self.init_head(channels, num_classes, **head)
        self.init_weights()

    def init_weights(self) -> None:
        # torchvision's ("official init from torch repo"): fan-in He normal, BN 1 and 0, bias 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @property
    def stages(self) -> list[tuple[str, nn.Module]]:
        return [(name, m) for name, m in self.features.named_children() if name.startswith("denseblock")]

    def forward_features(self, x: Tensor) -> Tensor:
        # torchvision's: features (conv0 .. denseblock4, norm5) in order, then ReLU
        return F.relu(self.features(x))

    def forward_stem(self, x: Tensor) -> Tensor:
        f = self.features
        return f.pool0(f.relu0(f.norm0(f.conv0(x))))

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        x = self.forward_stem(x)
        outs = []
        for name, block in self.stages:
            i = int(name[len("denseblock"):])
            if i > 1:
                x = getattr(self.features, f"transition{i - 1}")(x)
            x = block(x)
            outs.append(x)
        outs[-1] = self.forward_final(outs[-1])
        return outs

    def forward_final(self, x: Tensor) -> Tensor:
        return F.relu(self.features.norm5(x))

    def filter_state_dict(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return remap_legacy_keys(state_dict)


@register_model(min_size=29)
def densenet121(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Unpack[HeadOptions]) -> DenseNet:
    """DenseNet-121 (BC, k=32): 8.0M params (Huang et al. 2017, arXiv:1608.06993, Table 1)."""
    return DenseNet(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64,
                    num_classes=num_classes, in_chans=in_chans, **kwargs)
