"""Dynamic convolution (Chen et al. 2020, "Dynamic Convolution: Attention over Convolution
Kernels", CVPR, arXiv:1912.03458): each layer holds K kernels and mixes them per input with
attention weights pi_k(x) (softmax, summing to 1): W(x) = sum_k pi_k(x) W_k, b(x) = sum_k pi_k(x) b_k.

The attention is squeeze-and-excitation shaped: global average pooling, FC to C/4, ReLU, FC to K,
softmax with a temperature. The temperature starts at 30, which keeps the attention near uniform
so that every kernel learns, and falls linearly to 1 over the first 10 epochs (section 3.2); the
trainer calls the model's ``set_epoch(epoch)`` at the start of each epoch, and the temperature is
a buffer, so a checkpoint keeps it.

``dy_resnet18`` and ``dy_resnet20`` are resnet18 and resnet20 with every 3x3 convolution of their
blocks dynamic; the stem and the shortcuts stay static, as in the paper's DY-ResNet.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from ._registry import CIFAR_INPUT, register_model
from .blocks import BasicBlock
from .heads import HeadOptions, Unpack
from .resnet import CifarResNet, ResNet

START_TEMPERATURE = 30.0  # section 3.2: near-uniform attention at first
ANNEAL_EPOCHS = 10  # epochs over which the temperature falls linearly from 30 to 1


def temperature_at(epoch: int, anneal_epochs: int = ANNEAL_EPOCHS, start: float = START_TEMPERATURE) -> float:
    """The softmax temperature of (1-based) ``epoch``: ``start`` at epoch 1, 1 from epoch
    ``anneal_epochs + 1`` on, linear in between."""
    if anneal_epochs <= 0:
        return 1.0
    done = min(max(epoch - 1, 0), anneal_epochs) / anneal_epochs
    return start - (start - 1.0) * done


class KernelAttention(nn.Module):
    """pi(x): global average pool, FC to ``in_planes // reduction`` (at least 4), ReLU, FC to K
    (the logits)."""

    def __init__(self, in_planes: int, num_kernels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(4, in_planes // reduction)  # a floor: one ReLU unit alone may never fire
        self.fc1 = nn.Linear(in_planes, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, num_kernels)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.relu(self.fc1(x.mean((2, 3)))))


class DynamicConv2d(nn.Module):
    """A 2-d convolution with ``num_kernels`` kernels mixed per input by attention.

    ``weight`` is (K, out, in / groups, kh, kw). Eager mode aggregates the kernels per sample and
    runs one grouped convolution over the batch (the paper's cost: one convolution plus the
    aggregation). Under tracing, torch.compile and export the batch size may be symbolic, which a
    group count cannot be, so the layer runs the K kernels as one convolution and mixes the
    outputs: the same result, since a convolution is linear in its kernel, at K times the FLOPs.
    """

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, *, stride: int = 1, padding: int = 0,
                 groups: int = 1, bias: bool = False, num_kernels: int = 4, reduction: int = 4) -> None:
        super().__init__()
        if num_kernels < 1 or in_planes % groups or out_planes % groups:
            raise UserError(f"DynamicConv2d needs num_kernels >= 1 and channels divisible by groups, "
                            f"got K={num_kernels}, {in_planes}->{out_planes}, groups={groups}")
        self.in_planes, self.out_planes, self.kernel_size = in_planes, out_planes, kernel_size
        self.stride, self.padding, self.groups, self.num_kernels = stride, padding, groups, num_kernels
        self.attention = KernelAttention(in_planes, num_kernels, reduction)
        self.weight = nn.Parameter(torch.empty(num_kernels, out_planes, in_planes // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(num_kernels, out_planes)) if bias else None
        self.register_buffer("temperature", torch.tensor(START_TEMPERATURE))
        self.anneal_epochs = ANNEAL_EPOCHS
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # each kernel on its own, as a static conv would be (He et al. 2015, arXiv:1502.01852)
        for k in range(self.num_kernels):
            nn.init.kaiming_normal_(self.weight[k], mode="fan_out", nonlinearity="relu")

    def set_epoch(self, epoch: int) -> None:
        self.temperature.fill_(temperature_at(epoch, self.anneal_epochs))

    def attention_weights(self, x: Tensor) -> Tensor:
        """pi(x), (N, K): softmax(logits / temperature); each row sums to 1."""
        return F.softmax(self.attention(x) / self.temperature, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        pi = self.attention_weights(x)
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return self._mix_outputs(x, pi)
        return self._mix_kernels(x, pi)

    def _mix_kernels(self, x: Tensor, pi: Tensor) -> Tensor:
        n, c, h, w = x.shape
        weight = (pi @ self.weight.flatten(1)).view(n * self.out_planes, *self.weight.shape[2:])
        bias = (pi @ self.bias).flatten() if self.bias is not None else None
        out = F.conv2d(x.reshape(1, n * c, h, w), weight, bias, self.stride, self.padding,
                       groups=n * self.groups)
        return out.view(n, self.out_planes, *out.shape[2:])

    def _mix_outputs(self, x: Tensor, pi: Tensor) -> Tensor:
        k, o = self.num_kernels, self.out_planes
        if self.groups == 1:
            out = F.conv2d(x, self.weight.flatten(0, 1), None, self.stride, self.padding)
            out = out.unflatten(1, (k, o))
        else:
            out = torch.stack([F.conv2d(x, self.weight[i], None, self.stride, self.padding, groups=self.groups)
                               for i in range(k)], 1)
        out = (out * pi[:, :, None, None, None]).sum(1)
        if self.bias is not None:
            out = out + (pi @ self.bias)[:, :, None, None]
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_planes}, {self.out_planes}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, num_kernels={self.num_kernels}")


class DyBasicBlock(BasicBlock):
    """:class:`BasicBlock` with both 3x3 convolutions dynamic (DY-ResNet, section 4.2)."""

    def __init__(self, *, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 shortcut: bool = True, num_kernels: int = 4, anneal_epochs: int = ANNEAL_EPOCHS) -> None:
        super().__init__(inplanes=inplanes, planes=planes, stride=stride, downsample=downsample, shortcut=shortcut)
        self.conv1 = DynamicConv2d(inplanes, planes, 3, stride=stride, padding=1, num_kernels=num_kernels)
        self.conv2 = DynamicConv2d(planes, planes, 3, padding=1, num_kernels=num_kernels)
        for conv in (self.conv1, self.conv2):
            conv.anneal_epochs = anneal_epochs


def set_epoch(model: nn.Module, epoch: int) -> None:
    """Anneal every DynamicConv2d of ``model`` to the temperature of ``epoch`` (1-based)."""
    for m in model.modules():
        if isinstance(m, DynamicConv2d):
            m.set_epoch(epoch)


class DyResNet(ResNet):
    """ImageNet ResNet of dynamic basic blocks; ``set_epoch`` anneals the attention temperature."""

    def set_epoch(self, epoch: int) -> None:
        set_epoch(self, epoch)


class DyCifarResNet(CifarResNet):
    """CIFAR ResNet of dynamic basic blocks; ``set_epoch`` anneals the attention temperature."""

    def set_epoch(self, epoch: int) -> None:
        set_epoch(self, epoch)


class DynamicOptions(HeadOptions, total=False):
    num_kernels: int  # K, kernels per dynamic convolution (the paper's default 4)
    anneal_epochs: int  # epochs over which the temperature falls from 30 to 1 (paper: 10)


def _block_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The block's options out of the builder's (create_model has checked them)."""
    return {k: kwargs.pop(k) for k in ("num_kernels", "anneal_epochs") if k in kwargs}


@register_model
def dy_resnet18(*, num_classes: int = 1000, in_chans: int = 3, **kwargs: Unpack[DynamicOptions]) -> DyResNet:
    """DY-ResNet-18: resnet18 with dynamic 3x3 convolutions, K=4 (Chen et al. 2020, arXiv:1912.03458)."""
    return DyResNet(DyBasicBlock, (2, 2, 2, 2), num_classes=num_classes, in_chans=in_chans,
                    block_args=_block_args(kwargs), **kwargs)


@register_model(input_size=CIFAR_INPUT)
def dy_resnet20(*, num_classes: int = 10, in_chans: int = 3, **kwargs: Unpack[DynamicOptions]) -> DyCifarResNet:
    """DY-ResNet-20 for CIFAR: resnet20 with dynamic 3x3 convolutions, K=4 (Chen et al. 2020, arXiv:1912.03458)."""
    return DyCifarResNet(20, num_classes=num_classes, in_chans=in_chans, block=DyBasicBlock,
                         block_args=_block_args(kwargs), **kwargs)
