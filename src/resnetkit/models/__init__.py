"""The model zoo: residual networks of He et al. 2015 (arXiv:1512.03385) behind a string registry.

>>> from resnetkit.models import create_model, list_models
>>> model = create_model("resnet20", num_classes=10, in_chans=1)
>>> list_models("plain*")[:2]
['plain18', 'plain34']
"""
from __future__ import annotations

from ._registry import ModelInfo, create_model, describe, list_models, model_info, register_model
from .blocks import BasicBlock, Bottleneck, ShortcutA, SimpleBlock
from .resnet import HEAD, CifarResNet, ResNet, SimpleResNet
from .resnet9 import ResNet9

__all__ = [
    "HEAD", "BasicBlock", "Bottleneck", "CifarResNet", "ModelInfo", "ResNet", "ResNet9", "ShortcutA",
    "SimpleBlock", "SimpleResNet", "create_model", "describe", "list_models", "model_info", "register_model",
]
