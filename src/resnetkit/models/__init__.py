"""The model zoo: residual networks of He et al. 2015 (arXiv:1512.03385) and their relatives
(ResNeXt, Wide ResNet, DenseNet, pre-activation and dynamic ResNets, the d2l textbook's ResNet-18)
behind a string registry, with timm's head and feature API.

>>> from resnetkit.models import create_model, list_models
>>> model = create_model("resnet20", num_classes=10, in_chans=1)
>>> list_models("plain*")[:2]
['plain18', 'plain34']
"""
from __future__ import annotations

from ._registry import ModelInfo, create_model, describe, list_models, model_info, register_model
from .blocks import BasicBlock, Bottleneck, ShortcutA, SimpleBlock
from .heads import Backbone, FeatureInfo, head_name
from .resnet import HEAD, CifarResNet, ResNet, SimpleResNet
from .resnet9 import ResNet9
from . import resnext  # noqa: F401, I001 - registers the ResNeXt and Wide ResNet builders, in this order
from .densenet import DenseNet
from .preact import PreActCifarResNet, PreActResNet
from .dynamic import DynamicConv2d
from .tutorial import D2LResNet

__all__ = [
    "HEAD", "Backbone", "BasicBlock", "Bottleneck", "CifarResNet", "D2LResNet", "DenseNet", "DynamicConv2d",
    "FeatureInfo", "ModelInfo", "PreActCifarResNet", "PreActResNet", "ResNet", "ResNet9", "ShortcutA",
    "SimpleBlock", "SimpleResNet", "create_model", "describe", "head_name", "list_models", "model_info", "register_model",
]
