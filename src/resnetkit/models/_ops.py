"""Two operations whose gradients keep the input's memory format under channels_last.

Under channels_last every activation is NHWC, but the backward of a strided slice and of average
pooling returns NCHW gradients. Each one then meets NHWC tensors (the ReLU that produced the
activation, the other branch of the residual sum) and the elementwise kernels fall back to a
strided path 5-15x slower than their NHWC one: 6-20% of a training step of a small CIFAR net on a
CPU. The functions below give the same forward values and gradients in the input's memory format;
:class:`~resnetkit.models.blocks.ShortcutA` and :class:`GlobalAvgPool` use them in eager training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def memory_format(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def needs_grad(x: Tensor) -> bool:
    """Training in eager mode: torch.compile, torch.export and tracers get the plain operations
    (is_compiling is true under both compile and export)."""
    return (x.requires_grad and torch.is_grad_enabled() and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling())


def subsample_pad(x: Tensor, stride: int, extra: int) -> Tensor:
    """Every ``stride``-th pixel, and ``extra`` zero channels after the input's."""
    return F.pad(x[:, :, ::stride, ::stride], (0, 0, 0, 0, 0, extra))


class SubsamplePadFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, stride: int, extra: int) -> Tensor:  # type: ignore[override]
        ctx.shape, ctx.stride, ctx.fmt = x.shape, stride, memory_format(x)
        return subsample_pad(x, stride, extra).contiguous(memory_format=ctx.fmt)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        gx = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.fmt).zero_()
        gx[:, :, :: ctx.stride, :: ctx.stride] = grad[:, : ctx.shape[1]]
        return gx, None, None


class GlobalAvgPoolFn(torch.autograd.Function):
    """Global average pooling, (N, C, H, W) -> (N, C, 1, 1)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.shape, ctx.fmt = x.shape, memory_format(x)
        return F.adaptive_avg_pool2d(x, 1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        n, c, h, w = ctx.shape
        return (grad / (h * w)).expand(n, c, h, w).contiguous(memory_format=ctx.fmt)


class GlobalAvgPool(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d((1, 1))`` whose gradient keeps the input's memory format."""

    def __init__(self) -> None:
        super().__init__((1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return GlobalAvgPoolFn.apply(x) if needs_grad(x) and x.dim() == 4 else super().forward(x)
