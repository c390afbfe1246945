"""ResNet-9 of Page's DAWNBench series, "How to train your ResNet" (Myrtle.ai, 2018): the residual
net behind the fastest single-GPU CIFAR-10 runs to 94% before airbench (about 26 s on a V100 in
its final form), and the fast recipe's net for CIFAR on a GPU.

prep (conv-bn-relu, 64) -> layer1 (128, max-pool, + a residual pair) -> layer2 (256, max-pool)
-> layer3 (512, max-pool, + a residual pair) -> global max-pool -> fc, logits scaled by 0.125.
Eight convolutions and the classifier: nine layers. The two residual pairs are
``x + relu(bn(conv(relu(bn(conv(x))))))``, as in the original.
"""
from __future__ import annotations

from torch import Tensor, nn

from ._registry import CIFAR_INPUT, register_model
from .heads import Backbone, HeadOptions, Unpack


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    """3x3 conv (no bias: BN follows), BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Residual(nn.Module):
    """x + f(x) with f two conv-bn-relu layers at one width; the addition has no ReLU after it."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.res = nn.Sequential(conv_bn(width, width), conv_bn(width, width))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.res(x)


class ResNet9(Backbone):
    """prep, three stages, global max-pool and a bias-free fc whose logits are scaled by 0.125."""

    first_conv = "prep.0"
    head_bias = False  # Page's classifier has no bias

    def __init__(self, *, num_classes: int = 10, in_chans: int = 3, width: int = 64,
                 logit_scale: float = 0.125, **head: Unpack[HeadOptions]) -> None:
        super().__init__()
        w = width
        self.prep = conv_bn(in_chans, w)
        self.layer1 = nn.Sequential(conv_bn(w, 2 * w), nn.MaxPool2d(2), Residual(2 * w))
        self.layer2 = nn.Sequential(conv_bn(2 * w, 4 * w), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(conv_bn(4 * w, 8 * w), nn.MaxPool2d(2), Residual(8 * w))
        for i in range(3):
            self.add_feature(f"layer{i + 1}", 2 ** (i + 1) * w, 2 ** (i + 1))
        self.init_head(8 * w, num_classes, **{"global_pool": "max", **head})  # Page pools by max
        # Page: "scaling the final layer's output by 0.125" keeps the initial logits small,
        # which his runs found worth about as much as a smaller final-layer init.
        self.logit_scale = logit_scale

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.prep(x)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.prep(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        out = super().forward_head(x, pre_logits)
        return out if pre_logits or not self.num_classes else out * self.logit_scale


@register_model(input_size=CIFAR_INPUT)
def resnet9(*, num_classes: int = 10, in_chans: int = 3, width: int = 64,
            **kwargs: Unpack[HeadOptions]) -> ResNet9:
    """ResNet-9 of Page's DAWNBench runs (Myrtle.ai 2018): 6.6M params, 94% on CIFAR-10 in 24 epochs."""
    return ResNet9(num_classes=num_classes, in_chans=in_chans, width=width, **kwargs)
