"""Training compute in FLOPs, counted by ``torch.utils.flop_counter`` rather than by hand.

A multiply-add counts as two FLOPs (FlopCounterMode's convention). Only convolutions and matrix
products are counted: BatchNorm, ReLU, pooling and the optimizer add a few percent that depend
on the kernels, not on the network. Training costs three forward passes per image: the
backward pass computes gradients for both activations and weights, two products of the
forward's size each (Kaplan et al. 2020, arXiv:2001.08361, section 2.1).

A plan lists, per epoch, the images trained and their input shape, so a schedule that changes
the resolution between epochs (progressive resizing) is counted at each epoch's size.
"""
from __future__ import annotations

import copy
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import UserError

TRAIN_MULTIPLIER = 3  # forward + backward (activation and weight gradients): 1 + 2 forwards
EpochPlan = tuple[int, Sequence[int]]  # (images trained in the epoch, input shape C,H,W)


def forward_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of ``model`` on an input of ``input_shape``: (C, H, W) for one
    image, or (N, C, H, W) for a batch of N. The model is run on a copy in eval mode, without
    gradients, so its weights, BatchNorm statistics and mode are left as they were."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or min(shape) < 1:
        raise UserError(f"input shape must be C,H,W or N,C,H,W positive integers, got {tuple(input_shape)}")
    net = copy.deepcopy(model).eval()
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(shape, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(x)
    return int(counter.get_total_flops())


def train_flops(model: nn.Module, plan: Iterable[EpochPlan]) -> int:
    """Training FLOPs of a plan: sum over epochs of 3 x forward FLOPs per image at that epoch's
    input shape x images trained. Each distinct shape is counted once."""
    per_image: dict[tuple[int, ...], int] = {}
    total = 0
    for images, shape in plan:
        key = tuple(int(d) for d in shape)
        if key not in per_image:
            per_image[key] = forward_flops(model, key)
        total += TRAIN_MULTIPLIER * per_image[key] * int(images)
    return total
